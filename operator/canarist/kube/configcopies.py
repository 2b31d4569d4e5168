"""The primary's copies of the tracked ConfigMaps and Secrets: `<name>-primary`, owned by the
CanaryRelease like the primary Deployment, labelled with the target they serve.

Written when a revision goes to the primary (initialization and promotion), from the objects as
they are then, and only if their content still is the revision's: a change in between is a new
revision and the write waits for it. Rollback leaves them; deletion either lets garbage
collection take them with the primary or, when the primary is left serving, releases them with it.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import kubernetes
from kubernetes.client import ApiException

from .configcache import read_object
from .configtracking import COPY_OF_LABEL, Kind, TrackedObject, content_digest, copy_name

MANAGED_BY = {"app.kubernetes.io/managed-by": "canarist"}
SOURCE_DIGEST_ANNOTATION = "canarist.dev/source-digest"


class ConfigChanged(Exception):
    """A tracked object changed after the revision was observed; the next tick sees the new one."""


class ForeignCopy(Exception):
    """`<name>-primary` exists and is not canarist's; the message names the fix."""


def target_label(target: str) -> str:
    """The target's name as a label value (<= 63 characters, distinct names stay distinct)."""
    if len(target) <= 63:
        return target
    return f"{target[:46].rstrip('-.')}-{hashlib.sha256(target.encode()).hexdigest()[:16]}"


@dataclass
class ConfigCopies:
    api: kubernetes.client.ApiClient
    namespace: str
    target: str
    owner: dict[str, Any]

    @property
    def _core(self) -> kubernetes.client.CoreV1Api:
        return kubernetes.client.CoreV1Api(self.api)

    def write(self, tracked: list[TrackedObject]) -> None:
        for obj in tracked:
            self._write_one(obj)

    def _write_one(self, tracked: TrackedObject) -> None:
        name = copy_name(tracked.name)
        existing = read_object(self.api, self.namespace, tracked.kind, name)
        if existing is not None and not self._ours_or_adoptable(existing):
            raise ForeignCopy(
                f"spec.targetRef.name: {tracked.kind} {name!r} exists and is not managed by canarist; canarist keeps "
                f"the primary's copy of {tracked.kind} {tracked.name!r} under that name: delete or rename it, or "
                f"annotate {tracked.name!r} canarist.dev/track: \"false\" to share it between primary and canary")
        if tracked.digest is None:  # an optional reference to an object that does not exist
            if existing is not None:
                self._delete(tracked.kind, existing)
            return
        source = read_object(self.api, self.namespace, tracked.kind, tracked.name)
        if source is None or content_digest(tracked.kind, source) != tracked.digest:
            raise ConfigChanged(f"{tracked.kind} {tracked.name!r} changed while the primary was being written; "
                                "the new content is a new revision")
        if (existing is not None and self._owned(existing)
                and (existing["metadata"].get("annotations") or {}).get(SOURCE_DIGEST_ANNOTATION) == tracked.digest):
            return
        body: dict[str, Any] = {
            "apiVersion": "v1", "kind": tracked.kind,
            "metadata": {"name": name, "namespace": self.namespace,
                         "labels": {**MANAGED_BY, COPY_OF_LABEL: target_label(self.target)},
                         "annotations": {SOURCE_DIGEST_ANNOTATION: tracked.digest},
                         "ownerReferences": [self.owner]},
        }
        for key in ("data", "binaryData", "type"):
            if key in source:
                body[key] = source[key]
        if existing is None:
            create = (self._core.create_namespaced_config_map if tracked.kind == "ConfigMap"
                      else self._core.create_namespaced_secret)
            create(self.namespace, body, _preload_content=False)
            return
        if existing.get("immutable") or (tracked.kind == "Secret" and existing.get("type") != source.get("type")):
            self._delete(tracked.kind, existing)  # neither can change in place
            return self._write_one(tracked)
        body["metadata"]["resourceVersion"] = existing["metadata"]["resourceVersion"]
        replace = (self._core.replace_namespaced_config_map if tracked.kind == "ConfigMap"
                   else self._core.replace_namespaced_secret)
        replace(name, self.namespace, body, _preload_content=False)

    def _owned(self, obj: dict) -> bool:
        return any(o.get("uid") == self.owner["uid"] for o in obj["metadata"].get("ownerReferences") or [])

    def _ours_or_adoptable(self, obj: dict) -> bool:
        labels = obj["metadata"].get("labels") or {}
        if labels.get("app.kubernetes.io/managed-by") != "canarist" or labels.get(COPY_OF_LABEL) != target_label(self.target):
            return False
        # Ours, or left by an earlier CanaryRelease of this target (no controller any more).
        return self._owned(obj) or not any(o.get("controller") for o in obj["metadata"].get("ownerReferences") or [])

    def _delete(self, kind: Kind, obj: dict) -> None:
        delete = (self._core.delete_namespaced_config_map if kind == "ConfigMap"
                  else self._core.delete_namespaced_secret)
        try:
            delete(obj["metadata"]["name"], self.namespace,
                   body=kubernetes.client.V1DeleteOptions(preconditions=kubernetes.client.V1Preconditions(
                       uid=obj["metadata"]["uid"])))
        except ApiException as exc:
            if exc.status != 404:
                raise

    # -- hand-over ---------------------------------------------------------------------------

    def _copies(self) -> list[tuple[Kind, dict]]:
        selector = f"{COPY_OF_LABEL}={target_label(self.target)},app.kubernetes.io/managed-by=canarist"
        found: list[tuple[Kind, dict]] = []
        for kind, lister in (("ConfigMap", self._core.list_namespaced_config_map),
                             ("Secret", self._core.list_namespaced_secret)):
            try:
                items = lister(self.namespace, label_selector=selector).items
            except ApiException as exc:
                if exc.status == 403 and kind == "Secret":
                    continue  # installed with trackSecrets: false: there are no Secret copies
                raise
            # Only metadata is used; the content of what was listed is not kept.
            found += [(kind, {"metadata": self.api.sanitize_for_serialization(item.metadata)}) for item in items]
        return found

    def _patch_owners(self, kind: Kind, obj: dict, owners: list[dict]) -> None:
        patch = [{"op": "test", "path": "/metadata/resourceVersion", "value": obj["metadata"]["resourceVersion"]},
                 {"op": "replace" if "ownerReferences" in obj["metadata"] else "add",
                  "path": "/metadata/ownerReferences", "value": owners}]
        patcher = (self._core.patch_namespaced_config_map if kind == "ConfigMap"
                   else self._core.patch_namespaced_secret)
        patcher(obj["metadata"]["name"], self.namespace, patch, _preload_content=False)

    def release(self) -> None:
        """Drop our ownerReference, so garbage collection leaves the copies serving a kept primary."""
        for kind, obj in self._copies():
            refs = obj["metadata"].get("ownerReferences") or []
            if any(o.get("uid") == self.owner["uid"] for o in refs):
                self._patch_owners(kind, obj, [o for o in refs if o.get("uid") != self.owner["uid"]])

    def adopt(self) -> None:
        """Own the copies of a primary left serving by an earlier CanaryRelease of this target."""
        for kind, obj in self._copies():
            refs = obj["metadata"].get("ownerReferences") or []
            if not self._owned(obj) and not any(o.get("controller") for o in refs):
                self._patch_owners(kind, obj, [*refs, self.owner])
