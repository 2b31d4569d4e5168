"""The shadow phase, tick by tick: mirrored requests judged before any user sees the canary."""

from __future__ import annotations

from canarist.api.spec import CanaryReleaseSpec
from canarist.api.status import CheckResult, Phase

from .engine_sim import FAIL, PASS, Sim, check, make_spec


def shadow_spec(**shadow) -> CanaryReleaseSpec:
    spec = make_spec(failureLimit=0).to_k8s()
    spec["shadow"] = {"percent": 50, "minDuration": "30s", "minPairs": 0, **shadow}
    return CanaryReleaseSpec.model_validate(spec)


def cond(sim: Sim, type_: str):
    return next(c for c in sim.status.conditions if c.type == type_)


def start(sim: Sim) -> Sim:
    sim.initialized()
    sim.target = "rev2"
    sim.tick()  # rollout starts, canary scaled up
    sim.tick()  # canary Ready: shadow begins, the mirror is written
    return sim


def test_shadow_mirrors_then_walks_the_steps_with_no_user_on_the_canary_until_it_passes():
    sim = start(Sim(spec=shadow_spec()))
    assert sim.status.phase == Phase.SHADOWING
    assert sim.route == (100, 0) and sim.mirror == 50
    assert cond(sim, "Progressing").reason == "Shadowing" and cond(sim, "Progressing").status == "True"
    sim.tick()  # the mirror is seen in the route: the shadow's clock starts
    assert sim.status.shadow.started_at == sim.now and "ShadowStarted" in sim.events()
    sim.tick(PASS)  # 10 s: checks pass, minDuration (30 s) not yet
    assert sim.status.phase == Phase.SHADOWING and "minDuration" in sim.status.message
    assert sim.route == (100, 0)
    started = sim.status.shadow.started_at
    while sim.status.phase == Phase.SHADOWING:
        sim.tick(PASS)
    assert (sim.now - started).total_seconds() == 30, "the shadow lasts its minDuration"
    assert sim.status.phase == Phase.PROGRESSING and sim.status.step_weight == 1
    assert sim.status.shadow.state == "Passed" and sim.status.shadow.checks
    assert sim.mirror == 0, "the mirror goes once users reach the canary"
    assert "ShadowPassed" in sim.events()
    for _ in range(40):
        sim.tick(PASS)
    assert sim.status.phase == Phase.SUCCEEDED
    assert sim.weights() == [0, 1, 5, 20, 50, 100, 0]


def test_a_failing_shadow_rolls_back_with_no_user_ever_served_by_the_canary():
    sim = start(Sim(spec=shadow_spec()))
    sim.tick()
    judged = (check(CheckResult.FAILED, 0.6, name="judge-loss-rate"),)
    sim.tick(judged)
    assert sim.status.phase == Phase.ROLLED_BACK
    assert sim.weights() == [0], "the canary's weight never left 0"
    assert sim.mirror == 0 and sim.canary_up is False
    assert sim.status.shadow.state == "Failed"
    assert sim.status.shadow.checks[0].name == "judge-loss-rate" and sim.status.shadow.checks[0].value == 0.6
    assert "in shadow" in sim.status.message and "no user was served by the canary" in sim.status.message


def test_shadow_needs_its_judged_pairs():
    spec = make_spec(failureLimit=0, judge={"url": "http://judge:8080", "minScore": 0.5}).to_k8s()
    spec["shadow"] = {"percent": 100, "minDuration": "0s", "minPairs": 30}
    sim = start(Sim(spec=CanaryReleaseSpec.model_validate(spec)))
    sim.tick()
    sim.pairs = 12
    sim.tick(PASS)
    assert sim.status.phase == Phase.SHADOWING and sim.status.shadow.pairs == 12
    assert "12 of minPairs 30 judged pairs" in sim.status.message
    sim.pairs = 31
    sim.tick(PASS)
    assert sim.status.phase == Phase.PROGRESSING and sim.status.shadow.pairs == 31


def test_min_pairs_without_a_judge_is_a_spec_problem_naming_the_field():
    sim = Sim(spec=shadow_spec(minPairs=10)).initialized()
    sim.target = "rev2"
    sim.tick()
    assert sim.status.phase == Phase.IDLE
    assert "spec.shadow.minPairs" in sim.status.message and "add spec.analysis.judge" in sim.status.message
    assert cond(sim, "Ready").reason == "InvalidSpec"


def test_a_gateway_that_cannot_mirror_keeps_the_release_from_starting_and_says_why():
    sim = Sim(spec=shadow_spec(), mirror_problem="spec.shadow.mirror: GatewayClass traefik does not list "
                                                 "HTTPRouteRequestMirror").initialized()
    sim.target = "rev2"
    sim.tick()
    assert sim.status.phase == Phase.IDLE and "HTTPRouteRequestMirror" in sim.status.message
    assert sim.mirror == 0 and sim.route == (100, 0)


def test_external_mirror_starts_the_shadow_at_once_and_never_writes_a_mirror():
    sim = start(Sim(spec=shadow_spec(mirror="External")))
    assert sim.status.phase == Phase.SHADOWING and sim.status.shadow.started_at is not None
    assert sim.mirror == 0 and sim.route == (100, 0)


def test_shadow_gates_of_its_own_replace_the_analysis_gates():
    spec = shadow_spec(analysis={"interval": "5s", "failureLimit": 0, "metrics": [
        {"name": "shadow-errors", "prometheus": {"query": "q"}, "max": 0.1}]})
    sim = start(Sim(spec=spec))
    sim.tick()
    sim.tick((check(CheckResult.FAILED, 0.5, name="shadow-errors"),), advance=5)
    assert sim.status.phase == Phase.ROLLED_BACK and "shadow-errors" in sim.status.message


def test_pause_in_shadow_keeps_the_mirror_and_resumes_in_shadow():
    sim = start(Sim(spec=shadow_spec()))
    sim.tick()
    sim.request(paused=True)
    sim.tick(PASS)
    assert sim.status.phase == Phase.PAUSED and sim.mirror == 50 and sim.route == (100, 0)
    sim.request(paused=False)
    sim.tick()
    assert sim.status.phase == Phase.SHADOWING


def test_a_route_without_the_mirror_restarts_the_shadow_clock():
    sim = start(Sim(spec=shadow_spec()))
    sim.tick()
    sim.tick(PASS)
    sim.mirror = 0  # someone removed the filter
    sim.tick(PASS)
    assert sim.status.shadow.started_at is None and sim.status.phase == Phase.SHADOWING
    assert "the route mirrors 0%" in sim.status.message
    assert sim.mirror == 50, "the mirror is written again"


def test_a_blocked_shadow_removes_the_mirror():
    sim = start(Sim(spec=shadow_spec()))
    sim.tick()
    sim.problems = ("spec.service: something broke",)
    sim.tick()
    assert sim.mirror == 0 and sim.route == (100, 0)


def test_without_shadow_nothing_changes():
    sim = Sim(spec=make_spec()).initialized()
    sim.target = "rev2"
    sim.tick()
    sim.tick()
    assert sim.status.phase == Phase.PROGRESSING and sim.status.step_weight == 1 and sim.status.shadow is None


def test_a_failed_check_in_shadow_within_failure_limit_holds():
    spec = make_spec(failureLimit=1).to_k8s()
    spec["shadow"] = {"percent": 10, "minDuration": "0s", "minPairs": 0}
    sim = start(Sim(spec=CanaryReleaseSpec.model_validate(spec)))
    sim.tick()
    sim.tick(FAIL)
    assert sim.status.phase == Phase.SHADOWING and sim.status.message.startswith("shadow: check failed")


def test_canarist_status_shows_the_shadow_and_its_verdicts():
    from canarist.cli.releases import render_shadow

    sim = start(Sim(spec=shadow_spec()))
    sim.tick()
    sim.tick((check(CheckResult.FAILED, 0.6, name="judge-loss-rate"),))
    status = sim.status.to_k8s()
    status["shadow"]["pairs"] = 42
    text = "\n".join(render_shadow(status))
    assert "shadow     Failed: 50% of requests mirrored (Route), 42 judged pairs" in text
    assert "judge-loss-rate" in text and "Failed" in text and "0.6" in text
    assert render_shadow({}) == []


def test_the_steps_bar_shows_where_the_shadow_stands():
    from canarist.cli.releases import steps_bar

    steps = {"pinnedSteps": [5, 50, 100], "stepIndex": 0}
    assert steps_bar({**steps, "phase": "Shadowing", "shadow": {"state": "Running"}}) == "[shadow] → 5% → 50% → 100%"
    assert steps_bar({**steps, "phase": "RolledBack", "shadow": {"state": "Failed"}}) == "shadow✗ → 5% → 50% → 100%"
    assert steps_bar({**steps, "phase": "Progressing", "canaryWeight": 5, "shadow": {"state": "Passed"}}) == \
        "shadow✓ → [5%] → 50% → 100%"
    assert steps_bar({**steps, "phase": "Progressing", "canaryWeight": 5}) == "[5%] → 50% → 100%"


def test_judged_pairs_also_come_from_the_judge_comparisons_evidence():
    from canarist.api.status import Evidence

    spec = make_spec(failureLimit=0).to_k8s()
    spec["analysis"]["compare"] = [{"name": "quality", "judge": {"url": "http://judge:8080", "maxLossShare": 0.6}}]
    spec["shadow"] = {"percent": 100, "minDuration": "0s", "minPairs": 50}
    sim = start(Sim(spec=CanaryReleaseSpec.model_validate(spec)))
    sim.tick()
    evidence = [Evidence(name="quality", kind="judge", measure="lossShare", tolerance=0.6, threshold=100,
                         canary_events=64)]
    sim.tick(comparisons=(check(CheckResult.PASSED, 0.4, name="quality"),), evidence=evidence, advance=1)
    assert sim.status.shadow.pairs == 64


def test_a_promotion_by_request_or_a_cancelled_rollout_ends_the_shadow_without_a_verdict():
    sim = start(Sim(spec=shadow_spec()))
    sim.tick()
    sim.request(promote="t1")
    sim.tick()
    assert sim.status.phase == Phase.PROMOTING and sim.status.shadow.state == "Skipped"
    assert sim.mirror == 0
    cancelled = start(Sim(spec=shadow_spec()))
    cancelled.tick()
    cancelled.target = "rev1"  # back to the primary's revision
    cancelled.tick()
    assert cancelled.status.phase == Phase.IDLE and cancelled.status.shadow.state == "Skipped"
