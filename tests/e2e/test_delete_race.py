"""A tick in flight while the CanaryRelease is deleted never re-adopts or recreates what the
finalizer released (the route would then go with the CanaryRelease and the hostname go dark)."""

from __future__ import annotations

import threading
import time
from datetime import datetime, timezone

import kubernetes
import pytest

from canarist.analysis.gates import GateClients
from canarist.devstack.procs import wait_until
from canarist.handlers import act as act_module
from canarist.handlers.finalize import finalize_release
from canarist.handlers.tick import OperatorContext, run_tick

from .harness import canary_release, deployment

pytestmark = pytest.mark.cluster

GROUP, VERSION, PLURAL = "canarist.dev", "v1alpha1", "canaryreleases"


def test_a_tick_cut_short_by_deletion_does_not_take_back_what_the_finalizer_released(stack, cluster, kube_client,
                                                                                      monkeypatch):
    ctx = OperatorContext(api=kube_client, gates=GateClients(default_prometheus=stack.prometheus.url))
    cluster.apps.create_namespaced_deployment(cluster.namespace, deployment("web", "registry.test/web:v1"))
    body = canary_release("web", "web")
    body["metadata"]["finalizers"] = ["canarist.dev/finalizer"]  # as kopf would add it
    cluster.custom.create_namespaced_custom_object(GROUP, VERSION, cluster.namespace, PLURAL, body)

    def tick_until(predicate, what: str) -> None:
        def step():
            run_tick(ctx, cluster.namespace, "web", datetime.now(timezone.utc))
            return predicate()
        wait_until(step, 60, what, interval=0.3)

    tick_until(lambda: cluster.status("web").get("phase") == "Idle", "Idle")
    cluster.set_image("web", "registry.test/web:v2")
    tick_until(lambda: cluster.route_weights("web") == (99, 1), "the first step routed")

    # The next tick decides and writes its status, then stalls before acting (a slow API server).
    acting, resume = threading.Event(), threading.Event()
    real_apply = act_module.apply_in_order

    def slow_apply(actions, apply):
        acting.set()
        assert resume.wait(30)
        return real_apply(actions, apply)

    monkeypatch.setattr(act_module, "apply_in_order", slow_apply)
    ticking = threading.Thread(target=run_tick, args=(ctx, cluster.namespace, "web", datetime.now(timezone.utc)))
    ticking.start()
    assert acting.wait(30)

    cluster.custom.delete_namespaced_custom_object(GROUP, VERSION, cluster.namespace, PLURAL, "web")
    deleting = cluster.release("web")
    finalized: list[str] = []
    finalizer = threading.Thread(target=lambda: finalized.append(finalize_release(ctx, deleting)))
    finalizer.start()
    time.sleep(1)  # the finalizer would now be done, were it not waiting for the tick
    resume.set()
    ticking.join(30)
    finalizer.join(30)
    assert finalized and "left" in finalized[0]
    monkeypatch.setattr(act_module, "apply_in_order", real_apply)

    # A tick that starts after the deletion leaves everything alone.
    run_tick(ctx, cluster.namespace, "web", datetime.now(timezone.utc))
    cluster.custom.patch_namespaced_custom_object(GROUP, VERSION, cluster.namespace, PLURAL, "web",
                                                  {"metadata": {"finalizers": None}})
    wait_until(lambda: _gone(cluster), 30, "the CanaryRelease to go")
    time.sleep(3)  # the garbage collector's turn
    assert cluster.route_weights("web") == (100, 0), "the route must survive, all traffic on the primary"
    route = cluster.custom.get_namespaced_custom_object("gateway.networking.k8s.io", "v1", cluster.namespace,
                                                        "httproutes", "web")
    assert not route["metadata"].get("ownerReferences")
    assert cluster.deployment("web-primary").metadata.owner_references is None


def _gone(cluster) -> bool:
    try:
        cluster.release("web")
    except kubernetes.client.ApiException as exc:
        return exc.status == 404
    return False
