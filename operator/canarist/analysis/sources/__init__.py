"""Where comparison gates get their observations: one module per provider behind `base.ComparisonSource`.

Every source turns a gate into one of two observation shapes (`RateTotals`: bad and total events of
both variants; `Pairs`: how much worse the canary's answer was, input by input), so the statistics
(canarist.analysis.compare) see the same shape whatever the provider. A new provider of counters
(Datadog, CloudWatch) is one more module returning RateTotals, and one entry in `SOURCES`.
"""

from __future__ import annotations

from canarist.api.compare import Comparison

from .base import ComparisonSource, CursorLost, Observation, Pairs, RateTotals, SourceContext, SourceError
from .judge_pairs import JudgePairs
from .prometheus_rates import PrometheusRates

SOURCES: dict[str, ComparisonSource] = {"rates": PrometheusRates(), "judge": JudgePairs()}


def source_for(gate: Comparison) -> ComparisonSource:
    """The provider of the gate's one source field (the API allows exactly one)."""
    kind = "rates" if gate.rates is not None else "judge"
    return SOURCES[kind]


__all__ = ["ComparisonSource", "CursorLost", "Observation", "Pairs", "RateTotals", "SOURCES", "SourceContext",
           "SourceError", "source_for"]
