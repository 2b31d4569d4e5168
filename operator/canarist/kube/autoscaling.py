"""The primary's twin of the HPA on the target (Flagger's model).

An HPA (autoscaling/v2) whose scaleTargetRef is the target Deployment scales the canary. canarist
gives the primary a twin, `<hpa>-primary`: the same spec with scaleTargetRef pointing at
`<target>-primary`, labelled managed-by canarist and owned by the CanaryRelease. The twin follows
every change of the user's HPA and is deleted when that HPA is. The rules for replica counts
around both HPAs are in kube/replicas.py.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from typing import Any, Callable

import kubernetes
from kubernetes.client import ApiException

from canarist.kube.objectcache import ObjectCache
from canarist.kube.workloads import MANAGED_BY

TIMEOUT = 10  # seconds for every API call: a hung apiserver must not stall the tick forever
MANAGED_BY_SELECTOR = ",".join(f"{k}={v}" for k, v in MANAGED_BY.items())
KIND = "HorizontalPodAutoscaler"  # in the operator's watch-fed cache (canarist.kube.objectcache)
_PASS_THROUGH = ObjectCache()     # watches nothing: every read goes to the API


class AutoscalingProblem(Exception):
    """An HPA set-up canarist cannot work with; the message names the object and the fix."""


@dataclass(frozen=True)
class Autoscaling:
    """The HPAs of one target after a sync."""
    target_hpa: dict | None  # the user's HPA scaling the target
    twin: dict | None        # canarist's `<hpa>-primary` scaling the primary

    @property
    def min_replicas(self) -> int | None:
        """The target HPA's minReplicas (1 when unset), None without one: replicas.desired_replicas' input."""
        if self.target_hpa is None:
            return None
        return self.target_hpa["spec"].get("minReplicas", 1)


def twin_name(hpa_name: str) -> str:
    return f"{hpa_name}-primary"


def _v2(api: kubernetes.client.ApiClient) -> kubernetes.client.AutoscalingV2Api:
    return kubernetes.client.AutoscalingV2Api(api)


def _scales(hpa: dict, deployment: str) -> bool:
    ref = hpa["spec"].get("scaleTargetRef", {})
    return (ref.get("kind") == "Deployment" and ref.get("apiVersion", "").split("/")[0] == "apps"
            and ref.get("name") == deployment)


def _list(api: kubernetes.client.ApiClient, namespace: str, cache: ObjectCache, fresh: bool,
          where: Callable[[dict], bool]) -> list[dict]:
    def read() -> list[dict]:
        raw = _v2(api).list_namespaced_horizontal_pod_autoscaler(
            namespace, _preload_content=False, _request_timeout=TIMEOUT)
        return json.loads(raw.data)["items"]
    return cache.list(KIND, namespace, read, fresh=fresh, where=where)


def target_hpa(api: kubernetes.client.ApiClient, namespace: str, deployment: str,
               cache: ObjectCache = _PASS_THROUGH, fresh: bool = False) -> dict | None:
    """The HPA whose scaleTargetRef is Deployment `deployment`, or None.

    Two of them raise AutoscalingProblem: the HPA controller itself stops scaling pods claimed by
    more than one HPA (ScalingActive=False, reason AmbiguousSelector), so there is nothing to copy.
    """
    found = sorted(_list(api, namespace, cache, fresh, lambda h: _scales(h, deployment)),
                   key=lambda h: h["metadata"]["name"])
    if len(found) > 1:
        names = ", ".join(repr(h["metadata"]["name"]) for h in found)
        raise AutoscalingProblem(
            f"HorizontalPodAutoscalers {names} all scale Deployment {deployment!r}; Kubernetes scales a "
            "Deployment by one HPA only (AmbiguousSelector): delete all but one")
    return found[0] if found else None


def _read(api: kubernetes.client.ApiClient, namespace: str, name: str, cache: ObjectCache = _PASS_THROUGH,
          fresh: bool = False) -> dict | None:
    def read() -> dict | None:
        try:
            raw = _v2(api).read_namespaced_horizontal_pod_autoscaler(
                name, namespace, _preload_content=False, _request_timeout=TIMEOUT)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise
        return json.loads(raw.data)
    return cache.get(KIND, namespace, name, read, fresh=fresh)


def _owned_by(hpa: dict, owner_uid: str) -> bool:
    return owner_uid in [o.get("uid") for o in hpa["metadata"].get("ownerReferences") or []]


def _managed(hpa: dict) -> bool:
    labels = hpa["metadata"].get("labels") or {}
    return all(labels.get(k) == v for k, v in MANAGED_BY.items())


def ensure_primary_hpa(api: kubernetes.client.ApiClient, namespace: str, target_hpa: dict, primary_name: str,
                       owner_ref: dict[str, Any], cache: ObjectCache = _PASS_THROUGH, fresh: bool = False) -> dict:
    """Create or update `<hpa>-primary`, the twin of `target_hpa` scaling Deployment `primary_name`.

    Writes only when the spec, our label or our ownerReference differ; returns the twin as stored.
    A twin left by an earlier CanaryRelease (our label, no controller) is adopted; any other object
    of that name raises AutoscalingProblem and is never written.
    """
    name = twin_name(target_hpa["metadata"]["name"])
    # The whole spec is copied (as the apiserver stored and defaulted it), so a field the HPA API
    # gains later is copied too; only the object scaled differs.
    spec = copy.deepcopy(target_hpa["spec"])
    spec["scaleTargetRef"] = {"apiVersion": "apps/v1", "kind": "Deployment", "name": primary_name}
    existing = _read(api, namespace, name, cache, fresh)
    if existing is None:
        # The user's HPA labels are not copied: a GitOps tool tracking its objects by label
        # (Argo CD's app.kubernetes.io/instance) would prune the twin as an object of its own.
        body = {"apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler",
                "metadata": {"name": name, "namespace": namespace, "labels": dict(MANAGED_BY),
                             "ownerReferences": [owner_ref]},
                "spec": spec}
        raw = _v2(api).create_namespaced_horizontal_pod_autoscaler(
            namespace, body, _preload_content=False, _request_timeout=TIMEOUT)
        created = json.loads(raw.data)
        cache.put(KIND, created)
        return created
    meta = existing["metadata"]
    if not _owned_by(existing, owner_ref["uid"]):
        controlled = any(o.get("controller") for o in meta.get("ownerReferences") or [])
        if not _managed(existing) or controlled:
            raise AutoscalingProblem(
                f"HorizontalPodAutoscaler {name!r} exists and is not managed by this CanaryRelease; canarist "
                f"creates {name!r} itself to scale Deployment {primary_name!r} like "
                f"{target_hpa['metadata']['name']!r} scales the target: delete or rename it")
        meta["ownerReferences"] = [*(meta.get("ownerReferences") or []), owner_ref]
    elif existing["spec"] == spec and _managed(existing):
        return existing
    meta["labels"] = {**(meta.get("labels") or {}), **MANAGED_BY}
    existing["spec"] = spec
    existing.pop("status", None)
    # resourceVersion is kept: a concurrent writer makes this a 409, retried on the next tick.
    try:
        raw = _v2(api).replace_namespaced_horizontal_pod_autoscaler(
            name, namespace, existing, _preload_content=False, _request_timeout=TIMEOUT)
    except ApiException as exc:
        if exc.status == 409:
            _read(api, namespace, name, cache, fresh=True)  # the next tick starts from what is there now
        raise
    replaced = json.loads(raw.data)
    cache.put(KIND, replaced)
    return replaced


def _ours(api: kubernetes.client.ApiClient, namespace: str, owner_uid: str, cache: ObjectCache = _PASS_THROUGH,
          fresh: bool = False) -> list[dict]:
    return _list(api, namespace, cache, fresh, lambda h: _managed(h) and _owned_by(h, owner_uid))


def _delete(api: kubernetes.client.ApiClient, namespace: str, hpa: dict, cache: ObjectCache = _PASS_THROUGH) -> None:
    # The uid precondition: never delete an object recreated under that name since we listed it.
    meta = hpa["metadata"]
    try:
        _v2(api).delete_namespaced_horizontal_pod_autoscaler(
            meta["name"], namespace, body={"preconditions": {"uid": meta["uid"]}}, _request_timeout=TIMEOUT)
    except ApiException as exc:
        if exc.status not in (404, 409):
            raise
    cache.forget(KIND, namespace, meta["name"])


def remove_stale_primary_hpas(api: kubernetes.client.ApiClient, namespace: str, owner_uid: str,
                              keep: str | None, cache: ObjectCache = _PASS_THROUGH, fresh: bool = False) -> list[str]:
    """Delete this CanaryRelease's twins other than `keep` (the user's HPA is gone or renamed)."""
    stale = [h for h in _ours(api, namespace, owner_uid, cache, fresh) if h["metadata"]["name"] != keep]
    for hpa in stale:
        _delete(api, namespace, hpa, cache)
    return [h["metadata"]["name"] for h in stale]


def sync_primary_hpa(api: kubernetes.client.ApiClient, namespace: str, target: str, primary_name: str,
                     owner_ref: dict[str, Any], cache: ObjectCache = _PASS_THROUGH, fresh: bool = False) -> Autoscaling:
    """One tick's work: find the target's HPA, make its twin match, delete twins that lost theirs."""
    hpa = target_hpa(api, namespace, target, cache, fresh)
    twin = ensure_primary_hpa(api, namespace, hpa, primary_name, owner_ref, cache, fresh) if hpa else None
    remove_stale_primary_hpas(api, namespace, owner_ref["uid"], twin["metadata"]["name"] if twin else None,
                              cache, fresh)
    return Autoscaling(hpa, twin)


def release_primary_hpas(api: kubernetes.client.ApiClient, namespace: str, owner_uid: str, *,
                         primary_kept: bool) -> None:
    """On deletion of the CanaryRelease.

    primary_kept=False (the target took the traffic back; the primary goes): delete the twins, so
    none scales a Deployment on its way out. primary_kept=True (the primary stays serving): drop
    our ownerReference so the garbage collector leaves the twin scaling it; the label stays, so
    a later CanaryRelease of the same target adopts it.
    """
    for hpa in _ours(api, namespace, owner_uid):
        if not primary_kept:
            _delete(api, namespace, hpa)
            continue
        meta = hpa["metadata"]
        meta["ownerReferences"] = [o for o in meta["ownerReferences"] if o.get("uid") != owner_uid]
        hpa.pop("status", None)
        _v2(api).replace_namespaced_horizontal_pod_autoscaler(
            meta["name"], namespace, hpa, _preload_content=False, _request_timeout=TIMEOUT)
