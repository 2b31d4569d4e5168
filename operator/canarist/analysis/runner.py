"""Gate queries apart from ticks (issue 15): a slow provider never delays a rollback elsewhere.

A tick that finds a release's checks due hands the gate run to this runner and goes on; the run
happens on the runner's own bounded pool of threads, and when it is done the release is woken
(`on_done`) and its next tick takes the result. At most one run per release is in flight, and a
result is taken only by the rollout step it was run for (`GateRun.step`): a result that comes back
after the step changed (a rollback, a promotion, the next step) is dropped.

A run that takes longer than `deadline` is given up: its release gets an Error check naming the
provider's slowness, and a new run may start (the stuck thread finishes on its own; each provider
bounds its own requests too).

The tick run outside the operator (tests) has no runner and runs gates inline.
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable, Hashable

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class GateRun:
    """What a gate run was started for, and what it found."""

    step: Hashable            # identity of the rollout step it judges (the tick compares it)
    started: float            # monotonic
    result: Any = None        # whatever the job returned
    error: BaseException | None = None
    timed_out: bool = False


@dataclass
class GateRunner:
    workers: int = 8
    deadline: float = 60.0
    on_done: Callable[[Hashable], None] = lambda key: None
    clock: Callable[[], float] = time.monotonic
    _pool: ThreadPoolExecutor | None = field(default=None, init=False)
    _running: dict[Hashable, tuple[Hashable, float, Future]] = field(default_factory=dict, init=False)
    _done: dict[Hashable, GateRun] = field(default_factory=dict, init=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False)

    def _executor(self) -> ThreadPoolExecutor:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="canarist-gates")
        return self._pool

    def take(self, key: Hashable, step: Hashable) -> GateRun | None:
        """The finished run of `key` for `step`, once (a run for another step is dropped); a run past
        its deadline comes back with timed_out set."""
        with self._lock:
            done = self._done.pop(key, None)
            if done is not None:
                return done if done.step == step else None
            running = self._running.get(key)
            if running is not None and self.clock() - running[1] > self.deadline:
                del self._running[key]  # given up: its late result is dropped by _finish
                return GateRun(running[0], running[1], timed_out=True) if running[0] == step else None
        return None

    def busy(self, key: Hashable) -> bool:
        with self._lock:
            return key in self._running or key in self._done

    def submit(self, key: Hashable, step: Hashable, job: Callable[[], Any]) -> bool:
        """Start `job` for `key` unless one is in flight or waiting to be taken; True if started."""
        with self._lock:
            if key in self._running or key in self._done:
                return False
            started = self.clock()
            future = self._executor().submit(job)
            self._running[key] = (step, started, future)
        future.add_done_callback(lambda f: self._finish(key, future, step, started))
        return True

    def forget(self, key: Hashable) -> None:
        with self._lock:
            self._running.pop(key, None)
            self._done.pop(key, None)

    def _finish(self, key: Hashable, future: Future, step: Hashable, started: float) -> None:
        with self._lock:
            current = self._running.get(key)
            if current is None or current[2] is not future:
                return  # given up, or forgotten
            del self._running[key]
            error = future.exception()
            self._done[key] = GateRun(step, started, None if error else future.result(), error)
        self.on_done(key)

    def shutdown(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
