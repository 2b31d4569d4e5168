"""Cohorts: each one's canary share at a step, and the problems of a set of cohorts the schema cannot see.

Gateway API sends a request to the matching rule with the most header matches, then the most query
parameter matches, then the first in the route (HTTPRouteRule's precedence). Two cohorts that one
request could both match would leave its cohort to those tie-breaks and its verdict ambiguous, so
cohorts must be exclusive: some header or query parameter they both name must have different Exact
values. A RegularExpression is never evaluated here: its flavour and whether it must match the whole
value are up to each gateway, and running a manifest's expression in the operator would let one
catastrophic pattern stall every release's reconciliation.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from .spec import CanaryReleaseSpec, Cohort, CohortMatch

# Gateway API v1.4: at most 64 matches in a rule and 128 over all the rules of a route.
MAX_RULE_MATCHES = 64
MAX_ROUTE_MATCHES = 128
ROUTING_MATCHES = "spec.routing.gatewayAPI.matches"


def cohort_weight(cohort: Cohort, steps: Sequence[int], canary_weight: int) -> int:
    """The cohort's canary share while the rest of the traffic gives the canary `canary_weight`."""
    if canary_weight <= 0:
        return 0
    if canary_weight >= 100:
        return 100
    if cohort.steps is not None:
        # The step with this weight; between steps (an edited spec), the last step below it.
        index = max((i for i, step in enumerate(steps) if step <= canary_weight), default=None)
        if index is None or index >= len(cohort.steps):
            return canary_weight
        return max(canary_weight, cohort.steps[index])
    assert cohort.factor is not None
    return min(100, max(canary_weight, math.floor(canary_weight * cohort.factor + 0.5)))


def cohort_weights(cohorts: Sequence[Cohort], steps: Sequence[int], canary_weight: int) -> tuple[tuple[str, int], ...]:
    return tuple((c.name, cohort_weight(c, steps, canary_weight)) for c in cohorts)


def _conditions(match: CohortMatch) -> dict[tuple[str, str], tuple[str, str]]:
    """(kind, name) -> (type, value); header names compare without case, query parameter names with it."""
    out = {("header", h.name.lower()): (h.type, h.value) for h in match.headers or ()}
    out.update({("query", q.name): (q.type, q.value) for q in match.query_params or ()})
    return out


def _exclusive(a: tuple[str, str], b: tuple[str, str]) -> bool:
    """No value satisfies both conditions on one header (or query parameter); False when unsure, as
    with any RegularExpression."""
    (type_a, value_a), (type_b, value_b) = a, b
    return type_a == type_b == "Exact" and value_a != value_b


def may_overlap(a: CohortMatch, b: CohortMatch) -> bool:
    ca, cb = _conditions(a), _conditions(b)
    return not any(_exclusive(ca[key], cb[key]) for key in ca.keys() & cb.keys())


def describe(match: CohortMatch) -> str:
    parts = [f"header {h.name} {'=' if h.type == 'Exact' else '~'} {h.value!r}" for h in match.headers or ()]
    parts += [f"query {q.name} {'=' if q.type == 'Exact' else '~'} {q.value!r}" for q in match.query_params or ()]
    return " and ".join(parts)


def cohort_problems(spec: CanaryReleaseSpec) -> list[str]:
    """Overlapping cohorts, cohorts that contradict the route's own matches, a route too large to write."""
    problems: list[str] = []
    cohorts = spec.cohorts
    for j, later in enumerate(cohorts):
        for i, earlier in enumerate(cohorts[:j]):
            clash = next(((ma, mb) for ma in earlier.matches for mb in later.matches if may_overlap(ma, mb)), None)
            if clash:
                problems.append(
                    f"spec.cohorts[{j}] ({later.name}) overlaps spec.cohorts[{i}] ({earlier.name}): a request with "
                    f"{describe(clash[0])} and {describe(clash[1])} would be in both; make them exclusive (match "
                    "one header or query parameter with different Exact values in each) or merge them into one cohort")
    route_matches = [m if isinstance(m, dict) else m.to_k8s() for m in spec.routing.gateway_api.matches]
    routed = {("header", h["name"].lower()) for m in route_matches for h in m.get("headers") or ()}
    routed |= {("query", q["name"]) for m in route_matches for q in m.get("queryParams") or ()}
    for i, cohort in enumerate(cohorts):
        for k, match in enumerate(cohort.matches):
            shared = sorted(name for kind, name in _conditions(match) if (kind, name) in routed)
            if shared:
                problems.append(
                    f"spec.cohorts[{i}].matches[{k}] ({cohort.name}): {', '.join(shared)} is matched by "
                    f"{ROUTING_MATCHES} too, and Gateway API keeps only one condition per name; define the cohort "
                    "by other headers or query parameters")
    per_route = max(1, len(route_matches))
    total = per_route
    for i, cohort in enumerate(cohorts):
        in_rule = per_route * len(cohort.matches)
        total += in_rule
        if in_rule > MAX_RULE_MATCHES:
            problems.append(f"spec.cohorts[{i}].matches ({cohort.name}): {len(cohort.matches)} matches for each of "
                            f"the {per_route} of {ROUTING_MATCHES} make {in_rule} in one HTTPRoute rule, more than "
                            f"Gateway API's {MAX_RULE_MATCHES}; use fewer")
    if total > MAX_ROUTE_MATCHES:
        problems.append(f"spec.cohorts: the HTTPRoute would hold {total} matches, more than Gateway API's "
                        f"{MAX_ROUTE_MATCHES}; use fewer cohorts or matches")
    return problems
