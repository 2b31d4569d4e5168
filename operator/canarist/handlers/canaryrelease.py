"""The only place kopf appears: thin handlers that call the tick and the finalizer.

All rollout state lives in the CanaryRelease status; nothing here keeps state between ticks,
so the operator can be killed at any moment and resume from status.
"""

from __future__ import annotations

import logging
import os
from datetime import datetime, timezone

import kopf
import kubernetes

from canarist.api.crd import GROUP, PLURAL, VERSION
from canarist.api.spec import CanaryReleaseSpec
from canarist.kube.workloads import Workloads, canary_service_name, is_ready, primary_name

from .tick import OperatorContext, owner_reference, router_for, run_tick

TICK_SECONDS = float(os.environ.get("CANARIST_TICK_SECONDS", "5"))
FINALIZER = "canarist.dev/finalizer"
_context: OperatorContext | None = None


def _load_kube_config() -> kubernetes.client.ApiClient:
    try:
        kubernetes.config.load_incluster_config()
    except kubernetes.config.ConfigException:
        kubernetes.config.load_kube_config()
    return kubernetes.client.ApiClient()


def context() -> OperatorContext:
    global _context
    if _context is None:
        _context = OperatorContext(api=_load_kube_config())
    return _context


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, **_) -> None:
    settings.persistence.finalizer = FINALIZER
    settings.peering.standalone = True
    settings.posting.level = logging.WARNING
    settings.watching.server_timeout = 60
    context()


@kopf.timer(GROUP, VERSION, PLURAL, interval=TICK_SECONDS, sharp=False)
def tick(namespace: str, name: str, **_) -> None:
    run_tick(context(), namespace, name, datetime.now(timezone.utc))


@kopf.on.delete(GROUP, VERSION, PLURAL)
def restore_target(body: kopf.Body, namespace: str, retry: int, logger: logging.Logger, **_) -> None:
    """Hand the workload back: the target serves again through its own Service, then GC removes the rest."""
    ctx = context()
    raw = dict(body)
    try:
        spec = CanaryReleaseSpec.model_validate(raw.get("spec") or {})
    except ValueError:
        return  # nothing was ever created for an invalid spec
    workloads = Workloads(ctx.api, namespace, spec.target_ref.name, owner_reference(raw))
    target, primary = workloads.read_target(), workloads.read_primary()
    if target is not None:
        workloads.scale_canary(target, primary, up=True)
        # Wait (bounded) for the target's pods before moving traffic off the primary.
        if not is_ready(workloads.read_target()) and retry < 30:
            raise kopf.TemporaryError(f"waiting for Deployment {spec.target_ref.name} to be Ready", delay=2)
    router = router_for(ctx, raw, spec)
    try:
        router.finalize(keep_serving=canary_service_name(spec.target_ref.name) if target is not None else None)
        workloads.release_canary_service()
    except Exception as exc:  # routing may be gone (CRDs removed); deletion must not hang on it
        logger.warning("could not hand the route over: %s", exc)
    logger.info("released %s; %s and its Service are removed by garbage collection",
                spec.target_ref.name, primary_name(spec.target_ref.name))
