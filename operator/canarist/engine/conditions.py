"""Kubernetes-style conditions: a transition time that only moves when the status does."""

from __future__ import annotations

from datetime import datetime

from canarist.api.status import Condition


def set_condition(conditions: list[Condition], type_: str, status: bool, reason: str, message: str,
                  now: datetime, generation: int | None) -> list[Condition]:
    value = "True" if status else "False"
    previous = next((c for c in conditions if c.type == type_), None)
    since = previous.last_transition_time if previous and previous.status == value else now
    updated = Condition(type=type_, status=value, reason=reason, message=message,
                        last_transition_time=since, observed_generation=generation)
    return [c for c in conditions if c.type != type_] + [updated] if previous is None else [
        updated if c.type == type_ else c for c in conditions]
