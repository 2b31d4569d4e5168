"""Traffic splitting with a Gateway API HTTPRoute (gateway.networking.k8s.io/v1) that canarist owns.

The route has one rule per cohort (spec.cohorts: the user's matches combined with the cohort's,
each rule with its own weights and a filter that sets the X-Canarist-Cohort header), then the
default rule: the user's matches and two weighted backendRefs, the primary and the canary
Service, removing that header so that no client can claim a cohort. A cohort's rule wins over the
default rule for its requests by Gateway API's precedence (more header or query parameter
matches on the same path). During a shadow phase every rule also has a RequestMirror filter that copies a share of the
requests to the canary Service (its answers are discarded by the gateway). The filter is written
only for a Gateway whose GatewayClass lists HTTPRouteRequestMirror among its supportedFeatures: a
gateway without it may refuse the whole rule (Traefik v3.6 answers every request of such a route
with 500), which would take the stable version down with it. Writes are GET, compare, then create or replace with the resourceVersion that
was read: a replace can only land on the object whose ownership was just checked, and nothing
is written when the route already says what canarist wants.
"""

from __future__ import annotations

import copy
import json
import logging
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import kubernetes
from kubernetes.client import ApiException

from canarist.api.spec import COHORT_HEADER
from canarist.kube.objectcache import ObjectCache

from .base import (CohortRule, RouteConflict, RouteNotAccepted, RouteState, RoutingError, RoutingUnavailable,
                   validate_weights)

log = logging.getLogger(__name__)

GROUP = "gateway.networking.k8s.io"
VERSION = "v1"
PLURAL = "httproutes"
KIND = "HTTPRoute"
FIELD = "spec.routing.gatewayAPI"
FIELD_MANAGER = "canarist"
MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"
MANAGED_BY = "canarist"
GATEWAY_API_VERSION = "v1.4.1"
# Optimistic-concurrency retries; each conflict means someone else just wrote the route.
_ATTEMPTS = 5

_DEFAULT_PATH = {"type": "PathPrefix", "value": "/"}
MIRROR_FEATURE = "HTTPRouteRequestMirror"
MIRROR_FIELD = "spec.shadow.mirror"




def _combine(route_matches: Sequence[Mapping[str, Any]] | None, cohort_matches: Sequence[Mapping[str, Any]]) -> list:
    """Every route match AND every cohort match (a request must be routed here and be in the cohort)."""
    combined = []
    for base in route_matches or [{}]:
        for extra in cohort_matches:
            match = copy.deepcopy(dict(base))
            for key in ("headers", "queryParams"):
                if extra.get(key):
                    match[key] = list(match.get(key) or []) + copy.deepcopy(list(extra[key]))
            combined.append(match)
    return combined


def cohort_of_rule(rule: Mapping[str, Any]) -> str | None:
    """The cohort a rule routes (the X-Canarist-Cohort value its filter sets), None for the default rule."""
    for filter_ in rule.get("filters") or []:
        if filter_.get("type") != "RequestHeaderModifier":
            continue
        for header in (filter_.get("requestHeaderModifier") or {}).get("set") or []:
            if str(header.get("name", "")).lower() == COHORT_HEADER.lower():
                return str(header.get("value"))
    return None


def build_httproute(*, namespace: str, name: str, owner: Mapping[str, Any] | None,
                    parent_refs: Sequence[Mapping[str, Any]], hostnames: Sequence[str],
                    matches: Sequence[Mapping[str, Any]] | None, port: int,
                    backends: Sequence[tuple[str, int]], mirror: tuple[str, int] | None = None,
                    cohorts: Sequence[CohortRule] = ()) -> dict:
    """The HTTPRoute canarist wants: a rule per cohort, then one with `matches` and weighted Service
    backends (`backends`: (primary, weight), (canary, weight)); `mirror` (a Service and the percent of
    requests copied to it) as a RequestMirror filter in every rule."""

    def rule(rule_matches: Sequence[Mapping[str, Any]] | None, header: dict, weights: Sequence[tuple[str, int]]) -> dict:
        out: dict[str, Any] = {}
        if rule_matches:
            out["matches"] = copy.deepcopy([dict(m) for m in rule_matches])
        filters = [header] if header else []
        if mirror is not None and mirror[1] > 0:
            filters.append({"type": "RequestMirror", "requestMirror": {
                "backendRef": {"name": mirror[0], "port": port}, "percent": mirror[1]}})
        if filters:
            out["filters"] = filters
        out["backendRefs"] = [{"name": service, "port": port, "weight": weight} for service, weight in weights]
        return out

    rules = []
    if cohorts:
        (primary, _), (canary, _) = backends
        rules = [rule(_combine(matches, cohort.matches),
                      {"type": "RequestHeaderModifier",
                       "requestHeaderModifier": {"set": [{"name": COHORT_HEADER, "value": cohort.name}]}},
                      [(primary, 100 - cohort.canary_weight), (canary, cohort.canary_weight)])
                 for cohort in cohorts]
    rules.append(rule(matches, {"type": "RequestHeaderModifier", "requestHeaderModifier": {"remove": [COHORT_HEADER]}}
                      if cohorts else {}, backends))
    spec: dict[str, Any] = {"parentRefs": copy.deepcopy([dict(p) for p in parent_refs])}
    if hostnames:
        spec["hostnames"] = list(hostnames)
    spec["rules"] = rules
    metadata: dict[str, Any] = {"name": name, "namespace": namespace, "labels": {MANAGED_BY_LABEL: MANAGED_BY}}
    if owner is not None:
        metadata["ownerReferences"] = [dict(owner)]
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": KIND, "metadata": metadata, "spec": spec}


def canonical_spec(spec: Mapping[str, Any]) -> dict:
    """`spec` with the CRD's defaults filled in, so what was sent compares equal to what is stored."""
    out = copy.deepcopy(dict(spec))
    out.setdefault("hostnames", [])
    for parent in out.setdefault("parentRefs", []):
        parent.setdefault("group", GROUP)
        parent.setdefault("kind", "Gateway")
    for rule in out.setdefault("rules", [{}]):
        for match in rule.setdefault("matches", [{}]):
            path = match.setdefault("path", {})
            for key, value in _DEFAULT_PATH.items():
                path.setdefault(key, value)
            for item in match.get("headers", []) + match.get("queryParams", []):
                item.setdefault("type", "Exact")
        for ref in rule.get("backendRefs", []):
            ref.setdefault("group", "")
            ref.setdefault("kind", "Service")
            ref.setdefault("weight", 1)
        for filter_ in rule.get("filters", []):
            ref = (filter_.get("requestMirror") or {}).get("backendRef")
            if ref is not None:
                ref.setdefault("group", "")
                ref.setdefault("kind", "Service")
    return out


def _mirrors_to(filter_: Mapping[str, Any], service: str) -> bool:
    ref = (filter_.get("requestMirror") or {}).get("backendRef") or {}
    return (filter_.get("type") == "RequestMirror" and ref.get("name") == service
            and ref.get("group", "") == "" and ref.get("kind", "Service") == "Service")


def mirror_of(route: Mapping[str, Any], service: str) -> int:
    """The percent of requests the route mirrors to `service` (the largest over its rules; 0: none)."""
    percent = 0
    for rule in (route.get("spec") or {}).get("rules") or []:
        for filter_ in rule.get("filters") or []:
            if not _mirrors_to(filter_, service):
                continue
            mirror = filter_["requestMirror"]
            if mirror.get("percent") is not None:
                share = int(mirror["percent"])
            elif mirror.get("fraction"):
                fraction = mirror["fraction"]
                share = round(100 * int(fraction.get("numerator", 0)) / int(fraction.get("denominator", 100) or 100))
            else:
                share = 100  # neither: every request is mirrored
            percent = max(percent, share)
    return percent


def supported_features(gateway_class: Mapping[str, Any]) -> set[str] | None:
    """The features a GatewayClass's controller says it supports; None when it says nothing."""
    listed = (gateway_class.get("status") or {}).get("supportedFeatures")
    if not listed:
        return None
    # Gateway API v1.2 made the items objects ({name}); v1.1 listed plain strings.
    return {item.get("name") if isinstance(item, dict) else str(item) for item in listed}


def _rule_weights(rule: Mapping[str, Any], primary_service: str, canary_service: str) -> tuple[int, int]:
    weights: dict[str, int] = {}
    for ref in rule.get("backendRefs", []):
        if ref["group"] == "" and ref["kind"] == "Service":
            weights[ref["name"]] = weights.get(ref["name"], 0) + ref["weight"]
    return weights.get(primary_service, 0), weights.get(canary_service, 0)


def weights_of(route: Mapping[str, Any], primary_service: str, canary_service: str) -> tuple[int, int]:
    """(primary, canary) weights of the route's traffic in no cohort; a Service that is not referenced has
    weight 0."""
    primary = canary = 0
    for rule in canonical_spec(route.get("spec", {}))["rules"]:
        if cohort_of_rule(rule) is None:
            p, c = _rule_weights(rule, primary_service, canary_service)
            primary, canary = primary + p, canary + c
    return primary, canary


def cohort_weights_of(route: Mapping[str, Any], primary_service: str, canary_service: str) -> tuple[tuple[str, int], ...]:
    """(cohort, canary weight in percent of the cohort's requests) for each cohort rule of a route."""
    out = []
    for rule in canonical_spec(route.get("spec", {}))["rules"]:
        cohort = cohort_of_rule(rule)
        if cohort is not None:
            primary, canary = _rule_weights(rule, primary_service, canary_service)
            out.append((cohort, round(100 * canary / (primary + canary)) if primary + canary else 0))
    return tuple(out)


def not_accepted(route: Mapping[str, Any]) -> str | None:
    """Why a Gateway's controller refused the route as it is now (status.parents[].conditions,
    Accepted=False for the route's current generation), or None."""
    generation = route.get("metadata", {}).get("generation")
    for parent in (route.get("status") or {}).get("parents") or []:
        for condition in parent.get("conditions") or []:
            current = condition.get("observedGeneration") in (None, generation)
            if condition.get("type") == "Accepted" and condition.get("status") == "False" and current:
                ref = parent.get("parentRef") or {}
                where = f"{ref.get('namespace') + '/' if ref.get('namespace') else ''}{ref.get('name', '?')}"
                return (f"was not accepted by parent {where} ({parent.get('controllerName', 'its controller')}): "
                        f"{condition.get('reason', '')}: {condition.get('message', '')}".rstrip(": "))
    return None


def is_missing_object(exc: ApiException) -> bool:
    """A 404 about a named object; otherwise the resource type itself is unknown to the server."""
    if exc.status != 404:
        return False
    try:
        details = json.loads(exc.body or "").get("details") or {}
    except (ValueError, AttributeError):
        return False  # e.g. a plain "404 page not found"
    return bool(details.get("name"))


def unavailable_error() -> RoutingUnavailable:
    return RoutingUnavailable(
        f"{FIELD}: the Gateway API CRDs ({PLURAL}.{GROUP}, version {VERSION}) are not installed in the "
        f"cluster; install the standard channel CRDs (kubectl apply --server-side -f https://github.com/"
        f"kubernetes-sigs/gateway-api/releases/download/{GATEWAY_API_VERSION}/standard-install.yaml) "
        f"or configure another routing provider"
    )


def _raise_if_type_missing(exc: ApiException) -> None:
    if exc.status == 404 and not is_missing_object(exc):
        raise unavailable_error() from exc


class GatewayAPIRouter:
    """Manages the HTTPRoute `namespace/name` of one CanaryRelease (see TrafficRouter)."""

    def __init__(self, api: kubernetes.client.ApiClient, namespace: str, name: str, owner: dict,
                 parent_refs: list[dict] | None, hostnames: list[str] | None, matches: list[dict] | None,
                 port: int | None, primary_service: str, canary_service: str, cache: ObjectCache | None = None,
                 fresh: bool = False) -> None:
        """parent_refs, hostnames and port come from a valid spec; without them (an invalid spec)
        the router can still move weights on the existing route (reweight) and release it. Reads
        come from the watch-fed `cache` when there is one (`fresh`: from the API, refreshing it)."""
        if not owner.get("uid"):
            raise ValueError("owner must be an ownerReference with a uid")
        if primary_service == canary_service:
            raise ValueError(f"primary and canary Service must differ, both are {primary_service!r}")
        self._custom = kubernetes.client.CustomObjectsApi(api)
        self.namespace = namespace
        self.name = name
        self.owner = dict(owner)
        self.parent_refs = parent_refs or []
        self.hostnames = hostnames or []
        self.matches = matches
        self.port = port
        self.primary_service = primary_service
        self.canary_service = canary_service
        self.cache = cache if cache is not None else ObjectCache()
        self.fresh = fresh

    # -- TrafficRouter -------------------------------------------------------------------------

    def ensure(self, primary_weight: int, canary_weight: int, mirror: int = 0,
               cohorts: Sequence[CohortRule] = ()) -> None:
        validate_weights(primary_weight, canary_weight)
        for cohort in cohorts:
            validate_weights(100 - cohort.canary_weight, cohort.canary_weight)
        if not isinstance(mirror, int) or isinstance(mirror, bool) or not 0 <= mirror <= 100:
            raise ValueError(f"mirror must be a percent within 0..100, got {mirror!r}")
        if self.port is None or not self.parent_refs:
            raise RoutingError(f"{FIELD}: the spec does not say how to route; fix it (the route was left as it is)")
        if mirror:
            problem = self.mirror_problem()
            if problem:
                raise RoutingError(problem)  # checked again here: a filter the gateway refuses is an outage
        desired = self._build([(self.primary_service, primary_weight), (self.canary_service, canary_weight)],
                              owned=True, mirror=mirror, cohorts=cohorts)
        for _ in range(_ATTEMPTS):
            current = self._get()
            if current is None:
                if self._create(desired):
                    return
                continue
            if self._ownership(current) == "foreign":
                raise self._conflict(current)
            # "orphan" (left behind by finalize(keep_serving)) is adopted here.
            if self._write_if_changed(current, desired, owned=True):
                return
        raise RoutingError(f"{FIELD}: HTTPRoute {self._ref} kept changing under canarist; "
                           f"gave up after {_ATTEMPTS} attempts (will retry)")

    def get_weights(self) -> tuple[int, int] | None:
        state = self.get_route()
        return None if state is None else (state[0], state[1])

    def get_route(self) -> RouteState | None:
        """The default rule's (primary, canary) weights, the percent mirrored to the canary and each cohort
        rule's canary weight; None without a route."""
        current = self._get()
        if current is None:
            return None
        if self._ownership(current) == "foreign":
            raise self._conflict(current)
        refusal = not_accepted(current)
        if refusal:
            raise RouteNotAccepted(f"{FIELD}: HTTPRoute {self._ref} {refusal}; it carries no traffic: fix "
                                   f"{FIELD}.parentRefs or hostnames, or the Gateway's listeners")
        primary, canary = weights_of(current, self.primary_service, self.canary_service)
        return RouteState(primary, canary, mirror_of(current, self.canary_service),
                          cohort_weights_of(current, self.primary_service, self.canary_service))

    def mirror_problem(self) -> str | None:
        """Why the route must not mirror requests, or None: every parent Gateway's class must list
        HTTPRouteRequestMirror. Unknown counts as no: a gateway that cannot mirror may fail the
        whole rule, and the stable version with it."""
        fix = (f"use a Gateway whose implementation supports request mirroring (its GatewayClass lists "
               f"{MIRROR_FEATURE} in status.supportedFeatures: Envoy Gateway, Istio, ...), or set "
               f"{MIRROR_FIELD}: External and mirror requests to the {self.canary_service} Service yourself")
        for parent in self.parent_refs:
            if parent.get("group", GROUP) != GROUP or parent.get("kind", "Gateway") != "Gateway":
                return f"{MIRROR_FIELD}: parent {parent.get('kind')} {parent.get('name')} is not a Gateway; {fix}"
            namespace = parent.get("namespace") or self.namespace
            gateway = self._read_gateway_object(namespace, "gateways", parent["name"])
            if isinstance(gateway, str):
                return f"{MIRROR_FIELD}: {gateway}; {fix}"
            class_name = (gateway.get("spec") or {}).get("gatewayClassName", "")
            gateway_class = self._read_gateway_object(None, "gatewayclasses", class_name)
            if isinstance(gateway_class, str):
                return f"{MIRROR_FIELD}: {gateway_class}; {fix}"
            features = supported_features(gateway_class)
            if features is None:
                return (f"{MIRROR_FIELD}: GatewayClass {class_name} (of Gateway {namespace}/{parent['name']}) lists "
                        f"no supportedFeatures, so canarist cannot tell whether it mirrors requests; {fix}")
            if MIRROR_FEATURE not in features:
                return (f"{MIRROR_FIELD}: GatewayClass {class_name} (of Gateway {namespace}/{parent['name']}) does "
                        f"not list {MIRROR_FEATURE} in status.supportedFeatures; canarist will not write a "
                        f"RequestMirror filter that gateway may refuse with every request of the route; {fix}")
        return None

    def _read_gateway_object(self, namespace: str | None, plural: str, name: str) -> dict | str:
        """The object, or why it cannot be read."""
        what = f"{'Gateway' if plural == 'gateways' else 'GatewayClass'} {namespace + '/' if namespace else ''}{name}"
        try:
            if namespace is None:
                return self._custom.get_cluster_custom_object(GROUP, VERSION, plural, name)
            return self._custom.get_namespaced_custom_object(GROUP, VERSION, namespace, plural, name)
        except ApiException as exc:
            if exc.status == 404:
                return f"{what} was not found"
            if exc.status == 403:
                return (f"canarist may not read {what} (grant get on {plural}.{GROUP}; the chart does) to check "
                        "that it mirrors requests")
            raise

    def finalize(self, keep_serving: str | None) -> None:
        for _ in range(_ATTEMPTS):
            current = self._get()
            if current is None:
                return
            if self._ownership(current) != "ours":
                # Never someone else's to change; raising would only block the CanaryRelease's deletion.
                log.info("HTTPRoute %s is not owned by this CanaryRelease; leaving it as it is", self._ref)
                return
            if keep_serving is None:
                if self._delete(current["metadata"]["uid"]):
                    return
                continue
            # Rewired in place (parents, hostnames, matches as they are), so it works whatever the
            # spec says now. The label stays, so a CanaryRelease created later adopts the route.
            if self._rewire(current, {keep_serving: 100}, owned=False):
                return
        raise RoutingError(f"{FIELD}: HTTPRoute {self._ref} kept changing under canarist; "
                           f"gave up after {_ATTEMPTS} attempts (will retry)")

    def reweight(self, primary_weight: int, canary_weight: int) -> bool:
        """Move the weights of the existing route, leaving the rest of it as it is: the way back to
        the primary when the route canarist would build from the spec is rejected or unknown.
        False when there is no route to move."""
        validate_weights(primary_weight, canary_weight)
        for _ in range(_ATTEMPTS):
            current = self._get()
            if current is None:
                return False
            if self._ownership(current) == "foreign":
                raise self._conflict(current)
            if self._rewire(current, {self.primary_service: primary_weight, self.canary_service: canary_weight},
                            owned=self._ownership(current) == "ours"):
                return True
        raise RoutingError(f"{FIELD}: HTTPRoute {self._ref} kept changing under canarist; "
                           f"gave up after {_ATTEMPTS} attempts (will retry)")

    # -- internals ------------------------------------------------------------------------------

    @property
    def _ref(self) -> str:
        return f"{self.namespace}/{self.name}"

    def _build(self, backends: Sequence[tuple[str, int]], owned: bool, mirror: int = 0,
               cohorts: Sequence[CohortRule] = ()) -> dict:
        return build_httproute(namespace=self.namespace, name=self.name, owner=self.owner if owned else None,
                               parent_refs=self.parent_refs, hostnames=self.hostnames, matches=self.matches,
                               port=self.port, backends=backends,
                               mirror=(self.canary_service, mirror) if mirror else None, cohorts=cohorts)

    def _ownership(self, route: Mapping[str, Any]) -> str:
        """"ours", "orphan" (canarist's label, no controller: adoptable) or "foreign"."""
        meta = route.get("metadata", {})
        refs = meta.get("ownerReferences") or []
        if any(ref.get("uid") == self.owner["uid"] for ref in refs):
            return "ours"
        labelled = (meta.get("labels") or {}).get(MANAGED_BY_LABEL) == MANAGED_BY
        if labelled and not any(ref.get("controller") for ref in refs):
            return "orphan"
        return "foreign"

    def _conflict(self, route: Mapping[str, Any]) -> RouteConflict:
        meta = route.get("metadata", {})
        controller = next((r for r in meta.get("ownerReferences") or [] if r.get("controller")), None)
        if (meta.get("labels") or {}).get(MANAGED_BY_LABEL) != MANAGED_BY:
            why = f"is not managed by canarist (no label {MANAGED_BY_LABEL}={MANAGED_BY})"
            fix = (f"delete or rename that HTTPRoute, or label it {MANAGED_BY_LABEL}={MANAGED_BY} "
                   f"to hand it over to canarist")
        else:
            why = f"is controlled by {controller.get('kind')} {controller.get('name')} (uid {controller.get('uid')})"
            fix = "delete that HTTPRoute or remove its controller ownerReference"
        return RouteConflict(f"{FIELD}: HTTPRoute {self._ref} already exists and {why}; canarist left it "
                             f"untouched. To fix: {fix}")

    def _merged(self, current: Mapping[str, Any], desired: Mapping[str, Any], owned: bool) -> dict:
        """`current` with canarist's spec, label and (if `owned`) ownerReference; other metadata kept."""
        meta = copy.deepcopy(current["metadata"])
        meta["labels"] = {**(meta.get("labels") or {}), **desired["metadata"]["labels"]}
        refs, placed = [], False
        for ref in meta.get("ownerReferences") or []:
            if ref.get("uid") != self.owner["uid"]:
                refs.append(ref)
            elif owned and not placed:
                refs.append(dict(self.owner))  # in place, so an unchanged list compares equal
                placed = True
        if owned and not placed:
            refs.append(dict(self.owner))
        if refs:
            meta["ownerReferences"] = refs
        else:
            meta.pop("ownerReferences", None)
        meta.pop("managedFields", None)
        return {"apiVersion": desired["apiVersion"], "kind": desired["kind"], "metadata": meta,
                "spec": copy.deepcopy(desired["spec"])}

    def _rewire(self, current: Mapping[str, Any], weights: Mapping[str, int], owned: bool) -> bool:
        """`current` with every rule's backends replaced by `weights`; False when it changed meanwhile."""
        spec = copy.deepcopy(dict(current.get("spec") or {}))
        for rule in spec.get("rules") or []:
            ports = {ref.get("name"): ref.get("port") for ref in rule.get("backendRefs") or []}
            port = ports.get(self.primary_service) or ports.get(self.canary_service) or self.port
            rule["backendRefs"] = [{"name": service, "port": ports.get(service) or port, "weight": weight}
                                   for service, weight in weights.items()]
            # Back to the weights alone: a mirror to the canary goes too (the others' filters stay).
            filters = [f for f in rule.get("filters") or [] if not _mirrors_to(f, self.canary_service)]
            if filters:
                rule["filters"] = filters
            else:
                rule.pop("filters", None)
        desired = {"apiVersion": f"{GROUP}/{VERSION}", "kind": KIND,
                   "metadata": {"labels": {MANAGED_BY_LABEL: MANAGED_BY}}, "spec": spec}
        return self._write_if_changed(current, desired, owned=owned)

    def _write_if_changed(self, current: Mapping[str, Any], desired: Mapping[str, Any], owned: bool) -> bool:
        """Replace `current` unless it already matches; False when it changed meanwhile (retry)."""
        updated = self._merged(current, desired, owned)
        meta = current["metadata"]
        if (canonical_spec(current.get("spec", {})) == canonical_spec(updated["spec"])
                and (meta.get("labels") or {}) == updated["metadata"]["labels"]
                and (meta.get("ownerReferences") or []) == updated["metadata"].get("ownerReferences", [])):
            return True
        return self._replace(updated)

    def _get(self) -> dict | None:
        return self.cache.get(KIND, self.namespace, self.name, self._get_api, fresh=self.fresh)

    def _get_api(self) -> dict | None:
        try:
            return self._custom.get_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL, self.name)
        except ApiException as exc:
            if is_missing_object(exc):
                return None
            _raise_if_type_missing(exc)
            raise

    def _conflicted(self) -> bool:
        """A write found the route changed: read it from the API until this router is done."""
        self.fresh = True
        return False

    def _create(self, body: dict) -> bool:
        """False when a route of that name appeared meanwhile (retry)."""
        try:
            created = self._custom.create_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL, body,
                                                                   field_manager=FIELD_MANAGER)
        except ApiException as exc:
            if exc.status == 409:
                return self._conflicted()
            _raise_if_type_missing(exc)
            raise
        self.cache.put(KIND, created)
        log.info("created HTTPRoute %s", self._ref)
        return True

    def _replace(self, body: dict) -> bool:
        """False on a stale resourceVersion or a route deleted meanwhile (retry)."""
        try:
            replaced = self._custom.replace_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL,
                                                                     self.name, body, field_manager=FIELD_MANAGER)
        except ApiException as exc:
            if exc.status == 409 or is_missing_object(exc):
                return self._conflicted()
            _raise_if_type_missing(exc)
            raise
        self.cache.put(KIND, replaced)
        log.info("updated HTTPRoute %s", self._ref)
        return True

    def _delete(self, uid: str) -> bool:
        """False when the route was replaced by another object of that name meanwhile (retry)."""
        # The uid precondition keeps a delete from hitting a route recreated by someone else.
        options = kubernetes.client.V1DeleteOptions(preconditions=kubernetes.client.V1Preconditions(uid=uid))
        try:
            self._custom.delete_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL, self.name,
                                                         body=options)
        except ApiException as exc:
            if is_missing_object(exc):
                self.cache.forget(KIND, self.namespace, self.name)
                return True
            if exc.status == 409:
                return self._conflicted()
            _raise_if_type_missing(exc)
            raise
        self.cache.forget(KIND, self.namespace, self.name)
        log.info("deleted HTTPRoute %s", self._ref)
        return True

