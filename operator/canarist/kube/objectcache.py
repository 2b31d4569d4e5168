"""The objects a tick reads, as the watch last reported them (issue 15: watch, don't poll).

Every release reads its target and primary Deployments, its Services, its HTTPRoute, the HPAs of
its namespace and itself on every tick. Read from the API, that is about seven requests per
release per tick; the operator instead watches these kinds in the namespaces it serves
(`canarist.handlers.watches`, kopf event handlers) and each event updates this cache, so a tick
that finds nothing to change makes no API request.

- A kind is `watched` once a watch feeds the cache. The first read of a watched kind in a
  namespace lists that namespace's objects of the kind (`lister`), once; from then on the watch
  keeps them, and an object that is not here does not exist. Kinds not watched (the tick run
  outside the operator, in tests) are read from the API every time.
- The operator's own writes go in at once (`put`), so its next tick does not act again on what it
  has just replaced. Entries never go back in time: the higher resourceVersion wins, and a
  deletion removes only the incarnation (uid) it reports.
- A write refused as a conflict (409) reads the object fresh from the API, which refreshes it.
- A namespace whose objects of a kind the operator may not list and watch (`permitted`: a
  hand-written Role without those verbs) is never cached: a watch that cannot run would leave the
  cache stale for good, so that kind is read from the API there on every tick.
- `resync` reads bypass the cache and refresh it: a watch can miss a deletion while it reconnects,
  so each release reads fresh now and then (`canarist.handlers.scheduler`).

Objects are kept without `metadata.managedFields`, which can be most of an object's size, and
handed out as copies: callers edit what they read before writing it back.
"""

from __future__ import annotations

import copy
import logging
import threading
from dataclasses import dataclass, field
from typing import Callable

log = logging.getLogger(__name__)

Reader = Callable[[], "dict | None"]  # the API read behind a cache miss: the object, or None if absent


def _version(obj: dict | None) -> int | None:
    value = ((obj or {}).get("metadata") or {}).get("resourceVersion")
    return int(value) if isinstance(value, str) and value.isdigit() else None


def _uid(obj: dict | None) -> str | None:
    return ((obj or {}).get("metadata") or {}).get("uid")


def _slim(obj: dict) -> dict:
    """Without managedFields, which no tick reads and can be most of an object's size. (Annotations
    stay whole: some are written back, and kubectl's last-applied copy must survive that.)"""
    meta = obj.get("metadata") or {}
    if "managedFields" not in meta:
        return obj
    return {**obj, "metadata": {k: v for k, v in meta.items() if k != "managedFields"}}


@dataclass
class ObjectCache:
    watched: set[str] = field(default_factory=set)  # kinds a watch feeds (see the module docstring)
    # (kind, namespace) -> every object of that kind there, from the API: a namespace's first read
    lister: Callable[[str, str], list[dict]] | None = None
    # (kind, namespace) -> whether the operator may list and watch them there (None: assumed so)
    permitted: Callable[[str, str], bool] | None = None
    _synced: set[tuple[str, str]] = field(default_factory=set)
    _direct: set[tuple[str, str]] = field(default_factory=set)  # not permitted: always read from the API
    _sync_lock: threading.Lock = field(default_factory=threading.Lock)
    # (kind, namespace) -> name -> object: a namespace's objects of a kind are listed without
    # looking at any other (thousands of Deployments and Services sit beside a handful of HPAs).
    _entries: dict[tuple[str, str], dict[str, dict]] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    api_reads: int = 0  # reads that went to the API (for tests and the operator's metrics)

    @staticmethod
    def _key(kind: str, obj: dict) -> tuple[str, str, str]:
        meta = obj.get("metadata") or {}
        return kind, meta.get("namespace") or "", meta.get("name") or ""

    def watch(self, kind: str) -> None:
        self.watched.add(kind)

    # Caller holds the lock for the three below.
    def _held(self, key: tuple[str, str, str]) -> dict | None:
        return self._entries.get(key[:2], {}).get(key[2])

    def _keep(self, key: tuple[str, str, str], obj: dict) -> None:
        """Keep `obj` unless a later state of it is held already."""
        if not _newer(self._held(key), obj):
            self._entries.setdefault(key[:2], {})[key[2]] = _slim(obj)

    def _drop(self, key: tuple[str, str, str]) -> None:
        objects = self._entries.get(key[:2])
        if objects is not None:
            objects.pop(key[2], None)
            if not objects:
                del self._entries[key[:2]]

    def on_event(self, kind: str, event_type: str | None, body: dict) -> None:
        """A watch event: ADDED, MODIFIED, DELETED, or None for the initial listing."""
        key = self._key(kind, body)
        with self._lock:
            if event_type == "DELETED":
                current = self._held(key)
                if current is None or _uid(current) in (None, _uid(body)):
                    self._drop(key)
                return
            self._keep(key, body)

    def get(self, kind: str, namespace: str, name: str, read: Reader, *, fresh: bool = False) -> dict | None:
        """The object (None: it does not exist): from the cache if its kind is watched, else `read()`."""
        key = (kind, namespace, name)
        if not fresh and self._cached(kind, namespace):
            with self._lock:
                return copy.deepcopy(self._held(key))  # callers edit what they read
        obj = read()
        with self._lock:
            self.api_reads += 1
            if kind in self.watched and (kind, namespace) not in self._direct:  # a fresh read refreshes it
                if obj is None:
                    self._drop(key)
                else:
                    self._keep(key, obj)
        return obj

    def list(self, kind: str, namespace: str, read: Callable[[], list[dict]], *, fresh: bool = False,
             where: Callable[[dict], bool] | None = None) -> list[dict]:
        """Every object of a kind in a namespace (those `where` accepts: it reads, never edits): from
        the cache if the kind is watched, else `read()`. Only what is returned is copied."""
        if not fresh and self._cached(kind, namespace):
            with self._lock:
                held = self._entries.get((kind, namespace), {}).values()
                return copy.deepcopy([obj for obj in held if where is None or where(obj)])
        with self._lock:
            self.api_reads += 1
        return [obj for obj in read() if where is None or where(obj)]

    def _cached(self, kind: str, namespace: str) -> bool:
        """Whether reads of this kind in this namespace come from the cache (listing it the first time)."""
        if kind not in self.watched:
            return False
        self._sync(kind, namespace)
        return (kind, namespace) not in self._direct

    def _sync(self, kind: str, namespace: str) -> None:
        """List a namespace's objects of a kind into the cache, the first time it is read."""
        if self.lister is None or (kind, namespace) in self._synced:
            return
        with self._sync_lock:
            if (kind, namespace) in self._synced:
                return
            if self.permitted is not None and not self.permitted(kind, namespace):
                log.warning("the operator may not list and watch %s objects in namespace %r: they are read from "
                            "the API on every tick there; add the list and watch verbs to its Role", kind, namespace)
                with self._lock:
                    self._direct.add((kind, namespace))
                    self._synced.add((kind, namespace))
                return
            objects = self.lister(kind, namespace)
            with self._lock:
                self.api_reads += 1
                for obj in objects:
                    self._keep(self._key(kind, obj), obj)
                self._synced.add((kind, namespace))

    def put(self, kind: str, obj: dict) -> None:
        """Our own write's result (the object the API returned)."""
        if not isinstance(obj, dict) or not isinstance(obj.get("metadata"), dict):
            return  # nothing to go by (a write answered without the object)
        with self._lock:
            self._keep(self._key(kind, obj), obj)

    def forget(self, kind: str, namespace: str, name: str) -> None:
        """We deleted it: drop it. A watched kind then reads as absent until the watch reports it
        again, so after a conflict read it fresh instead (`get(..., fresh=True)`)."""
        with self._lock:
            self._drop((kind, namespace, name))

    def sizes(self) -> dict[str, int]:
        """Objects held per kind."""
        counts: dict[str, int] = {}
        with self._lock:
            for (kind, _), objects in self._entries.items():
                counts[kind] = counts.get(kind, 0) + len(objects)
        return counts


def _newer(held: dict | None, incoming: dict) -> bool:
    """`held` is a later state of the same object than `incoming`."""
    if held is None or _uid(held) != _uid(incoming):
        return False
    a, b = _version(held), _version(incoming)
    return a is not None and b is not None and a > b
