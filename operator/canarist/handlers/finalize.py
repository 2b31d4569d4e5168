"""Deleting a CanaryRelease: hand the workload back, or leave the primary serving. Never both halves.

Deletion never moves traffic to a revision other than the primary's:
- The target holds the primary's revision: it is scaled up, and once it is Ready the route sends
  all traffic to it through `<target>-canary`, the Service named after the target gets its own
  selector back, and garbage collection removes the primary (as Flagger does on deletion).
- The target holds another revision (a rolled-back one, or a rollout that did not finish): the
  primary, its Service, the route (all traffic on the primary) and the primary's HPA are kept
  serving, without the CanaryRelease as owner so garbage collection leaves them; the target is
  scaled to zero so the revision that was not promoted serves nobody. An Event and the log say
  what was left and how to finish.
- The target does not become Ready within HANDBACK_READY_TIMEOUT: the primary is left serving.

Every step is retried until it succeeds (the finalizer stays until then): a transient API error
must not let the CanaryRelease go while garbage collection would take the serving route and
Service with it. Only a missing route API (the Gateway API CRDs were removed) is skipped.
"""

from __future__ import annotations

import hashlib
import logging
from datetime import datetime, timezone

from pydantic import ValidationError

from canarist.api.spec import CanaryReleaseSpec
from canarist.engine import Event
from canarist.kube import autoscaling
from canarist.kube.events import post_event
from canarist.kube.workloads import Workloads, canary_service_name, is_ready, primary_name, template_hash
from canarist.routing.base import RoutingUnavailable

from canarist.kube.configtracking import revision_of_target

from .tick import OperatorContext, owner_reference, raw_target_name, router_for, tracked_config

log = logging.getLogger(__name__)

HANDBACK_READY_TIMEOUT = 300.0  # seconds the target may take to be Ready before the primary is kept instead


class Retry(Exception):
    """Finalization is not done; try again after `delay` seconds."""

    def __init__(self, message: str, delay: float) -> None:
        super().__init__(message)
        self.delay = delay


def finalize_release(ctx: OperatorContext, body: dict, now: datetime | None = None) -> str:
    """Runs one attempt; returns what was done, or raises (Retry or an API error) to be retried."""
    now = now or datetime.now(timezone.utc)
    meta = body["metadata"]
    with ctx.lock(meta["namespace"], meta["name"]):
        target_name = raw_target_name(body)
        if target_name is None:
            return "nothing to release: the spec never named a target"
        try:
            spec: CanaryReleaseSpec | None = CanaryReleaseSpec.model_validate(body.get("spec") or {})
        except ValidationError:
            spec = None
        done = _Finalizer(ctx, body, target_name, spec, now).run()
        ctx.rejections.forget(meta["uid"])
        return done


class _Finalizer:
    def __init__(self, ctx: OperatorContext, body: dict, target: str, spec: CanaryReleaseSpec | None,
                 now: datetime) -> None:
        self.ctx, self.body, self.target, self.now = ctx, body, target, now
        self.namespace = body["metadata"]["namespace"]
        # Deletion reads the API itself (the caches may lag a write it depends on) and keeps the
        # caches up to date with what it writes.
        self.workloads = Workloads(ctx.api, self.namespace, target, owner_reference(body), cache=ctx.objects,
                                   fresh=True)
        self.router = router_for(ctx, body, spec, target, fresh=True)

    def run(self) -> str:
        target, primary = self.workloads.read_target(), self.workloads.read_primary()
        # A primary this release already let go of (an earlier attempt that failed further on)
        # is still the one it kept: the retry must take the same path, never hand back instead.
        if primary is not None and not (self._owned(primary) or Workloads.orphaned(primary["metadata"])):
            primary = None  # not ours: never handed over, never kept
        if target is None:
            self._route(None)
            self.workloads.restore_apex()
            return f"Deployment {self.target!r} is gone; removed the route, the rest goes with the CanaryRelease"
        primary_revision = Workloads.revision_of(primary)
        # The target's revision with its configuration: handed back, it reads the objects themselves.
        revision = revision_of_target(template_hash(target), tracked_config(self.ctx, self.namespace, target)[0])
        if primary is None or revision == primary_revision:
            return self._hand_back(target, primary)
        return self._keep_primary(target, primary, f"Deployment {self.target!r} holds revision "
                                                   f"{revision[:10]}, not the primary's "
                                                   f"{(primary_revision or '?')[:10]}")

    # -- the two endings ----------------------------------------------------------------------

    def _hand_back(self, target: dict, primary: dict | None) -> str:
        self.workloads.hand_back_scale(target, primary)
        if not is_ready(self.workloads.read_target()):
            waited = (self.now - _deleted_at(self.body, self.now)).total_seconds()
            if waited < HANDBACK_READY_TIMEOUT or primary is None:
                raise Retry(f"waiting for Deployment {self.target!r} to be Ready before traffic moves to it "
                            f"({waited:.0f}s of {HANDBACK_READY_TIMEOUT:.0f}s)", delay=2)
            return self._keep_primary(target, primary, f"Deployment {self.target!r} did not become Ready "
                                                       f"within {HANDBACK_READY_TIMEOUT:.0f}s")
        self._route(canary_service_name(self.target))
        self.workloads.release_canary_service()
        self.workloads.restore_apex()
        self._release_autoscaler(keep=False)
        message = (f"handed Deployment {self.target!r} back: its Service {canary_service_name(self.target)!r} gets "
                   f"all traffic of the route; {primary_name(self.target)!r} is removed by garbage collection")
        self._event("HandedBack", message, warning=False)
        return message

    def _keep_primary(self, target: dict, primary: dict, why: str) -> str:
        self._route(primary_name(self.target))
        if target["spec"].get("replicas", 1):
            self.workloads.scale_target(0)  # the revision that was not promoted serves nobody
        self.workloads.release_primary()
        self.workloads.config_copies.release()  # the kept primary runs on them
        self.workloads.release_service(primary_name(self.target))
        self.workloads.release_canary_service()
        self._release_autoscaler(keep=True)
        left = (f"Deployment {primary_name(self.target)!r} (with its copies of the ConfigMaps and Secrets it "
                f"references), Services {primary_name(self.target)!r} and "
                f"{canary_service_name(self.target)!r} and HTTPRoute {self.target!r} (all traffic on the primary)")
        message = (f"{why}, so deletion left {left} serving the primary's revision and scaled {self.target!r} to "
                   f"zero. To finish: revert Deployment {self.target!r} to the primary's pod template (or re-create "
                   f"the CanaryRelease, which adopts them and releases the Deployment's revision through the "
                   f"steps), then delete what was left: kubectl -n {self.namespace} delete deployment "
                   f"{primary_name(self.target)} service {primary_name(self.target)} {canary_service_name(self.target)}"
                   f" httproute {self.target}")
        self._event("LeftPrimaryServing", message, warning=True)
        log.warning("%s/%s: %s", self.namespace, self.body["metadata"]["name"], message)
        return message

    # -- steps --------------------------------------------------------------------------------

    def _route(self, keep_serving: str | None) -> None:
        try:
            self.router.finalize(keep_serving=keep_serving)
        except RoutingUnavailable as exc:
            # Permanent: the route's API is gone, so there is no route to hand over.
            log.warning("%s: no route to hand over: %s", self.target, exc)

    def _release_autoscaler(self, keep: bool) -> None:
        autoscaling.release_primary_hpas(self.ctx.api, self.namespace, self.body["metadata"]["uid"],
                                         primary_kept=keep)

    def _owned(self, obj: dict) -> bool:
        uid = self.body["metadata"]["uid"]
        return any(o.get("uid") == uid for o in obj["metadata"].get("ownerReferences") or [])

    def _event(self, reason: str, message: str, warning: bool) -> None:
        key = hashlib.sha256(f"{self.body['metadata']['uid']}/finalize/{reason}".encode()).hexdigest()[:20]
        post_event(self.ctx.api, self.body, Event(reason, message, "Warning" if warning else "Normal"), self.now, key)


def _deleted_at(body: dict, default: datetime) -> datetime:
    stamp = body["metadata"].get("deletionTimestamp")
    if not stamp:
        return default
    return datetime.fromisoformat(str(stamp).replace("Z", "+00:00"))
