"""The only place kopf appears: thin handlers that call the tick and the finalizer.

All rollout state lives in the CanaryRelease status; nothing here keeps state between ticks,
so the operator can be killed at any moment and resume from status.
"""

from __future__ import annotations

import logging
import os
from datetime import datetime, timezone

import kopf

from canarist.api.crd import GROUP, PLURAL, VERSION
from canarist.kube.client import load_client

from .finalize import Retry, finalize_release
from .tick import OperatorContext, run_tick

TICK_SECONDS = float(os.environ.get("CANARIST_TICK_SECONDS", "5"))
# The chart's trackSecrets: without it the operator has no access to Secrets and never watches them.
TRACK_SECRETS = os.environ.get("CANARIST_TRACK_SECRETS", "true").strip().lower() not in ("false", "0", "no")
FINALIZER = "canarist.dev/finalizer"
_context: OperatorContext | None = None


def context() -> OperatorContext:
    global _context
    if _context is None:
        _context = OperatorContext(api=load_client(), track_secrets=TRACK_SECRETS)
    return _context


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, **_) -> None:
    settings.persistence.finalizer = FINALIZER
    settings.peering.standalone = True
    settings.posting.level = logging.WARNING
    # kopf's own API calls are bounded too: a half-open watch is dropped and re-established.
    settings.watching.server_timeout = 60
    settings.watching.client_timeout = 90
    settings.watching.connect_timeout = 10
    settings.networking.connect_timeout = 10
    settings.networking.request_timeout = 30
    # A deleted release's finalizer goes only once its timer has stopped. A tick in flight (a
    # thread: it cannot be cancelled) is waited for briefly, then polled every second instead of
    # kopf's default minute, which kept a deleted release around for 60 s after its tick ended.
    settings.background.instant_exit_timeout = 0.5
    settings.background.cancellation_polling = 1.0
    context()


@kopf.timer(GROUP, VERSION, PLURAL, interval=TICK_SECONDS, sharp=False, backoff=TICK_SECONDS)
def tick(namespace: str, name: str, logger: logging.Logger, **_) -> None:
    # A failing tick is logged and retried on the next tick, never after kopf's one-minute backoff:
    # a rollback waiting on a transient API error must go out as soon as the API answers again.
    try:
        run_tick(context(), namespace, name, datetime.now(timezone.utc))
    except Exception as exc:  # noqa: BLE001
        logger.warning("tick failed, retried in %gs: %s: %s", TICK_SECONDS, type(exc).__name__, exc)


@kopf.on.event("", "v1", "configmaps")
def configmap_seen(event: dict, **_) -> None:
    """Tracked configuration (canarist.kube.configcache): a change is seen by the release's next tick."""
    context().config.on_event("ConfigMap", event.get("type"), event["object"])


if TRACK_SECRETS:
    @kopf.on.event("", "v1", "secrets")
    def secret_seen(event: dict, **_) -> None:
        context().config.on_event("Secret", event.get("type"), event["object"])


@kopf.on.delete(GROUP, VERSION, PLURAL)
def release(body: kopf.Body, retry: int, logger: logging.Logger, **_) -> None:
    """Hand the workload back, or leave the primary serving (canarist.handlers.finalize)."""
    try:
        logger.info(finalize_release(context(), dict(body)))
    except Retry as exc:
        raise kopf.TemporaryError(str(exc), delay=exc.delay) from exc
    except Exception as exc:  # noqa: BLE001 - the finalizer stays until the hand-over succeeded
        delay = min(2.0 ** min(retry, 5), 30.0)
        raise kopf.TemporaryError(f"finalization failed, retried in {delay:g}s: {type(exc).__name__}: {exc}",
                                  delay=delay) from exc
