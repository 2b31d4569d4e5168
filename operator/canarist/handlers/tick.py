"""One reconcile tick of a CanaryRelease: read the world, run due gates, decide, write status, act.

Kept free of kopf so the same code runs under the operator and in tests. The status is written
before acting (write-ahead): if the operator dies after the write, the next tick re-sends the same
idempotent actions; if it dies before, the next tick decides again from the old status.
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

from canarist.analysis.gates import GateClients, GateTarget, run_gates
from canarist.api.crd import GROUP, PLURAL, VERSION
from canarist.api.spec import CanaryReleaseSpec
from canarist.api.status import CanaryReleaseStatus
from canarist.engine import (EnsurePrimary, EnsureServices, Requests, ScaleCanary, SetRoute, World, analysis_due,
                             decide)
from canarist.engine.conditions import set_condition
from canarist.kube.events import post_event
from canarist.kube.status import StaleRead, replace_status
from canarist.kube.workloads import (WorkloadProblem, Workloads, canary_service_name, is_ready, primary_name,
                                     template_hash)
from canarist.routing.base import RoutingError, RoutingUnavailable
from canarist.routing.gatewayapi import GatewayAPIRouter

log = logging.getLogger(__name__)

ANNOTATION_PREFIX = "canarist.dev/"


@dataclass
class OperatorContext:
    api: kubernetes.client.ApiClient
    gates: GateClients = field(default_factory=GateClients)


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


def router_for(ctx: OperatorContext, body: dict, spec: CanaryReleaseSpec) -> GatewayAPIRouter:
    gw = spec.routing.gateway_api
    target = spec.target_ref.name
    return GatewayAPIRouter(
        ctx.api, body["metadata"]["namespace"], target, owner_reference(body),
        parent_refs=[p.to_k8s() for p in gw.parent_refs], hostnames=gw.hostnames, matches=gw.matches,
        port=spec.service.port, primary_service=primary_name(target), canary_service=canary_service_name(target))


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


def run_tick(ctx: OperatorContext, namespace: str, name: str, now: datetime) -> None:
    body = read_release(ctx, namespace, name)
    if body is None or body["metadata"].get("deletionTimestamp"):
        return
    status = CanaryReleaseStatus.model_validate(body.get("status") or {})
    generation = body["metadata"].get("generation")
    try:
        spec = CanaryReleaseSpec.model_validate(body.get("spec") or {})
    except ValidationError as exc:
        _write_invalid(ctx, body, status, validation_message(exc), now, generation)
        return

    workloads = Workloads(ctx.api, namespace, spec.target_ref.name, owner_reference(body))
    router = router_for(ctx, body, spec)
    problems: list[str] = []
    target = workloads.read_target()
    if target is None:
        problems.append(f"spec.targetRef.name: Deployment {spec.target_ref.name!r} not found in namespace "
                        f"{namespace!r}; create it or fix the name")
    else:
        try:
            workloads.selector(target)
        except WorkloadProblem as exc:
            problems.append(str(exc))
        problems += workloads.service_problems()
    routing_available = True
    try:
        router.get_weights()
    except RoutingUnavailable as exc:
        problems.append(str(exc))
        routing_available = False
    except RoutingError as exc:
        problems.append(str(exc))
        routing_available = False
    primary = workloads.read_primary()
    foreign_primary = workloads.primary_problem(primary)
    if foreign_primary:
        problems.append(foreign_primary)
    target_revision = template_hash(target) if target else None

    checks = None
    if not problems and analysis_due(status, now) and target_revision == status.revisions.canary:
        where = GateTarget(namespace, name, spec.target_ref.name, step_started_at=status.step_started_at or now,
                           rollout_started_at=status.rollout_started_at or status.step_started_at or now)
        checks = run_gates(status.pinned_analysis, where, ctx.gates, now)

    world = World(
        target_revision=target_revision,
        primary_revision=Workloads.revision_of(primary),
        primary_ready=is_ready(primary),
        canary_ready=bool(target) and workloads.canary_ready(target, status.revisions.canary),
        problems=tuple(problems),
        routing_available=routing_available,
        requests=read_requests(body),
        checks=checks,
    )
    decision = decide(spec, status, world, now, generation)
    # Events go out before the status write that records their transition: were the operator
    # killed in between, the replayed tick posts the same events under the same names (no loss,
    # no duplicate). Killed after the write, the transition is done and its events are out.
    transition = hashlib.sha256(json.dumps(status.to_k8s(), sort_keys=True).encode()).hexdigest()
    for index, event in enumerate(decision.events):
        key = hashlib.sha256(f"{body['metadata']['uid']}/{transition}/{index}/{event.reason}".encode())
        post_event(ctx.api, body, event, now, key.hexdigest()[:20])
    if decision.status != status:
        try:
            replace_status(ctx.api, body, decision.status)
        except StaleRead:
            log.info("%s/%s changed during the tick; deciding again next tick", namespace, name)
            return
    # Each action on its own: one failing (say, a Service write) must not keep the route from moving.
    failures = []
    for action in decision.actions:
        try:
            _apply(action, ctx, workloads, router, spec, target, primary)
            if isinstance(action, EnsurePrimary):
                primary = workloads.read_primary()
        except Exception as exc:
            log.warning("%s/%s: %s failed: %s", namespace, name, type(action).__name__, exc)
            failures.append(exc)
    if failures:
        raise failures[0]  # kopf logs it; the next tick re-sends every action


def _apply(action, ctx: OperatorContext, workloads: Workloads, router: GatewayAPIRouter,
           spec: CanaryReleaseSpec, target: dict | None, primary: dict | None) -> None:
    if isinstance(action, SetRoute):
        router.ensure(action.primary, action.canary)
    elif target is None:
        return
    elif isinstance(action, EnsureServices):
        workloads.ensure_services(target, spec.service.port, spec.service.target_port)
    elif isinstance(action, EnsurePrimary):
        workloads.ensure_primary(target, action.revision)
    elif isinstance(action, ScaleCanary):
        workloads.scale_canary(target, primary, action.up)


def _write_invalid(ctx: OperatorContext, body: dict, status: CanaryReleaseStatus, message: str, now: datetime,
                   generation: int | None) -> None:
    updated = status.model_copy(deep=True)
    updated.message = f"invalid spec: {message}"
    updated.observed_generation = generation
    updated.conditions = set_condition(updated.conditions, "Ready", False, "InvalidSpec", message, now, generation)
    if updated != status:
        try:
            replace_status(ctx.api, body, updated)
        except StaleRead:
            pass
