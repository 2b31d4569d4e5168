"""The watches that feed the operator's caches and wake the releases that depend on what changed.

kopf event handlers keep `canarist.kube.objectcache` up to date with the Deployments, Services,
HTTPRoutes, HPAs and CanaryReleases of the namespaces the operator serves; the cache lists a
namespace's objects of a kind the first time a tick reads one (`list_objects`). An event wakes the
releases whose target, primary, Services, route, HPAs or tracked configuration it concerns.

(kopf index handlers would hold every other handler until all initial listings are in, but kopf
wakes every waiting object's worker each time one is indexed: with 6,000 objects that stalled the
operator for minutes.)
"""

from __future__ import annotations

import json
import logging
import re
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


def may_watch(api: kubernetes.client.ApiClient, kind: str, namespace: str) -> bool:
    """Whether the operator may list and watch a cached kind in a namespace (SelfSubjectAccessReview,
    which every authenticated identity may ask). When the question itself fails, assume yes: the
    listing that follows then fails with the API's own error."""
    group, _, plural = WATCHED[kind]
    authz = kubernetes.client.AuthorizationV1Api(api)
    for verb in ("list", "watch"):
        try:
            review = authz.create_self_subject_access_review({"spec": {"resourceAttributes": {
                "group": group, "resource": plural, "verb": verb, "namespace": namespace}}})
        except kubernetes.client.ApiException:
            return True
        if not review.status.allowed:
            return False
    return True


def list_objects(api: kubernetes.client.ApiClient, kind: str, namespace: str) -> list[dict]:
    """Every object of a watched kind in a namespace, as the API has it now."""
    group, version, plural = WATCHED[kind]
    if group:
        listed = kubernetes.client.CustomObjectsApi(api).list_namespaced_custom_object(group, version, namespace,
                                                                                       plural)
    else:
        listed = json.loads(kubernetes.client.CoreV1Api(api).list_namespaced_service(
            namespace, _preload_content=False).data) if plural == "services" else {}
    # A list's items carry no apiVersion and kind; what is written back from the cache needs them.
    api_version = f"{group}/{version}" if group else version
    return [{"apiVersion": api_version, "kind": kind, **item} for item in listed.get("items") or []]


WATCH_HANDLER_PREFIX = "cache-"  # the ids of the handlers that only feed caches and wake releases
_QUIET = re.compile(rf"^Handler '{WATCH_HANDLER_PREFIX}[^']*' succeeded\.$")


class QuietWatchEvents(logging.Filter):
    """kopf logs "Handler ... succeeded." at INFO for every event of every watched object: at a
    thousand releases that is most of the log and tells nothing. Their failures still show."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.levelno <= logging.INFO and _QUIET.match(record.getMessage()))


def quiet_event_logs() -> None:
    """Installed once on kopf's per-object logger."""
    logger = logging.getLogger("kopf.objects")
    if not any(isinstance(f, QuietWatchEvents) for f in logger.filters):
        logger.addFilter(QuietWatchEvents())


def register(on_change: Callable[[str, str | None, dict], None], kinds: Iterable[str]) -> None:
    """A kopf event handler for each kind (the watch's own initial listing included)."""
    for kind in kinds:
        group, version, plural = WATCHED[kind]

        def seen(event: dict, kind: str = kind, **_) -> None:
            on_change(kind, event.get("type"), event["object"])

        kopf.on.event(group, version, plural, id=f"{WATCH_HANDLER_PREFIX}{plural}")(seen)
