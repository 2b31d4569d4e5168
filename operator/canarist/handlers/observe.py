"""Observe: the world of one release as the engine needs it, read from the watch-fed caches.

Nothing here writes, except adopting a primary an earlier CanaryRelease of the target left serving
(an ownerReference only). Gate results come from the gate runner (`canarist.analysis.runner`):
a tick that finds checks due starts a run and goes on; a later tick takes the result.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from canarist.analysis.gates import GateTarget, count_pairs, run_comparison_gates, run_gates
from canarist.api.spec import Analysis, CanaryReleaseSpec
from canarist.api.status import CanaryReleaseStatus, Check, Evidence, Phase, TrackedConfig
from canarist.engine import World, active_analysis, analysis_due, comparisons_due, in_shadow
from canarist.kube.configtracking import TrackedObject, name_problems, references, revision_of_target
from canarist.kube.workloads import (WorkloadProblem, Workloads, availability, canary_service_name, is_ready,
                                     primary_name, template_hash)
from canarist.routing import RoutingError, RoutingUnavailable, TrafficRouter, router_for

from .context import OperatorContext
from .requests import read_requests


def owner_reference(body: dict) -> dict:
    return {"apiVersion": body["apiVersion"], "kind": body["kind"], "name": body["metadata"]["name"],
            "uid": body["metadata"]["uid"], "controller": True, "blockOwnerDeletion": True}


def release_router(ctx: OperatorContext, body: dict, spec: CanaryReleaseSpec | None, target: str,
                   fresh: bool = False) -> TrafficRouter:
    """The release's router; without a valid spec it can still move weights and release the route."""
    return router_for(ctx.api, body["metadata"]["namespace"], target, owner_reference(body), spec,
                      primary_name(target), canary_service_name(target), cache=ctx.objects, fresh=fresh)


def tracked_config(ctx: OperatorContext, namespace: str, target: dict) -> tuple[list[TrackedObject], list[str]]:
    """The target's tracked ConfigMaps and Secrets (from the watch-fed cache), and what blocks it."""
    refs = [r for r in references(target["spec"]["template"]) if ctx.track_secrets or r.kind != "Secret"]
    tracked, problems = ctx.config.tracked(ctx.api, namespace, target["metadata"]["name"], refs)
    return tracked, problems + name_problems(tracked)


@dataclass
class Observed:
    """One tick's view of a release, and the handles the actions need."""

    world: World
    workloads: Workloads
    router: TrafficRouter
    target: dict | None
    primary: dict | None
    tracked: list[TrackedObject]
    rejection_key: tuple[Any, Any]
    gates_pending: bool  # a gate run is in flight: its result wakes the release


@dataclass(frozen=True)
class GateResults:
    checks: tuple[Check, ...] | None = None
    comparisons: tuple[Check, ...] | None = None
    evidence: tuple[Evidence, ...] | None = None
    pairs: int | None = None


def observe(ctx: OperatorContext, body: dict, spec: CanaryReleaseSpec, status: CanaryReleaseStatus, now: datetime,
            fresh: bool = False) -> Observed:
    namespace, name, uid = body["metadata"]["namespace"], body["metadata"]["name"], body["metadata"]["uid"]
    generation = body["metadata"].get("generation")
    workloads = Workloads(ctx.api, namespace, spec.target_ref.name, owner_reference(body), cache=ctx.objects,
                          fresh=fresh)
    router = release_router(ctx, body, spec, spec.target_ref.name, fresh)
    problems: list[str] = []
    target = workloads.read_target()
    tracked: list[TrackedObject] = []
    if target is None:
        problems.append(f"spec.targetRef.name: Deployment {spec.target_ref.name!r} not found in namespace "
                        f"{namespace!r}; create it or fix the name")
    else:
        try:
            workloads.selector(target)
        except WorkloadProblem as exc:  # names the fix
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

    gates, pending = GateResults(), False
    analysis = active_analysis(status)
    if not problems and target_revision == status.revisions.canary and analysis is not None:
        where = GateTarget(namespace, name, spec.target_ref.name, step_started_at=status.step_started_at or now,
                           rollout_started_at=status.rollout_started_at or status.step_started_at or now,
                           cohorts=tuple(status.pinned_cohorts or ()))
        gates, pending = gate_results(ctx, (namespace, name), analysis, where, status, now)

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
        shadow_pairs=gates.pairs,
        problems=tuple(problems),
        routing_available=routing_available,
        requests=read_requests(body),
        checks=gates.checks,
        comparisons=gates.comparisons,
        evidence=gates.evidence,
        warnings=warnings,
    )
    return Observed(world, workloads, router, target, primary, tracked, rejection_key, pending)


def _run_due_gates(ctx: OperatorContext, analysis: Analysis, where: GateTarget, status: CanaryReleaseStatus,
                   now: datetime, checks_due: bool, compare_due: bool) -> GateResults:
    checks, pairs, comparisons, evidence = None, None, None, None
    if checks_due:
        checks = run_gates(analysis, where, ctx.gates, now)
        if in_shadow(status):
            pairs = count_pairs(analysis, where, ctx.gates, now)
    if compare_due:
        comparisons, evidence = run_comparison_gates(analysis, where, ctx.gates, status.evidence, now,
                                                     status.step_index)
    return GateResults(checks, comparisons, evidence, pairs)


def gate_step(status: CanaryReleaseStatus) -> tuple:
    """What a gate run judges: its result is used only while the release is still at this step."""
    return (status.revisions.canary, status.rollout_started_at, status.step_index, status.step_started_at,
            in_shadow(status), status.phase)


def gate_results(ctx: OperatorContext, key: tuple[str, str], analysis: Analysis, where: GateTarget,
                 status: CanaryReleaseStatus, now: datetime) -> tuple[GateResults, bool]:
    """The gates' results for this tick, and whether a run is still in flight.

    Without a runner the due gates run here. With one, a finished run for this step is taken, and
    due gates start a run that a later tick takes (the release is woken when it is done).
    """
    checks_due = analysis_due(status, now)
    compare_due = comparisons_due(status) and bool(analysis.compare)
    runner = ctx.gate_runner
    if runner is None:
        return _run_due_gates(ctx, analysis, where, status, now, checks_due, compare_due), False
    step = gate_step(status)
    done = runner.take(key, step)
    if done is not None and not done.timed_out and done.error is None:
        return done.result, False
    if done is not None and done.error is not None:
        raise done.error  # the tick fails as it did when gates ran inline; the next one starts a new run
    if checks_due or compare_due:
        # Evidence is folded from the status as it is now: the result is used only at this same step.
        snapshot = status.model_copy(deep=True)
        runner.submit(key, step, lambda: _run_due_gates(ctx, analysis, where, snapshot, now, checks_due,
                                                        compare_due))
    return GateResults(), runner.busy(key)
