"""The shadow phase (issue 12) on the local stack: the primary answers every user, the canary a
mirrored copy of each request, and the judge pairs both answers to the same request.

Traefik, the stack's gateway, implements no RequestMirror filter, so these releases declare
`spec.shadow.mirror: External` and the traffic driver plays the mirroring gateway
(devstack.shadow_mirror); everything else is real: pods are processes behind the gateway, the
judge is the service with its scripted LLM, the operator runs with the chart's ServiceAccount."""

from __future__ import annotations

import time

import pytest
from prometheus_api_client import PrometheusConnect

from canarist.devstack.gateway_traffic import GatewayTraffic
from canarist.devstack.procs import wait_until
from canarist.devstack.shadow_mirror import ShadowMirror
from canarist.devstack.traffic import arithmetic_questions

from .harness import canary_release, deployment

pytestmark = [pytest.mark.cluster, pytest.mark.prometheus]


def shadowed_release(judge_url: str, hostname: str, mirror: str = "External") -> dict:
    release = canary_release("web", "web", hostname=hostname, failureLimit=0)
    release["spec"]["steps"] = [20, 50, 100]
    # In shadow both versions answer the same requests: head-to-head comparisons decide. With every
    # request different, the steps have no pairs to compare, so they judge the canary's own scores.
    release["spec"]["shadow"] = {"percent": 100, "minDuration": "6s", "minPairs": 12, "mirror": mirror, "analysis": {
        "interval": "3s", "failureLimit": 0,
        "judge": {"url": judge_url, "maxLossRate": 0.3, "minSamples": 12, "timeout": "2s"}}}
    release["spec"]["analysis"]["judge"] = {"url": judge_url, "minScore": 0.8, "minSamples": 8, "timeout": "2s"}
    return release


@pytest.fixture
def shadowed(stack, cluster, operator, judge, hostname, pods):
    reporting = f"--judge-url {judge.url} --release {cluster.namespace}/web"
    cluster.apps.create_namespaced_deployment(cluster.namespace, deployment(
        "web", "registry.test/web:v1", process=True, args=reporting))
    cluster.custom.create_namespaced_custom_object("canarist.dev", "v1alpha1", cluster.namespace, "canaryreleases",
                                                   shadowed_release(judge.url, hostname))
    cluster.wait_phase("web", "Idle", 90)
    mirror = ShadowMirror(cluster.api, cluster.namespace, "web", "web-canary").start()
    try:
        # Every request different: pairs form by request id, not by repeated inputs.
        with GatewayTraffic(stack.gateway.url, hostname, rps=30, questions=arithmetic_questions(10_000),
                            in_order=True, mirror=mirror) as traffic:
            traffic.wait_served("web-primary")
            yield traffic, reporting
    finally:
        mirror.stop()


def user_requests_at_pods(stack, namespace: str, deployment_name: str, mirrored: bool) -> float:
    """Requests the Deployment's pods counted, real or mirrored, over the last 10 minutes (Prometheus
    scrapes every pod process; pods scaled away keep their series until they go stale)."""
    query = (f'sum(max_over_time(http_requests_total{{namespace="{namespace}",deployment="{deployment_name}",'
             f'mirrored="{str(mirrored).lower()}"}}[10m]))')
    result = PrometheusConnect(url=stack.prometheus.url, disable_ssl=True).custom_query(query)
    return float(result[0]["value"][1]) if result else 0.0


def test_a_worse_revision_is_rolled_back_in_shadow_and_a_good_one_walks_the_steps(stack, cluster, shadowed):
    traffic, reporting = shadowed
    released = time.time()
    cluster.set_image("web", "registry.test/web:v2", args=f"{reporting} --wrong-rate 0.7")
    cluster.wait_phase("web", "Shadowing", 60)
    status = cluster.wait_phase("web", {"RolledBack", "Succeeded", "Progressing"}, 120)
    assert status["phase"] == "RolledBack", status
    shadow = status["shadow"]
    assert shadow["state"] == "Failed" and shadow["mirror"] == "External"
    loss = next(c for c in shadow["checks"] if c["name"] == "judge-loss-rate")
    assert loss["result"] == "Failed" and loss["value"] > 0.3, loss
    compared = int(loss["message"].split(" of ")[1].split()[0])
    assert compared >= 12, f"pairs formed on unique inputs: {loss['message']}"
    print(f"shadow rollback: {loss['message']} (loss rate {loss['value']})")
    assert "in shadow" in status["message"] and "no user was served by the canary" in status["message"]

    # No user request was answered by the canary: not at the gateway, not at the pods.
    assert traffic.served(since=released)["web"] == 0, traffic.served(since=released)
    assert traffic.mirrored(since=released)["web"] >= 12
    real = user_requests_at_pods(stack, cluster.namespace, "web", mirrored=False)
    copies = wait_until(lambda: user_requests_at_pods(stack, cluster.namespace, "web", mirrored=True) or None, 30,
                        "Prometheus to have scraped the canary's mirrored requests")
    print(f"canary pods counted {real:.0f} user requests and {copies:.0f} mirrored ones")
    assert real == 0 and copies > 0
    reasons = cluster.wait_events("web", {"ShadowStarted", "RolledBack"})
    assert "StepStarted" not in reasons, reasons

    # A good revision passes the shadow, then walks the steps with users.
    good = time.time()
    cluster.set_image("web", "registry.test/web:v3", args=reporting)
    cluster.wait_phase("web", "Shadowing", 60)
    status = cluster.wait_phase("web", {"RolledBack", "Progressing", "Succeeded"}, 120)
    assert status["phase"] != "RolledBack", status
    passed = time.time()
    assert status["shadow"]["state"] == "Passed" and status["shadow"]["pairs"] >= 12, status["shadow"]
    assert traffic.served(since=good, until=passed - 1)["web"] == 0, "no user reached the canary during shadow"
    status = cluster.wait_phase("web", {"RolledBack", "Succeeded"}, 180)
    assert status["phase"] == "Succeeded", status
    assert traffic.served(since=passed)["web"] > 0, "the steps sent users to the canary"
    assert not traffic.failures(since=released), "no user request failed"
    reasons = cluster.wait_events("web", {"ShadowPassed", "Promoted"})
    assert reasons.count("StepStarted") >= 3, reasons


def test_a_gateway_that_cannot_mirror_is_named_and_the_stable_version_keeps_serving(
        stack, cluster, operator, judge, hostname, pods, gateway_traffic):
    """Traefik's GatewayClass lists no HTTPRouteRequestMirror: a Route mirror is refused before
    anything is written, with the field and the fix, and users never notice."""
    reporting = f"--judge-url {judge.url} --release {cluster.namespace}/web"
    cluster.apps.create_namespaced_deployment(cluster.namespace, deployment(
        "web", "registry.test/web:v1", process=True, args=reporting))
    cluster.custom.create_namespaced_custom_object("canarist.dev", "v1alpha1", cluster.namespace, "canaryreleases",
                                                   shadowed_release(judge.url, hostname, mirror="Route"))
    cluster.wait_phase("web", "Idle", 90)
    released = gateway_traffic.wait_served("web-primary")
    cluster.set_image("web", "registry.test/web:v2", args=reporting)

    def refused():
        ready = next((c for c in cluster.status("web").get("conditions", []) if c["type"] == "Ready"), {})
        return ready if ready.get("reason") == "InvalidSpec" else None

    ready = wait_until(refused, 30, "the release to name the gateway that cannot mirror")
    assert "spec.shadow.mirror" in ready["message"] and "HTTPRouteRequestMirror" in ready["message"]
    assert "External" in ready["message"], "the fix is named"
    route = cluster.custom.get_namespaced_custom_object("gateway.networking.k8s.io", "v1", cluster.namespace,
                                                        "httproutes", "web")
    assert "filters" not in route["spec"]["rules"][0], "no filter the gateway would refuse"
    time.sleep(3)
    assert cluster.status("web")["phase"] == "Idle"
    assert not gateway_traffic.failures(since=released) and gateway_traffic.served(since=released)["web-primary"] > 0
