"""The interface every traffic provider implements, and the errors they share."""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple, Protocol, runtime_checkable


class RoutingError(Exception):
    """A route cannot be managed; the message names the spec field and the fix."""


class RoutingUnavailable(RoutingError):
    """The provider's API is missing from the cluster (e.g. its CRDs are not installed)."""


class RouteNotAccepted(RoutingError):
    """The data plane (a Gateway's controller) refused the route canarist wrote: it carries no traffic."""


class RouteConflict(RoutingError):
    """An object canarist would manage exists and belongs to someone else; canarist leaves it alone."""


class CohortRule(NamedTuple):
    """One cohort's rule: its name, its match conditions (HTTPRouteMatch-shaped: headers,
    queryParams; ORed) and the canary's weight in it."""

    name: str
    matches: tuple[dict, ...]
    canary_weight: int


class RouteState(NamedTuple):
    """The route as read: the default rule's weights, the mirrored percent, each cohort rule's canary weight."""

    primary: int
    canary: int
    mirror: int
    cohorts: tuple[tuple[str, int], ...] = ()


@runtime_checkable
class TrafficRouter(Protocol):
    """Splits one release's traffic between its primary and canary Services.

    One instance manages the routing object(s) of one CanaryRelease. Every method is idempotent:
    handlers call them on each tick and after restarts.
    """

    def ensure(self, primary_weight: int, canary_weight: int, mirror: int = 0,
               cohorts: Sequence[CohortRule] = ()) -> None:
        """Create or update the route with these weights, mirroring `mirror` percent of the requests to
        the canary (0: none), each cohort in a rule of its own; makes no API request when nothing
        changes. Raises RoutingError rather than write a mirror the data plane cannot carry."""
        ...

    def get_route(self) -> RouteState | None:
        """The route as the cluster has it now; None when there is no route."""
        ...

    def reweight(self, primary_weight: int, canary_weight: int) -> bool:
        """Move the weights of the route in force, leaving the rest as it is (the way back to the
        primary when the route built from the spec is refused); False when there is no route."""
        ...

    def mirror_problem(self) -> str | None:
        """Why this release's traffic cannot be mirrored to the canary (naming the field and the fix), or None."""
        ...

    def get_weights(self) -> tuple[int, int] | None:
        """(primary, canary) as the cluster has them now; None when the route does not exist."""
        ...

    def finalize(self, keep_serving: str | None) -> None:
        """Called when the CanaryRelease is deleted.

        keep_serving: a Service name to send all traffic to, leaving the route in place without
        the CanaryRelease as its owner; None deletes the route.
        """
        ...


def validate_weights(primary_weight: int, canary_weight: int) -> None:
    """Weights are whole percentages: ints 0..100 that sum to 100."""
    for label, weight in (("primary", primary_weight), ("canary", canary_weight)):
        # bool is an int subclass; True as a weight is a bug, not 1%.
        if not isinstance(weight, int) or isinstance(weight, bool):
            raise ValueError(f"{label} weight must be an int, got {weight!r}")
        if not 0 <= weight <= 100:
            raise ValueError(f"{label} weight must be within 0..100, got {weight}")
    if primary_weight + canary_weight != 100:
        raise ValueError(f"weights must sum to 100, got {primary_weight} + {canary_weight}")
