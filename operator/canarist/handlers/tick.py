"""One reconcile tick of a CanaryRelease: read the world, run due gates, decide, write status, act.

Kept free of kopf so the same code runs under the operator and in tests. The status is written
before acting (write-ahead): if the operator dies after the write, the next tick re-sends the same
idempotent actions; if it dies before, the next tick decides again from the old status.

A tick and the finalizer of one release never run at once (`OperatorContext.lock`): a tick in
flight when the CanaryRelease is deleted finishes first, and a tick that starts later sees the
deletion and does nothing, so it can never re-adopt or recreate what the finalizer released.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
from dataclasses import dataclass, field
from datetime import datetime

import kubernetes
from kubernetes.client import ApiException
from pydantic import ValidationError

from canarist.analysis.gates import GateClients, GateTarget, count_pairs, run_comparison_gates, run_gates
from canarist.api.crd import GROUP, PLURAL, VERSION
from canarist.api.spec import CanaryReleaseSpec
from canarist.api.status import CanaryReleaseStatus, PendingEvent, Phase, TrackedConfig
from canarist.engine import (Action, EnsureApex, EnsurePrimary, EnsureServices, Event, Requests, ScaleCanary,
                             SetRoute, World, active_analysis, analysis_due, comparisons_due, decide, in_shadow)
from canarist.engine.conditions import set_condition
from canarist.engine.decide import ROLLOUT_PHASES
from canarist.engine.plan import apply_in_order
from canarist.kube.events import post_event
from canarist.kube.autoscaling import AutoscalingProblem
from canarist.kube.configcache import ConfigCache
from canarist.kube.configcopies import ForeignCopy
from canarist.kube.configtracking import TrackedObject, name_problems, references, revision_of_target
from canarist.kube.rejections import Rejections, describe, is_rejection, retry_after
from canarist.kube.status import StaleRead, confirm_weight, replace_status
from canarist.kube.workloads import (WorkloadProblem, Workloads, availability, canary_service_name, is_ready,
                                     primary_name, template_hash)
from canarist.routing.base import RoutingError, RoutingUnavailable
from canarist.routing.gatewayapi import CohortRule, GatewayAPIRouter

log = logging.getLogger(__name__)

ANNOTATION_PREFIX = "canarist.dev/"


@dataclass
class OperatorContext:
    api: kubernetes.client.ApiClient
    gates: GateClients = field(default_factory=GateClients)
    rejections: Rejections = field(default_factory=Rejections)
    config: ConfigCache = field(default_factory=ConfigCache)
    track_secrets: bool = True  # else Secrets are shared by primary and canary, never read
    _locks: dict[tuple[str, str], threading.Lock] = field(default_factory=dict)
    _locks_guard: threading.Lock = field(default_factory=threading.Lock)

    def lock(self, namespace: str, name: str) -> threading.Lock:
        """The lock a tick and the finalizer of one release share."""
        with self._locks_guard:
            return self._locks.setdefault((namespace, name), threading.Lock())


def owner_reference(body: dict) -> dict:
    return {"apiVersion": body["apiVersion"], "kind": body["kind"], "name": body["metadata"]["name"],
            "uid": body["metadata"]["uid"], "controller": True, "blockOwnerDeletion": True}


def read_requests(body: dict) -> Requests:
    annotations = body["metadata"].get("annotations") or {}

    def token(action: str) -> str | None:
        value = annotations.get(ANNOTATION_PREFIX + action)
        return value or None

    return Requests(abort=token("abort"), promote=token("promote"), retry=token("retry"),
                    paused=annotations.get(ANNOTATION_PREFIX + "paused", "").lower() in ("true", "1", "yes"))


def router_for(ctx: OperatorContext, body: dict, spec: CanaryReleaseSpec | None, target: str) -> GatewayAPIRouter:
    """The release's router; without a valid spec it can still move weights and release the route."""
    gw = spec.routing.gateway_api if spec is not None else None
    return GatewayAPIRouter(
        ctx.api, body["metadata"]["namespace"], target, owner_reference(body),
        parent_refs=[p.to_k8s() for p in gw.parent_refs] if gw else None, hostnames=gw.hostnames if gw else None,
        matches=[m if isinstance(m, dict) else m.to_k8s() for m in gw.matches] if gw else None,
        port=spec.service.port if spec is not None else None,
        primary_service=primary_name(target), canary_service=canary_service_name(target))


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


def read_release(ctx: OperatorContext, namespace: str, name: str) -> dict | None:
    try:
        return kubernetes.client.CustomObjectsApi(ctx.api).get_namespaced_custom_object(
            GROUP, VERSION, namespace, PLURAL, name)
    except ApiException as exc:
        if exc.status == 404:
            return None
        raise


def read_status(body: dict) -> CanaryReleaseStatus | None:
    try:
        return CanaryReleaseStatus.model_validate(body.get("status") or {})
    except ValidationError as exc:
        log.error("%s/%s: status cannot be read (%s); leaving the release as it is",
                  body["metadata"]["namespace"], body["metadata"]["name"], exc)
        return None


def run_tick(ctx: OperatorContext, namespace: str, name: str, now: datetime) -> None:
    with ctx.lock(namespace, name):
        body = read_release(ctx, namespace, name)
        if body is None or body["metadata"].get("deletionTimestamp"):
            return  # the finalizer owns a release being deleted
        _tick(ctx, body, now)


def _tick(ctx: OperatorContext, body: dict, now: datetime) -> None:
    namespace, name, uid = body["metadata"]["namespace"], body["metadata"]["name"], body["metadata"]["uid"]
    status = read_status(body)
    if status is None:
        return
    generation = body["metadata"].get("generation")
    try:
        spec = CanaryReleaseSpec.model_validate(body.get("spec") or {})
    except ValidationError as exc:
        _invalid_spec(ctx, body, status, validation_message(exc), now, generation)
        return

    workloads = Workloads(ctx.api, namespace, spec.target_ref.name, owner_reference(body))
    router = router_for(ctx, body, spec, spec.target_ref.name)
    problems: list[str] = []
    target = workloads.read_target()
    tracked: list[TrackedObject] = []
    if target is None:
        problems.append(f"spec.targetRef.name: Deployment {spec.target_ref.name!r} not found in namespace "
                        f"{namespace!r}; create it or fix the name")
    else:
        try:
            workloads.selector(target)
        except WorkloadProblem as exc:
            problems.append(str(exc))
        problems += workloads.service_problems()
        tracked, missing = tracked_config(ctx, namespace, target)
        problems += missing
    routing_available, routed, mirrored, routed_cohorts = True, None, 0, None
    try:
        route = router.get_route()
        if route is not None:
            routed, mirrored, routed_cohorts = route.canary, route.mirror, route.cohorts
    except RoutingError as exc:  # RoutingUnavailable included: the route's CRDs are missing
        problems.append(str(exc))
        routing_available = not isinstance(exc, RoutingUnavailable)
    primary = workloads.read_primary()
    if primary is not None and Workloads.orphaned(primary["metadata"]) and not problems:
        # Left serving by an earlier CanaryRelease of this target: adopted with the revision it serves.
        primary = workloads.adopt_primary(primary)
        workloads.config_copies.adopt()
    foreign_primary = workloads.primary_problem(primary)
    if foreign_primary:
        problems.append(foreign_primary)
    target_template = template_hash(target) if target else None
    target_revision = revision_of_target(target_template, tracked) if target_template else None
    # A refused write is tried again once the CanaryRelease's or the target's spec changes.
    rejection_key = (generation, (target or {}).get("metadata", {}).get("generation"))
    rejected = ctx.rejections.active(uid, rejection_key)
    if rejected:
        problems.append(rejected)
    mirror_problem = None
    if (spec.shadow is not None and spec.shadow.mirror == "Route" and not problems
            and (target_revision != status.revisions.primary or in_shadow(status))):
        mirror_problem = router.mirror_problem()  # only while a release is pending or shadowing
    warnings = None
    if target is not None and not problems and status.phase in (None, Phase.INITIALIZING):
        warnings = tuple(workloads.bypasses(target, spec.service.adopt_target_service))

    checks, comparisons, evidence, pairs = None, None, None, None
    analysis = active_analysis(status)
    if not problems and target_revision == status.revisions.canary and analysis is not None:
        where = GateTarget(namespace, name, spec.target_ref.name, step_started_at=status.step_started_at or now,
                           rollout_started_at=status.rollout_started_at or status.step_started_at or now,
                           cohorts=tuple(status.pinned_cohorts or ()))
        if analysis_due(status, now):
            checks = run_gates(analysis, where, ctx.gates, now)
            if in_shadow(status):
                pairs = count_pairs(analysis, where, ctx.gates, now)
        if comparisons_due(status) and analysis.compare:
            comparisons, evidence = run_comparison_gates(analysis, where, ctx.gates, status.evidence,
                                                         now, status.step_index)

    canary_ok, canary_why = availability(target) if target else (False, "the canary Deployment is missing")
    matches_canary = bool(target) and target_revision == status.revisions.canary
    world = World(
        target_revision=target_revision,
        target_template=target_template,
        target_config=tuple(TrackedConfig(kind=t.kind, name=t.name, hash=t.digest) for t in tracked),
        canary_has_pods=Workloads.has_pods(target),
        primary_revision=Workloads.revision_of(primary),
        primary_ready=is_ready(primary),
        canary_ready=bool(target) and workloads.canary_ready(target, status.revisions.canary, target_revision),
        canary_available=matches_canary and canary_ok,
        canary_unavailable_reason=canary_why,
        routed_weight=routed,
        routed_mirror=mirrored,
        routed_cohorts=routed_cohorts,
        mirror_problem=mirror_problem,
        shadow_pairs=pairs,
        problems=tuple(problems),
        routing_available=routing_available,
        requests=read_requests(body),
        checks=checks,
        comparisons=comparisons,
        evidence=evidence,
        warnings=warnings,
    )
    # The last transition's events that may not be out yet (the operator died after writing it).
    post_pending(ctx, body, status, now)
    decision = decide(spec, status, world, now, generation)
    # A transition's events are recorded in the status write that makes it, and posted after it
    # under names derived from it: killed before the write, nothing happened and nothing is told;
    # killed after it, the next tick posts them; posted twice, the second is refused by name.
    transition = hashlib.sha256(json.dumps(status.to_k8s(), sort_keys=True).encode()).hexdigest()
    decision.status.pending_events = [
        PendingEvent(key=hashlib.sha256(f"{uid}/{transition}/{index}/{event.reason}".encode()).hexdigest()[:20],
                     reason=event.reason, message=event.message[:1024], type=event.type)
        for index, event in enumerate(decision.events)]
    if decision.status != status:
        try:
            replace_status(ctx.api, body, decision.status)
        except StaleRead:
            log.info("%s/%s changed during the tick; deciding again next tick", namespace, name)
            return
        post_pending(ctx, body, decision.status, now)

    refused: list[tuple[Action, Exception]] = []

    def apply(action: Action) -> None:
        nonlocal primary
        if isinstance(action, SetRoute):
            _set_route(router, action, refused)
        elif target is None:
            return
        elif isinstance(action, EnsureServices):
            workloads.ensure_services(target, spec.service.port, spec.service.target_port)
        elif isinstance(action, EnsurePrimary):
            workloads.ensure_primary(target, action.revision, tracked)
            primary = workloads.read_primary()
        elif isinstance(action, ScaleCanary):
            workloads.scale_canary(target, primary, action.up)
        elif isinstance(action, EnsureApex):
            workloads.ensure_apex(target, spec.service.adopt_target_service)

    outcome = apply_in_order(decision.actions, apply)
    routed_now = next((a.canary for a in reversed(outcome.applied) if isinstance(a, SetRoute)), None)
    if routed_now is not None and routed_now != decision.status.canary_weight:
        confirm_weight(ctx.api, body, routed_now)
    if outcome.failed is not None and outcome.error is not None:
        refused.append((outcome.failed, outcome.error))
    for action, exc in refused:
        if isinstance(exc, ApiException) and is_rejection(exc):
            message = describe(action, exc, namespace, spec.target_ref.name)
            ctx.rejections.record(uid, rejection_key, message, retry_after(exc))
        elif isinstance(exc, (WorkloadProblem, AutoscalingProblem, ForeignCopy)):
            message = str(exc)  # names the object and the fix
            ctx.rejections.record(uid, rejection_key, message, retry_after=30.0)
        else:
            continue
        log.warning("%s/%s: %s", namespace, name, message)
    if outcome.error is not None:
        assert outcome.failed is not None
        log.warning("%s/%s: %s failed, %d later action(s) wait for the next tick: %s", namespace, name,
                    type(outcome.failed).__name__, len(outcome.skipped), outcome.error)
        raise outcome.error


def tracked_config(ctx: OperatorContext, namespace: str, target: dict) -> tuple[list[TrackedObject], list[str]]:
    """The target's tracked ConfigMaps and Secrets (from the watch-fed cache), and what blocks it."""
    refs = [r for r in references(target["spec"]["template"]) if ctx.track_secrets or r.kind != "Secret"]
    tracked, problems = ctx.config.tracked(ctx.api, namespace, target["metadata"]["name"], refs)
    return tracked, problems + name_problems(tracked)


def post_pending(ctx: OperatorContext, body: dict, status: CanaryReleaseStatus, now: datetime) -> None:
    for pending in status.pending_events:
        post_event(ctx.api, body, Event(pending.reason, pending.message, pending.type), now, pending.key)


def _set_route(router: GatewayAPIRouter, action: SetRoute, refused: list) -> None:
    try:
        router.ensure(action.primary, action.canary, action.mirror,
                      [CohortRule(c.name, tuple(m.to_k8s() for m in c.matches), weight) for c, weight in action.cohorts])
    except ApiException as exc:
        if not is_rejection(exc) or action.canary != 0:
            raise
        # The route built from the spec is refused, but users must still leave the canary: move
        # the weights of the route in force (done, the canary may scale down), and report the refusal.
        if not router.reweight(action.primary, action.canary):
            raise  # no route in force to move: what depends on it must wait
        refused.append((action, exc))


def _invalid_spec(ctx: OperatorContext, body: dict, status: CanaryReleaseStatus, message: str, now: datetime,
                  generation: int | None) -> None:
    """An invalid spec never touches the stable version; mid-rollout it sends users back to it."""
    updated = status.model_copy(deep=True)
    updated.message = f"invalid spec: {message}"
    target = raw_target_name(body)
    if status.phase in ROLLOUT_PHASES and (status.step_weight > 0 or status.canary_weight > 0
                                           or in_shadow(status)) and target:
        updated.blocked_since = updated.blocked_since or now
        try:
            router_for(ctx, body, None, target).reweight(100, 0)  # no route: nobody is routed to the canary
            updated.step_weight = updated.canary_weight = 0
            updated.message += ("; all traffic is back on the primary, and the steps restart from the first "
                                "once the spec is fixed")
        except Exception as exc:  # noqa: BLE001 - reported in status, retried next tick
            updated.message += f"; could not send the canary's users back to the primary yet: {exc}"
    updated.observed_generation = generation
    updated.conditions = set_condition(updated.conditions, "Ready", False, "InvalidSpec", message, now, generation)
    if updated != status:
        try:
            replace_status(ctx.api, body, updated)
        except StaleRead:
            pass
