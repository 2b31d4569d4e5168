"""Go-style durations ("30s", "1m30s", "500ms"), as Kubernetes users write them."""

from __future__ import annotations

import re
from datetime import timedelta

DURATION_PATTERN = r"^([0-9]+(\.[0-9]+)?(ms|s|m|h))+$"
_PART = re.compile(r"([0-9]+(?:\.[0-9]+)?)(ms|s|m|h)")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(text: str) -> timedelta:
    if not re.fullmatch(DURATION_PATTERN, text):
        raise ValueError(f"{text!r} is not a duration; write it like 30s, 1m, 1m30s or 500ms")
    return timedelta(seconds=sum(float(n) * _UNIT_SECONDS[u] for n, u in _PART.findall(text)))


def prometheus_duration(text: str) -> str:
    """The duration in whole seconds for PromQL range selectors (PromQL rejects "1.5m")."""
    return f"{max(1, round(parse_duration(text).total_seconds()))}s"
