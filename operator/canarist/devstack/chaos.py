"""Chaos for the local stack: an operator killer, a recorder of every rollout's progress and
route, and the judge brought back where it was. Used by tests/e2e/test_chaos.py.

Randomness comes from a seeded `random.Random` the caller passes in, so a failing run names its
seed and the same choices (which releases are bad, when the operator dies) can be replayed.
"""

from __future__ import annotations

import copy
import logging
import os
import random
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import kubernetes
import urllib3

from canarist.api.crd import GROUP, PLURAL, VERSION

from .judge_server import JudgeServer
from .operator_process import OperatorProcess
from .traffic import GATEWAY_GROUP, GATEWAY_VERSION, HTTPROUTES

log = logging.getLogger(__name__)

SEED_ENV = "CANARIST_CHAOS_SEED"


def chaos_seed() -> int:
    """$CANARIST_CHAOS_SEED, or a fresh one from the clock (printed by the caller, for a replay)."""
    return int(os.environ.get(SEED_ENV) or time.time_ns() % 1_000_000)


@dataclass
class OperatorKiller:
    """SIGKILLs the operator at random moments and starts it again, on a thread.

    Each kill comes `gap` seconds (uniform) after the previous restart, so the operator always
    gets some time to work; it stays down `downtime` seconds. At most `max_kills`.
    """

    operator: OperatorProcess
    rng: random.Random
    gap: tuple[float, float] = (5.0, 15.0)
    downtime: tuple[float, float] = (0.0, 2.0)
    max_kills: int = 10
    kills: list[float] = field(default_factory=list)  # wall-clock times of the kills
    starts: list[float] = field(default_factory=list)  # and of the restarts
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> "OperatorKiller":
        self._thread = threading.Thread(target=self._run, name="operator-killer", daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while len(self.kills) < self.max_kills and not self._stop.wait(self.rng.uniform(*self.gap)):
            self.operator.kill()
            self.kills.append(time.time())
            self._stop.wait(self.rng.uniform(*self.downtime))
            self.operator.start()  # even when stopping: the operator must be left running
            self.starts.append(time.time())

    def stop(self) -> None:
        """No more kills; returns with the operator running."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(30)
        if self.operator.proc is None or self.operator.proc.poll() is not None:
            self.operator.start()
            self.starts.append(time.time())


def _route_weights(route: dict) -> tuple[int, int]:
    """(primary, canary) weights of a route canarist wrote for target `name`."""
    name = route["metadata"]["name"]
    rules = route.get("spec", {}).get("rules") or [{}]
    weights = {r["name"]: int(r.get("weight", 1)) for r in rules[0].get("backendRefs") or []}
    return weights.get(f"{name}-primary", 0), weights.get(f"{name}-canary", 0)


def _progress(release: dict) -> tuple[str | None, int, int]:
    status = release.get("status") or {}
    return status.get("phase"), int(status.get("stepIndex") or 0), int(status.get("canaryWeight") or 0)


@dataclass
class Recorder:
    """Records, as watch events arrive, every change of each CanaryRelease's progress (phase, step,
    weight) and of each HTTPRoute's weights in `namespace`, with the time it was seen.

    A watch sees every written version, which polling could miss; one stream per kind also costs
    the API server far less than polling thirty objects. A broken stream is resumed from a fresh
    list. A restarted API server answers lists and watches only once its cache is rebuilt
    ("storage is (re)initializing"), but reads of one object (from etcd) and writes well before,
    and its new cache cannot resume an old watch: changes in between would go unseen, so while a
    watch is broken, and every `poll` seconds if set, each object seen so far is also read.
    """

    api: kubernetes.client.ApiClient
    namespace: str
    poll: float | None = None  # also read each object this often (s): for a few objects while the API server restarts
    releases: dict[str, list[tuple[float, tuple[str | None, int, int]]]] = field(default_factory=dict)
    routes: dict[str, list[tuple[float, tuple[int, int]]]] = field(default_factory=dict)
    _stop: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _versions: dict[tuple[int, str], int] = field(default_factory=dict)  # newest version seen per object
    _threads: list[threading.Thread] = field(default_factory=list)

    def __enter__(self) -> "Recorder":
        # A client of its own without retries: the default retries a read that timed out three
        # times, which after an API server restart left it blind for up to 8 s. Better to fail
        # fast and read again.
        config = copy.copy(self.api.configuration)
        config.retries = False
        custom = kubernetes.client.CustomObjectsApi(kubernetes.client.ApiClient(config))
        for args, into, value in (((GROUP, VERSION, self.namespace, PLURAL), self.releases, _progress),
                                  ((GATEWAY_GROUP, GATEWAY_VERSION, self.namespace, HTTPROUTES), self.routes,
                                   _route_weights)):
            thread = threading.Thread(target=self._follow, name=f"record-{args[-1]}", daemon=True,
                                      args=(custom, args, into, value))
            thread.start()
            self._threads.append(thread)
            if self.poll:
                poller = threading.Thread(target=self._poll_each, name=f"poll-{args[-1]}", daemon=True,
                                          args=(custom, args, into, value))
                poller.start()
                self._threads.append(poller)
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(15)

    def _record(self, into: dict, item: dict, value) -> None:
        """Note `item`'s value if it changed. Watch and reads race, so an older version may arrive
        after a newer one: versions are compared (etcd revisions; opaque to clients in general,
        but this recorder only ever talks to the local etcd-backed API server)."""
        name, version = item["metadata"]["name"], int(item["metadata"]["resourceVersion"])
        with self._lock:
            if version <= self._versions.get((id(into), name), 0):
                return
            self._versions[(id(into), name)] = version
            changes = into.setdefault(name, [])
            if not changes or changes[-1][1] != value(item):
                changes.append((time.time(), value(item)))

    def _follow(self, custom: kubernetes.client.CustomObjectsApi, args: tuple, into: dict, value) -> None:
        list_fn = custom.list_namespaced_custom_object
        version = None  # where the watch resumes; None: list first
        while not self._stop.is_set():
            try:
                if version is None:
                    listed = list_fn(*args, _request_timeout=10)
                    for item in listed["items"]:
                        self._record(into, item, value)
                    version = listed["metadata"]["resourceVersion"]
                watch = kubernetes.watch.Watch()
                # Short server timeouts so a stop is noticed within seconds; each new watch resumes
                # where the last ended, so no version in between is missed.
                for event in watch.stream(list_fn, *args, resource_version=version, timeout_seconds=5,
                                          _request_timeout=15):
                    if event["type"] == "ERROR":  # e.g. 410 Gone: the version is too old, list again
                        version = None
                        break
                    if event["type"] in ("ADDED", "MODIFIED"):
                        self._record(into, event["object"], value)
                    if self._stop.is_set():
                        break
                else:
                    version = watch.resource_version or version
            except (kubernetes.client.ApiException, urllib3.exceptions.HTTPError, OSError, ValueError) as exc:
                log.info("watch of %s broke (%s); reading each object until it works again", args[-1], exc)
                version = None
                self._read_each(custom, args, into, value)
                self._stop.wait(0.2)

    def _poll_each(self, custom: kubernetes.client.CustomObjectsApi, args: tuple, into: dict, value) -> None:
        assert self.poll
        while not self._stop.wait(self.poll):
            self._read_each(custom, args, into, value)

    def _read_each(self, custom: kubernetes.client.CustomObjectsApi, args: tuple, into: dict, value) -> None:
        """One GET of every object seen so far, each with a short timeout."""
        for name in list(into):
            try:
                self._record(into, custom.get_namespaced_custom_object(*args, name, _request_timeout=1), value)
            except (kubernetes.client.ApiException, urllib3.exceptions.HTTPError, OSError, ValueError) as exc:
                log.info("reading %s %s failed: %s", args[-1], name, exc)

    def release_changes(self, name: str) -> list[tuple[float, tuple[str | None, int, int]]]:
        with self._lock:
            return list(self.releases.get(name, []))

    def route_changes(self, name: str) -> list[tuple[float, tuple[int, int]]]:
        with self._lock:
            return list(self.routes.get(name, []))

    def first_seen(self, name: str, phase: str) -> float | None:
        return next((t for t, (p, _, _) in self.release_changes(name) if p == phase), None)


def judge_back(workdir: Path, llm_base_url: str, port: int, sample_rate: float = 1.0) -> JudgeServer:
    """Start the judge again after a stop, on the same port (the release pins its URL) and with the
    same database, as a restarted judge Deployment behind its Service would be."""
    # A later --listen wins over the one JudgeServer.start passes (argparse keeps the last value).
    return JudgeServer.start(workdir, llm_base_url, sample_rate=sample_rate, extra=("--listen", f"127.0.0.1:{port}"))


@dataclass
class Figures:
    """What the closing line of the chaos suite reports."""

    seed: int
    rollouts: int = 0
    good: int = 0
    bad_errors: int = 0
    bad_answers: int = 0
    kills: int = 0
    right: int = 0
    wrong: int = 0
    seconds: float = 0.0

    def line(self) -> str:
        return (f"chaos: {self.rollouts} rollouts ({self.good} good, {self.bad_errors} bad by errors, "
                f"{self.bad_answers} bad by answers), {self.kills} operator kills, outcomes right {self.right} / "
                f"wrong {self.wrong}, seed {self.seed} ({SEED_ENV}={self.seed} to replay), {self.seconds:.0f}s")
