"""Digests of the ConfigMaps and Secrets targets reference, fed by a watch (DESIGN.md §3).

The tick asks for the objects its target references on every tick; re-reading them from the API
every time would cost one GET per object per release per tick. The operator watches ConfigMaps
and Secrets in the namespaces it serves (`canarist.handlers`), and each event updates this cache.
Only digests are kept, never content: a Secret's data leaves memory with the event that carried it.

An object the watch has not reported yet (the operator just started, or the watch is down) is
read once from the API; such an entry is trusted for `UNCONFIRMED_TTL` seconds only, so that a
broken watch delays a rollout by at most that long instead of hiding changes for ever.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

import kubernetes
from kubernetes.client import ApiException

from .configtracking import ConfigRef, Kind, ObservedConfig, TrackedObject, observe

UNCONFIRMED_TTL = 30.0


@dataclass
class _Entry:
    observed: ObservedConfig | None  # None: the object does not exist
    confirmed: bool                  # reported by the watch (else read by GET at `at`)
    at: float


@dataclass
class ConfigCache:
    clock: Callable[[], float] = time.monotonic
    _entries: dict[tuple[str, str, str], _Entry] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def on_event(self, kind: Kind, event_type: str | None, body: dict) -> None:
        """A watch event (kopf's on.event): ADDED/MODIFIED/DELETED, or None for the initial listing."""
        meta = body.get("metadata") or {}
        key = (meta.get("namespace", ""), kind, meta.get("name", ""))
        observed = None if event_type == "DELETED" else observe(kind, body)
        with self._lock:
            self._entries[key] = _Entry(observed, True, self.clock())

    def get(self, api: kubernetes.client.ApiClient, namespace: str, kind: Kind, name: str) -> ObservedConfig | None:
        key = (namespace, kind, name)
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None and (entry.confirmed or self.clock() - entry.at < UNCONFIRMED_TTL):
                return entry.observed
        observed = read_observed(api, namespace, kind, name)
        with self._lock:
            current = self._entries.get(key)
            if current is None or not current.confirmed:  # a watch event that came meanwhile wins
                self._entries[key] = _Entry(observed, False, self.clock())
                return observed
            return current.observed

    def tracked(self, api: kubernetes.client.ApiClient, namespace: str, deployment: str,
                refs: list[ConfigRef]) -> tuple[list[TrackedObject], list[str]]:
        """The tracked objects of a pod template's references, and the problems that block it (a
        required object that does not exist)."""
        tracked, problems = [], []
        for ref in refs:
            observed = self.get(api, namespace, ref.kind, ref.name)
            if observed is None:
                if not ref.optional:
                    problems.append(
                        f"spec.targetRef.name: Deployment {deployment!r} needs {ref.kind} {ref.name!r}, which does "
                        f"not exist in namespace {namespace!r}; create it, or mark the reference optional: true")
                tracked.append(TrackedObject(ref.kind, ref.name, None))
            elif not observed.opted_out:
                tracked.append(TrackedObject(ref.kind, ref.name, observed.digest))
        return tracked, problems


def read_object(api: kubernetes.client.ApiClient, namespace: str, kind: Kind, name: str) -> dict | None:
    core = kubernetes.client.CoreV1Api(api)
    reader = core.read_namespaced_config_map if kind == "ConfigMap" else core.read_namespaced_secret
    try:
        return json.loads(reader(name, namespace, _preload_content=False).data)
    except ApiException as exc:
        if exc.status == 404:
            return None
        raise


def read_observed(api: kubernetes.client.ApiClient, namespace: str, kind: Kind, name: str) -> ObservedConfig | None:
    obj = read_object(api, namespace, kind, name)
    return None if obj is None else observe(kind, obj)
