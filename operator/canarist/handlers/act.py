"""Act: apply a decision's actions in order, and remember the writes the cluster refused.

Actions are idempotent and read from the watch-fed caches before they write, so re-sending them
every tick costs no API request while the world already matches. The first failure stops the rest
(each relies on the ones before it); a refusal that a retry cannot fix (admission, a foreign
object in the way) is recorded and reported until the spec changes.
"""

from __future__ import annotations

import logging

from kubernetes.client import ApiException

from canarist.api.spec import CanaryReleaseSpec
from canarist.engine import Action, EnsureApex, EnsurePrimary, EnsureServices, ScaleCanary, SetRoute
from canarist.engine.model import Decision
from canarist.engine.plan import apply_in_order
from canarist.kube.autoscaling import AutoscalingProblem
from canarist.kube.configcopies import ForeignCopy
from canarist.kube.rejections import describe, is_rejection, retry_after
from canarist.kube.workloads import WorkloadProblem
from canarist.routing import CohortRule, TrafficRouter

from .context import OperatorContext
from .observe import Observed

log = logging.getLogger(__name__)


def act(ctx: OperatorContext, body: dict, spec: CanaryReleaseSpec, seen: Observed, decision: Decision) -> int | None:
    """Apply the actions; the canary weight a route write put in force, if one did. Raises the
    first failure after recording it (the next tick sends the rest)."""
    namespace, name, uid = body["metadata"]["namespace"], body["metadata"]["name"], body["metadata"]["uid"]
    refused: list[tuple[Action, Exception]] = []
    target, workloads = seen.target, seen.workloads
    primary = seen.primary

    def apply(action: Action) -> None:
        nonlocal primary
        if isinstance(action, SetRoute):
            set_route(seen.router, action, refused)
        elif target is None:
            return
        elif isinstance(action, EnsureServices):
            workloads.ensure_services(target, spec.service.port, spec.service.target_port)
        elif isinstance(action, EnsurePrimary):
            workloads.ensure_primary(target, action.revision, seen.tracked)
            primary = workloads.read_primary()
        elif isinstance(action, ScaleCanary):
            workloads.scale_canary(target, primary, action.up)
        elif isinstance(action, EnsureApex):
            workloads.ensure_apex(target, spec.service.adopt_target_service)

    outcome = apply_in_order(decision.actions, apply)
    routed_now = next((a.canary for a in reversed(outcome.applied) if isinstance(a, SetRoute)), None)
    if outcome.failed is not None and outcome.error is not None:
        refused.append((outcome.failed, outcome.error))
    for action, exc in refused:
        if isinstance(exc, ApiException) and is_rejection(exc):
            message = describe(action, exc, namespace, spec.target_ref.name)
            ctx.rejections.record(uid, seen.rejection_key, message, retry_after(exc))
        elif isinstance(exc, (WorkloadProblem, AutoscalingProblem, ForeignCopy)):
            message = str(exc)  # names the object and the fix
            ctx.rejections.record(uid, seen.rejection_key, message, retry_after=30.0)
        else:
            continue
        log.warning("%s/%s: %s", namespace, name, message)
    if outcome.error is not None:
        assert outcome.failed is not None
        log.warning("%s/%s: %s failed, %d later action(s) wait for the next tick: %s", namespace, name,
                    type(outcome.failed).__name__, len(outcome.skipped), outcome.error)
        raise ActionFailed(routed_now, outcome.error)
    return routed_now


class ActionFailed(Exception):
    """An action failed; `routed` is the canary weight an earlier route write of the tick put in force."""

    def __init__(self, routed: int | None, error: Exception) -> None:
        super().__init__(str(error))
        self.routed, self.error = routed, error


def set_route(router: TrafficRouter, action: SetRoute, refused: list) -> None:
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
