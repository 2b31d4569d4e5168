"""Runs every gate of a pinned analysis once: one analysis check, as the engine counts it."""

from __future__ import annotations

from datetime import datetime

from canarist.api.durations import prometheus_duration
from canarist.api.spec import Analysis
from canarist.api.status import Check

from .prometheus import PrometheusClientCache, check_metric, check_samples
from .templating import QueryVariables


def run_gates(analysis: Analysis, namespace: str, target: str, clients: PrometheusClientCache,
              default_prometheus: str, now: datetime) -> tuple[Check, ...]:
    variables = QueryVariables(namespace=namespace, target=target, interval=prometheus_duration(analysis.interval))
    checks = []
    if analysis.min_samples is not None:
        checks.append(check_samples(analysis.min_samples, variables, clients, default_prometheus, now))
    checks += [check_metric(gate, variables, clients, default_prometheus, now) for gate in analysis.metrics]
    return tuple(checks)
