"""When each release ticks: its own pace, woken early by what it depends on (issue 15).

kopf's timers tick every release on one global interval whether or not anything is due. Here
each release has a due time: the tick itself says when it next needs to run (its next analysis
check, or the resync period when nothing is due), and a watch event on an object the release
depends on (its CanaryRelease, target, primary, Services, route, HPAs, tracked configuration)
makes it due at once. A fixed pool of worker threads runs the due ticks, oldest due first; a
release never runs on two workers at once, and a release woken while it runs runs again after.

Jitter keeps ticks from aligning: a release seen for the first time starts at a random point of
its first period, and every later period is stretched by up to `jitter` of itself (never
shortened, so a check is never run early and then skipped for a whole period).
"""

from __future__ import annotations

import heapq
import logging
import random
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Hashable

log = logging.getLogger(__name__)

Key = Hashable
# Runs one tick of `key`, which was due at `due` (monotonic seconds); returns the seconds until it
# is next due (None: the resync period; GONE: the release is gone, forget it).
Tick = Callable[[Key, float], "float | None"]
GONE = -1.0


@dataclass
class Scheduler:
    tick: Tick
    resync: float                 # the longest a release waits when nothing wakes it
    workers: int = 4
    jitter: float = 0.05          # each period stretched by up to this fraction of itself...
    max_jitter: float = 1.0       # ...and at most this many seconds
    first_spread: float = 10.0    # a new release's first tick: at random within min(this, resync)
    debounce: float = 0.05        # a wake-up waits this long, so a burst of events makes one tick
    clock: Callable[[], float] = time.monotonic
    rng: random.Random = field(default_factory=random.Random)
    _heap: list[tuple[float, int, Key]] = field(default_factory=list, init=False)
    _due: dict[Key, float] = field(default_factory=dict, init=False)  # the due time in force per key
    _running: set[Key] = field(default_factory=set, init=False)
    _again: dict[Key, float] = field(default_factory=dict, init=False)  # woken while running: due then
    _forgotten: set[Key] = field(default_factory=set, init=False)       # forgotten while running
    _seq: int = field(default=0, init=False)
    _cond: threading.Condition = field(default_factory=threading.Condition, init=False)
    _threads: list[threading.Thread] = field(default_factory=list, init=False)
    _stopping: bool = field(default=False, init=False)

    # -- what the watches call (any thread; cheap) --------------------------------------------

    def add(self, key: Key) -> None:
        """A release seen for the first time: due at a random point of its first period."""
        with self._cond:
            self._forgotten.discard(key)
            if key in self._due or key in self._running:
                return
            self._schedule(key, self.clock() + self.rng.uniform(0, min(self.first_spread, self.resync)))

    def wake(self, key: Key) -> None:
        """Something the release depends on changed: due now (after the debounce). Unknown keys are
        ignored: only `add` brings a release in."""
        with self._cond:
            at = self.clock() + self.debounce
            if key in self._forgotten:
                return
            if key in self._running:
                self._again[key] = min(self._again.get(key, at), at)
            elif key in self._due and self._due[key] > at:
                self._schedule(key, at)

    def forget(self, key: Key) -> None:
        """The release is gone (or being deleted): no more ticks; one in flight finishes."""
        with self._cond:
            self._due.pop(key, None)
            self._again.pop(key, None)
            if key in self._running:
                self._forgotten.add(key)

    def known(self, key: Key) -> bool:
        with self._cond:
            return key in self._due or key in self._running

    def overdue(self) -> int:
        """Releases whose tick is due and not started yet: the workers' backlog (0 when they keep up)."""
        with self._cond:
            now = self.clock()
            return sum(1 for at in self._due.values() if at <= now)

    # -- lifecycle -----------------------------------------------------------------------------

    def start(self) -> None:
        for index in range(self.workers):
            thread = threading.Thread(target=self._work, name=f"canarist-tick-{index}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self, timeout: float = 5.0) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        for thread in self._threads:
            thread.join(timeout)

    # -- internals -----------------------------------------------------------------------------

    def _schedule(self, key: Key, at: float) -> None:
        """Caller holds the lock. Older heap entries of the key are skipped when popped."""
        self._due[key] = at
        self._seq += 1
        heapq.heappush(self._heap, (at, self._seq, key))
        self._cond.notify()

    def _next(self) -> tuple[Key, float] | None:
        """Block until a key is due; None when stopping."""
        with self._cond:
            while not self._stopping:
                while self._heap and self._due.get(self._heap[0][2]) != self._heap[0][0]:
                    heapq.heappop(self._heap)  # superseded or forgotten
                if not self._heap:
                    self._cond.wait()
                    continue
                at, _, key = self._heap[0]
                wait = at - self.clock()
                if wait > 0:
                    self._cond.wait(wait)
                    continue
                heapq.heappop(self._heap)
                del self._due[key]
                self._running.add(key)
                return key, at
            return None

    def _work(self) -> None:
        while (item := self._next()) is not None:
            key, due = item
            delay: float | None = None
            try:
                delay = self.tick(key, due)
            except Exception:  # noqa: BLE001 - a tick's failure is the tick's to log; the release keeps its pace
                log.exception("tick of %s failed", key)
            period = self.resync if delay is None else max(0.0, min(delay, self.resync))
            stretch = min(period * self.jitter, self.max_jitter)
            with self._cond:
                self._running.discard(key)
                again = self._again.pop(key, None)
                if self._stopping or key in self._forgotten or delay == GONE:
                    self._forgotten.discard(key)
                    continue
                at = self.clock() + period + self.rng.uniform(0, stretch)
                if again is not None:
                    at = min(at, again)
                if key not in self._due or self._due[key] > at:
                    self._schedule(key, at)
