"""The HTTPRoute canarist builds, weight validation, and error translation, without a cluster."""

from __future__ import annotations

import json
import re
from pathlib import Path

import kubernetes
import pytest
from kubernetes.client import ApiException

from canarist.devstack import gatewayapi as devstack_gatewayapi
from canarist.routing import GatewayAPIRouter, RouteConflict, RoutingUnavailable, TrafficRouter, validate_weights
from canarist.routing import gatewayapi
from canarist.routing.gatewayapi import build_httproute, canonical_spec, is_missing_object, weights_of

ROOT = Path(__file__).resolve().parents[2]
OWNER = {"apiVersion": "canarist.dev/v1alpha1", "kind": "CanaryRelease", "name": "bot", "uid": "u-1",
         "controller": True, "blockOwnerDeletion": True}
PARENTS = [{"name": "public-gateway", "namespace": "infra"}]
MATCHES = [{"path": {"type": "PathPrefix", "value": "/chat"}, "headers": [{"name": "x-tier", "value": "beta"}]}]


def build(**overrides):
    args = dict(namespace="prod", name="bot", owner=OWNER, parent_refs=PARENTS, hostnames=["bot.example.com"],
                matches=MATCHES, port=8080, backends=[("bot-primary", 95), ("bot-canary", 5)])
    return build_httproute(**{**args, **overrides})


def test_build_httproute_body():
    assert build() == {
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "HTTPRoute",
        "metadata": {"name": "bot", "namespace": "prod", "labels": {"app.kubernetes.io/managed-by": "canarist"},
                     "ownerReferences": [OWNER]},
        "spec": {
            "parentRefs": PARENTS,
            "hostnames": ["bot.example.com"],
            "rules": [{
                "matches": MATCHES,
                "backendRefs": [{"name": "bot-primary", "port": 8080, "weight": 95},
                                {"name": "bot-canary", "port": 8080, "weight": 5}],
            }],
        },
    }


def test_build_httproute_omits_what_is_not_given():
    body = build(owner=None, hostnames=[], matches=None)
    assert "ownerReferences" not in body["metadata"]
    assert "hostnames" not in body["spec"]
    assert list(body["spec"]["rules"][0]) == ["backendRefs"]


def test_build_httproute_does_not_share_the_callers_dicts():
    body = build()
    body["spec"]["parentRefs"][0]["name"] = "changed"
    body["spec"]["rules"][0]["matches"][0]["path"]["value"] = "/changed"
    body["metadata"]["ownerReferences"][0]["name"] = "changed"
    assert PARENTS[0]["name"] == "public-gateway"
    assert MATCHES[0]["path"]["value"] == "/chat"
    assert OWNER["name"] == "bot"


def test_canonical_spec_equates_a_body_with_the_servers_defaulted_copy():
    sent = build(matches=None, hostnames=[])["spec"]
    stored = {  # what kube-apiserver returns after applying the CRD's defaults
        "parentRefs": [{"group": "gateway.networking.k8s.io", "kind": "Gateway", **PARENTS[0]}],
        "rules": [{
            "matches": [{"path": {"type": "PathPrefix", "value": "/"}}],
            "backendRefs": [{"group": "", "kind": "Service", "name": "bot-primary", "port": 8080, "weight": 95},
                            {"group": "", "kind": "Service", "name": "bot-canary", "port": 8080, "weight": 5}],
        }],
    }
    assert canonical_spec(sent) == canonical_spec(stored)
    stored["rules"][0]["filters"] = [{"type": "RequestMirror"}]
    assert canonical_spec(sent) != canonical_spec(stored), "a field canarist does not set is drift"


def test_canonical_spec_fills_match_defaults():
    spec = canonical_spec({"rules": [{"matches": [{"headers": [{"name": "a", "value": "b"}]}]}]})
    assert spec["rules"][0]["matches"] == [{"path": {"type": "PathPrefix", "value": "/"},
                                            "headers": [{"name": "a", "value": "b", "type": "Exact"}]}]


def test_weights_of_reads_backends_by_service_name():
    assert weights_of(build(), "bot-primary", "bot-canary") == (95, 5)
    assert weights_of(build(backends=[("bot-primary", 100)]), "bot-primary", "bot-canary") == (100, 0)
    assert weights_of(build(backends=[("other", 100)]), "bot-primary", "bot-canary") == (0, 0)


@pytest.mark.parametrize("weights", [(100, 0), (0, 100), (95, 5), (50, 50)])
def test_valid_weights(weights):
    validate_weights(*weights)


@pytest.mark.parametrize("weights", [(90, 5), (101, -1), (-5, 105), (95.0, 5), (True, 99), ("95", "5"), (None, 100)])
def test_invalid_weights(weights):
    with pytest.raises(ValueError):
        validate_weights(*weights)


def _not_found(details: dict | None, text: str | None = None) -> ApiException:
    exc = ApiException(status=404, reason="Not Found")
    exc.body = text if text is not None else json.dumps(
        {"kind": "Status", "status": "Failure", "reason": "NotFound", "details": details or {}, "code": 404})
    return exc


def test_is_missing_object_tells_a_missing_route_from_a_missing_type():
    assert is_missing_object(_not_found({"name": "bot", "group": "gateway.networking.k8s.io", "kind": "httproutes"}))
    assert not is_missing_object(_not_found({}))
    assert not is_missing_object(_not_found(None, text="404 page not found"))
    assert not is_missing_object(ApiException(status=409))


class FakeCustomObjects:
    """Answers GETs from a dict of routes (or raises `error`) and records every write."""

    def __init__(self, routes: dict | None = None, error: ApiException | None = None) -> None:
        self.routes, self.error, self.writes = routes or {}, error, []

    def get_namespaced_custom_object(self, group, version, namespace, plural, name):
        if self.error:
            raise self.error
        if name not in self.routes:
            raise _not_found({"name": name, "kind": plural})
        return self.routes[name]

    def __getattr__(self, method):
        if method.startswith(("create_", "replace_", "delete_", "patch_")):
            def write(*args, **kwargs):
                self.writes.append(method)
                if self.error:
                    raise self.error
            return write
        raise AttributeError(method)


def router(custom: FakeCustomObjects) -> GatewayAPIRouter:
    r = GatewayAPIRouter(kubernetes.client.ApiClient(), "prod", "bot", OWNER, PARENTS, ["bot.example.com"], None,
                         8080, "bot-primary", "bot-canary")
    r._custom = custom
    return r


def test_router_implements_the_provider_interface():
    assert isinstance(router(FakeCustomObjects()), TrafficRouter)


def test_ensure_rejects_bad_weights_before_touching_the_cluster():
    custom = FakeCustomObjects()
    with pytest.raises(ValueError, match="sum to 100"):
        router(custom).ensure(90, 5)
    assert custom.writes == []


@pytest.mark.parametrize("call", [lambda r: r.ensure(100, 0), lambda r: r.get_weights(), lambda r: r.finalize(None)])
def test_missing_crds_raise_routing_unavailable_naming_field_and_fix(call):
    with pytest.raises(RoutingUnavailable) as raised:
        call(router(FakeCustomObjects(error=_not_found({}))))
    message = str(raised.value)
    assert message.startswith("spec.routing.gatewayAPI: ")
    assert "httproutes.gateway.networking.k8s.io" in message and "standard channel CRDs" in message


def test_other_api_errors_pass_through():
    with pytest.raises(ApiException) as raised:
        router(FakeCustomObjects(error=ApiException(status=403, reason="Forbidden"))).ensure(100, 0)
    assert raised.value.status == 403


def test_foreign_route_is_never_written():
    foreign = build(owner=None)
    foreign["metadata"]["labels"] = {"team": "web"}
    custom = FakeCustomObjects({"bot": foreign})
    r = router(custom)
    with pytest.raises(RouteConflict, match=r"prod/bot .*not managed by canarist.*label it"):
        r.ensure(100, 0)
    with pytest.raises(RouteConflict):
        r.get_weights()
    r.finalize(None)
    r.finalize("bot-primary")
    assert custom.writes == []


def test_route_controlled_by_another_owner_is_a_conflict():
    other = build(owner={**OWNER, "uid": "u-other", "name": "old-bot"})
    with pytest.raises(RouteConflict, match="controlled by CanaryRelease old-bot"):
        router(FakeCustomObjects({"bot": other})).ensure(100, 0)


def test_ensure_without_changes_does_not_write():
    custom = FakeCustomObjects({"bot": build(matches=None, backends=[("bot-primary", 80), ("bot-canary", 20)])})
    router(custom).ensure(80, 20)
    assert custom.writes == []
    router(custom).ensure(70, 30)
    assert custom.writes == ["replace_namespaced_custom_object"]


def test_gateway_api_version_is_pinned_in_one_place():
    go_mod = (ROOT / "hack" / "tools" / "gateway-api" / "go.mod").read_text()
    pinned = re.search(r"^require sigs\.k8s\.io/gateway-api (\S+)$", go_mod, re.M).group(1)
    assert pinned == devstack_gatewayapi.GATEWAY_API_VERSION == gatewayapi.GATEWAY_API_VERSION
    # ... and fetched by `make binaries`, before the tests (which run without network) read its CRDs.
    fetched = (ROOT / "hack" / "tools" / "modules.txt").read_text().splitlines()
    assert f"sigs.k8s.io/gateway-api@{pinned}" in fetched


def refused(generation: int, observed: int) -> dict:
    route = build(matches=None, backends=[("bot-primary", 100), ("bot-canary", 0)])
    route["metadata"]["generation"] = generation
    route["status"] = {"parents": [{
        "parentRef": {"name": "public", "namespace": "infra"}, "controllerName": "example.net/gateway",
        "conditions": [{"type": "Accepted", "status": "False", "reason": "NotAllowedByListeners",
                        "message": "hostname bot.example.com matches no listener", "observedGeneration": observed}]}]}
    return route


def test_a_route_its_gateway_refused_is_reported_naming_the_field():
    from canarist.routing import RouteNotAccepted

    with pytest.raises(RouteNotAccepted) as raised:
        router(FakeCustomObjects({"bot": refused(3, 3)})).get_weights()
    message = str(raised.value)
    assert message.startswith("spec.routing.gatewayAPI: ") and "infra/public" in message
    assert "NotAllowedByListeners" in message and "carries no traffic" in message


def test_a_refusal_of_an_older_generation_is_not_held_against_the_route():
    assert router(FakeCustomObjects({"bot": refused(4, 3)})).get_weights() == (100, 0)
