"""Prometheus gates: a PromQL query whose single value is compared to min/max."""

from __future__ import annotations

import math
from datetime import datetime

from prometheus_api_client import PrometheusConnect
from urllib3.util.retry import Retry

from canarist.api.spec import MetricGate, SampleRule
from canarist.api.status import Check, CheckResult

from .templating import QueryVariables, render


class PrometheusClientCache:
    """One client per Prometheus address, reused across ticks."""

    def __init__(self, timeout: float = 10.0) -> None:
        self._clients: dict[str, PrometheusConnect] = {}
        self.timeout = timeout

    def get(self, address: str) -> PrometheusConnect:
        if address not in self._clients:
            # One quick retry: a tick must not stall for long on a Prometheus that is down. A read
            # that timed out is not retried: the query has had its time, and a retry doubled it.
            self._clients[address] = PrometheusConnect(
                url=address, disable_ssl=not address.startswith("https"), timeout=self.timeout,
                retry=Retry(total=1, read=0, backoff_factor=0.1, status_forcelist=(502, 503, 504)))
        return self._clients[address]


def query_value(client: PrometheusConnect, query: str, timeout: float) -> float | None:
    """The query's single value; None when the result is empty or NaN (no data)."""
    result = client.custom_query(query, params={"timeout": f"{timeout:g}s"}, timeout=timeout)
    if not result:
        return None
    if len(result) > 1:
        raise ValueError(f"query returned {len(result)} series; aggregate it to one value (e.g. sum(...))")
    sample = result[0].get("value")
    if sample is None:
        raise ValueError("query returned a range; write an instant query")
    value = float(sample[1])
    return None if math.isnan(value) else value


def check_metric(gate: MetricGate, variables: QueryVariables, clients: PrometheusClientCache,
                 default_address: str, now: datetime) -> Check:
    base = {"name": gate.name, "kind": "prometheus", "min": gate.min, "max": gate.max, "at": now}
    try:
        query = render(gate.prometheus.query, variables)
        value = query_value(clients.get(gate.prometheus.address or default_address), query, clients.timeout)
    except Exception as exc:  # every provider failure is an error check, never a crash or a pass
        return Check(result=CheckResult.ERROR, message=f"Prometheus error: {_short(exc)}", **base)
    return evaluate_metric(gate, value, now)


def evaluate_metric(gate: MetricGate, value: float | None, now: datetime) -> Check:
    """A min/max gate's verdict on one value (None: no data). Pure, so simulations run this very code."""
    base = {"name": gate.name, "kind": "prometheus", "min": gate.min, "max": gate.max, "at": now}
    if value is None:
        return Check(result=CheckResult.NO_DATA, message="no data (empty or NaN result)", **base)
    if gate.min is not None and value < gate.min:
        return Check(result=CheckResult.FAILED, value=value, message=f"below min {gate.min:g}", **base)
    if gate.max is not None and value > gate.max:
        return Check(result=CheckResult.FAILED, value=value, message=f"above max {gate.max:g}", **base)
    return Check(result=CheckResult.PASSED, value=value, **base)


def check_samples(rule: SampleRule, variables: QueryVariables, clients: PrometheusClientCache,
                  default_address: str, now: datetime) -> Check:
    base = {"name": "min-samples", "kind": "samples", "min": float(rule.count), "at": now}
    try:
        value = query_value(clients.get(rule.address or default_address), render(rule.query, variables),
                            clients.timeout)
    except Exception as exc:
        return Check(result=CheckResult.ERROR, message=f"Prometheus error: {_short(exc)}", **base)
    if value is None or value < rule.count:
        # Too little evidence is never a failure of the canary, and never a pass either.
        return Check(result=CheckResult.NO_DATA, value=value,
                     message=f"too few samples: {0 if value is None else value:g} < {rule.count}", **base)
    return Check(result=CheckResult.PASSED, value=value, **base)


def _short(exc: Exception, limit: int = 300) -> str:
    text = f"{type(exc).__name__}: {exc}"
    return text if len(text) <= limit else text[: limit - 3] + "..."
