"""Runs every gate of a pinned analysis once: one analysis check, as the engine counts it."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Callable, TypeVar

import requests

from canarist.api.durations import prometheus_duration
from canarist.api.spec import Analysis, Cohort
from canarist.api.status import Check, CheckResult, Evidence
from canarist.metrics import observe_gate

from .compare import run_comparisons
from .judge import VerdictError, check_judge, fetch_verdict
from .prometheus import PrometheusClientCache, check_metric, check_samples
from .sources import SourceContext
from .templating import QueryVariables, uses_variable


@dataclass
class GateClients:
    """Connections reused across ticks, and the operator-wide Prometheus default."""

    default_prometheus: str = field(default_factory=lambda: os.environ.get(
        "CANARIST_PROMETHEUS_URL", "http://prometheus-operated.monitoring:9090"))
    prometheus: PrometheusClientCache = field(default_factory=PrometheusClientCache)
    http: requests.Session = field(default_factory=requests.Session)


@dataclass(frozen=True)
class GateTarget:
    namespace: str
    release: str       # CanaryRelease name
    target: str        # the Deployment's name
    step_started_at: datetime
    rollout_started_at: datetime
    cohorts: tuple[Cohort, ...] = ()  # the rollout's cohorts, each judged on its own as well


_Found = TypeVar("_Found", Check, list[Check])


def timed(kind: str, query: Callable[[], _Found]) -> _Found:
    """One provider query, its latency and whether the provider answered (an Error check: it did not)."""
    started = time.monotonic()
    found = query()
    checks = found if isinstance(found, list) else [found]
    observe_gate(kind, time.monotonic() - started, not any(c.result == CheckResult.ERROR for c in checks))
    return found


def run_gates(analysis: Analysis, where: GateTarget, clients: GateClients, now: datetime) -> tuple[Check, ...]:
    variables = QueryVariables(namespace=where.namespace, target=where.target,
                               interval=prometheus_duration(analysis.interval))
    checks = []
    if analysis.min_samples is not None:
        checks.append(timed("prometheus", lambda: check_samples(analysis.min_samples, variables, clients.prometheus,
                                                                clients.default_prometheus, now)))
    for gate in analysis.metrics:
        checks.append(timed("prometheus", lambda: check_metric(gate, variables, clients.prometheus,
                                                               clients.default_prometheus, now)))
        if uses_variable(gate.prometheus.query, "cohort"):
            # A cohort that fails fails the check, however well all traffic together does.
            for cohort in where.cohorts:
                cohort_vars = replace(variables, cohort=cohort.name)
                checks.append(timed("prometheus", lambda: check_metric(
                    gate, cohort_vars, clients.prometheus, clients.default_prometheus, now)).for_cohort(cohort.name))
    if analysis.judge is not None:
        release = f"{where.namespace}/{where.release}"
        checks += timed("judge", lambda: list(check_judge(analysis.judge, clients.http, release,
                                                          where.step_started_at, now,
                                                          baseline_since=where.rollout_started_at)))
        for cohort in where.cohorts:
            checks += timed("judge", lambda: list(check_judge(analysis.judge, clients.http, release,
                                                              where.step_started_at, now,
                                                              baseline_since=where.rollout_started_at, cohort=cohort)))
    return tuple(checks)


def run_comparison_gates(analysis: Analysis, where: GateTarget, clients: GateClients, previous: list[Evidence],
                         now: datetime, step: int = 0) -> tuple[tuple[Check, ...], tuple[Evidence, ...]]:
    """One run of every comparison gate, folding new observations into the rollout's evidence."""
    if not analysis.compare:
        return (), ()
    variables = QueryVariables(namespace=where.namespace, target=where.target,
                               interval=prometheus_duration(analysis.interval))
    context = SourceContext(variables=variables, prometheus=clients.prometheus,
                            default_prometheus=clients.default_prometheus, http=clients.http,
                            release=f"{where.namespace}/{where.release}",
                            rollout_started_at=where.rollout_started_at, now=now)
    started = time.monotonic()
    checks, evidence = run_comparisons(analysis.compare, previous, analysis.alpha, context, step)
    observe_gate("compare", time.monotonic() - started, not any(c.result == CheckResult.ERROR for c in checks))
    return tuple(checks), tuple(evidence)



def pair_judge(analysis: Analysis) -> tuple[str, str] | None:
    """(URL, timeout) of the judge that pairs this analysis's answers: its judge gate's, else its first
    judge comparison's; None when it has no judge."""
    if analysis.judge is not None:
        return analysis.judge.url, analysis.judge.timeout
    gate = next((g.judge for g in analysis.compare if g.judge is not None), None)
    return None if gate is None else (gate.url, gate.timeout)


def count_pairs(analysis: Analysis, where: GateTarget, clients: GateClients, now: datetime) -> int | None:
    """Judged pairs (both variants' answers to one request, compared) whose canary answer came since
    the step (the shadow) started; None when there is no judge or it cannot say."""
    judge = pair_judge(analysis)
    if judge is None:
        return None
    try:
        verdict = fetch_verdict(clients.http, judge, f"{where.namespace}/{where.release}", "canary",
                                where.step_started_at, now)
    except VerdictError:
        return None
    return verdict.wins + verdict.losses + verdict.ties
