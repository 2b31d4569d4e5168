"""One reconcile tick of a CanaryRelease: observe, decide, write status, act.

The flow is one way: observe (`observe.py`: the world from the watch-fed caches and the gate
runner's results) -> decide (the pure engine) -> write the status -> act (`act.py`). Kept free of
kopf so the same code runs under the operator and in tests. The status is written before acting
(write-ahead): if the operator dies after the write, the next tick re-sends the same idempotent
actions; if it dies before, the next tick decides again from the old status.

A tick and the finalizer of one release never run at once (`OperatorContext.lock`): a tick in
flight when the CanaryRelease is deleted finishes first, and a tick that starts later sees the
deletion (or the finalizer's mark) and does nothing, so it can never re-adopt or recreate what
the finalizer released.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field
from datetime import datetime

import kubernetes
from kubernetes.client import ApiException
from pydantic import ValidationError

from canarist.api.crd import GROUP, PLURAL, VERSION
from canarist.api.spec import CanaryReleaseSpec
from canarist.api.status import CanaryReleaseStatus, Check, PendingEvent
from canarist.engine import Event, decide, in_shadow, next_check_at
from canarist.engine.conditions import set_condition
from canarist.engine.decide import ROLLOUT_PHASES
from canarist.kube.events import post_event
from canarist.kube.status import StaleRead, confirm_weight, replace_status

from .act import ActionFailed, act
from .context import OperatorContext
from .observe import observe, owner_reference, release_router, tracked_config
from .requests import read_requests

log = logging.getLogger(__name__)

KIND = "CanaryRelease"  # in the watch-fed cache
__all__ = ["OperatorContext", "Ticked", "run_tick", "owner_reference", "raw_target_name", "read_requests",
           "router_for", "tracked_config"]


@dataclass
class Ticked:
    """What a tick did, for its scheduler and the operator's metrics."""

    next_in: float | None = None  # seconds until the release next needs a tick (None: nothing due)
    gone: bool = False            # the CanaryRelease does not exist any more
    phase_before: str | None = None
    status_after: CanaryReleaseStatus | None = None
    checks: tuple[Check, ...] | None = None
    events: list[Event] = field(default_factory=list)
    config: list[tuple[str, str]] | None = None  # (kind, name) of the tracked configuration it read


def router_for(ctx: OperatorContext, body: dict, spec: CanaryReleaseSpec | None, target: str, fresh: bool = False):
    """The release's router (the finalizer's way in); reads from the API when `fresh`."""
    return release_router(ctx, body, spec, target, fresh)


def raw_target_name(body: dict) -> str | None:
    """targetRef.name as written, even when the rest of the spec is invalid (it is immutable)."""
    name = ((body.get("spec") or {}).get("targetRef") or {}).get("name")
    return name if isinstance(name, str) and name else None


def validation_message(error: ValidationError) -> str:
    parts = []
    for item in error.errors():
        path = "spec"
        for loc in item["loc"]:
            path += f"[{loc}]" if isinstance(loc, int) else f".{loc}"
        parts.append(f"{path}: {item['msg']}")
    return "; ".join(parts)


def read_release(ctx: OperatorContext, namespace: str, name: str, fresh: bool = False) -> dict | None:
    def read() -> dict | None:
        try:
            return kubernetes.client.CustomObjectsApi(ctx.api).get_namespaced_custom_object(
                GROUP, VERSION, namespace, PLURAL, name)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise
    return ctx.objects.get(KIND, namespace, name, read, fresh=fresh)


def read_status(body: dict) -> CanaryReleaseStatus | None:
    try:
        return CanaryReleaseStatus.model_validate(body.get("status") or {})
    except ValidationError as exc:
        log.error("%s/%s: status cannot be read (%s); leaving the release as it is",
                  body["metadata"]["namespace"], body["metadata"]["name"], exc)
        return None


def run_tick(ctx: OperatorContext, namespace: str, name: str, now: datetime, fresh: bool = False) -> Ticked:
    """One tick. `fresh` reads everything from the API (refreshing the caches) instead of the caches."""
    with ctx.lock(namespace, name):
        body = read_release(ctx, namespace, name, fresh)
        if body is None and not fresh:
            body = read_release(ctx, namespace, name, fresh=True)  # gone is final: the API confirms it
        if body is None:
            return Ticked(gone=True)
        if body["metadata"].get("deletionTimestamp") or ctx.is_finalized(body["metadata"]["uid"]):
            return Ticked()  # the finalizer owns a release being deleted
        return _tick(ctx, body, now, fresh)


def _tick(ctx: OperatorContext, body: dict, now: datetime, fresh: bool) -> Ticked:
    namespace, name, uid = body["metadata"]["namespace"], body["metadata"]["name"], body["metadata"]["uid"]
    status = read_status(body)
    if status is None:
        return Ticked()
    generation = body["metadata"].get("generation")
    try:
        spec = CanaryReleaseSpec.model_validate(body.get("spec") or {})
    except ValidationError as exc:
        _invalid_spec(ctx, body, status, validation_message(exc), now, generation)
        return Ticked(phase_before=_phase(status), status_after=status)

    seen = observe(ctx, body, spec, status, now, fresh)
    # The last transition's events that may not be out yet (the operator died after writing it).
    post_pending(ctx, body, status, now)
    decision = decide(spec, status, seen.world, now, generation)
    # A transition's events are recorded in the status write that makes it, and posted after it
    # under names derived from it: killed before the write, nothing happened and nothing is told;
    # killed after it, the next tick posts them; posted twice, the second is refused by name.
    transition = hashlib.sha256(json.dumps(status.to_k8s(), sort_keys=True).encode()).hexdigest()
    decision.status.pending_events = [
        PendingEvent(key=hashlib.sha256(f"{uid}/{transition}/{index}/{event.reason}".encode()).hexdigest()[:20],
                     reason=event.reason, message=event.message[:1024], type=event.type)
        for index, event in enumerate(decision.events)]
    ticked = Ticked(next_in=next_tick_in(decision.status, now, seen.gates_pending), phase_before=_phase(status),
                    status_after=decision.status, checks=seen.world.checks, events=list(decision.events),
                    config=[(t.kind, t.name) for t in seen.tracked])
    if decision.status != status:
        try:
            ctx.objects.put(KIND, replace_status(ctx.api, body, decision.status))
        except StaleRead:
            log.info("%s/%s changed during the tick; deciding again next tick", namespace, name)
            read_release(ctx, namespace, name, fresh=True)  # the cache has not seen the change yet
            return Ticked(next_in=0.0, phase_before=_phase(status))
        post_pending(ctx, body, decision.status, now)

    try:
        routed_now = act(ctx, body, spec, seen, decision)
    except ActionFailed as failed:
        _confirm(ctx, body, decision.status, failed.routed)
        raise failed.error from None
    _confirm(ctx, body, decision.status, routed_now)
    return ticked


def _phase(status: CanaryReleaseStatus) -> str | None:
    return status.phase.value if status.phase is not None else None


def _confirm(ctx: OperatorContext, body: dict, status: CanaryReleaseStatus, routed: int | None) -> None:
    """Record the canary weight a route write just put in force: status tells what users get."""
    if routed is not None and routed != status.canary_weight:
        updated = confirm_weight(ctx.api, body, routed)
        if updated is not None:
            ctx.objects.put(KIND, updated)


def next_tick_in(status: CanaryReleaseStatus, now: datetime, gates_pending: bool) -> float | None:
    """Seconds until the next analysis check is due; None when nothing is (the resync period, and
    watch events, pace the release) or a gate run is in flight (its end wakes the release).

    A check still due after the decision did not run: the release waits on its world (canary pods
    not ready, a missing object, a revision not rolled out yet), and a change there is a watch
    event that wakes it. Asking for a tick at once would spin on the tick workers until then."""
    if gates_pending:
        return None
    at = next_check_at(status)
    if at is None or at <= now:
        return None
    return (at - now).total_seconds()


def post_pending(ctx: OperatorContext, body: dict, status: CanaryReleaseStatus, now: datetime) -> None:
    for pending in status.pending_events:
        if not ctx.was_posted(pending.key) and post_event(
                ctx.api, body, Event(pending.reason, pending.message, pending.type), now, pending.key):
            ctx.posted(pending.key)


def _invalid_spec(ctx: OperatorContext, body: dict, status: CanaryReleaseStatus, message: str, now: datetime,
                  generation: int | None) -> None:
    """An invalid spec never touches the stable version; mid-rollout it sends users back to it."""
    updated = status.model_copy(deep=True)
    updated.message = f"invalid spec: {message}"
    target = raw_target_name(body)
    back = "; all traffic is back on the primary, and the steps restart from the first once the spec is fixed"
    if status.phase in ROLLOUT_PHASES and (status.step_weight > 0 or status.canary_weight > 0
                                           or in_shadow(status)) and target:
        updated.blocked_since = updated.blocked_since or now
        try:
            router_for(ctx, body, None, target).reweight(100, 0)  # no route: nobody is routed to the canary
            updated.step_weight = updated.canary_weight = 0
            updated.message += back
        except Exception as exc:  # noqa: BLE001 - reported in status, retried next tick
            updated.message += f"; could not send the canary's users back to the primary yet: {exc}"
    elif status.phase in ROLLOUT_PHASES and status.blocked_since is not None:
        updated.message += back  # said again on later ticks: it is still so
    updated.observed_generation = generation
    updated.conditions = set_condition(updated.conditions, "Ready", False, "InvalidSpec", message, now, generation)
    if updated != status:
        try:
            replace_status(ctx.api, body, updated)
        except StaleRead:
            pass
