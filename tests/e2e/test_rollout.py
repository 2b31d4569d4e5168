"""Rollouts end to end: the operator process, a real cluster, real Prometheus, and traffic through a
real gateway (Traefik) to the pods, which are processes on their pod IPs (the stack's data plane)."""

from __future__ import annotations

import subprocess
import time
from datetime import datetime

import pytest

from canarist.devstack.procs import wait_until

from .harness import RouteWatcher, assert_split_follows_route, canary_release, configure_pods, deployment

pytestmark = [pytest.mark.cluster, pytest.mark.prometheus]

STEPS = [1, 5, 20, 50, 100]


def setup_release(cluster, hostname, traffic=None, **analysis) -> None:
    cluster.apps.create_namespaced_deployment(cluster.namespace, deployment("web", "registry.test/web:v1",
                                                                            process=True))
    cluster.custom.create_namespaced_custom_object("canarist.dev", "v1alpha1", cluster.namespace, "canaryreleases",
                                                   canary_release("web", "web", hostname=hostname, **analysis))
    status = cluster.wait_phase("web", "Idle", 60)
    assert status["revisions"]["primary"]
    assert cluster.deployment("web-primary").spec.template.spec.containers[0].image == "registry.test/web:v1"
    wait_until(lambda: cluster.deployment("web").spec.replicas == 0, 20, "the target scaled to zero")
    assert cluster.route_weights("web") == (100, 0)
    if traffic is not None:
        # The gateway serves the route canarist wrote: the primary's pods answer.
        wait_until(lambda: traffic.served(time.time() - 1)["web-primary"] >= 10, 60, "answers from the primary's pods")


def step_messages(cluster) -> list[str]:
    return [e.message for e in cluster.events("web") if e.reason == "StepStarted"]


def test_good_revision_is_promoted_through_every_step(stack, cluster, operator, hostname, gateway_traffic):
    setup_release(cluster, hostname, gateway_traffic, checksPerStep=2)
    serving_since = time.time()
    with RouteWatcher(cluster, "web") as watcher:
        cluster.set_image("web", "registry.test/web:v2")
        status = cluster.wait_phase("web", {"Succeeded", "RolledBack"}, 150)
        # Status is written ahead of acting: the route follows within the same tick, and the
        # watcher sees it at its next poll.
        wait_until(lambda: watcher.changes and watcher.changes[-1][1] == (100, 0), 10,
                   "all traffic on the primary")
    assert status["phase"] == "Succeeded", (status, operator.log())
    assert watcher.canary_weights() == [0, *STEPS, 0]
    assert cluster.deployment("web-primary").spec.template.spec.containers[0].image == "registry.test/web:v2"
    wait_until(lambda: cluster.deployment("web").spec.replicas == 0, 20, "the canary scaled to zero")
    assert status["revisions"]["primary"] == status["revisions"]["canary"]
    assert status["pinnedAnalysis"]["metrics"][0]["max"] == 0.05
    assert {c["name"] for c in status["lastChecks"]} == {"min-samples", "error-rate"}
    conditions = {c["type"]: c["status"] for c in status["conditions"]}
    assert conditions["Promoted"] == "True" and conditions["RolledBack"] == "False"
    waited = subprocess.run([str(stack.cluster.bin_dir / "kubectl"), "--kubeconfig", str(stack.kubeconfig), "wait",
                             "--for=condition=Promoted", "crel/web", "-n", cluster.namespace, "--timeout=10s"],
                            capture_output=True, text=True, timeout=30)
    assert waited.returncode == 0, waited.stderr
    assert len(step_messages(cluster)) == len(STEPS)
    # A transition's events go out right after the status write that records it.
    cluster.wait_events("web", {"RolloutStarted", "Promoted"})
    # Where the requests landed, step by step: the route's weights, within binomial tolerance, and
    # after the promotion (the route back at 0 %) not one request on the canary: its window is the
    # last, so it needs the requests of a few seconds more.
    promoted_at = watcher.changes[-1][0]
    wait_until(lambda: sum(gateway_traffic.served(promoted_at + 1.5).values()) >= 40, 30,
               "requests after the promotion")
    windows = assert_split_follows_route(gateway_traffic, watcher.changes, "web-primary", "web")
    print(f"\n(canary weight, requests, on the canary) per step: {windows}")
    assert [w for w, _, _ in windows][-1] == 0 and {w for w, _, _ in windows} >= {20, 50, 100}, windows
    # A good revision walks every step and is promoted without one failed request.
    assert gateway_traffic.failures(serving_since) == [], gateway_traffic.codes(serving_since)


def test_error_rate_violation_at_5_percent_rolls_back_in_the_same_tick(cluster, operator, pods, hostname,
                                                                      gateway_traffic):
    setup_release(cluster, hostname, gateway_traffic)
    with RouteWatcher(cluster, "web") as watcher:
        cluster.set_image("web", "registry.test/web:v2-broken")
        wait_until(lambda: cluster.status("web").get("canaryWeight") == 5, 60, "the 5% step")
        assert configure_pods(pods, cluster.namespace, "web", errorRate=1.0) == 2
        status = cluster.wait_phase("web", {"RolledBack", "Succeeded"}, 60)
        wait_until(lambda: watcher.changes and watcher.changes[-1][1] == (100, 0), 10, "route back to primary")
    assert status["phase"] == "RolledBack", status
    assert status["stepIndex"] == 1, "rolled back at the 5% step"
    failing = [c for c in status["lastChecks"] if c["result"] == "Failed"]
    assert failing and failing[0]["name"] == "error-rate" and failing[0]["value"] > 0.05 and failing[0]["max"] == 0.05

    # The check that exhausted failureLimit and the route change happen in one tick.
    check_at = datetime.fromisoformat(status["lastCheckAt"].replace("Z", "+00:00")).timestamp()
    back_at = watcher.changes[-1][0]
    latency = back_at - check_at
    print(f"\nviolating check -> 100% primary: {latency:.3f}s")
    assert latency < 3, f"route went back {latency:.2f}s after the violating check"

    wait_until(lambda: cluster.deployment("web").spec.replicas == 0, 20, "the canary scaled to zero")
    assert cluster.deployment("web-primary").spec.template.spec.containers[0].image == "registry.test/web:v1"
    rolled = wait_until(lambda: [e for e in cluster.events("web") if e.reason == "RolledBack"], 10,
                        "the RolledBack event")
    assert rolled[0].type == "Warning"
    assert "error-rate=" in rolled[0].message and "<= 0.05" in rolled[0].message
    assert "error-rate=" in status["message"]
    assert {c["type"]: c["status"] for c in status["conditions"]}["RolledBack"] == "True"
    # Users saw the broken canary's errors only while it had its share; none once the route was back.
    assert_split_follows_route(gateway_traffic, watcher.changes, "web-primary", "web")
    assert gateway_traffic.failures(back_at + 1.5) == []


def test_without_traffic_the_step_holds_and_never_promotes(cluster, operator, pods, hostname):
    setup_release(cluster, hostname)
    cluster.set_image("web", "registry.test/web:v2")
    wait_until(lambda: cluster.status("web").get("canaryWeight") == 1, 60, "the first step")
    # Several analysis runs with no traffic at all, however fast the operator ticks here.
    status = wait_until(lambda: (s := cluster.status("web")).get("checksInconclusive", 0) >= 3 and s, 60,
                        "three inconclusive checks")
    assert status["phase"] == "Progressing" and status["canaryWeight"] == 1
    assert status["checksPassed"] == 0 and status["checksInconclusive"] >= 2
    assert all(c["result"] == "NoData" for c in status["lastChecks"]), status["lastChecks"]
    assert "holds" in status["message"]
    assert cluster.deployment("web-primary").spec.template.spec.containers[0].image == "registry.test/web:v1"


def test_operator_killed_mid_step_resumes_without_skipping_or_repeating(cluster, operator, hostname, gateway_traffic):
    setup_release(cluster, hostname, gateway_traffic)
    serving_since = time.time()
    with RouteWatcher(cluster, "web") as watcher:
        cluster.set_image("web", "registry.test/web:v2")
        wait_until(lambda: cluster.status("web").get("canaryWeight") == 20, 90, "the 20% step")
        operator.kill()
        time.sleep(2)
        assert cluster.status("web")["canaryWeight"] == 20
        operator.start()
        status = cluster.wait_phase("web", {"Succeeded", "RolledBack"}, 150)
        wait_until(lambda: cluster.route_weights("web") == (100, 0), 10, "all traffic on the primary")
    assert status["phase"] == "Succeeded", (status, operator.log())
    assert watcher.canary_weights() == [0, *STEPS, 0]
    assert step_messages(cluster) == [f"step {i + 1}/{len(STEPS)}: canary weight {w}%" for i, w in enumerate(STEPS)]
    # With the operator gone the gateway kept serving the route as it was: no request failed.
    assert gateway_traffic.failures(serving_since) == [], gateway_traffic.codes(serving_since)
    assert_split_follows_route(gateway_traffic, watcher.changes, "web-primary", "web")


def test_manual_abort_then_retry_releases_the_same_revision_again(cluster, operator, hostname, gateway_traffic):
    setup_release(cluster, hostname, gateway_traffic)
    serving_since = time.time()
    cluster.set_image("web", "registry.test/web:v2")
    wait_until(lambda: cluster.status("web").get("canaryWeight") == 5, 60, "the 5% step")
    cluster.annotate("web", abort="1")
    status = cluster.wait_phase("web", "RolledBack", 20)
    assert "aborted by request" in status["message"]
    # Status is written ahead of acting; the route follows in the same tick.
    wait_until(lambda: cluster.route_weights("web") == (100, 0), 5, "all traffic back on the primary")
    time.sleep(2)
    assert cluster.status("web")["phase"] == "RolledBack", "a rolled-back revision is not retried on its own"
    cluster.annotate("web", retry="1", paused="true")
    wait_until(lambda: "waits" in cluster.status("web").get("message", ""), 20, "the paused retry to wait")
    cluster.annotate("web", paused=None)
    wait_until(lambda: cluster.status("web").get("canaryWeight", 0) >= 1, 60, "the retried rollout to step")
    cluster.annotate("web", promote="1")
    status = cluster.wait_phase("web", "Succeeded", 60)
    assert cluster.deployment("web-primary").spec.template.spec.containers[0].image == "registry.test/web:v2"
    assert gateway_traffic.failures(serving_since) == [], gateway_traffic.codes(serving_since)


def test_deleting_the_release_hands_traffic_back_to_the_target(cluster, operator, hostname, gateway_traffic):
    setup_release(cluster, hostname, gateway_traffic)
    serving_since = time.time()
    cluster.custom.delete_namespaced_custom_object("canarist.dev", "v1alpha1", cluster.namespace,
                                                   "canaryreleases", "web")
    wait_until(lambda: cluster.deployment("web").status.ready_replicas == 2, 60, "the target back at 2 replicas")
    wait_until(lambda: cluster.route_weights("web") == (0, 100), 30, "the route on the target's Service")

    def primary_gone():
        try:
            cluster.deployment("web-primary")
        except Exception:
            return True
        return False

    wait_until(primary_gone, 60, "the primary to be garbage-collected")
    # The hand-over, as users saw it: the target's own pods answer, and not one request failed.
    handed_over = time.time()
    wait_until(lambda: gateway_traffic.served(handed_over)["web"] >= 20, 30, "answers from the target's pods")
    assert gateway_traffic.served(handed_over + 1.5)["web-primary"] == 0
    assert gateway_traffic.failures(serving_since) == [], gateway_traffic.codes(serving_since)

    # A new CanaryRelease for the same target adopts the Service the old one handed over.
    cluster.custom.create_namespaced_custom_object("canarist.dev", "v1alpha1", cluster.namespace, "canaryreleases",
                                                   canary_release("web", "web"))
    cluster.wait_phase("web", "Idle", 60)
    wait_until(lambda: cluster.route_weights("web") == (100, 0), 30, "the route back on the primary")
