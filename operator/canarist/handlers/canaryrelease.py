"""The only place kopf appears for releases: thin handlers that feed the caches, schedule ticks
and run the finalizer.

All rollout state lives in the CanaryRelease status; nothing here keeps state a restart would
miss, so the operator can be killed at any moment and resume from status.

Ticks are not kopf timers: `canarist.handlers.scheduler` runs each release at its own pace (its
next analysis check, else the resync period CANARIST_TICK_SECONDS) and at once when something it
depends on changes (`canarist.handlers.watches`), on a pool of CANARIST_TICK_WORKERS threads.
Gate queries run apart, on CANARIST_GATE_WORKERS threads (`canarist.analysis.runner`).
"""

from __future__ import annotations

import logging
import os
import random
import time
from datetime import datetime, timezone

import kopf

from canarist import metrics
from canarist.analysis.runner import GateRunner
from canarist.api.crd import GROUP, PLURAL, VERSION
from canarist.kube.client import load_client

from . import watches
from .context import OperatorContext
from .finalize import Retry, finalize_release
from .scheduler import GONE, Scheduler
from .tick import run_tick

log = logging.getLogger(__name__)


def _env_float(name: str, default: float) -> float:
    return float(os.environ.get(name, default))


# The longest a release waits between ticks when nothing wakes it and no check is due.
TICK_SECONDS = _env_float("CANARIST_TICK_SECONDS", 30)
TICK_WORKERS = int(_env_float("CANARIST_TICK_WORKERS", 4))
GATE_WORKERS = int(_env_float("CANARIST_GATE_WORKERS", 8))
# How often each release reads everything from the API instead of the caches: a watch can miss a
# deletion while it reconnects.
FRESH_SECONDS = _env_float("CANARIST_FRESH_SECONDS", 600)
# The chart's trackSecrets: without it the operator has no access to Secrets and never watches them.
TRACK_SECRETS = os.environ.get("CANARIST_TRACK_SECRETS", "true").strip().lower() not in ("false", "0", "no")
FINALIZER = "canarist.dev/finalizer"
_context: OperatorContext | None = None
_scheduler: Scheduler | None = None
_dependents = watches.Dependents()
_seen: dict[tuple[str, str], tuple] = {}       # what of a release's body wakes it (generation, annotations)
_fresh_at: dict[tuple[str, str], float] = {}   # when each release last read everything from the API
_target_of: dict[tuple[str, str], str] = {}      # each release's target Deployment
_config_of: dict[tuple[str, str], list[tuple[str, str]]] = {}  # the tracked configuration its tick read


def context() -> OperatorContext:
    global _context
    if _context is None:
        _context = OperatorContext(api=load_client(), track_secrets=TRACK_SECRETS)
    return _context


def scheduler() -> Scheduler:
    global _scheduler
    if _scheduler is None:
        _scheduler = Scheduler(tick=_tick, resync=TICK_SECONDS, workers=TICK_WORKERS)
    return _scheduler


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, logger: logging.Logger, **_) -> None:
    settings.persistence.finalizer = FINALIZER
    settings.peering.standalone = True
    settings.posting.level = logging.WARNING
    # kopf's own API calls are bounded too: a half-open watch is dropped and re-established.
    settings.watching.server_timeout = 60
    settings.watching.client_timeout = 90
    settings.watching.connect_timeout = 10
    # A request waits for one of kopf's connections within the connect timeout: the initial listing
    # of a big cluster (a thousand releases, each getting its finalizer) queues that many at once.
    settings.networking.connect_timeout = 30
    settings.networking.request_timeout = 30
    # kopf keeps a worker per object for a while after its last event; no worker limit: workers
    # wait for every kind's initial listing, and a limit below the objects' number never gets there.
    settings.queueing.idle_timeout = 1.0
    watches.quiet_event_logs()
    ctx = context()
    served = watches.served_kinds(ctx.api)
    for kind in served:
        ctx.objects.watch(kind)
    ctx.objects.lister = lambda kind, namespace: watches.list_objects(ctx.api, kind, namespace)
    ctx.objects.permitted = lambda kind, namespace: watches.may_watch(ctx.api, kind, namespace)
    missing = sorted(set(watches.WATCHED) - served)
    if missing:
        logger.info("not served by this cluster, read from the API when needed: %s", ", ".join(missing))
    ctx.gate_runner = GateRunner(workers=GATE_WORKERS, on_done=lambda key: scheduler().wake(key),
                                 deadline=max(60.0, 4 * TICK_SECONDS))
    metrics.set_cache_sizes(ctx.objects.sizes)
    metrics.set_backlog(scheduler().overdue)
    scheduler().start()


@kopf.on.cleanup()
def stop(**_) -> None:
    if _scheduler is not None:
        _scheduler.stop()
    if _context is not None and _context.gate_runner is not None:
        _context.gate_runner.shutdown()


def _tick(key: tuple[str, str], due: float) -> float | None:
    """The scheduler's tick of one release: fresh reads now and then, metrics, and its pace."""
    namespace, name = key
    started = time.monotonic()
    # Spread over the period: releases seen at start-up must not all read fresh at once.
    fresh = started - _fresh_at.setdefault(key, started - random.uniform(0, FRESH_SECONDS)) >= FRESH_SECONDS
    try:
        ticked = run_tick(context(), namespace, name, datetime.now(timezone.utc), fresh=fresh)
    except Exception as exc:
        # Logged and retried on the release's next tick, never after a long backoff: a rollback
        # waiting on a transient API error must go out as soon as the API answers again.
        log.warning("%s/%s: tick failed, retried in at most %gs: %s: %s", namespace, name, TICK_SECONDS,
                    type(exc).__name__, exc)
        return None
    if fresh:
        _fresh_at[key] = started
    done = time.monotonic()
    if ticked.gone:
        _forget(key)
        return GONE
    if ticked.config is not None and ticked.config != _config_of.get(key):
        _config_of[key] = ticked.config
        _set_dependents(key)
    if ticked.status_after is not None:
        metrics.record_tick(namespace=namespace, name=name, phase_before=ticked.phase_before,
                            status_after=ticked.status_after, checks=ticked.checks, events=ticked.events,
                            duration=done - started, lag=max(0.0, done - due))
    return ticked.next_in


def _forget(key: tuple[str, str]) -> None:
    scheduler().forget(key)
    _dependents.forget(key)
    _seen.pop(key, None)
    _fresh_at.pop(key, None)
    _config_of.pop(key, None)
    _target_of.pop(key, None)
    metrics.forget_release(*key)
    if _context is not None and _context.gate_runner is not None:
        _context.gate_runner.forget(key)


def _changed(kind: str, event_type: str | None, body: dict) -> None:
    """A watch event: into the cache, then wake whoever depends on it."""
    context().objects.on_event(kind, event_type, body)
    meta = body.get("metadata") or {}
    namespace = meta.get("namespace") or ""
    if kind == "CanaryRelease":
        _release_changed(event_type, body)
        return
    for dep_kind, dep_name in watches.depends_on(kind, body):
        for key in _dependents.of(dep_kind, namespace, dep_name):
            scheduler().wake(key)


def _release_changed(event_type: str | None, body: dict) -> None:
    meta = body.get("metadata") or {}
    key = (meta.get("namespace") or "", meta.get("name") or "")
    if event_type == "DELETED":
        _forget(key)
        return
    target = ((body.get("spec") or {}).get("targetRef") or {}).get("name")
    if isinstance(target, str) and target and _target_of.get(key) != target:
        _target_of[key] = target
        _set_dependents(key)
    # What people change (spec, annotations: promote, abort, pause) wakes the release; its own
    # status writes do not.
    seen = (meta.get("uid"), meta.get("generation"), tuple(sorted((meta.get("annotations") or {}).items())),
            bool(meta.get("deletionTimestamp")))
    before = _seen.get(key)
    _seen[key] = seen
    if before is None or not scheduler().known(key):
        scheduler().add(key)
    elif before != seen:
        scheduler().wake(key)


watches.register(_changed, watches.WATCHED)


@kopf.on.event("", "v1", "configmaps", id=f"{watches.WATCH_HANDLER_PREFIX}configmaps")
def configmap_seen(event: dict, **_) -> None:
    """Tracked configuration (canarist.kube.configcache): a change wakes the releases tracking it."""
    _config_event("ConfigMap", event)


if TRACK_SECRETS:
    @kopf.on.event("", "v1", "secrets", id=f"{watches.WATCH_HANDLER_PREFIX}secrets")
    def secret_seen(event: dict, **_) -> None:
        _config_event("Secret", event)


def _config_event(kind: str, event: dict) -> None:
    body = event["object"]
    context().config.on_event(kind, event.get("type"), body)
    meta = body.get("metadata") or {}
    for key in _dependents.of(kind, meta.get("namespace") or "", meta.get("name") or ""):
        scheduler().wake(key)


def _set_dependents(key: tuple[str, str]) -> None:
    target = _target_of.get(key)
    _dependents.set(key, (watches.target_objects(target) if target else []) + _config_of.get(key, []))


@kopf.on.delete(GROUP, VERSION, PLURAL)
def release(body: kopf.Body, retry: int, logger: logging.Logger, **_) -> None:
    """Hand the workload back, or leave the primary serving (canarist.handlers.finalize)."""
    key = (body["metadata"]["namespace"], body["metadata"]["name"])
    scheduler().forget(key)
    try:
        logger.info(finalize_release(context(), dict(body)))
    except Retry as exc:
        raise kopf.TemporaryError(str(exc), delay=exc.delay) from exc
    except Exception as exc:  # noqa: BLE001 - the finalizer stays until the hand-over succeeded
        delay = min(2.0 ** min(retry, 5), 30.0)
        raise kopf.TemporaryError(f"finalization failed, retried in {delay:g}s: {type(exc).__name__}: {exc}",
                                  delay=delay) from exc
    context().finalized(body["metadata"]["uid"])
    _forget(key)
