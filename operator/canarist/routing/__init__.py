"""Traffic providers: each splits a release's traffic between its primary and canary Services.

Every provider implements `TrafficRouter`; `router_for` picks one from spec.routing. Handlers reach
routing only through that interface.
"""

from __future__ import annotations

from typing import Any

import kubernetes

from canarist.api.spec import CanaryReleaseSpec
from canarist.kube.objectcache import ObjectCache

from .base import (CohortRule, RouteConflict, RouteNotAccepted, RouteState, RoutingError, RoutingUnavailable,
                   TrafficRouter, validate_weights)
from .gatewayapi import GatewayAPIRouter

__all__ = ["CohortRule", "GatewayAPIRouter", "RouteConflict", "RouteNotAccepted", "RouteState", "RoutingError",
           "RoutingUnavailable", "TrafficRouter", "router_for", "validate_weights"]


def router_for(api: kubernetes.client.ApiClient, namespace: str, target: str, owner: dict[str, Any],
               spec: CanaryReleaseSpec | None, primary_service: str, canary_service: str,
               cache: ObjectCache | None = None, fresh: bool = False) -> TrafficRouter:
    """The release's router. Without a valid spec (None) it can still move weights and release the route.

    Gateway API is the one provider today (spec.routing.gatewayAPI); another provider is another
    module behind TrafficRouter, chosen here.
    """
    gw = spec.routing.gateway_api if spec is not None else None
    return GatewayAPIRouter(
        api, namespace, target, owner,
        parent_refs=[p.to_k8s() for p in gw.parent_refs] if gw else None, hostnames=gw.hostnames if gw else None,
        matches=[m if isinstance(m, dict) else m.to_k8s() for m in gw.matches] if gw else None,
        port=spec.service.port if spec is not None else None,
        primary_service=primary_service, canary_service=canary_service, cache=cache, fresh=fresh)
