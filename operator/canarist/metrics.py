"""The operator's own metrics, served on /metrics (prometheus-client, a registry of its own).

The tick calls `record_tick` once per reconcile of a release, the gate providers `observe_gate`
once per query, the Kubernetes calls `record_api_error` when the API answers with an error. Every
label set is bounded: release names appear only in `canarist_release_step_started_timestamp_seconds`
(one series per release in a rollout, removed when the rollout ends or the release goes), never in
check or gate labels; a check's `gate` label is its name without the cohort suffix
(`<name>[<cohort>]` -> `<name>`).

Series that alerts take `increase()` of are created at zero before their first increment
(rollback and promotion reasons; every result of a gate once the gate is seen; the error outcome
of a gate kind once the kind is seen): a counter that first appears at 1 shows no increase.

Metrics:
  canarist_releases{phase}                      gauge: releases per phase (last tick of each)
  canarist_checks_total{gate,kind,result}       counter: gate results of analysis runs
  canarist_rollbacks_total{reason}              counter: Aborted, Regression, CheckFailed, HoldTimeout
  canarist_promotions_total{reason}             counter: Analysis, Manual (one per promoted rollout)
  canarist_tick_duration_seconds                histogram: one reconcile tick
  canarist_tick_lag_seconds                     histogram: from when a tick was due to when it finished
  canarist_gate_duration_seconds{kind,outcome}  histogram: one gate provider query (outcome ok/error)
  canarist_api_errors_total{resource,verb,code} counter: Kubernetes API errors
  canarist_cache_objects{kind}                  gauge: objects held by the operator's caches
  canarist_leader                               gauge: 1 while this process leads (or runs alone)
  canarist_release_step_started_timestamp_seconds{release_namespace,release_name}
                                                gauge: when a rolling release (Shadowing, Progressing,
                                                Promoting) last changed step; the stuck-step alert
                                                (not `namespace`: the scrape's target label of that name
                                                would rename it)
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from canarist.api.status import CanaryReleaseStatus, Check, CheckResult, Phase

log = logging.getLogger(__name__)

ROLLBACK_REASONS = ("Aborted", "Regression", "CheckFailed", "HoldTimeout")
PROMOTION_REASONS = ("Analysis", "Manual")
GATE_OUTCOMES = ("ok", "error")
# Phases whose step is expected to change: a release here for long with no step change is stuck.
# Paused is left out on purpose: a person (or spec.suspend) holds it.
MOVING_PHASES = (Phase.SHADOWING, Phase.PROGRESSING, Phase.PROMOTING)

REGISTRY = CollectorRegistry(auto_describe=True)

CHECKS = Counter("canarist_checks_total", "Gate results of analysis runs, by gate (check name without "
                 "cohort), kind and result.", ["gate", "kind", "result"], registry=REGISTRY)
ROLLBACKS = Counter("canarist_rollbacks_total", "Rollouts rolled back, by reason.", ["reason"], registry=REGISTRY)
PROMOTIONS = Counter("canarist_promotions_total", "Rollouts promoted (the primary serves the canary's revision), "
                     "by reason: Analysis (every step passed) or Manual (kubectl canarist promote).", ["reason"],
                     registry=REGISTRY)
TICK_DURATION = Histogram("canarist_tick_duration_seconds", "Duration of one reconcile tick of a release.",
                          buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60), registry=REGISTRY)
TICK_LAG = Histogram("canarist_tick_lag_seconds", "From when a tick was due to when it finished.",
                     buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300), registry=REGISTRY)
GATE_DURATION = Histogram("canarist_gate_duration_seconds", "Duration of one gate provider query, by kind and "
                          "outcome (ok: the provider answered; error: it did not).", ["kind", "outcome"],
                          buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30), registry=REGISTRY)
API_ERRORS = Counter("canarist_api_errors_total", "Kubernetes API calls that failed, by resource, verb and "
                     "HTTP status code (or exception name).", ["resource", "verb", "code"], registry=REGISTRY)
LEADER = Gauge("canarist_leader", "1 while this process acts on releases (holds the lease, or leader election "
               "is off); 0 on a standby.", registry=REGISTRY)

for _reason in ROLLBACK_REASONS:
    ROLLBACKS.labels(_reason)
for _reason in PROMOTION_REASONS:
    PROMOTIONS.labels(_reason)


class _State(Collector):
    """Per-release memory of the last tick: the phase gauge, the step clock, the manual promotions,
    and the cache-size callback. Read at scrape time."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.phases: dict[tuple[str, str], Phase] = {}
        self.steps: dict[tuple[str, str], tuple[tuple[Any, ...], float]] = {}  # step identity, since (epoch s)
        self.manual: dict[tuple[str, str], str | None] = {}  # release -> canary revision promoted by a person
        self.cache_source: Callable[[], dict[str, int]] | None = None
        self.backlog_source: Callable[[], int] | None = None
        self.gates_seen: set[tuple[str, str]] = set()
        self.kinds_seen: set[str] = set()

    def collect(self) -> Iterable[GaugeMetricFamily]:
        with self.lock:
            counts = {phase: 0 for phase in Phase}
            for phase in self.phases.values():
                counts[phase] += 1
            steps = [(key, since) for key, (_, since) in self.steps.items()]
            source, backlog_source = self.cache_source, self.backlog_source
        releases = GaugeMetricFamily("canarist_releases", "Releases per phase, as of each one's last tick.",
                                     labels=["phase"])
        for phase, count in counts.items():
            releases.add_metric([phase.value], count)
        yield releases
        started = GaugeMetricFamily(
            "canarist_release_step_started_timestamp_seconds",
            "When a release in Shadowing, Progressing or Promoting last changed step (or phase), Unix time.",
            labels=["release_namespace", "release_name"])
        for (namespace, name), since in sorted(steps):
            started.add_metric([namespace, name], since)
        yield started
        caches = GaugeMetricFamily("canarist_cache_objects", "Objects held by the operator's caches, by kind.",
                                   labels=["kind"])
        if source is not None:
            try:
                sizes = source()
            except Exception:  # noqa: BLE001 - a scrape never fails because of a cache
                log.exception("cache size callback failed")
                sizes = {}
            for kind, count in sorted(sizes.items()):
                caches.add_metric([str(kind)], float(count))
        yield caches
        if backlog_source is not None:
            backlog = GaugeMetricFamily("canarist_ticks_overdue", "Releases whose tick is due and not started: "
                                        "the tick workers' backlog (above 0 for long: they do not keep up).")
            backlog.add_metric([], float(backlog_source()))
            yield backlog

    def describe(self) -> Iterable[GaugeMetricFamily]:
        return []  # collected at scrape time; no fixed description


_STATE = _State()
REGISTRY.register(_STATE)


def gate_of(check: Check) -> str:
    """The check's gate: its name without the `[<cohort>]` suffix of a cohort's check."""
    if check.cohort is not None and check.name.endswith(f"[{check.cohort}]"):
        return check.name[: -len(check.cohort) - 2]
    return check.name


def _step_identity(status: CanaryReleaseStatus) -> tuple[Any, ...]:
    shadowing = status.phase == Phase.SHADOWING
    return (status.revisions.canary, status.phase == Phase.PROMOTING, "shadow" if shadowing else status.step_index,
            status.step_weight)


def _step_since(status: CanaryReleaseStatus) -> float:
    """On first sight of a rolling release (an operator restart): when its step began, from status."""
    for at in (status.step_started_at, status.rollout_started_at):
        if at is not None:
            return at.timestamp()
    return time.time()


def record_tick(*, namespace: str, name: str, phase_before: str | None, status_after: CanaryReleaseStatus,
                checks: Sequence[Check] | None, events: Sequence[Any], duration: float,
                lag: float | None) -> None:
    """One reconcile tick of a release: its phase, the gates' results (None: no gate ran), the
    engine's decision events (rollbacks, promotions), how long it took and how late it finished."""
    key = (namespace, name)
    TICK_DURATION.observe(max(duration, 0.0))
    if lag is not None:
        TICK_LAG.observe(max(lag, 0.0))
    for check in checks or ():
        result = check.result.value if isinstance(check.result, CheckResult) else str(check.result)
        gate = gate_of(check)
        with _STATE.lock:
            first = (gate, check.kind) not in _STATE.gates_seen
            _STATE.gates_seen.add((gate, check.kind))
        if first:
            for r in CheckResult:
                CHECKS.labels(gate, check.kind, r.value)
        CHECKS.labels(gate, check.kind, result).inc()
    with _STATE.lock:
        for event in events:
            reason = getattr(event, "reason", None)
            message = getattr(event, "message", "") or ""
            if reason == "RolledBack":
                why = message.split(":", 1)[0].strip()
                ROLLBACKS.labels(why if why in ROLLBACK_REASONS else "Other").inc()
                _STATE.manual.pop(key, None)
            elif reason == "ManualPromotion":
                # The promotion itself is counted when it is done (the next "Promoted" event);
                # remember that a person asked for it, for this canary revision.
                _STATE.manual[key] = status_after.revisions.canary
            elif reason == "Promoted":
                manual = key in _STATE.manual and _STATE.manual.pop(key) == status_after.revisions.primary
                PROMOTIONS.labels("Manual" if manual else "Analysis").inc()
            elif reason in ("RolloutStarted", "RolloutCancelled", "NewRevision"):
                _STATE.manual.pop(key, None)
        phase = status_after.phase
        if phase is None and phase_before is not None:
            try:
                phase = Phase(phase_before)
            except ValueError:
                phase = None
        if phase is None:
            _STATE.phases.pop(key, None)
        else:
            _STATE.phases[key] = phase
        if phase in MOVING_PHASES:
            identity = _step_identity(status_after)
            previous = _STATE.steps.get(key)
            if previous is None:
                _STATE.steps[key] = (identity, _step_since(status_after))
            elif previous[0] != identity:
                _STATE.steps[key] = (identity, time.time())
        else:
            _STATE.steps.pop(key, None)


def forget_release(namespace: str, name: str) -> None:
    """A deleted release leaves the phase gauge and the step clock."""
    key = (namespace, name)
    with _STATE.lock:
        _STATE.phases.pop(key, None)
        _STATE.steps.pop(key, None)
        _STATE.manual.pop(key, None)


def observe_gate(kind: str, seconds: float, ok: bool) -> None:
    """One gate provider query: how long it took and whether the provider answered."""
    with _STATE.lock:
        first = kind not in _STATE.kinds_seen
        _STATE.kinds_seen.add(kind)
    if first:
        for outcome in GATE_OUTCOMES:
            GATE_DURATION.labels(kind, outcome)
    GATE_DURATION.labels(kind, "ok" if ok else "error").observe(max(seconds, 0.0))


def record_api_error(resource: str, verb: str, code: int | str) -> None:
    """A Kubernetes API call that failed: resource (deployments, canaryreleases/status, ...), verb
    (get, list, patch, replace, ...), code (HTTP status, or the exception's name without one)."""
    API_ERRORS.labels(resource, verb, str(code)).inc()


def set_cache_sizes(source: Callable[[], dict[str, int]]) -> None:
    """A callback read at scrape time: kind -> objects held."""
    with _STATE.lock:
        _STATE.cache_source = source


def set_backlog(source: Callable[[], int]) -> None:
    """A callback read at scrape time: releases whose tick is overdue."""
    with _STATE.lock:
        _STATE.backlog_source = source


def set_leader(is_leader: bool) -> None:
    LEADER.set(1 if is_leader else 0)


def start_server(port: int, addr: str = "0.0.0.0") -> None:
    """Serve /metrics of this registry (a daemon thread)."""
    start_http_server(port, addr=addr, registry=REGISTRY)
    log.info("metrics on http://%s:%d/metrics", addr, port)


def reset_for_tests() -> None:
    """Forget every release, gate and cache source (the counters keep counting: they are cumulative)."""
    with _STATE.lock:
        _STATE.phases.clear()
        _STATE.steps.clear()
        _STATE.manual.clear()
        _STATE.cache_source = None
        _STATE.backlog_source = None
