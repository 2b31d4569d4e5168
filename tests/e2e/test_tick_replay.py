"""A tick cut off around its status write (the operator killed there) loses no event and doubles
none: killed before the write, the next tick replays the transition; killed after it, the
transition's events were already out."""

from __future__ import annotations

import time
from datetime import datetime, timezone

import pytest

from canarist.analysis.gates import GateClients
from canarist.devstack.procs import wait_until
from canarist.handlers import tick as tick_module
from canarist.handlers.tick import OperatorContext, run_tick

from .harness import canary_release, deployment

pytestmark = pytest.mark.cluster


class Killed(BaseException):
    pass


def test_events_of_a_replayed_transition_are_posted_exactly_once(stack, cluster, kube_client, monkeypatch):
    # Gates ask the stack's Prometheus, never the operator's in-cluster default address.
    ctx = OperatorContext(api=kube_client, gates=GateClients(default_prometheus=stack.prometheus.url))
    cluster.apps.create_namespaced_deployment(cluster.namespace, deployment("web", "registry.test/web:v1"))
    cluster.custom.create_namespaced_custom_object("canarist.dev", "v1alpha1", cluster.namespace, "canaryreleases",
                                                   canary_release("web", "web"))

    def tick_until(predicate, what: str) -> None:
        def step():
            run_tick(ctx, cluster.namespace, "web", datetime.now(timezone.utc))
            return predicate(cluster.status("web"))
        wait_until(step, 60, what, interval=0.3)

    tick_until(lambda s: s.get("phase") == "Idle", "Idle")
    real_write = tick_module.replace_status

    def cut_at(transition, after_write: bool) -> None:
        """Run ticks until the status write of `transition`; die just before or just after it."""
        def write(api, body, status):
            if not transition(status):
                return real_write(api, body, status)
            if after_write:
                real_write(api, body, status)
            raise Killed()

        monkeypatch.setattr(tick_module, "replace_status", write)
        with pytest.raises(Killed):
            for _ in range(200):
                run_tick(ctx, cluster.namespace, "web", datetime.now(timezone.utc))
                time.sleep(0.3)
        monkeypatch.setattr(tick_module, "replace_status", real_write)

    cluster.set_image("web", "registry.test/web:v2")
    cut_at(lambda s: s.phase is not None and s.phase.value == "Progressing", after_write=True)
    cut_at(lambda s: s.step_weight == 1, after_write=False)
    assert cluster.status("web")["canaryWeight"] == 0, "the cut tick wrote no status"
    tick_until(lambda s: s.get("canaryWeight") == 1, "the replayed step")
    reasons = [e.reason for e in cluster.events("web")]
    assert reasons.count("RolloutStarted") == 1, reasons
    started = [e.message for e in cluster.events("web") if e.reason == "StepStarted"]
    assert started == ["step 1/5: canary weight 1%"]
