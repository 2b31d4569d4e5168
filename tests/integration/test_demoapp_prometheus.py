"""Stable and canary stand-ins get traffic as a real HTTPRoute says, and a real Prometheus sees their errors."""

from __future__ import annotations

import math
import shutil
from collections.abc import Iterator

import kubernetes
import pytest
from prometheus_api_client import PrometheusConnect

from canarist.devstack.demoapp import DemoApp
from canarist.devstack.gatewayapi import install_gateway_api_crds
from canarist.devstack.procs import wait_until
from canarist.devstack.traffic import GATEWAY_GROUP, GATEWAY_VERSION, HTTPROUTES, TrafficDriver

pytestmark = [pytest.mark.cluster, pytest.mark.prometheus]

HTTPROUTE_CRD = f"{HTTPROUTES}.{GATEWAY_GROUP}"
# What an analysis step would ask, narrowed to this test's namespace: other tests of the session
# may run their own "web" stand-ins against the same Prometheus.
ERROR_RATE = ('sum(rate(http_requests_total{{namespace="{ns}",deployment="{deployment}",code=~"5.."}}[30s]))'
              ' / sum(rate(http_requests_total{{namespace="{ns}",deployment="{deployment}"}}[30s]))')


@pytest.fixture(scope="module")
def gateway_api(stack, kube_client) -> None:
    """The Gateway API CRDs, installed if the session's cluster has none yet."""
    ext = kubernetes.client.ApiextensionsV1Api(kube_client)
    try:
        ext.read_custom_resource_definition(HTTPROUTE_CRD)
    except kubernetes.client.ApiException as exc:
        if exc.status != 404:
            raise
        install_gateway_api_crds(stack.cluster.kubectl)


@pytest.fixture
def apps(stack, namespace) -> Iterator[dict[str, DemoApp]]:
    """Stable (0% errors) and canary (50%) stand-ins, scraped by the session's Prometheus.

    Their files live in the stack's directory so the stack's leftover check would see them too.
    """
    workdir = stack.workdir / "demoapps" / namespace
    started: dict[str, DemoApp] = {}
    try:
        started["web-primary"] = DemoApp.start("web", "primary", "stable1", error_rate=0.0, seed=1,
                                               workdir=workdir / "primary")
        started["web-canary"] = DemoApp.start("web", "canary", "new2", error_rate=0.5, seed=2,
                                              workdir=workdir / "canary")
        for app in started.values():
            # Kubernetes service discovery would put the pod's namespace on its series; so do we.
            stack.prometheus.add_target(app.metrics_address, {"namespace": namespace})
        yield started
    finally:
        for app in started.values():
            stack.prometheus.remove_target(app.metrics_address)
            app.stop()
        shutil.rmtree(workdir, ignore_errors=True)
        try:
            workdir.parent.rmdir()  # only once no other test's stand-ins are in it
        except OSError:
            pass


def _route(name: str, primary: int, canary: int) -> dict:
    return {
        "apiVersion": f"{GATEWAY_GROUP}/{GATEWAY_VERSION}", "kind": "HTTPRoute",
        "metadata": {"name": name},
        "spec": {
            "parentRefs": [{"name": "canarist-gateway"}],
            "rules": [{"backendRefs": [
                {"name": "web-primary", "port": 80, "weight": primary},
                {"name": "web-canary", "port": 80, "weight": canary},
            ]}],
        },
    }


def _value(prom: PrometheusConnect, query: str) -> float | None:
    result = prom.custom_query(query)
    return float(result[0]["value"][1]) if result else None


def test_prometheus_sees_canary_errors_in_traffic_split_by_the_route(stack, kube_client, namespace,
                                                                     gateway_api, apps):
    prom = PrometheusConnect(url=stack.prometheus.url, disable_ssl=True)
    wait_until(lambda: _value(prom, f'sum(up{{namespace="{namespace}"}})') == 2, 60,
               "Prometheus to scrape both stand-ins")

    custom = kubernetes.client.CustomObjectsApi(kube_client)
    # The CRD may have just been installed: the first create can race its serving.
    wait_until(lambda: custom.create_namespaced_custom_object(GATEWAY_GROUP, GATEWAY_VERSION, namespace,
                                                              HTTPROUTES, _route("web", 50, 50)),
               30, "the HTTPRoute to be created")

    backends = {name: app.url for name, app in apps.items()}
    with TrafficDriver(kube_client, namespace, "web", backends, rps=40) as driver:
        wait_until(lambda: driver.weights == {"web-primary": 50, "web-canary": 50}, 10,
                   "the driver to read the route")

        def rates() -> tuple[float, float] | None:
            canary = _value(prom, ERROR_RATE.format(ns=namespace, deployment="web"))
            primary = _value(prom, ERROR_RATE.format(ns=namespace, deployment="web-primary"))
            # NaN (0/0) until both have served requests in the window.
            if canary is None or primary is None or math.isnan(canary) or math.isnan(primary):
                return None
            return (canary, primary) if canary > 0.2 else None

        canary_rate, primary_rate = wait_until(rates, 60, "Prometheus to see the canary's errors")
        assert 0.2 < canary_rate < 0.8, canary_rate
        assert primary_rate == 0.0

        # A later step: the driver follows the route as canarist would change it.
        custom.patch_namespaced_custom_object(GATEWAY_GROUP, GATEWAY_VERSION, namespace, HTTPROUTES, "web",
                                              _route("web", 90, 10))
        wait_until(lambda: driver.weights == {"web-primary": 90, "web-canary": 10}, 10,
                   "the driver to follow the new weights")

    sent = driver.sent
    assert sent["web-primary"] > 0 and sent["web-canary"] > 0 and not driver.dropped
    assert driver.responses["web-primary"] == {"200": sent["web-primary"]}
    canary_codes = driver.responses["web-canary"]
    assert set(canary_codes) == {"200", "500"} and sum(canary_codes.values()) == sent["web-canary"]

    # Every request the driver saw answered is counted in Prometheus, under the right deployment.
    expected = {("web-primary", "200"): sent["web-primary"], ("web-primary", "500"): 0,
                ("web", "200"): canary_codes["200"], ("web", "500"): canary_codes["500"]}

    def scraped() -> dict[tuple[str, str], int]:
        result = prom.custom_query(f'sum by (deployment, code) (http_requests_total{{namespace="{namespace}"}})')
        return {(r["metric"]["deployment"], r["metric"]["code"]): int(float(r["value"][1])) for r in result}

    wait_until(lambda: scraped() == expected, 30, f"Prometheus counters to reach {expected}")
