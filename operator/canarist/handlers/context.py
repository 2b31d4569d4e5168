"""What ticks share across releases: the API client, caches, gate connections and locks."""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass, field

import kubernetes

from canarist.analysis.gates import GateClients
from canarist.analysis.runner import GateRunner
from canarist.kube.configcache import ConfigCache
from canarist.kube.objectcache import ObjectCache
from canarist.kube.rejections import Rejections


@dataclass
class OperatorContext:
    api: kubernetes.client.ApiClient
    gates: GateClients = field(default_factory=GateClients)
    rejections: Rejections = field(default_factory=Rejections)
    config: ConfigCache = field(default_factory=ConfigCache)
    # Watch-fed objects; watches nothing (every read from the API) unless the operator's watches run.
    objects: ObjectCache = field(default_factory=ObjectCache)
    # Gate queries on a pool of their own; None (tests driving ticks by hand): gates run in the tick.
    gate_runner: GateRunner | None = None
    track_secrets: bool = True  # else Secrets are shared by primary and canary, never read
    _locks: dict[tuple[str, str], threading.Lock] = field(default_factory=dict)
    _locks_guard: threading.Lock = field(default_factory=threading.Lock)
    _finalized: set[str] = field(default_factory=set)  # uids whose finalizer has run
    # Keys of Events this process has posted: a status keeps a transition's events until the next
    # tick clears them, and that tick need not post them again to be told 409.
    _posted: OrderedDict[str, None] = field(default_factory=OrderedDict)
    posted_memory: int = 20_000

    def lock(self, namespace: str, name: str) -> threading.Lock:
        """The lock a tick and the finalizer of one release share."""
        with self._locks_guard:
            return self._locks.setdefault((namespace, name), threading.Lock())

    def finalized(self, uid: str) -> None:
        """The finalizer released this CanaryRelease: a tick of it still queued must do nothing."""
        with self._locks_guard:
            self._finalized.add(uid)

    def is_finalized(self, uid: str) -> bool:
        with self._locks_guard:
            return uid in self._finalized

    def was_posted(self, key: str) -> bool:
        with self._locks_guard:
            return key in self._posted

    def posted(self, key: str) -> None:
        with self._locks_guard:
            self._posted[key] = None
            while len(self._posted) > self.posted_memory:
                self._posted.popitem(last=False)
