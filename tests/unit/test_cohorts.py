"""Cohorts: validation, each cohort's share at each step, the route's rules, and the engine's verdicts."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from canarist.api.cohorts import cohort_problems, cohort_weight
from canarist.api.spec import CanaryReleaseSpec, Cohort
from canarist.api.status import Check, CheckResult, Phase
from canarist.routing.gatewayapi import (COHORT_HEADER, CohortRule, build_httproute, cohort_weights_of,
                                         weights_of)

from .engine_sim import PASS, T0, Sim, make_spec


def lang(value: str, type_: str = "Exact") -> dict:
    return {"headers": [{"name": "Accept-Language", "type": type_, "value": value}]}


def spec_with(cohorts: list[dict], steps: list[int] | None = None, matches: list[dict] | None = None,
              **analysis) -> CanaryReleaseSpec:
    body = make_spec(failureLimit=0, **analysis).to_k8s()
    body["cohorts"] = cohorts
    if steps is not None:
        body["steps"] = steps
    if matches is not None:
        body["routing"]["gatewayAPI"]["matches"] = matches
    return CanaryReleaseSpec.model_validate(body)


# -- shares ----------------------------------------------------------------------------------------

def test_a_factor_multiplies_each_step_and_caps_at_100():
    cohort = Cohort.model_validate({"name": "de", "matches": [lang("de")], "factor": 5})
    steps = [1, 5, 20, 50, 100]
    assert [cohort_weight(cohort, steps, w) for w in (0, 1, 5, 20, 50, 100)] == [0, 5, 25, 100, 100, 100]
    half = Cohort.model_validate({"name": "de", "matches": [lang("de")], "factor": 1.5})
    assert [cohort_weight(half, steps, w) for w in steps] == [2, 8, 30, 75, 100]


def test_own_steps_give_the_share_at_the_same_step():
    spec = spec_with([{"name": "de", "matches": [lang("de")], "steps": [10, 30, 60, 100, 100]}])
    cohort = spec.cohorts[0]
    assert [cohort_weight(cohort, spec.steps, w) for w in (0, *spec.steps)] == [0, 10, 30, 60, 100, 100]


# -- validation ------------------------------------------------------------------------------------

@pytest.mark.parametrize("cohort, message", [
    ({"name": "de", "matches": [lang("de")]}, "set exactly one of factor"),
    ({"name": "de", "matches": [lang("de")], "factor": 2, "steps": [5, 10, 40, 100, 100]}, "set exactly one of factor"),
    ({"name": "de", "matches": [{}], "factor": 2}, "needs at least one header or query parameter"),
    ({"name": "de", "matches": [], "factor": 2}, "at least 1 item"),
    ({"name": "de", "matches": [lang("de")], "factor": 0.5}, "greater than or equal to 1"),
    ({"name": "De_", "matches": [lang("de")], "factor": 2}, "should match pattern"),
    ({"name": "de", "matches": [{"headers": [{"name": COHORT_HEADER, "value": "de"}]}], "factor": 2},
     "set by canarist's route"),
    ({"name": "de", "matches": [{"headers": [{"name": "a", "value": "1"}, {"name": "A", "value": "2"}]}],
      "factor": 2}, "repeated: a"),
    ({"name": "de", "matches": [{"path": {"value": "/x"}}], "factor": 2}, "Extra inputs are not permitted"),
    ({"name": "de", "matches": [lang("de")], "steps": [5, 10, 40, 100]}, "has 4 entries and spec.steps 5"),
    ({"name": "de", "matches": [lang("de")], "steps": [1, 2, 40, 100, 100]}, "2% at the 5% step"),
    ({"name": "de", "matches": [lang("de")], "steps": [5, 10, 40, 30, 100]}, "must not decrease"),
])
def test_bad_cohorts_are_refused_naming_the_problem(cohort, message):
    with pytest.raises(ValidationError) as raised:
        spec_with([cohort])
    assert message in str(raised.value)


def test_a_repeated_cohort_name_is_refused():
    with pytest.raises(ValidationError, match="cohort names must be unique; repeated: de"):
        spec_with([{"name": "de", "matches": [lang("de")], "factor": 2},
                   {"name": "de", "matches": [lang("fr")], "factor": 2}])


def test_cohorts_that_one_request_could_both_match_are_a_problem_naming_both():
    spec = spec_with([{"name": "de", "matches": [lang("de")], "factor": 2},
                      {"name": "mobile", "matches": [{"headers": [{"name": "X-Client", "value": "ios"}]}], "factor": 2}])
    [problem] = cohort_problems(spec)
    assert problem.startswith("spec.cohorts[1] (mobile) overlaps spec.cohorts[0] (de)")
    assert "make them exclusive" in problem


def test_exclusive_cohorts_are_fine():
    spec = spec_with([
        {"name": "de", "matches": [lang("de")], "factor": 2},
        {"name": "fr", "matches": [lang("fr")], "factor": 2},
        {"name": "mobile-nl", "matches": [{"headers": [{"name": "accept-language", "value": "nl"},
                                                       {"name": "X-Client", "value": "ios"}]}], "factor": 2},
    ])
    assert cohort_problems(spec) == []


def test_an_expression_is_never_run_and_counts_as_overlapping():
    # Whether "d." matches "de" (or only part of a value) is up to each gateway; and an expression
    # that backtracks catastrophically must not stall the operator: it is never evaluated.
    catastrophic = "(a|a)*b"
    spec = spec_with([{"name": "de", "matches": [lang("a" * 40 + "c")], "factor": 2},
                      {"name": "any", "matches": [lang(catastrophic, "RegularExpression")], "factor": 2}])
    assert "spec.cohorts[1] (any) overlaps spec.cohorts[0] (de)" in cohort_problems(spec)[0]
    two_patterns = spec_with([{"name": "a", "matches": [lang("a.*", "RegularExpression")], "factor": 2},
                              {"name": "b", "matches": [lang("b.*", "RegularExpression")], "factor": 2}])
    assert cohort_problems(two_patterns)
    disjoint_elsewhere = spec_with([
        {"name": "a", "matches": [{"headers": [{"name": "Accept-Language", "type": "RegularExpression", "value": "a.*"},
                                               {"name": "X-Client", "value": "web"}]}], "factor": 2},
        {"name": "b", "matches": [{"headers": [{"name": "X-Client", "value": "ios"}]}], "factor": 2}])
    assert cohort_problems(disjoint_elsewhere) == [], "exclusive by another header's Exact values"


def test_a_cohort_on_a_header_the_route_already_matches_contradicts_it():
    spec = spec_with([{"name": "de", "matches": [lang("de")], "factor": 2}],
                     matches=[{"headers": [{"name": "accept-language", "value": "en"}]}])
    [problem] = cohort_problems(spec)
    assert problem.startswith("spec.cohorts[0].matches[0] (de): accept-language is matched by "
                              "spec.routing.gatewayAPI.matches too")


def test_a_route_too_large_for_gateway_api_is_a_problem():
    matches = [{"path": {"type": "PathPrefix", "value": f"/p{i}"}} for i in range(8)]
    cohorts = [{"name": f"c{i}", "matches": [{"headers": [{"name": "X-Cohort", "value": f"{i}-{k}"}]} for k in range(8)],
                "factor": 2} for i in range(3)]
    problems = cohort_problems(spec_with(cohorts, matches=matches))
    assert any("would hold 200 matches, more than Gateway API's 128" in p for p in problems)


# -- the route -------------------------------------------------------------------------------------

def test_each_cohort_gets_a_rule_before_the_default_rule_with_its_own_weights():
    route = build_httproute(
        namespace="ns", name="web", owner=None, parent_refs=[{"name": "gw"}], hostnames=[],
        matches=[{"path": {"type": "PathPrefix", "value": "/answer"}}], port=8080,
        backends=[("web-primary", 99), ("web-canary", 1)],
        cohorts=[CohortRule("de", (lang("de"), {"queryParams": [{"name": "lang", "value": "de"}]}), 5)])
    cohort_rule, default_rule = route["spec"]["rules"]
    assert cohort_rule["matches"] == [
        {"path": {"type": "PathPrefix", "value": "/answer"}, **lang("de")},
        {"path": {"type": "PathPrefix", "value": "/answer"}, "queryParams": [{"name": "lang", "value": "de"}]}]
    assert cohort_rule["filters"] == [{"type": "RequestHeaderModifier", "requestHeaderModifier": {
        "set": [{"name": COHORT_HEADER, "value": "de"}]}}]
    assert [(b["name"], b["weight"]) for b in cohort_rule["backendRefs"]] == [("web-primary", 95), ("web-canary", 5)]
    assert default_rule["filters"] == [{"type": "RequestHeaderModifier",
                                        "requestHeaderModifier": {"remove": [COHORT_HEADER]}}]
    assert weights_of(route, "web-primary", "web-canary") == (99, 1), "the default rule's weights"
    assert cohort_weights_of(route, "web-primary", "web-canary") == (("de", 5),)


def test_without_cohorts_the_route_is_one_rule_as_before():
    route = build_httproute(namespace="ns", name="web", owner=None, parent_refs=[{"name": "gw"}], hostnames=[],
                            matches=None, port=8080, backends=[("web-primary", 100), ("web-canary", 0)])
    assert route["spec"]["rules"] == [{"backendRefs": [{"name": "web-primary", "port": 8080, "weight": 100},
                                                       {"name": "web-canary", "port": 8080, "weight": 0}]}]


# -- the engine ------------------------------------------------------------------------------------

def cohort_check(result: CheckResult, cohort: str, value: float | None = None, name: str = "judge-score") -> Check:
    return Check(name=f"{name}[{cohort}]", kind="judge", result=result, value=value, min=0.8, at=T0, cohort=cohort)


def rolling(spec: CanaryReleaseSpec) -> Sim:
    sim = Sim(spec=spec).initialized()
    sim.target = "rev2"
    sim.tick()  # rollout starts, canary scaled up
    sim.tick()  # canary Ready: step 1, its weights written to the route
    return sim


def test_the_route_gives_each_cohort_its_share_of_each_step():
    sim = rolling(spec_with([{"name": "de", "matches": [lang("de")], "factor": 5}]))
    assert sim.route == (99, 1) and sim.cohort_route == (("de", 5),)
    assert sim.status.pinned_cohorts[0].name == "de"
    sim.tick(PASS)
    assert sim.route == (95, 5) and sim.cohort_route == (("de", 25),)
    assert sim.status.cohorts[0].canary_weight == 5
    sim.tick()
    assert sim.status.cohorts[0].canary_weight == 25, "status shows the cohort's share as routed"


def test_a_step_starts_counting_once_the_cohort_rules_carry_its_shares():
    sim = rolling(spec_with([{"name": "de", "matches": [lang("de")], "factor": 5}]))
    sim.cohorts_stuck = True
    sim.tick(PASS)  # step 2 asked for; the default rule moves, the cohort's rule does not
    assert sim.route == (95, 5) and sim.cohort_route == (("de", 5),)
    sim.tick(PASS)
    assert sim.status.step_weight == 5 and sim.status.checks_passed == 0
    assert "cohorts' rules" in sim.status.message
    sim.cohorts_stuck = False
    sim.tick()
    sim.tick(PASS)
    assert sim.status.step_weight == 20, "counted once the cohort's share is in the route"


def test_a_failing_cohort_rolls_back_while_all_traffic_together_passes():
    sim = rolling(spec_with([{"name": "de", "matches": [lang("de")], "factor": 5}]))
    aggregate = Check(name="judge-score", kind="judge", result=CheckResult.PASSED, value=0.86, min=0.8, at=T0)
    sim.tick((aggregate, cohort_check(CheckResult.FAILED, "de", 0.31)))
    assert sim.status.phase == Phase.ROLLED_BACK
    assert "judge-score[de]=0.31" in sim.status.message
    assert sim.route == (100, 0) and sim.cohort_route == (("de", 0),)


def test_too_little_of_an_optional_cohort_never_holds_a_step_but_a_required_one_does():
    optional = rolling(spec_with([{"name": "de", "matches": [lang("de")], "factor": 5}]))
    optional.tick(PASS + (cohort_check(CheckResult.NO_DATA, "de", 3, name="judge-samples"),))
    assert optional.status.step_weight == 5
    assert optional.status.cohorts[0].judged == 3
    required = rolling(spec_with([{"name": "de", "matches": [lang("de")], "factor": 5, "minSamples": 10}]))
    required.tick(PASS + (cohort_check(CheckResult.NO_DATA, "de", 3, name="judge-samples"),))
    assert required.status.step_weight == 1 and "judge-samples[de]" in required.status.message
    required.tick(PASS + (cohort_check(CheckResult.PASSED, "de", 12, name="judge-samples"),))
    assert required.status.step_weight == 5 and required.status.cohorts[0].judged == 12


def test_overlapping_cohorts_keep_a_new_revision_from_starting():
    spec = spec_with([{"name": "de", "matches": [lang("de")], "factor": 2},
                      {"name": "mobile", "matches": [{"headers": [{"name": "X-Client", "value": "ios"}]}], "factor": 2}])
    sim = Sim(spec=spec).initialized()
    assert sim.cohort_route == (), "no cohort rules while they overlap"
    sim.target = "rev2"
    sim.tick()
    assert sim.status.phase == Phase.IDLE and "overlaps" in sim.status.message
    ready = next(c for c in sim.status.conditions if c.type == "Ready")
    assert ready.reason == "InvalidSpec" and "spec.cohorts[1] (mobile)" in ready.message


def test_the_example_declares_exclusive_cohorts():
    body = yaml.safe_load((Path(__file__).resolve().parents[2] / "examples" / "cohorts.yaml").read_text())
    spec = CanaryReleaseSpec.model_validate(body["spec"])
    assert [c.name for c in spec.cohorts] == ["de", "android"] and cohort_problems(spec) == []
    assert [cohort_weight(spec.cohorts[0], spec.steps, w) for w in spec.steps] == [5, 25, 100, 100, 100]


def test_status_shows_every_cohorts_share_coverage_and_values():
    from canarist.cli.releases import render_cohorts
    status = {"cohorts": [{"name": "de", "canaryWeight": 5, "judged": 12, "minSamples": 30},
                          {"name": "android", "canaryWeight": 10}],
              "lastChecks": [{"name": "judge-samples[de]", "result": "NoData", "value": 12, "cohort": "de"},
                             {"name": "judge-score[de]", "result": "Failed", "value": 0.31, "cohort": "de"},
                             {"name": "judge-score", "result": "Passed", "value": 0.9}]}
    lines = render_cohorts(status)
    assert "de" in lines[1] and "5%" in lines[1] and "12 (needs 30)" in lines[1] and "judge-score=0.31 Failed" in lines[1]
    assert "android" in lines[2] and "10%" in lines[2] and lines[2].rstrip().endswith("-")


def test_a_cohort_variable_compared_for_equality_is_named_with_the_fix():
    from canarist.engine.validation import spec_problems
    body = make_spec().to_k8s()
    body["analysis"]["metrics"][0]["prometheus"]["query"] = 'sum(rate(x{cohort="{{ cohort }}"}[1m]))'
    [problem] = spec_problems(CanaryReleaseSpec.model_validate(body))
    assert problem.startswith("spec.analysis.metrics[0].prometheus.query:") and 'cohort=~"{{ cohort }}"' in problem
    body["analysis"]["metrics"][0]["prometheus"]["query"] = 'sum(rate(x{cohort=~"{{ cohort }}"}[1m]))'
    assert spec_problems(CanaryReleaseSpec.model_validate(body)) == []
