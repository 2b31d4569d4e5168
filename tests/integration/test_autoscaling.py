"""The primary's twin HPA against a real kube-apiserver and the real HPA controller.

The stack has no metrics server: the HPA controller still enforces minReplicas and its rule of
not scaling a Deployment at 0 replicas, which is all the twin model relies on.
"""

from __future__ import annotations

import kubernetes
import pytest
from kubernetes.client import ApiException

from canarist.devstack.procs import wait_until
from canarist.kube.autoscaling import (AutoscalingProblem, ensure_primary_hpa, release_primary_hpas,
                                       sync_primary_hpa, target_hpa)
from tests.integration.test_gatewayapi_routing import make_owner

pytestmark = pytest.mark.cluster

CPU_80 = [{"type": "Resource", "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 80}}}]


def hpa(name: str, deployment: str, min_replicas: int = 2, max_replicas: int = 5, **spec) -> dict:
    return {"metadata": {"name": name},
            "spec": {"scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": deployment},
                     "minReplicas": min_replicas, "maxReplicas": max_replicas, "metrics": CPU_80, **spec}}


@pytest.fixture
def v2(kube_client) -> kubernetes.client.AutoscalingV2Api:
    return kubernetes.client.AutoscalingV2Api(kube_client)


def read(v2, namespace: str, name: str):
    try:
        return v2.read_namespaced_horizontal_pod_autoscaler(name, namespace)
    except ApiException as exc:
        if exc.status == 404:
            return None
        raise


def test_twin_created_kept_in_step_and_removed(kube_client, namespace, v2):
    owner = make_owner(kube_client, namespace)
    assert sync_primary_hpa(kube_client, namespace, "bot", "bot-primary", owner).target_hpa is None
    v2.create_namespaced_horizontal_pod_autoscaler(namespace, hpa("bot", "bot"))
    v2.create_namespaced_horizontal_pod_autoscaler(namespace, hpa("other", "someone-else"))

    state = sync_primary_hpa(kube_client, namespace, "bot", "bot-primary", owner)
    assert state.target_hpa["metadata"]["name"] == "bot" and state.min_replicas == 2
    twin = read(v2, namespace, "bot-primary")
    assert twin.spec.scale_target_ref.name == "bot-primary"
    assert (twin.spec.min_replicas, twin.spec.max_replicas) == (2, 5)
    assert twin.spec.metrics[0].resource.target.average_utilization == 80
    assert twin.metadata.labels == {"app.kubernetes.io/managed-by": "canarist"}
    assert [o.uid for o in twin.metadata.owner_references] == [owner["uid"]]
    assert read(v2, namespace, "other-primary") is None  # not the target's HPA

    # Nothing changed: nothing is written.
    sync_primary_hpa(kube_client, namespace, "bot", "bot-primary", owner)
    assert read(v2, namespace, "bot-primary").metadata.resource_version == twin.metadata.resource_version

    # The user's HPA changes (bounds, metric, behavior): the twin follows.
    behavior = {"scaleDown": {"stabilizationWindowSeconds": 60, "policies": [
        {"type": "Pods", "value": 1, "periodSeconds": 30}]}}
    v2.patch_namespaced_horizontal_pod_autoscaler("bot", namespace, {"spec": {
        "minReplicas": 3, "maxReplicas": 9, "behavior": behavior,
        "metrics": [{"type": "Resource", "resource": {"name": "cpu", "target": {
            "type": "Utilization", "averageUtilization": 60}}}]}})
    sync_primary_hpa(kube_client, namespace, "bot", "bot-primary", owner)
    twin = read(v2, namespace, "bot-primary")
    user = read(v2, namespace, "bot")
    assert (twin.spec.min_replicas, twin.spec.max_replicas) == (3, 9)
    assert twin.spec.metrics[0].resource.target.average_utilization == 60
    assert twin.spec.behavior == user.spec.behavior and twin.spec.behavior.scale_down.stabilization_window_seconds == 60

    # A hand edit of the twin is put back.
    v2.patch_namespaced_horizontal_pod_autoscaler("bot-primary", namespace, {"spec": {"maxReplicas": 4}})
    sync_primary_hpa(kube_client, namespace, "bot", "bot-primary", owner)
    assert read(v2, namespace, "bot-primary").spec.max_replicas == 9

    # The user's HPA is gone: so is the twin, and the target has none.
    v2.delete_namespaced_horizontal_pod_autoscaler("bot", namespace)
    state = sync_primary_hpa(kube_client, namespace, "bot", "bot-primary", owner)
    assert (state.target_hpa, state.twin, state.min_replicas) == (None, None, None)
    assert read(v2, namespace, "bot-primary") is None
    assert read(v2, namespace, "other") is not None


def test_foreign_object_of_the_twins_name_is_never_written(kube_client, namespace, v2):
    owner = make_owner(kube_client, namespace)
    v2.create_namespaced_horizontal_pod_autoscaler(namespace, hpa("bot", "bot"))
    v2.create_namespaced_horizontal_pod_autoscaler(namespace, hpa("bot-primary", "unrelated", max_replicas=7))
    before = read(v2, namespace, "bot-primary").metadata.resource_version
    with pytest.raises(AutoscalingProblem, match=r"HorizontalPodAutoscaler 'bot-primary' exists and is not managed"):
        sync_primary_hpa(kube_client, namespace, "bot", "bot-primary", owner)
    foreign = read(v2, namespace, "bot-primary")
    assert foreign.metadata.resource_version == before and foreign.spec.scale_target_ref.name == "unrelated"

    # Labelled as ours but controlled by another owner (another CanaryRelease): not taken either.
    other = make_owner(kube_client, namespace, "other-release")
    v2.delete_namespaced_horizontal_pod_autoscaler("bot-primary", namespace)
    ensure_primary_hpa(kube_client, namespace, target_hpa(kube_client, namespace, "bot"), "bot-primary", other)
    with pytest.raises(AutoscalingProblem):
        sync_primary_hpa(kube_client, namespace, "bot", "bot-primary", owner)
    assert [o.uid for o in read(v2, namespace, "bot-primary").metadata.owner_references] == [other["uid"]]

    # Released by that CanaryRelease with its primary kept: the next one adopts the twin.
    release_primary_hpas(kube_client, namespace, other["uid"], primary_kept=True)
    sync_primary_hpa(kube_client, namespace, "bot", "bot-primary", owner)
    assert [o.uid for o in read(v2, namespace, "bot-primary").metadata.owner_references] == [owner["uid"]]


def test_two_hpas_on_the_target_are_named(kube_client, namespace, v2):
    v2.create_namespaced_horizontal_pod_autoscaler(namespace, hpa("bot-cpu", "bot"))
    v2.create_namespaced_horizontal_pod_autoscaler(namespace, hpa("bot-mem", "bot"))
    with pytest.raises(AutoscalingProblem, match=r"'bot-cpu', 'bot-mem' all scale Deployment 'bot'"):
        target_hpa(kube_client, namespace, "bot")


def test_release_deletes_the_twin_or_leaves_it_scaling_the_kept_primary(kube_client, namespace, v2):
    owner = make_owner(kube_client, namespace)
    v2.create_namespaced_horizontal_pod_autoscaler(namespace, hpa("bot", "bot"))
    sync_primary_hpa(kube_client, namespace, "bot", "bot-primary", owner)
    release_primary_hpas(kube_client, namespace, owner["uid"], primary_kept=True)
    kept = read(v2, namespace, "bot-primary")
    assert not kept.metadata.owner_references and kept.spec.scale_target_ref.name == "bot-primary"

    sync_primary_hpa(kube_client, namespace, "bot", "bot-primary", owner)  # adopted again
    release_primary_hpas(kube_client, namespace, owner["uid"], primary_kept=False)
    assert read(v2, namespace, "bot-primary") is None
    assert read(v2, namespace, "bot") is not None


def deployment(name: str, replicas: int) -> dict:
    labels = {"app": name}
    return {"metadata": {"name": name},
            "spec": {"replicas": replicas, "selector": {"matchLabels": labels},
                     "template": {"metadata": {"labels": labels},
                                  "spec": {"containers": [{"name": "app", "image": "example.invalid/app:1"}]}}}}


def test_the_hpa_controller_scales_the_primary_through_the_twin_and_leaves_an_idle_target(
        kube_client, namespace, v2):
    apps = kubernetes.client.AppsV1Api(kube_client)
    apps.create_namespaced_deployment(namespace, deployment("bot", 0))          # idle canary
    apps.create_namespaced_deployment(namespace, deployment("bot-primary", 1))
    owner = make_owner(kube_client, namespace)
    v2.create_namespaced_horizontal_pod_autoscaler(namespace, hpa("bot", "bot", min_replicas=3))
    sync_primary_hpa(kube_client, namespace, "bot", "bot-primary", owner)

    # Below minReplicas: the twin raises the primary (no metrics needed for that).
    wait_until(lambda: apps.read_namespaced_deployment_scale("bot-primary", namespace).spec.replicas == 3,
               90, "the twin HPA to scale bot-primary to its minReplicas")
    # The same controller has synced the user's HPA and left the target at 0 (ScalingDisabled).
    wait_until(lambda: any(c.reason == "ScalingDisabled" for c in read(v2, namespace, "bot").status.conditions or []),
               90, "the target's HPA to report ScalingDisabled")
    assert apps.read_namespaced_deployment("bot", namespace).spec.replicas == 0

