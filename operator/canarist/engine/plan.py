"""Applying a decision's actions: in order, stopping at the first failure.

The engine lists actions so that each relies on the ones before it: the route sends users back
to the primary before the canary is scaled down, the apex Service points at the primary before
the target loses its pods, a canary is scaled up before it gets traffic. So when one fails the
rest must not run; the next tick decides again and re-sends them all (every action is
idempotent).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from .model import Action


@dataclass
class Outcome:
    applied: list[Action] = field(default_factory=list)
    failed: Action | None = None
    error: Exception | None = None
    skipped: list[Action] = field(default_factory=list)


def apply_in_order(actions: Sequence[Action], apply: Callable[[Action], None]) -> Outcome:
    outcome = Outcome()
    for index, action in enumerate(actions):
        try:
            apply(action)
        except Exception as exc:  # noqa: BLE001 - whatever went wrong, what follows must not run
            outcome.failed, outcome.error = action, exc
            outcome.skipped = list(actions[index + 1:])
            return outcome
        outcome.applied.append(action)
    return outcome
