"""Traffic through a real gateway: Traefik reads the HTTPRoute and splits requests by its weights over
the Services' EndpointSlices, and the requests land on the pods' own processes."""

from __future__ import annotations

import math
from collections import Counter

import kubernetes
import pytest
import requests

from canarist.devstack.gateway import GROUP, VERSION, LocalGateway
from canarist.devstack.procs import wait_until

from tests.endpointslices import endpoints
from .test_pod_processes import deployment, runner  # noqa: F401 - the runner fixture

HOST = "split.test"


@pytest.fixture
def gateway(stack) -> LocalGateway:
    assert stack.gateway is not None, "the stack runs without its data plane"
    return stack.gateway


def route(parent: dict, weights: dict[str, int]) -> dict:
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": "HTTPRoute", "metadata": {"name": "split"},
            "spec": {"parentRefs": [parent], "hostnames": [HOST],
                     "rules": [{"backendRefs": [{"name": name, "port": 80, "weight": weight}
                                                for name, weight in weights.items()]}]}}


def served_by(gateway: LocalGateway, requests_: int) -> Counter:
    """Which deployment's pod answered each of `requests_` requests sent to the gateway."""
    seen: Counter = Counter()
    with requests.Session() as session:
        for i in range(requests_):
            answer = session.get(f"{gateway.url}/answer", params={"q": f"{i} + 1"}, headers={"Host": HOST}, timeout=5)
            assert answer.status_code == 200, answer.text
            seen[answer.json()["name"]] += 1
    return seen


def test_requests_through_the_gateway_land_on_the_pods_by_the_routes_weights(kube_client, namespace, runner,
                                                                              gateway):
    apps = kubernetes.client.AppsV1Api(kube_client)
    core = kubernetes.client.CoreV1Api(kube_client)
    custom = kubernetes.client.CustomObjectsApi(kube_client)
    for name in ("stable", "canary"):
        apps.create_namespaced_deployment(namespace, deployment(name, 1))
        core.create_namespaced_service(namespace, {"metadata": {"name": name}, "spec": {
            "selector": {"app": name}, "ports": [{"port": 80, "targetPort": 8080}]}})
        wait_until(lambda: any(endpoints(kube_client, namespace, name).values()), 60, f"{name} ready")
    custom.create_namespaced_custom_object(GROUP, VERSION, namespace, "httproutes",
                                           route(gateway.parent_ref(), {"stable": 80, "canary": 20}))
    wait_until(lambda: served_by(gateway, 1), 60, "the route served through the gateway")

    n = 600
    seen = served_by(gateway, n)
    share = seen["canary"] / n
    # Binomial: 20 % of 600 is 120 with a standard deviation of about 9.8; four of them either way.
    assert abs(share - 0.2) <= 4 * math.sqrt(0.2 * 0.8 / n), seen

    custom.patch_namespaced_custom_object(GROUP, VERSION, namespace, "httproutes", "split",
                                          route(gateway.parent_ref(), {"stable": 0, "canary": 100}))
    wait_until(lambda: served_by(gateway, 20) == Counter({"canary": 20}), 30, "every request on the canary")
