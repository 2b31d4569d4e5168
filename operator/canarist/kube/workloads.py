"""The primary/canary workload model (DESIGN.md §3).

The user's Deployment (the target) stays the source of truth and is the canary during a
rollout. canarist creates `<target>-primary`, a copy of the target's pod template that serves
stable traffic, and the Services `<target>-primary` and `<target>-canary`. Primary pods carry
the target's selector labels with "-primary" appended to each value, so no selector matches
both.
"""

from __future__ import annotations

import copy
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

import kubernetes
from kubernetes.client import ApiException

from . import configtracking
from .configcopies import ConfigCopies
from .configtracking import TrackedObject
from .objectcache import ObjectCache
from .replicas import desired_replicas, handover_replicas

REVISION_ANNOTATION = "canarist.dev/revision"
# On the user's Service named after the target, while canarist points it at the primary.
APEX_SELECTOR_ANNOTATION = "canarist.dev/original-selector"
MANAGED_BY = {"app.kubernetes.io/managed-by": "canarist"}
_LABEL_VALUE_MAX = 63


class WorkloadProblem(Exception):
    """Something about the user's workload canarist cannot work with; the message names the fix."""


def template_hash(deployment: dict) -> str:
    """The revision of a Deployment: a hash of its pod template (what a rollout releases)."""
    template = deployment["spec"]["template"]
    canonical = json.dumps(template, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def primary_name(target: str) -> str:
    return f"{target}-primary"


def canary_service_name(target: str) -> str:
    return f"{target}-canary"


def primary_label_value(value: str) -> str:
    """`value-primary`, kept a valid label value (<= 63 characters) for long values: the value is
    shortened and a hash of it keeps distinct values distinct."""
    if not value:
        return "primary"
    candidate = f"{value}-primary"
    if len(candidate) <= _LABEL_VALUE_MAX:
        return candidate
    digest = hashlib.sha256(value.encode()).hexdigest()[:10]
    head = value[:_LABEL_VALUE_MAX - len(digest) - len("--primary")].rstrip("-_.")
    return f"{head}-{digest}-primary"


def primary_labels(selector: dict[str, str]) -> dict[str, str]:
    return {key: primary_label_value(value) for key, value in selector.items()}


def selects(selector: dict[str, str] | None, labels: dict[str, str]) -> bool:
    """Whether a Service selector picks pods carrying `labels` (an empty selector picks none)."""
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def with_variant_env(template: dict, release: str, revision: str) -> dict:
    """The primary's pod template with CANARIST_VARIANT/REVISION/RELEASE set in every container.

    Only the primary gets them: the user's Deployment is never edited (a GitOps tool would undo it
    and it would change the revision), so an app without CANARIST_VARIANT is the canary.
    """
    template = copy.deepcopy(template)
    ours = {"CANARIST_VARIANT": "primary", "CANARIST_REVISION": revision, "CANARIST_RELEASE": release}
    for container in template.get("spec", {}).get("containers", []):
        env = [e for e in container.get("env", []) if e.get("name") not in ours]
        container["env"] = env + [{"name": k, "value": v} for k, v in ours.items()]
    return template


def availability(deployment: dict | None) -> tuple[bool, str]:
    """Whether a Deployment serves at all: at least one Ready pod of its current template and
    a rollout that has not exceeded its progress deadline. (True, "") or (False, why)."""
    if not deployment:
        return False, "the canary Deployment is missing"
    status = deployment.get("status") or {}
    for condition in status.get("conditions") or []:
        if condition.get("type") == "Progressing" and condition.get("reason") == "ProgressDeadlineExceeded":
            return False, f"the canary Deployment exceeded its progress deadline: {condition.get('message', '')}"
    current = status.get("observedGeneration", 0) >= deployment["metadata"].get("generation", 0)
    if not current or min(status.get("readyReplicas", 0), status.get("updatedReplicas", 0)) < 1:
        return False, "the canary has no Ready pod"
    return True, ""


def is_ready(deployment: dict | None) -> bool:
    """All desired replicas updated, Ready and observed (0 desired replicas is not Ready)."""
    if not deployment:
        return False
    spec, status = deployment.get("spec", {}), deployment.get("status") or {}
    replicas = spec.get("replicas", 1)
    return (replicas > 0
            and status.get("observedGeneration", 0) >= deployment["metadata"].get("generation", 0)
            and status.get("updatedReplicas", 0) == replicas
            and status.get("readyReplicas", 0) == replicas
            and status.get("replicas", 0) == replicas)


@dataclass
class Workloads:
    api: kubernetes.client.ApiClient
    namespace: str
    target: str
    owner: dict[str, Any]  # ownerReference of the CanaryRelease
    # Reads come from the watch-fed cache when there is one; `fresh` reads the API and refreshes it.
    cache: ObjectCache = field(default_factory=ObjectCache)
    fresh: bool = False
    _services: dict[str, Any] = field(default_factory=dict, init=False, repr=False)

    @property
    def config_copies(self) -> ConfigCopies:
        return ConfigCopies(self.api, self.namespace, self.target, self.owner)

    @property
    def _apps(self) -> kubernetes.client.AppsV1Api:
        return kubernetes.client.AppsV1Api(self.api)

    @property
    def _core(self) -> kubernetes.client.CoreV1Api:
        return kubernetes.client.CoreV1Api(self.api)

    def _read(self, name: str) -> dict | None:
        return self.cache.get("Deployment", self.namespace, name, lambda: self._read_api(name), fresh=self.fresh)

    def _read_api(self, name: str) -> dict | None:
        try:
            raw = self._apps.read_namespaced_deployment(name, self.namespace, _preload_content=False)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise
        return json.loads(raw.data)

    def _wrote(self, kind: str, result: Any) -> Any:
        """Put a write's result into the cache (a dict, a raw response or a typed object); returns it."""
        if hasattr(result, "data") and isinstance(getattr(result, "data"), (bytes, str)):
            obj = json.loads(result.data)
        elif isinstance(result, dict):
            obj = result
        else:
            obj = self.api.sanitize_for_serialization(result)
        self.cache.put(kind, obj)
        return result

    def read_target(self) -> dict | None:
        return self._read(self.target)

    def read_primary(self) -> dict | None:
        return self._read(primary_name(self.target))

    def selector(self, target: dict) -> dict[str, str]:
        selector = target["spec"].get("selector", {})
        if selector.get("matchExpressions"):
            raise WorkloadProblem(
                f"spec.targetRef.name: Deployment {self.target!r} selects pods with matchExpressions; "
                "canarist supports selector.matchLabels only")
        return dict(selector.get("matchLabels") or {})

    # -- primary -----------------------------------------------------------------------------

    def ensure_primary(self, target: dict, revision: str, tracked: list[TrackedObject]) -> None:
        """Make the primary run the target's pod template on copies of its tracked configuration;
        nothing is written if it already does."""
        if configtracking.revision_of_target(template_hash(target), tracked) != revision:
            raise WorkloadProblem(f"the target changed while writing revision {revision}; retried next tick")
        selector = self.selector(target)
        labels = primary_labels(selector)
        template = with_variant_env(target["spec"]["template"], f"{self.namespace}/{self.owner['name']}", revision)
        template = configtracking.primary_template(template, tracked)
        template.setdefault("metadata", {})
        template["metadata"]["labels"] = {**template["metadata"].get("labels", {}), **labels}
        existing = self.read_primary()
        if self.revision_of(existing) == revision:
            return
        # The copies first: the primary's new pods must find the configuration they reference.
        self.config_copies.write(tracked)
        if existing is None:
            body = {
                "apiVersion": "apps/v1", "kind": "Deployment",
                "metadata": {"name": primary_name(self.target), "namespace": self.namespace,
                             "labels": dict(MANAGED_BY), "annotations": {REVISION_ANNOTATION: revision},
                             "ownerReferences": [self.owner]},
                "spec": {"replicas": max(1, target["spec"].get("replicas", 1)),
                         "selector": {"matchLabels": labels}, "template": template},
            }
            for key in ("strategy", "minReadySeconds", "revisionHistoryLimit", "progressDeadlineSeconds"):
                if key in target["spec"]:
                    body["spec"][key] = target["spec"][key]
            self._wrote("Deployment", self._apps.create_namespaced_deployment(self.namespace, body,
                                                                              _preload_content=False))
            return
        existing["metadata"].setdefault("annotations", {})[REVISION_ANNOTATION] = revision
        existing["spec"]["template"] = template
        existing.pop("status", None)
        self._wrote("Deployment", self._apps.replace_namespaced_deployment(
            primary_name(self.target), self.namespace, existing, _preload_content=False))

    @staticmethod
    def revision_of(deployment: dict | None) -> str | None:
        if not deployment:
            return None
        return deployment["metadata"].get("annotations", {}).get(REVISION_ANNOTATION)

    # -- canary (the target itself) ----------------------------------------------------------

    def scale_canary(self, target: dict, primary: dict | None, up: bool) -> None:
        """Scale the canary up or down and let the primary follow your replica count, without
        fighting an HPA (the rules are in canarist.kube.replicas)."""
        from . import autoscaling


        hpas = autoscaling.sync_primary_hpa(self.api, self.namespace, self.target, primary_name(self.target),
                                            self.owner, self.cache, self.fresh) if primary is not None else None
        plan = desired_replicas(target["spec"].get("replicas"),
                                primary["spec"].get("replicas") if primary is not None else None, up,
                                hpa_min_replicas=hpas.min_replicas if hpas else None,
                                primary_hpa=bool(hpas and hpas.twin))
        # The primary first: scaling the target to zero erases the only record of your count.
        if plan.primary is not None and primary is not None:
            self._apps.patch_namespaced_deployment_scale(primary_name(self.target), self.namespace,
                                                         {"spec": {"replicas": plan.primary}})
        if plan.target is not None:
            self.scale_target(plan.target)

    def hand_back_scale(self, target: dict, primary: dict | None) -> None:
        """On deletion: the target takes all traffic back, at least at the primary's count."""
        replicas = handover_replicas(target["spec"].get("replicas"),
                                     primary["spec"].get("replicas") if primary is not None else None)
        if replicas is not None:
            self.scale_target(replicas)

    def scale_target(self, replicas: int) -> None:
        self._apps.patch_namespaced_deployment_scale(self.target, self.namespace, {"spec": {"replicas": replicas}})

    def canary_ready(self, target: dict, revision: str | None, current: str | None) -> bool:
        """The target runs `revision` (`current` is its revision as observed), all replicas Ready."""
        return revision is not None and current == revision and is_ready(target)

    @staticmethod
    def has_pods(target: dict | None) -> bool:
        """The target has pods, or wants some (spec or status above zero)."""
        if not target:
            return False
        return target["spec"].get("replicas", 1) != 0 or bool((target.get("status") or {}).get("replicas"))

    # -- services ----------------------------------------------------------------------------

    def ensure_services(self, target: dict, port: int, target_port: int | None) -> None:
        selector = self.selector(target)
        for name, pods in ((primary_name(self.target), primary_labels(selector)),
                           (canary_service_name(self.target), selector)):
            self._ensure_service(name, pods, port, target_port or port)

    def _read_service(self, name: str):
        """The Service, or None; read once per tick (a Workloads lives for one tick), since the
        conflict check before deciding and the ensure after it look at the same two objects."""
        if name not in self._services:
            obj = self.cache.get("Service", self.namespace, name, lambda: self._read_service_api(name),
                                 fresh=self.fresh)
            self._services[name] = None if obj is None else self._typed(obj, "V1Service")
        return self._services[name]

    def _read_service_api(self, name: str) -> dict | None:
        try:
            return json.loads(self._core.read_namespaced_service(name, self.namespace, _preload_content=False).data)
        except ApiException as exc:
            if exc.status != 404:
                raise
            return None

    def _typed(self, obj: dict, klass: str) -> Any:
        """A cached object as the client's model class, as the API would have returned it."""
        return self.api._ApiClient__deserialize(obj, klass)  # the client's own JSON-to-model mapping

    def _ensure_service(self, name: str, selector: dict[str, str], port: int, target_port: int) -> None:
        wanted_ports = [{"name": "http", "port": port, "targetPort": target_port, "protocol": "TCP"}]
        existing = self._read_service(name)
        if existing is None:
            self._wrote("Service", self._core.create_namespaced_service(self.namespace, {
                "metadata": {"name": name, "labels": dict(MANAGED_BY), "ownerReferences": [self.owner]},
                "spec": {"selector": selector, "ports": wanted_ports},
            }))
            return
        if self.owner["uid"] not in [o.uid for o in existing.metadata.owner_references or []]:
            if self._foreign(existing):
                raise WorkloadProblem(self._conflict_message(name))
            # Left behind by an earlier CanaryRelease of this target (deletion orphans the canary
            # Service on purpose): adopt it.
            existing.metadata.owner_references = [*(existing.metadata.owner_references or []), self.owner]
            existing = self._wrote("Service", self._core.replace_namespaced_service(name, self.namespace, existing))
        current_ports = [{"name": p.name, "port": p.port, "targetPort": p.target_port, "protocol": p.protocol}
                         for p in existing.spec.ports or []]
        if existing.spec.selector != selector or current_ports != wanted_ports:
            self._wrote("Service", self._core.patch_namespaced_service(
                name, self.namespace, {"spec": {"selector": selector, "ports": wanted_ports}}))

    def _foreign(self, service) -> bool:
        labels = service.metadata.labels or {}
        controlled = any(o.controller for o in service.metadata.owner_references or [])
        return labels.get("app.kubernetes.io/managed-by") != "canarist" or controlled

    @staticmethod
    def _conflict_message(name: str) -> str:
        return (f"spec.targetRef.name: Service {name!r} exists and is not managed by canarist; canarist "
                f"creates {name!r} itself: delete or rename that Service")

    def service_problems(self) -> list[str]:
        """Services in the way of the ones canarist creates, found before anything is written."""
        problems = []
        for name in (primary_name(self.target), canary_service_name(self.target)):
            existing = self._read_service(name)
            if existing is None:
                continue
            if self.owner["uid"] not in [o.uid for o in existing.metadata.owner_references or []] \
                    and self._foreign(existing):
                problems.append(self._conflict_message(name))
        return problems

    def primary_problem(self, primary: dict | None) -> str | None:
        """A `<target>-primary` Deployment canarist must not write: not created by this CanaryRelease."""
        if primary is None:
            return None
        owners = [o.get("uid") for o in primary["metadata"].get("ownerReferences", [])]
        if self.owner["uid"] in owners:
            return None
        name = primary_name(self.target)
        if (primary["metadata"].get("labels") or {}).get("app.kubernetes.io/managed-by") == "canarist":
            return (f"Deployment {name!r} still belongs to an earlier CanaryRelease of {self.target!r}; "
                    "waiting for the garbage collector to remove it")
        return (f"spec.targetRef.name: Deployment {name!r} exists and was not created by canarist; canarist "
                f"creates {name!r} itself: delete or rename that Deployment")

    def release_canary_service(self) -> None:
        """Drop our ownerReference so the canary Service (selecting the target's pods) outlives us."""
        self.release_service(canary_service_name(self.target))

    def release_service(self, name: str) -> None:
        """Drop our ownerReference from a Service, so garbage collection leaves it serving."""
        existing = self._read_service(name)
        if existing is None:
            return
        refs = existing.metadata.owner_references or []
        if not any(o.uid == self.owner["uid"] for o in refs):
            return
        existing.metadata.owner_references = [o for o in refs if o.uid != self.owner["uid"]] or None
        self._services[name] = self._wrote("Service", self._core.replace_namespaced_service(name, self.namespace,
                                                                                            existing))

    def release_primary(self) -> None:
        """Drop our ownerReference from the primary Deployment, so garbage collection leaves it serving."""
        primary = self.read_primary()
        if primary is None:
            return
        refs = primary["metadata"].get("ownerReferences") or []
        if not any(o.get("uid") == self.owner["uid"] for o in refs):
            return
        patch = [{"op": "test", "path": "/metadata/resourceVersion", "value": primary["metadata"]["resourceVersion"]},
                 {"op": "replace", "path": "/metadata/ownerReferences",
                  "value": [o for o in refs if o.get("uid") != self.owner["uid"]]}]
        self._wrote("Deployment", self._apps.patch_namespaced_deployment(primary_name(self.target), self.namespace,
                                                                         patch, _preload_content=False))

    def adopt_primary(self, primary: dict) -> dict:
        """Own a primary left serving by an earlier CanaryRelease of this target (canarist's label,
        no controller): it keeps the revision it serves."""
        refs = [o for o in primary["metadata"].get("ownerReferences") or [] if not o.get("controller")]
        patch = [{"op": "test", "path": "/metadata/resourceVersion", "value": primary["metadata"]["resourceVersion"]},
                 {"op": "replace" if "ownerReferences" in primary["metadata"] else "add",
                  "path": "/metadata/ownerReferences", "value": [*refs, self.owner]}]
        raw = self._apps.patch_namespaced_deployment(primary_name(self.target), self.namespace, patch,
                                                     _preload_content=False)
        return self._wrote("Deployment", json.loads(raw.data))

    @staticmethod
    def orphaned(obj_meta: dict) -> bool:
        """Left by canarist with no controller: adoptable by a CanaryRelease of the same target."""
        labels = obj_meta.get("labels") or {}
        return (labels.get("app.kubernetes.io/managed-by") == "canarist"
                and not any(o.get("controller") for o in obj_meta.get("ownerReferences") or []))

    # -- the apex Service: the user's own Service named after the target ------------------------

    def ensure_apex(self, target: dict, adopt: bool) -> None:
        """Point the Service named after the target at the primary's pods (Flagger's apex Service),
        so its clients keep being served while the target is scaled to zero. Only a Service that
        selects the target's pods is taken over; its selector is kept in an annotation and put back
        when the workload is handed back. Never owned, so never garbage-collected."""
        service = self._read_service(self.target)
        if service is None:
            return
        annotations = service.metadata.annotations or {}
        wanted = primary_labels(self.selector(target))
        if APEX_SELECTOR_ANNOTATION in annotations:
            if service.spec.selector != wanted:
                self._wrote("Service", self._core.patch_namespaced_service(self.target, self.namespace,
                                                                           {"spec": {"selector": wanted}}))
            return
        pod_labels = (target["spec"]["template"].get("metadata") or {}).get("labels") or {}
        if not adopt or not selects(service.spec.selector, pod_labels):
            return
        # A JSON patch with a resourceVersion test: the selector saved is the one replaced.
        patch = [{"op": "test", "path": "/metadata/resourceVersion", "value": service.metadata.resource_version},
                 {"op": "add" if service.metadata.annotations else "replace", "path": "/metadata/annotations",
                  "value": {**annotations, APEX_SELECTOR_ANNOTATION: json.dumps(service.spec.selector, sort_keys=True)}},
                 {"op": "replace", "path": "/spec/selector", "value": wanted}]
        self._services[self.target] = self._wrote("Service", self._core.patch_namespaced_service(
            self.target, self.namespace, patch))

    def restore_apex(self) -> bool:
        """Give the Service named after the target its own selector back; True if it was ours."""
        service = self._read_service(self.target)
        annotations = (service.metadata.annotations or {}) if service is not None else {}
        if APEX_SELECTOR_ANNOTATION not in annotations:
            return False
        original = json.loads(annotations[APEX_SELECTOR_ANNOTATION])
        rest = {k: v for k, v in annotations.items() if k != APEX_SELECTOR_ANNOTATION}
        patch = [{"op": "test", "path": "/metadata/resourceVersion", "value": service.metadata.resource_version},
                 {"op": "replace", "path": "/metadata/annotations", "value": rest},
                 {"op": "replace", "path": "/spec/selector", "value": original}]
        self._services[self.target] = self._wrote("Service", self._core.patch_namespaced_service(
            self.target, self.namespace, patch))
        return True

    def bypasses(self, target: dict, adopt_apex: bool) -> list[str]:
        """Other Services that select the target's pods: they lose their endpoints while the
        target is scaled to zero, so the user is told before anything is scaled."""
        pod_labels = (target["spec"]["template"].get("metadata") or {}).get("labels") or {}
        ours = {canary_service_name(self.target), primary_name(self.target)}

        def bypass(service: dict) -> bool:
            name = service["metadata"]["name"]
            annotations = service["metadata"].get("annotations") or {}
            if name in ours or APEX_SELECTOR_ANNOTATION in annotations or (name == self.target and adopt_apex):
                return False
            return selects((service.get("spec") or {}).get("selector"), pod_labels)

        # From the watch even on a fresh tick: a warning given once, at initialisation, is not worth
        # listing every Service of a namespace that may hold thousands.
        found = [service["metadata"]["name"] for service in self.cache.list(
            "Service", self.namespace, lambda: json.loads(self._core.list_namespaced_service(
                self.namespace, _preload_content=False).data)["items"], where=bypass)]
        if not found:
            return []
        names = ", ".join(repr(n) for n in sorted(found))
        return [f"Service(s) {names} select the pods of Deployment {self.target!r} and get no endpoints while "
                f"canarist scales it to zero between rollouts; point them at {self.target + '-primary'!r} "
                f"(stable) or at the HTTPRoute's hostnames instead"
                + ("" if adopt_apex else f", or set spec.service.adoptTargetService to let canarist manage "
                                          f"{self.target!r}")]
