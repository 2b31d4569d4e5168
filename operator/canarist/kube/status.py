"""Writing CanaryRelease status with optimistic concurrency."""

from __future__ import annotations

import kubernetes
from kubernetes.client import ApiException

from canarist.api.crd import GROUP, PLURAL, VERSION
from canarist.api.status import CanaryReleaseStatus


class StaleRead(Exception):
    """The CanaryRelease changed since this tick read it; the tick is dropped and re-run."""


def replace_status(api: kubernetes.client.ApiClient, body: dict, status: CanaryReleaseStatus) -> dict:
    """Replace the whole status, only if the object is still at the resourceVersion we decided on.

    A whole-object replace (not a merge patch) so fields the engine cleared are really cleared.
    """
    obj = {
        "apiVersion": body["apiVersion"], "kind": body["kind"],
        "metadata": {"name": body["metadata"]["name"], "namespace": body["metadata"]["namespace"],
                     "resourceVersion": body["metadata"]["resourceVersion"]},
        "spec": body["spec"],
        "status": status.to_k8s(),
    }
    try:
        return kubernetes.client.CustomObjectsApi(api).replace_namespaced_custom_object_status(
            GROUP, VERSION, body["metadata"]["namespace"], PLURAL, body["metadata"]["name"], obj)
    except ApiException as exc:
        if exc.status == 409:
            raise StaleRead(str(exc.reason)) from exc
        raise


def confirm_weight(api: kubernetes.client.ApiClient, body: dict, weight: int) -> dict:
    """Record the canary weight a route write just put in force: status tells what users get."""
    return kubernetes.client.CustomObjectsApi(api).patch_namespaced_custom_object_status(
        GROUP, VERSION, body["metadata"]["namespace"], PLURAL, body["metadata"]["name"],
        {"status": {"canaryWeight": weight}})
