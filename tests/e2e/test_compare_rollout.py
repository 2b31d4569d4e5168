"""Comparison gates end to end: the operator process, real Prometheus scraping the app's pods
(processes on their pod IPs, reached through the stack's gateway), the real judge with the scripted
LLM; the canary is judged against the primary with anytime-valid evidence (analysis.compare).
Each revision's error and wrong-answer rates are part of its pod template."""

from __future__ import annotations

import math
from collections.abc import Iterator

import kubernetes
import pytest

from canarist.devstack.gateway_traffic import GatewayTraffic
from canarist.devstack.procs import wait_until
from canarist.devstack.traffic import arithmetic_questions

from .harness import RouteWatcher, canary_release, deployment

pytestmark = [pytest.mark.cluster, pytest.mark.prometheus]

GROUP, VERSION, PLURAL = "canarist.dev", "v1alpha1", "canaryreleases"
STEPS = [5, 20, 50, 100]
BAD = ('sum(increase(http_requests_total{namespace="{{ namespace }}",deployment="{{ variant }}",code=~"5.."}'
       '[{{ window }}]))')
TOTAL = 'sum(increase(http_requests_total{namespace="{{ namespace }}",deployment="{{ variant }}"}[{{ window }}]))'
BASELINE = 0.2  # a high error rate, so the evidence piles up in seconds rather than hours


def errors_gate(max_ratio: float) -> dict:
    return {"name": "errors", "rates": {"bad": BAD, "total": TOTAL, "maxRatio": max_ratio}}


def release_with(cluster, hostname: str, compare: list[dict], primary_args: str = "", **analysis) -> None:
    """The release, with the target's pods (the primary-to-be) run with `primary_args`."""
    cluster.apps.create_namespaced_deployment(cluster.namespace, deployment("web", "registry.test/web:v1",
                                                                            process=True, args=primary_args))
    body = canary_release("web", "web", hostname=hostname)
    body["spec"]["steps"] = STEPS
    body["spec"]["analysis"] = {"interval": "2s", "checksPerStep": 8, "alpha": 0.01, "compare": compare,
                                "holdTimeout": "5m", **analysis}
    cluster.custom.create_namespaced_custom_object(GROUP, VERSION, cluster.namespace, PLURAL, body)
    cluster.wait_phase("web", "Idle", 60)


def error_rate(rate: float) -> str:
    return f"--error-rate {rate!r}"


@pytest.fixture
def traffic_60(stack, pods, hostname) -> Iterator[GatewayTraffic]:
    with GatewayTraffic(stack.gateway.url, hostname, rps=60) as driver:
        yield driver


def evidence_of(status: dict, name: str = "errors") -> dict:
    return next(e for e in status.get("evidence", []) if e["name"] == name)


def release_worse(cluster, hostname: str, ratio: float, gate: dict, checks_per_step: int) -> tuple[dict, list[int]]:
    """Roll out a canary with `ratio` times the primary's error rate; its final status and the route's weights."""
    release_with(cluster, hostname, [gate], error_rate(BASELINE), checksPerStep=checks_per_step)
    with RouteWatcher(cluster, "web") as watcher:
        cluster.set_image("web", "registry.test/web:v2", args=error_rate(ratio * BASELINE))
        status = cluster.wait_phase("web", {"RolledBack", "Succeeded"}, 240)
    assert status["phase"] == "RolledBack", status["message"]
    return status, watcher.canary_weights()


def test_a_canary_three_times_worse_is_rolled_back_early_with_the_evidence_in_status(cluster, operator, hostname,
                                                                                     traffic_60):
    # 30 s a step: at this traffic the evidence typically suffices within the 5 % step.
    status, weights = release_worse(cluster, hostname, 3, errors_gate(1.5), checks_per_step=15)
    assert max(weights) < 50, f"caught only at {weights}: {status['evidence']}"
    evidence = evidence_of(status)
    assert evidence["verdict"] == "Regression" and evidence["rollback"] >= evidence["threshold"] == 100
    # The interval is two-sided at the same alpha, the rollback test one-sided: early on the
    # interval may still reach below the tolerance, never below "as good as the primary".
    assert 1.5 < evidence["estimate"] < 10 and evidence["low"] > 1.0, evidence
    assert "worse than tolerated" in status["message"] and "x the primary's" in status["message"]
    rolled = wait_until(lambda: [e for e in cluster.events("web") if e.reason == "RolledBack"], 10,
                        "the RolledBack event")
    assert len(rolled) == 1 and "Regression" in rolled[0].message


def test_the_step_guard_keeps_a_bad_canary_at_a_small_share_until_its_rollback(cluster, operator, hostname,
                                                                                traffic_60):
    # 4 s a step: on time alone a canary at 2x would reach 50 % long before the evidence against a
    # tolerance of 1.5x is in (about a minute at 20 %); the guard at 1.8x keeps it at 20 % until then.
    gate = errors_gate(1.5)
    gate["rates"]["stepMaxRatio"] = 1.8
    status, weights = release_worse(cluster, hostname, 2, gate, checks_per_step=2)
    assert max(weights) == 20, weights
    evidence = evidence_of(status)
    assert evidence["stepMaxRatio"] == 1.8 and evidence["stepEvidence"] < evidence["stepThreshold"] == 5, evidence
    assert evidence["verdict"] == "Regression" and evidence["estimate"] > 1.5, evidence


@pytest.mark.parametrize("ratio,tolerance", [(1.0, 1.5), (1.2, 2.0)], ids=["as-good", "slightly-worse"])
def test_a_canary_within_tolerance_is_promoted_and_its_interval_holds_its_ratio(cluster, operator, hostname,
                                                                                traffic_60, ratio, tolerance):
    release_with(cluster, hostname, [errors_gate(tolerance)], error_rate(BASELINE))
    cluster.set_image("web", "registry.test/web:v2", args=error_rate(ratio * BASELINE))
    status = cluster.wait_phase("web", {"RolledBack", "Succeeded"}, 300)
    assert status["phase"] == "Succeeded", status["message"]
    evidence = evidence_of(status)
    assert evidence["verdict"] == "WithinTolerance" and evidence["promote"] >= evidence["threshold"]
    # The interval is a 99 % confidence sequence over all ratios (two-sided), wider than the
    # one-sided test that promotes: its upper end may lie a little above the tolerance (2.117 at
    # 2.0 in one CI run) while the promotion is right. What it guarantees: it holds the canary's
    # true ratio, and it is bounded.
    assert evidence["high"] is not None and evidence["low"] <= ratio <= evidence["high"], evidence


def test_evidence_survives_an_operator_restart(cluster, operator, hostname, traffic_60):
    # Holds at 5 %: evidence accumulates.
    release_with(cluster, hostname, [errors_gate(1.5)], error_rate(BASELINE), checksPerStep=100)
    cluster.set_image("web", "registry.test/web:v2", args=error_rate(BASELINE))
    before = wait_until(lambda: (e := evidence_of(cluster.status("web"))) and e["canaryEvents"] > 20 and e,
                        90, "some evidence")
    operator.kill()
    operator.start()
    after = wait_until(lambda: (e := evidence_of(cluster.status("web"))) and e["at"] != before["at"] and e, 60,
                       "the restarted operator's first check")
    assert after["canaryEvents"] >= before["canaryEvents"], "evidence started over after the restart"
    assert after["state"]["totals"][1] >= before["state"]["totals"][1]


# -- answer quality, paired on the same inputs -----------------------------------------------------

def test_a_canary_whose_answers_lose_is_rolled_back_on_quality_with_equal_error_rates(stack, cluster, operator,
                                                                                      judge, pods, hostname):
    reporting = f"--judge-url {judge.url} --release {cluster.namespace}/web {error_rate(0.02)}"
    release_with(cluster, hostname, [errors_gate(1.5), {"name": "quality", "judge": {
        "url": judge.url, "maxLossShare": 0.6, "timeout": "2s"}}], reporting)
    # The judge pairs the two variants' answers to the same question only: 100 different ones, drawn
    # at random, so at a 5 % share the canary's questions are asked of the primary within seconds.
    with GatewayTraffic(stack.gateway.url, hostname, rps=40, questions=arithmetic_questions(100)):
        cluster.set_image("web", "registry.test/web:v2", args=f"{reporting} --wrong-rate 0.7")
        status = cluster.wait_phase("web", {"RolledBack", "Succeeded"}, 300)
    assert status["phase"] == "RolledBack", status["message"]
    quality, errors = evidence_of(status, "quality"), evidence_of(status, "errors")
    assert quality["verdict"] == "Regression" and quality["estimate"] > 0.6, quality
    assert errors["verdict"] != "Regression", errors
    assert "quality" in status["message"]


# -- bad input --------------------------------------------------------------------------------------

@pytest.mark.parametrize("analysis,field,words", [
    ({"compare": [errors_gate(1.0)]}, "maxRatio", "greater than 1"),
    ({"compare": [{"name": "q", "judge": {"url": "http://j", "maxLossShare": 0.5}}]}, "maxLossShare", "0.5"),
    ({"alpha": 0.7, "compare": [errors_gate(1.5)]}, "alpha", "0.5"),
    ({"alpha": 0, "compare": [errors_gate(1.5)]}, "alpha", "0"),
    ({"compare": [{"name": "e", "rates": {"bad": "sum(x)", "total": "sum(y)", "maxRatio": 2}}]},
     "compare[0]", "{{ variant }}"),
    ({"compare": [{"name": "e", "rates": {"bad": BAD, "total": TOTAL, "maxRatio": 2, "stepMaxRatio": 1.5}}]},
     "stepMaxRatio", "above maxRatio"),
], ids=["ratio-1", "loss-half", "alpha-high", "alpha-zero", "no-variant", "guard-below-tolerance"])
def test_bad_comparison_input_is_rejected_at_apply_naming_the_field(cluster, analysis, field, words):
    body = canary_release("bad", "web")
    body["spec"]["analysis"] = analysis
    with pytest.raises(kubernetes.client.ApiException) as raised:
        cluster.custom.create_namespaced_custom_object(GROUP, VERSION, cluster.namespace, PLURAL, body)
    assert raised.value.status == 422
    assert field in raised.value.body and words in raised.value.body, raised.value.body


def test_the_threshold_is_shared_by_all_comparison_gates(cluster, operator, hostname, traffic_60):
    slow = {"name": "slow", "rates": {"bad": BAD.replace('code=~"5.."', 'code=~"4.."'), "total": TOTAL,
                                      "maxRatio": 1.5}}
    release_with(cluster, hostname, [errors_gate(1.5), slow], error_rate(BASELINE), alpha=0.02, checksPerStep=100)
    cluster.set_image("web", "registry.test/web:v2", args=error_rate(BASELINE))
    status = wait_until(lambda: (s := cluster.status("web")) and len(s.get("evidence", [])) == 2 and s, 90,
                        "evidence of both gates")
    assert all(math.isclose(e["threshold"], 2 / 0.02) for e in status["evidence"])
