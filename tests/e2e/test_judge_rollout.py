"""The judge gate end to end: real judge service, scripted LLM server, and the app's pods (processes
on their pod IPs) reporting their answers to requests sent through the stack's gateway."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from canarist.devstack.procs import wait_until
from canarist.devstack.gateway_traffic import GatewayTraffic
from canarist.devstack.traffic import arithmetic_questions

from .harness import canary_release, deployment

pytestmark = [pytest.mark.cluster, pytest.mark.prometheus]

STEPS = [20, 50, 100]


@pytest.fixture
def questions_traffic(stack, pods, hostname) -> Iterator[GatewayTraffic]:
    with GatewayTraffic(stack.gateway.url, hostname, rps=30, questions=arithmetic_questions(40)) as driver:
        yield driver


def start(cluster, judge_url: str, hostname: str, canary_args: str = "", **judge_gate) -> None:
    """The release, then a new revision whose pods run with `canary_args` (e.g. --wrong-rate 0.8)."""
    reporting = f"--judge-url {judge_url} --release {cluster.namespace}/web"
    cluster.apps.create_namespaced_deployment(cluster.namespace, deployment("web", "registry.test/web:v1",
                                                                            process=True, args=reporting))
    release = canary_release("web", "web", hostname=hostname, failureLimit=0)
    release["spec"]["steps"] = STEPS
    release["spec"]["analysis"]["judge"] = {"url": judge_url, "minScore": 0.8, "maxRegression": 0.1,
                                            "minSamples": 8, "timeout": "2s", **judge_gate}
    cluster.custom.create_namespaced_custom_object("canarist.dev", "v1alpha1", cluster.namespace, "canaryreleases",
                                                   release)
    cluster.wait_phase("web", "Idle", 60)
    cluster.set_image("web", "registry.test/web:v2", args=f"{reporting} {canary_args}")


def checks_by_name(status: dict) -> dict[str, dict]:
    return {c["name"]: c for c in status.get("lastChecks", [])}


def test_worse_answers_are_rolled_back_by_the_judge_while_errors_look_perfect(
        cluster, operator, judge, hostname, questions_traffic):
    start(cluster, judge.url, hostname, "--wrong-rate 0.8")
    status = cluster.wait_phase("web", {"RolledBack", "Succeeded"}, 120)
    assert status["phase"] == "RolledBack", status
    checks = checks_by_name(status)
    # The rollback can come on the step's first check, before Prometheus has a rate for the
    # canary; either way the error-rate gate saw nothing wrong.
    assert checks["error-rate"]["result"] in ("Passed", "NoData") and checks["error-rate"].get("value") in (0, None)
    assert checks["judge-score"]["result"] == "Failed" and checks["judge-score"]["value"] < 0.8
    assert checks["judge-regression"]["result"] == "Failed"
    assert "judge-score=" in status["message"]
    # Events are posted after the status write and the actions of the same tick.
    rolled = wait_until(lambda: [e for e in cluster.events("web") if e.reason == "RolledBack"], 10,
                        "the RolledBack event")
    assert "judge-score" in rolled[0].message
    assert questions_traffic.served()["web"] > 0
    assert questions_traffic.codes()["500"] == 0


def test_good_answers_are_promoted_with_judge_values_in_status(cluster, operator, judge, hostname,
                                                                questions_traffic):
    start(cluster, judge.url, hostname, maxLossRate=0.3)
    status = cluster.wait_phase("web", {"RolledBack", "Succeeded"}, 150)
    assert status["phase"] == "Succeeded", status
    checks = checks_by_name(status)
    assert checks["judge-score"]["result"] == "Passed" and checks["judge-score"]["value"] >= 0.8
    assert checks["judge-score"]["min"] == 0.8
    assert checks["judge-regression"]["result"] == "Passed"
    assert checks["judge-loss-rate"]["result"] == "Passed"


def test_with_the_judge_down_the_rollout_holds_and_never_promotes(cluster, operator, judge, hostname,
                                                                  questions_traffic):
    start(cluster, judge.url, hostname)
    wait_until(lambda: cluster.status("web").get("canaryWeight") == STEPS[0], 60, "the first step")
    judge.stop()
    # Several analysis runs with the judge unreachable, however fast the operator ticks here.
    status = wait_until(lambda: (s := cluster.status("web")).get("providerErrors", 0) >= 3 and s, 60,
                        "three provider errors")
    assert status["phase"] == "Progressing" and status["canaryWeight"] == STEPS[0], status
    assert status["providerErrors"] >= 2
    checks = checks_by_name(status)
    assert checks["judge-score"]["result"] == "Error" and "unreachable" in checks["judge-score"]["message"]
