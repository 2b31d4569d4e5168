"""Configuration as part of the revision: the ConfigMaps and Secrets a pod template references.

For an AI service the change most likely to regress quietly is a prompt, a model name or a
sampling temperature, and those live in ConfigMaps and Secrets. Every object the target's pod
template references (volumes, projected volumes, envFrom, env[].valueFrom; in init and app
containers) is tracked: its content is hashed into the revision, so a change of its data walks
the steps like a new image. The primary runs on `<name>-primary` copies of them, written when a
revision is promoted, so that during a rollout it keeps serving the stable configuration.

An object annotated `canarist.dev/track: "false"` is not tracked: primary and canary share it and
a change of it reaches everyone at once (for settings that must, such as a rate limit).

Secrets stay secret: only a keyed hash of their content leaves this module (HMAC keyed by the
Secret's uid, so that a short or guessable value cannot be found by hashing candidates against
what status shows), and the copies are written straight from what was read.
"""

from __future__ import annotations

import copy
import hashlib
import hmac
import json
from dataclasses import dataclass
from typing import Any, Iterator, Literal

Kind = Literal["ConfigMap", "Secret"]
TRACK_ANNOTATION = "canarist.dev/track"
# On each copy: which object it copies, so copies can be found, adopted and released by label.
COPY_OF_LABEL = "canarist.dev/primary-config-of"
COPY_SUFFIX = "-primary"
_NAME_MAX = 253


@dataclass(frozen=True, order=True)
class ConfigRef:
    kind: Kind
    name: str
    optional: bool = False


@dataclass(frozen=True, order=True)
class TrackedObject:
    """One tracked object as a revision sees it: `digest` None means it does not exist."""

    kind: Kind
    name: str
    digest: str | None

    def describe(self) -> str:
        return f"{self.kind} {self.name!r} ({self.digest[:8] if self.digest else 'absent'})"


@dataclass(frozen=True)
class ObservedConfig:
    """What the cache knows of one object: its content digest and whether it opted out."""

    digest: str
    opted_out: bool


def _reference_fields(template: dict) -> Iterator[tuple[Kind, dict, str]]:
    """Every reference in a pod template: (kind, the dict holding the name, the name's key)."""
    spec = template.get("spec") or {}
    candidates: list[tuple[Kind, Any, str]] = []
    for volume in spec.get("volumes") or []:
        candidates += [("ConfigMap", volume.get("configMap"), "name"), ("Secret", volume.get("secret"), "secretName")]
        for source in (volume.get("projected") or {}).get("sources") or []:
            candidates += [("ConfigMap", source.get("configMap"), "name"), ("Secret", source.get("secret"), "name")]
    for key in ("initContainers", "containers"):
        for container in spec.get(key) or []:
            for source in container.get("envFrom") or []:
                candidates += [("ConfigMap", source.get("configMapRef"), "name"),
                               ("Secret", source.get("secretRef"), "name")]
            for item in container.get("env") or []:
                value_from = item.get("valueFrom") or {}
                candidates += [("ConfigMap", value_from.get("configMapKeyRef"), "name"),
                               ("Secret", value_from.get("secretKeyRef"), "name")]
    for kind, ref, field in candidates:
        if isinstance(ref, dict) and isinstance(ref.get(field), str) and ref[field]:
            yield kind, ref, field


def references(template: dict) -> list[ConfigRef]:
    """Every ConfigMap and Secret the pod template references, once each; a reference is optional
    only if every reference to the object is (one required use makes the pod need it)."""
    found: dict[tuple[Kind, str], bool] = {}
    for kind, ref, field in _reference_fields(template):
        key = (kind, ref[field])
        found[key] = found.get(key, True) and bool(ref.get("optional", False))
    return sorted(ConfigRef(kind, name, optional) for (kind, name), optional in found.items())


def content_digest(kind: Kind, obj: dict) -> str:
    """A hash of what pods see of the object. A Secret's is keyed by its uid (see the module doc)."""
    content: dict[str, Any] = {"data": obj.get("data") or {}, "binaryData": obj.get("binaryData") or {}}
    if kind == "Secret":
        content["type"] = obj.get("type") or "Opaque"
    canonical = json.dumps(content, sort_keys=True, separators=(",", ":")).encode()
    if kind == "Secret":
        key = str((obj.get("metadata") or {}).get("uid") or "").encode()
        return hmac.new(key, canonical, hashlib.sha256).hexdigest()[:16]
    return hashlib.sha256(canonical).hexdigest()[:16]


def opted_out(obj: dict) -> bool:
    annotations = (obj.get("metadata") or {}).get("annotations") or {}
    return str(annotations.get(TRACK_ANNOTATION, "")).strip().lower() in ("false", "0", "no", "disabled")


def observe(kind: Kind, obj: dict) -> ObservedConfig:
    return ObservedConfig(content_digest(kind, obj), opted_out(obj))


def copy_name(name: str) -> str:
    return f"{name}{COPY_SUFFIX}"


def revision_of_target(template_hash: str, tracked: list[TrackedObject]) -> str:
    """The revision of a Deployment with its tracked configuration. Without any it is the pod
    template's hash, as before configuration was tracked (an upgrade starts no rollout)."""
    if not tracked:
        return template_hash
    parts = [template_hash] + [f"{t.kind}/{t.name}={t.digest or '-'}" for t in sorted(tracked)]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]


def primary_template(template: dict, tracked: list[TrackedObject]) -> dict:
    """The pod template with every reference to a tracked object pointed at its copy."""
    template = copy.deepcopy(template)
    names = {(t.kind, t.name) for t in tracked}
    for kind, ref, field in list(_reference_fields(template)):
        if (kind, ref[field]) in names:
            ref[field] = copy_name(ref[field])
    return template


def name_problems(tracked: list[TrackedObject]) -> list[str]:
    return [f"spec.targetRef.name: {r.kind} {r.name!r}: its primary copy {copy_name(r.name)!r} would be longer than {_NAME_MAX} "
            f"characters; shorten the name, or annotate it {TRACK_ANNOTATION}: \"false\""
            for r in tracked if len(copy_name(r.name)) > _NAME_MAX]
