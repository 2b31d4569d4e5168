"""The seam between comparison gates' providers and their statistics."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

import requests

from canarist.api.compare import Comparison

from ..prometheus import PrometheusClientCache
from ..templating import QueryVariables


@dataclass(frozen=True)
class RateTotals:
    """Cumulative bad and total events of both variants since the rollout began."""

    canary_bad: float
    canary_total: float
    primary_bad: float
    primary_total: float


@dataclass(frozen=True)
class Pairs:
    """Judged pairs new since the last check, in the order the judge completed them."""

    values: tuple[float, ...]  # x in [0, 1]: how much worse the canary's answer was
    cursor: str | None
    restarted: bool = False    # the source lost its place: the evidence so far must start over


Observation = RateTotals | Pairs


class SourceError(Exception):
    """A provider could not answer; the check is an error and the evidence is left as it was."""


class CursorLost(SourceError):
    """The judge no longer knows the cursor (its database was replaced): the test starts over."""


@dataclass(frozen=True)
class SourceContext:
    """What any provider may need for one analysis run of a release."""

    variables: QueryVariables
    prometheus: PrometheusClientCache
    default_prometheus: str
    http: requests.Session
    release: str                   # <namespace>/<name>
    rollout_started_at: datetime
    now: datetime


class ComparisonSource(Protocol):
    def observe(self, gate: Comparison, context: SourceContext, state: dict) -> Observation:
        """The gate's observation now; `state` is what the gate's evidence kept last time (a cursor).
        Raises SourceError when the provider cannot answer."""
        ...
