"""Rates of bad events from Prometheus counters: the same two queries asked of each variant."""

from __future__ import annotations

import math

from canarist.api.compare import Comparison

from ..prometheus import query_value
from ..templating import render
from .base import RateTotals, SourceContext, SourceError


class PrometheusRates:
    def observe(self, gate: Comparison, context: SourceContext, state: dict) -> RateTotals:
        assert gate.rates is not None
        window = f"{max(1, math.ceil((context.now - context.rollout_started_at).total_seconds()))}s"
        client = context.prometheus.get(gate.rates.address or context.default_prometheus)
        values = []
        for variant in (context.variables.canary, context.variables.primary):
            for template in (gate.rates.bad, gate.rates.total):
                query = render(template, context.variables, {"variant": variant, "window": window})
                try:
                    value = query_value(client, query, context.prometheus.timeout)
                except Exception as exc:  # every provider failure is an error check, never a crash or a pass
                    raise SourceError(f"Prometheus error: {type(exc).__name__}: {str(exc)[:200]}") from exc
                values.append(value or 0.0)  # no series yet: no events yet
        return RateTotals(*values)
