"""Traffic providers: each splits a release's traffic between its primary and canary Services.

Every provider implements `TrafficRouter`; handlers pick one from spec.routing.
"""

from .base import RouteConflict, RouteNotAccepted, RoutingError, RoutingUnavailable, TrafficRouter, validate_weights
from .gatewayapi import GatewayAPIRouter

__all__ = ["GatewayAPIRouter", "RouteConflict", "RouteNotAccepted", "RoutingError", "RoutingUnavailable", "TrafficRouter",
           "validate_weights"]
