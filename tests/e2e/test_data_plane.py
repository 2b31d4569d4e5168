"""What only a real data plane shows: requests through the stack's gateway (Traefik) to pods that are
processes, with the cluster's own Services, EndpointSlices and readiness in between."""

from __future__ import annotations

import os
import signal
import time

import pytest

from canarist.api.crd import GROUP, PLURAL, VERSION
from canarist.devstack.gateway import GATEWAY_NAME, GATEWAY_NAMESPACE
from canarist.devstack.gateway_traffic import GatewayTraffic
from canarist.devstack.procs import wait_until

from tests.endpointslices import endpoints

from .harness import canary_release, deployment

pytestmark = [pytest.mark.cluster, pytest.mark.prometheus]

SETTLE = 1.5  # s for a change of routes or endpoints to reach the gateway


def user_route(host: str) -> dict:
    """The user's own HTTPRoute to their own Service `web`, as other teams' routes would be."""
    return {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute", "metadata": {"name": "web-direct"},
            "spec": {"parentRefs": [{"name": GATEWAY_NAME, "namespace": GATEWAY_NAMESPACE}], "hostnames": [host],
                     "rules": [{"backendRefs": [{"name": "web", "port": 80}]}]}}


def test_the_users_own_service_never_fails_through_install_rollout_rollback_and_deletion(stack, cluster, operator,
                                                                                         pods, namespace):
    cluster.apps.create_namespaced_deployment(namespace, deployment("web", "registry.test/web:v1", process=True))
    cluster.core.create_namespaced_service(namespace, {"metadata": {"name": "web"}, "spec": {
        "selector": {"app": "web"}, "ports": [{"port": 80, "targetPort": 8080}]}})
    cluster.custom.create_namespaced_custom_object("gateway.networking.k8s.io", "v1", namespace, "httproutes",
                                                   user_route(f"direct.{namespace}.test"))
    # Users of the release's hostname (whose requests the gates judge) and of the user's own route.
    with GatewayTraffic(stack.gateway.url, f"web.{namespace}.test", rps=20), \
            GatewayTraffic(stack.gateway.url, f"direct.{namespace}.test", rps=40) as traffic:
        wait_until(lambda: traffic.served(time.time() - 1)["web"] >= 10, 60, "the user's Service answering")
        serving_since = time.time()

        # Install: the target goes to zero; the user's Service is pointed at the primary's pods first.
        release = canary_release("web", "web", hostname=f"web.{namespace}.test")
        release["spec"]["steps"] = [20, 50, 100]
        cluster.custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, release)
        cluster.wait_phase("web", "Idle", 60)
        wait_until(lambda: traffic.served(time.time() - 1)["web-primary"] >= 10, 30, "the primary's pods answering")

        # A rollout rolled back: the user's Service stays on the primary's pods throughout.
        cluster.set_image("web", "registry.test/web:v2")
        wait_until(lambda: cluster.status("web").get("canaryWeight") == 20, 60, "the 20% step")
        cluster.annotate("web", abort="1")
        cluster.wait_phase("web", "RolledBack", 30)

        # A rollout promoted: the primary's pods are replaced one by one, the Service follows them.
        cluster.set_image("web", "registry.test/web:v3")
        cluster.wait_phase("web", "Succeeded", 120)
        wait_until(lambda: cluster.deployment("web").spec.replicas == 0, 30, "the canary scaled to zero")

        # Deletion hands the Service back to the target's own pods (now at v3, like the primary).
        cluster.custom.delete_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "web")
        wait_until(lambda: cluster.core.read_namespaced_service("web", namespace).spec.selector == {"app": "web"},
                   60, "the Service's own selector back")
        handed_back = time.time()
        wait_until(lambda: traffic.served(handed_back)["web"] >= 20, 60, "the target's pods answering again")
        time.sleep(2)
    codes = traffic.codes(serving_since)
    print(f"\nthrough the user's Service: {dict(codes)} by {dict(traffic.served(serving_since))}")
    assert traffic.failures(serving_since) == [], codes
    assert codes["200"] > 500


def test_a_canary_pod_that_stops_answering_turns_unready_and_gets_no_traffic(stack, cluster, operator, pods,
                                                                            hostname, gateway_traffic):
    namespace = cluster.namespace
    cluster.apps.create_namespaced_deployment(namespace, deployment("web", "registry.test/web:v1", process=True))
    cluster.custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL,
                                                   canary_release("web", "web", hostname=hostname))
    cluster.wait_phase("web", "Idle", 60)
    cluster.set_image("web", "registry.test/web:v2")
    wait_until(lambda: cluster.status("web").get("canaryWeight") == 50, 90, "the 50% step")
    cluster.annotate("web", paused="true")
    canary_pods = pods.of_deployment(namespace, "web")
    assert len(canary_pods) == 2
    frozen, other = canary_pods
    assert frozen.proc is not None
    os.killpg(frozen.proc.pid, signal.SIGSTOP)  # alive, but answers nothing: not even its readiness probe
    try:
        wait_until(lambda: endpoints(cluster.api, cluster.namespace, "web-canary").get(frozen.ip) is False, 30,
                   "the frozen canary pod unready in the canary Service's EndpointSlice")
        assert endpoints(cluster.api, cluster.namespace, "web-canary").get(other.ip) is True
        unready_at = time.time() + SETTLE
        time.sleep(12)
        checked_until = time.time() - gateway_traffic.request_timeout  # later ones may still be in flight
        time.sleep(gateway_traffic.request_timeout + 1)
    finally:
        os.killpg(frozen.proc.pid, signal.SIGCONT)
    served = gateway_traffic.served(unready_at, checked_until)
    # A request the gateway sent to the frozen pod would have timed out: there is none, and the
    # canary's other pod answers the canary's half.
    assert gateway_traffic.failures(unready_at, checked_until) == [], gateway_traffic.codes(unready_at, checked_until)
    assert served["web"] > 0.3 * sum(served.values()), served
    print(f"\nwith one of two canary pods frozen, at 50 %: {dict(served)}")
    status = cluster.status("web")
    assert status["phase"] == "Paused" and status["canaryWeight"] == 50, status
