"""GatewayAPIRouter against a real kube-apiserver with the Gateway API standard-channel CRDs."""

from __future__ import annotations

import kubernetes
import pytest
from kubernetes.client import ApiException

from canarist.devstack.gatewayapi import GATEWAY_API_VERSION, install_gateway_api_crds
from canarist.devstack.procs import wait_until
from canarist.routing import GatewayAPIRouter, RouteConflict, RoutingUnavailable
from canarist.routing import gatewayapi
from canarist.routing.gatewayapi import GROUP, PLURAL, VERSION, CohortRule, RouteState, is_missing_object

pytestmark = pytest.mark.cluster

PARENTS = [{"name": "public-gateway", "namespace": "infra"}]
# No type on the header match: the server fills in defaults, which must not read as a change.
MATCHES = [{"path": {"type": "PathPrefix", "value": "/chat"}, "headers": [{"name": "x-tier", "value": "beta"}]}]


@pytest.fixture(scope="module", autouse=True)
def gateway_api_crds(stack):
    install_gateway_api_crds(stack.cluster.kubectl)


@pytest.fixture
def custom(kube_client):
    return kubernetes.client.CustomObjectsApi(kube_client)


def make_owner(kube_client, namespace: str, name: str = "bot-release") -> dict:
    """A real object to own the route: a dangling ownerReference would make the GC delete it.

    A ConfigMap stands in for the CanaryRelease; the router does not care about the owner's kind.
    """
    cm = kubernetes.client.CoreV1Api(kube_client).create_namespaced_config_map(namespace, {"metadata": {"name": name}})
    return {"apiVersion": "v1", "kind": "ConfigMap", "name": name, "uid": cm.metadata.uid,
            "controller": True, "blockOwnerDeletion": True}


def make_router(kube_client, namespace: str, owner: dict, name: str = "bot") -> GatewayAPIRouter:
    return GatewayAPIRouter(kube_client, namespace, name, owner, PARENTS, ["bot.example.com"], MATCHES, 8080,
                            "bot-primary", "bot-canary")


def get_route(custom, namespace: str, name: str = "bot") -> dict:
    return custom.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)


def count_writes(router: GatewayAPIRouter) -> list[str]:
    """Wrap the router's write calls so a test can see whether any request was made."""
    calls: list[str] = []
    for method in ("create_namespaced_custom_object", "replace_namespaced_custom_object",
                   "patch_namespaced_custom_object", "delete_namespaced_custom_object"):
        real = getattr(router._custom, method)

        def spy(*args, _real=real, _method=method, **kwargs):
            calls.append(_method)
            return _real(*args, **kwargs)

        setattr(router._custom, method, spy)
    return calls


def test_installed_crds_are_the_pinned_standard_channel(stack, kube_client):
    install_gateway_api_crds(stack.cluster.kubectl)  # a second install is a no-op, not an error
    crd = kubernetes.client.ApiextensionsV1Api(kube_client).read_custom_resource_definition(f"{PLURAL}.{GROUP}")
    assert crd.metadata.annotations["gateway.networking.k8s.io/bundle-version"] == GATEWAY_API_VERSION
    assert crd.metadata.annotations["gateway.networking.k8s.io/channel"] == "standard"
    assert any(v.name == "v1" and v.served for v in crd.spec.versions)


def test_ensure_creates_the_route(kube_client, namespace, custom):
    owner = make_owner(kube_client, namespace)
    router = make_router(kube_client, namespace, owner)
    assert router.get_weights() is None

    router.ensure(95, 5)

    route = get_route(custom, namespace)
    assert route["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "canarist"
    assert route["metadata"]["ownerReferences"] == [owner]
    spec = route["spec"]
    assert [(p["name"], p["namespace"], p["kind"]) for p in spec["parentRefs"]] == [("public-gateway", "infra", "Gateway")]
    assert spec["hostnames"] == ["bot.example.com"]
    assert len(spec["rules"]) == 1
    assert spec["rules"][0]["matches"][0]["path"] == {"type": "PathPrefix", "value": "/chat"}
    assert [(b["name"], b["port"], b["weight"]) for b in spec["rules"][0]["backendRefs"]] == [
        ("bot-primary", 8080, 95), ("bot-canary", 8080, 5)]
    assert router.get_weights() == (95, 5)


def test_ensure_updates_weights(kube_client, namespace):
    router = make_router(kube_client, namespace, make_owner(kube_client, namespace))
    router.ensure(100, 0)
    for primary, canary in [(80, 20), (50, 50), (0, 100), (100, 0)]:
        router.ensure(primary, canary)
        assert router.get_weights() == (primary, canary)


def test_ensure_is_idempotent_and_writes_nothing_when_unchanged(kube_client, namespace, custom):
    router = make_router(kube_client, namespace, make_owner(kube_client, namespace))
    router.ensure(80, 20)
    before = get_route(custom, namespace)["metadata"]["resourceVersion"]

    writes = count_writes(router)
    router.ensure(80, 20)
    router.ensure(80, 20)

    assert writes == [], "the server's defaults must not look like drift"
    assert get_route(custom, namespace)["metadata"]["resourceVersion"] == before


def test_ensure_repairs_a_hand_edited_route(kube_client, namespace, custom):
    router = make_router(kube_client, namespace, make_owner(kube_client, namespace))
    router.ensure(80, 20)
    custom.patch_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "bot",
                                          {"spec": {"hostnames": ["evil.example.com"]},
                                           "metadata": {"labels": {"team": "web"}}})
    router.ensure(80, 20)
    route = get_route(custom, namespace)
    assert route["spec"]["hostnames"] == ["bot.example.com"]
    assert route["metadata"]["labels"]["team"] == "web", "labels canarist does not set are kept"


def test_foreign_route_is_left_untouched(kube_client, namespace, custom):
    foreign = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "HTTPRoute", "metadata": {"name": "bot"},
               "spec": {"parentRefs": [{"name": "other-gateway"}],
                        "rules": [{"backendRefs": [{"name": "web", "port": 80}]}]}}
    custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, foreign)
    before = get_route(custom, namespace)
    router = make_router(kube_client, namespace, make_owner(kube_client, namespace))

    with pytest.raises(RouteConflict) as raised:
        router.ensure(90, 10)
    assert f"HTTPRoute {namespace}/bot" in str(raised.value)
    assert "not managed by canarist" in str(raised.value) and "app.kubernetes.io/managed-by=canarist" in str(raised.value)
    with pytest.raises(RouteConflict):
        router.get_weights()
    router.finalize(None)
    router.finalize("bot-primary")

    assert get_route(custom, namespace) == before


def test_finalize_keep_serving_repoints_and_orphans(kube_client, namespace, custom):
    core = kubernetes.client.CoreV1Api(kube_client)
    owner = make_owner(kube_client, namespace)
    router = make_router(kube_client, namespace, owner)
    router.ensure(50, 50)

    router.finalize("bot-stable")

    route = get_route(custom, namespace)
    assert "ownerReferences" not in route["metadata"]
    assert route["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "canarist"
    assert [(b["name"], b["port"], b["weight"]) for b in route["spec"]["rules"][0]["backendRefs"]] == [
        ("bot-stable", 8080, 100)]
    assert route["spec"]["hostnames"] == ["bot.example.com"], "it still serves the same traffic"
    router.finalize("bot-stable")  # repeatable

    # Prove the garbage collector no longer ties the route to the owner: a sibling that is still
    # owned goes away, the route stays.
    core.create_namespaced_config_map(namespace, {"metadata": {"name": "sibling", "ownerReferences": [owner]}})
    core.delete_namespaced_config_map(owner["name"], namespace)

    def sibling_collected() -> bool:
        try:
            core.read_namespaced_config_map("sibling", namespace)
        except ApiException as exc:
            return exc.status == 404
        return False

    wait_until(sibling_collected, 60, "the garbage collector to delete the owner's dependents")
    assert get_route(custom, namespace)["spec"]["rules"][0]["backendRefs"][0]["name"] == "bot-stable"

    # A CanaryRelease created later under the same name adopts the route canarist left behind.
    new_owner = make_owner(kube_client, namespace, "bot-release-2")
    make_router(kube_client, namespace, new_owner).ensure(100, 0)
    route = get_route(custom, namespace)
    assert route["metadata"]["ownerReferences"] == [new_owner]
    assert [b["name"] for b in route["spec"]["rules"][0]["backendRefs"]] == ["bot-primary", "bot-canary"]


def test_finalize_none_deletes(kube_client, namespace, custom):
    router = make_router(kube_client, namespace, make_owner(kube_client, namespace))
    router.ensure(90, 10)

    router.finalize(None)

    with pytest.raises(ApiException) as raised:
        get_route(custom, namespace)
    assert raised.value.status == 404
    assert router.get_weights() is None
    router.finalize(None)  # nothing left to delete is fine


def test_a_missing_resource_type_raises_routing_unavailable(kube_client, namespace, monkeypatch):
    # Same server, a version of the group that no CRD serves: the 404 a cluster without the
    # Gateway API CRDs answers with, without uninstalling them from the shared cluster.
    monkeypatch.setattr(gatewayapi, "VERSION", "v9alpha9")
    router = make_router(kube_client, namespace, make_owner(kube_client, namespace))
    for call in (lambda: router.ensure(100, 0), router.get_weights, lambda: router.finalize(None)):
        with pytest.raises(RoutingUnavailable, match=r"^spec\.routing\.gatewayAPI: .*httproutes"):
            call()


def test_real_404_bodies_are_classified(kube_client, namespace, custom):
    with pytest.raises(ApiException) as missing_route:
        custom.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "nope")
    with pytest.raises(ApiException) as missing_group:
        custom.get_namespaced_custom_object("nothing.canarist.dev", "v1", namespace, "things", "nope")
    assert is_missing_object(missing_route.value)
    assert missing_group.value.status == 404 and not is_missing_object(missing_group.value)


# -- mirroring (the shadow phase) ------------------------------------------------------------------


def make_gateway(custom, namespace: str, features: list[str] | None) -> list[dict]:
    """A Gateway of a class of its own whose status lists `features` (None: lists nothing), as a
    controller would publish them; no controller runs for it, so nobody overwrites the status."""
    class_name = f"mirror-test-{namespace}"
    custom.create_cluster_custom_object(GROUP, VERSION, "gatewayclasses", {
        "apiVersion": f"{GROUP}/{VERSION}", "kind": "GatewayClass", "metadata": {"name": class_name},
        "spec": {"controllerName": "example.com/no-controller"}})
    if features is not None:
        custom.patch_cluster_custom_object_status(GROUP, VERSION, "gatewayclasses", class_name, {
            "status": {"supportedFeatures": [{"name": f} for f in sorted(features)]}})
    custom.create_namespaced_custom_object(GROUP, VERSION, namespace, "gateways", {
        "apiVersion": f"{GROUP}/{VERSION}", "kind": "Gateway", "metadata": {"name": "gw"},
        "spec": {"gatewayClassName": class_name, "listeners": [{"name": "http", "port": 80, "protocol": "HTTP"}]}})
    return [{"name": "gw"}]


def mirror_router(kube_client, namespace: str, parents: list[dict], owner: str = "bot-release") -> GatewayAPIRouter:
    return GatewayAPIRouter(kube_client, namespace, "bot", make_owner(kube_client, namespace, owner), parents,
                            ["bot.example.com"], MATCHES, 8080, "bot-primary", "bot-canary")


def test_a_mirroring_gateway_gets_a_request_mirror_filter_the_apiserver_accepts(kube_client, namespace, custom):
    parents = make_gateway(custom, namespace, ["HTTPRouteRequestMirror", "HTTPRouteQueryParamMatching"])
    router = mirror_router(kube_client, namespace, parents)
    assert router.mirror_problem() is None
    router.ensure(100, 0, 25)
    rule = get_route(custom, namespace)["spec"]["rules"][0]
    assert rule["filters"] == [{"type": "RequestMirror", "requestMirror": {
        "backendRef": {"group": "", "kind": "Service", "name": "bot-canary", "port": 8080}, "percent": 25}}]
    assert [(r["name"], r["weight"]) for r in rule["backendRefs"]] == [("bot-primary", 100), ("bot-canary", 0)]
    assert router.get_route()[:3] == (100, 0, 25)
    writes = count_writes(router)
    router.ensure(100, 0, 25)
    assert writes == [], "the server's defaults in the filter do not read as a change"
    router.ensure(99, 1)
    assert router.get_route()[:3] == (99, 1, 0) and "filters" not in get_route(custom, namespace)["spec"]["rules"][0]
    router.ensure(100, 0, 25)
    assert router.reweight(100, 0) and router.get_route()[:3] == (100, 0, 0), "the way back drops the mirror"


def test_a_gateway_that_does_not_list_mirroring_never_gets_the_filter(kube_client, namespace, custom):
    parents = make_gateway(custom, namespace, ["HTTPRouteQueryParamMatching"])
    router = mirror_router(kube_client, namespace, parents)
    router.ensure(100, 0)
    problem = router.mirror_problem()
    assert problem is not None and problem.startswith("spec.shadow.mirror:")
    assert "HTTPRouteRequestMirror" in problem and "External" in problem
    with pytest.raises(gatewayapi.RoutingError, match="HTTPRouteRequestMirror"):
        router.ensure(100, 0, 50)
    assert router.get_route()[:3] == (100, 0, 0) and "filters" not in get_route(custom, namespace)["spec"]["rules"][0]


def test_a_class_that_lists_no_features_or_a_missing_gateway_counts_as_no_mirror(kube_client, namespace, custom):
    silent = mirror_router(kube_client, namespace, make_gateway(custom, namespace, None))
    assert "lists no supportedFeatures" in (silent.mirror_problem() or "")
    missing = mirror_router(kube_client, namespace, [{"name": "nowhere"}], owner="other-release")
    assert f"Gateway {namespace}/nowhere was not found" in (missing.mirror_problem() or "")


def test_cohort_rules_come_first_are_accepted_by_the_apiserver_and_read_back(kube_client, namespace, custom):
    parents = make_gateway(custom, namespace, ["HTTPRouteRequestMirror"])
    router = mirror_router(kube_client, namespace, parents)
    german = ({"headers": [{"name": "Accept-Language", "value": "de"}]},
              {"queryParams": [{"name": "lang", "type": "RegularExpression", "value": "de(-.*)?"}]})
    cohorts = [CohortRule("de", german, 5), CohortRule("beta", ({"queryParams": [{"name": "beta", "value": "1"}]},), 1)]
    router.ensure(99, 1, 0, cohorts)
    rules = get_route(custom, namespace)["spec"]["rules"]
    assert len(rules) == 3
    assert rules[0]["matches"][0]["headers"] == [{"name": "x-tier", "type": "Exact", "value": "beta"},
                                                 {"name": "Accept-Language", "type": "Exact", "value": "de"}], \
        "the route's own matches hold for the cohort too"
    assert rules[0]["matches"][1]["queryParams"][0]["value"] == "de(-.*)?"
    assert rules[0]["filters"] == [{"type": "RequestHeaderModifier", "requestHeaderModifier": {
        "set": [{"name": "X-Canarist-Cohort", "value": "de"}]}}]
    assert rules[2]["filters"] == [{"type": "RequestHeaderModifier", "requestHeaderModifier": {
        "remove": ["X-Canarist-Cohort"]}}]
    assert router.get_route() == RouteState(99, 1, 0, (("de", 5), ("beta", 1)))
    writes = count_writes(router)
    router.ensure(99, 1, 0, cohorts)
    assert writes == [], "the server's defaults do not read as a change"

    router.ensure(100, 0, 25, [c._replace(canary_weight=0) for c in cohorts])
    rules = get_route(custom, namespace)["spec"]["rules"]
    assert all(rule["filters"][-1]["type"] == "RequestMirror" for rule in rules), "every rule mirrors"
    assert router.get_route() == RouteState(100, 0, 25, (("de", 0), ("beta", 0)))
    router.ensure(80, 20, 0, [c._replace(canary_weight=100) for c in cohorts])
    assert router.reweight(100, 0)
    assert router.get_route() == RouteState(100, 0, 0, (("de", 0), ("beta", 0))), \
        "the way back moves every rule to the primary and keeps the cohorts' tags"
