"""The watches that feed the operator's caches and wake the releases that depend on what changed.

kopf index handlers fill `canarist.kube.objectcache` with every Deployment, Service, HTTPRoute, HPA
and CanaryRelease of the namespaces the operator serves: kopf runs no other handler until every
indexed kind's initial listing is in, so the first tick already reads a complete cache. An event
(index handlers for additions and changes, on.event for deletions) wakes the releases whose
target, primary, Services, route, HPAs or tracked configuration it concerns.
"""

from __future__ import annotations

import copy
import threading
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Callable, Iterable

import kubernetes
import kopf

from canarist.api.crd import GROUP, PLURAL, VERSION
from canarist.kube.workloads import canary_service_name, primary_name

Key = tuple[str, str]  # (namespace, name) of a CanaryRelease

# kind -> (group, version, plural) watched into the object cache.
WATCHED = {
    "Deployment": ("apps", "v1", "deployments"),
    "Service": ("", "v1", "services"),
    "HTTPRoute": ("gateway.networking.k8s.io", "v1", "httproutes"),
    "HorizontalPodAutoscaler": ("autoscaling", "v2", "horizontalpodautoscalers"),
    "CanaryRelease": (GROUP, VERSION, PLURAL),
}


@dataclass
class Dependents:
    """Which releases read an object: by its kind, namespace and name."""

    _by_object: dict[tuple[str, str, str], set[Key]] = field(default_factory=lambda: defaultdict(set))
    _of_release: dict[Key, set[tuple[str, str, str]]] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def set(self, release: Key, objects: Iterable[tuple[str, str]]) -> None:
        """The (kind, name) objects `release` reads, in its namespace (replacing what it read before)."""
        namespace = release[0]
        wanted = {(kind, namespace, name) for kind, name in objects}
        with self._lock:
            before = self._of_release.get(release, set())
            for obj in before - wanted:
                self._by_object[obj].discard(release)
                if not self._by_object[obj]:
                    del self._by_object[obj]
            for obj in wanted - before:
                self._by_object[obj].add(release)
            self._of_release[release] = wanted

    def forget(self, release: Key) -> None:
        self.set(release, ())
        with self._lock:
            self._of_release.pop(release, None)

    def of(self, kind: str, namespace: str, name: str) -> set[Key]:
        with self._lock:
            return set(self._by_object.get((kind, namespace, name), ()))


def target_objects(target: str) -> list[tuple[str, str]]:
    """What a release of Deployment `target` reads, beside its tracked configuration and HPAs."""
    return [("Deployment", target), ("Deployment", primary_name(target)),
            ("Service", target), ("Service", primary_name(target)), ("Service", canary_service_name(target)),
            ("HTTPRoute", target)]


def depends_on(kind: str, body: dict) -> list[tuple[str, str]]:
    """The objects whose releases an event of this object concerns (an HPA: the Deployment it scales)."""
    name = (body.get("metadata") or {}).get("name") or ""
    if kind == "HorizontalPodAutoscaler":
        scaled = ((body.get("spec") or {}).get("scaleTargetRef") or {}).get("name")
        return [("Deployment", scaled)] if scaled else []
    return [(kind, name)]


def served_kinds(api: kubernetes.client.ApiClient) -> set[str]:
    """The watched kinds this cluster serves (a kind whose API is missing, e.g. the Gateway API CRDs
    not installed, is read from the API instead, which reports it missing)."""
    found = set()
    for kind, (group, version, plural) in WATCHED.items():
        try:
            if group:
                resources = kubernetes.client.CustomObjectsApi(api).get_api_resources(group, version)
            else:
                resources = kubernetes.client.CoreV1Api(api).get_api_resources()
        except kubernetes.client.ApiException:
            continue
        if any(r.name == plural for r in resources.resources or []):
            found.add(kind)
    return found


def register(on_change: Callable[[str, str | None, dict], None], kinds: Iterable[str]) -> None:
    """kopf handlers for each kind: an index handler (additions and changes, the initial listing
    included: kopf holds every other handler until it is in) and an event handler for deletions."""
    for kind in kinds:
        group, version, plural = WATCHED[kind]

        def indexed(body: kopf.Body, kind: str = kind, **_) -> None:
            on_change(kind, None, copy.deepcopy(dict(body)))

        def deleted(event: dict, kind: str = kind, **_) -> None:
            on_change(kind, "DELETED", event["object"])

        kopf.index(group, version, plural, id=f"cache-{plural}")(indexed)
        # Filtered before kopf invokes (and logs) the handler: most events are not deletions.
        kopf.on.event(group, version, plural, id=f"deleted-{plural}", when=_is_deletion)(deleted)


def _is_deletion(type: str | None = None, **_) -> bool:  # noqa: A002 - kopf's keyword
    return type == "DELETED"
