"""The tick scheduler: each release at its own pace, woken early by what it depends on."""

from __future__ import annotations

import threading
import time

from canarist.handlers.scheduler import GONE, Scheduler


class Recorder:
    def __init__(self, answers=None):
        self.calls: list[tuple[str, float, float]] = []  # key, due, started
        self.answers = answers or {}
        self.lock = threading.Lock()
        self.running: set[str] = set()
        self.overlap = False

    def __call__(self, key, due):
        with self.lock:
            self.overlap |= key in self.running
            self.running.add(key)
            self.calls.append((key, due, time.monotonic()))
        time.sleep(0.01)
        with self.lock:
            self.running.discard(key)
        answer = self.answers.get(key)
        return answer(len([c for c in self.calls if c[0] == key])) if callable(answer) else answer

    def count(self, key):
        with self.lock:
            return sum(1 for c in self.calls if c[0] == key)


def wait_for(predicate, timeout=5.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.005)
    return False


def scheduler(tick, **kw) -> Scheduler:
    s = Scheduler(tick=tick, **{"resync": 10.0, "workers": 2, "first_spread": 0.0, "debounce": 0.0, **kw})
    s.start()
    return s


def test_a_release_ticks_at_the_pace_its_tick_asks_for_not_the_resync():
    rec = Recorder({"a": 0.1, "b": None})
    s = scheduler(rec, resync=10.0)
    try:
        s.add("a"), s.add("b")
        assert wait_for(lambda: rec.count("a") >= 5)
        assert rec.count("b") == 1, "nothing due: b waits for the resync period"
        gaps = [b[2] - a[2] for a, b in zip([c for c in rec.calls if c[0] == "a"], [c for c in rec.calls if c[0] == "a"][1:])]
        assert all(g >= 0.1 for g in gaps) and len(gaps) >= 4, gaps  # never early
    finally:
        s.stop()


def test_a_wake_runs_the_release_at_once_and_a_wake_during_its_tick_runs_it_again_after():
    rec = Recorder()
    s = scheduler(rec, resync=30.0)
    try:
        s.add("a")
        assert wait_for(lambda: rec.count("a") == 1)
        s.wake("a")
        assert wait_for(lambda: rec.count("a") == 2, 1.0)
        s.wake("unknown")  # only add brings a release in
        time.sleep(0.05)
        assert rec.count("unknown") == 0
    finally:
        s.stop()
    assert not rec.overlap


def test_a_release_never_runs_twice_at_once_and_forget_or_gone_stops_it():
    rec = Recorder({"a": 0.0, "g": lambda n: GONE})
    s = scheduler(rec, workers=4)
    try:
        s.add("a"), s.add("g")
        for _ in range(20):
            s.wake("a")
        assert wait_for(lambda: rec.count("a") >= 20)
        assert not rec.overlap
        s.forget("a")
        settled = rec.count("a")
        time.sleep(0.1)
        assert rec.count("a") <= settled + 1, "at most the tick in flight"
        assert rec.count("g") == 1 and not s.known("g")
    finally:
        s.stop()


def test_new_releases_are_spread_over_their_first_period():
    rec = Recorder()
    s = scheduler(rec, resync=0.5, first_spread=0.5)
    try:
        t0 = time.monotonic()
        for i in range(40):
            s.add(f"r{i}")
        assert wait_for(lambda: len({c[0] for c in rec.calls}) == 40, 3)
        dues = sorted(c[1] - t0 for c in rec.calls[:40])  # when each was due: a loaded machine starts them later
        assert dues[-1] > 0.25 and dues[0] < 0.25, dues
    finally:
        s.stop()


def test_a_failing_tick_keeps_its_release_on_the_resync_pace():
    def boom(key, due):
        raise RuntimeError("API down")
    calls = []
    s = scheduler(lambda k, d: (calls.append(k), boom(k, d)), resync=0.05)
    try:
        s.add("a")
        assert wait_for(lambda: len(calls) >= 3)
    finally:
        s.stop()


def test_overdue_counts_the_releases_the_workers_have_not_started_yet():
    now = [100.0]
    started = threading.Event()
    release = threading.Event()

    def tick(key, due):
        started.set()
        release.wait(5)
        return None

    s = Scheduler(tick=tick, resync=30.0, workers=1, first_spread=0.0, debounce=0.0, clock=lambda: now[0])
    for key in "abc":
        s.add(key)
    assert s.overdue() == 3, "due at once, no worker started"
    s.start()
    try:
        assert started.wait(5)
        assert s.overdue() == 2, "one runs on the only worker; two wait for it"
        release.set()
        assert wait_for(lambda: s.overdue() == 0), "all three ran and are next due a resync later"
        now[0] += 31.0
        assert s.overdue() == 3
    finally:
        release.set()
        now[0] = 100.0
        s.stop()
