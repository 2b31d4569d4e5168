"""Watch, don't poll: with its caches fed the way the operator's watches feed them, a tick that
finds nothing to change makes no API request, and a change is acted on from the cache."""

from __future__ import annotations

import json
from datetime import datetime, timezone

import kubernetes
import pytest

from canarist.analysis.gates import GateClients
from canarist.devstack.chart import serviceaccount_kubeconfig
from canarist.devstack.procs import wait_until
from canarist.handlers.tick import OperatorContext, run_tick
from canarist.handlers.watches import WATCHED, list_objects, may_watch
from canarist.kube.autoscaling import target_hpa
from canarist.kube.client import BoundedApiClient
from canarist.kube.objectcache import ObjectCache

from .harness import canary_release, deployment

pytestmark = pytest.mark.cluster


class CountingClient(BoundedApiClient):
    """The operator's client, counting the requests it sends."""

    def __init__(self, configuration):
        super().__init__(configuration)
        self.requests: list[tuple[str, str]] = []

    def call_api(self, method, url, *args, **kwargs):
        self.requests.append((method, url.split("?")[0].split("/namespaces/")[-1]))
        return super().call_api(method, url, *args, **kwargs)


def listing(client, namespace: str) -> list[tuple[str, dict]]:
    """Every object of the watched kinds in the namespace, as a watch's initial listing delivers them."""
    found = []
    for kind, (group, version, plural) in WATCHED.items():
        path = f"/api/{version}" if not group else f"/apis/{group}/{version}"
        raw = client.call_api("GET", f"{client.configuration.host}{path}/namespaces/{namespace}/{plural}")
        raw.read()
        found += [(kind, item) for item in json.loads(raw.data)["items"]]
    return found


def test_an_idle_tick_makes_no_api_request_and_a_change_is_seen_from_the_cache(stack, cluster, kube_client):
    counting = CountingClient(kube_client.configuration)
    ctx = OperatorContext(api=counting, gates=GateClients(default_prometheus=stack.prometheus.url))
    cluster.apps.create_namespaced_deployment(cluster.namespace, deployment("web", "registry.test/web:v1"))
    cluster.custom.create_namespaced_custom_object("canarist.dev", "v1alpha1", cluster.namespace, "canaryreleases",
                                                   canary_release("web", "web"))

    def tick() -> None:
        run_tick(ctx, cluster.namespace, "web", datetime.now(timezone.utc))

    def fed_tick() -> None:
        # What the operator's watches would have delivered by now.
        for kind, body in listing(kube_client, cluster.namespace):
            ctx.objects.on_event(kind, None, body)
        tick()

    wait_until(lambda: (tick(), cluster.status("web").get("phase") == "Idle")[1], 60, "Idle", interval=0.3)
    tick()  # the tick after a transition clears its events from the status, and posts none again
    posts = [url for method, url in counting.requests if method == "POST" and url.endswith("/events")]
    events = [e for e in cluster.events("web") if e.involved_object.kind == "CanaryRelease"]
    assert events and len(posts) == len(events), f"{len(posts)} POSTs for {len(events)} events"
    for kind in WATCHED:
        ctx.objects.watch(kind)
    ctx.objects.lister = lambda kind, namespace: list_objects(counting, kind, namespace)
    counting.requests.clear()
    tick()  # the first read of each kind in the namespace lists it, once
    assert sorted(method for method, _ in counting.requests if method == "GET") == ["GET"] * 5, counting.requests

    counting.requests.clear()
    for _ in range(5):
        tick()
    assert counting.requests == [], f"an idle tick sent {counting.requests}"
    assert cluster.status("web")["phase"] == "Idle"

    # Without the cache (every kind read from the API) the same idle tick costs requests.
    ctx.objects.watched.clear()
    counting.requests.clear()
    tick()
    uncached = list(counting.requests)
    assert len(uncached) >= 5, uncached
    print(f"\nidle tick, without the cache: {len(uncached)} requests {sorted(set(u for _, u in uncached))}")
    for kind in WATCHED:
        ctx.objects.watch(kind)

    # A new revision reaches the tick through the cache: the rollout starts.
    cluster.set_image("web", "registry.test/web:v2")
    wait_until(lambda: (fed_tick(), cluster.status("web").get("phase") == "Progressing")[1], 60, "Progressing",
               interval=0.3)
    assert any(method != "GET" for method, _ in counting.requests), "the rollout's writes went out"


def test_a_kind_the_operators_role_may_not_watch_is_read_from_the_api_not_left_stale(stack, cluster, kube_client):
    """A hand-written Role with get and list but no watch on HPAs: a cache no watch keeps would never
    see an HPA change, so that kind is read from the API in that namespace on every tick."""
    ns = cluster.namespace
    cluster.core.create_namespaced_service_account(ns, {"metadata": {"name": "limited"}})
    kubernetes.client.RbacAuthorizationV1Api(kube_client).create_namespaced_role(ns, {
        "metadata": {"name": "limited"},
        "rules": [{"apiGroups": ["autoscaling"], "resources": ["horizontalpodautoscalers"], "verbs": ["get", "list"]},
                  {"apiGroups": ["apps"], "resources": ["deployments"], "verbs": ["get", "list", "watch"]}]})
    kubernetes.client.RbacAuthorizationV1Api(kube_client).create_namespaced_role_binding(ns, {
        "metadata": {"name": "limited"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "limited"},
        "subjects": [{"kind": "ServiceAccount", "name": "limited", "namespace": ns}]})
    limited = CountingClient(kubernetes.config.new_client_from_config(
        config_file=str(serviceaccount_kubeconfig(stack, ns, "limited", f"{ns}-limited"))).configuration)

    def allowed() -> tuple[bool, bool]:
        return may_watch(limited, "HorizontalPodAutoscaler", ns), may_watch(limited, "Deployment", ns)

    assert wait_until(lambda: allowed() == (False, True) or None, 30, "the Role to be in force") is True
    assert may_watch(kube_client, "HorizontalPodAutoscaler", ns), "the admin may"

    cache = ObjectCache(watched=set(WATCHED), lister=lambda kind, namespace: list_objects(limited, kind, namespace),
                        permitted=lambda kind, namespace: may_watch(limited, kind, namespace))
    hpas = lambda: target_hpa(limited, ns, "web", cache)  # noqa: E731
    assert hpas() is None
    kubernetes.client.AutoscalingV2Api(kube_client).create_namespaced_horizontal_pod_autoscaler(ns, {
        "metadata": {"name": "web"},
        "spec": {"scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "web"},
                 "minReplicas": 2, "maxReplicas": 4}})
    limited.requests.clear()
    assert hpas()["spec"]["minReplicas"] == 2, "seen at once, with no watch to tell"
    assert [m for m, u in limited.requests] == ["GET"] and "horizontalpodautoscalers" in limited.requests[0][1]
    assert hpas()["spec"]["minReplicas"] == 2 and len(limited.requests) == 2, "every read goes to the API"
    # A kind it may watch there is cached as before: listed once, then read from the cache.
    limited.requests.clear()
    never = lambda: (_ for _ in ()).throw(AssertionError("no single read"))  # noqa: E731
    assert cache.get("Deployment", ns, "web", never) is None
    limited.requests.clear()
    assert cache.get("Deployment", ns, "web", never) is None and limited.requests == []
