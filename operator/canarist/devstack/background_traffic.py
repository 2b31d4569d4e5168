"""What the stack's traffic drivers share: a sending thread started once, stopped by `stop()` or
`with`, and a bound on requests in flight."""

from __future__ import annotations

import threading
from typing import Self


class BackgroundTraffic:
    """Subclasses implement `_run()`, which sends until `self._stop` is set, taking a slot with
    `_acquire_slot()` before each request and releasing `self._in_flight` after it."""

    def __init__(self, name: str, rps: float, *, max_duration: float, request_timeout: float,
                 max_in_flight: int) -> None:
        if rps <= 0:
            raise ValueError(f"rps must be positive, got {rps}")
        self.rps, self.max_duration, self.request_timeout = float(rps), float(max_duration), float(request_timeout)
        self._name = name
        self._max_in_flight = max_in_flight
        self._in_flight = threading.Semaphore(max_in_flight)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> Self:
        if self._thread is not None:
            raise RuntimeError(f"a {type(self).__name__} starts once")
        self._thread = threading.Thread(target=self._run, name=f"traffic-{self._name}", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float | None = None) -> None:
        """Stop sending and wait for requests in flight (each is bounded by `request_timeout`)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout if timeout is not None else self.request_timeout + 10)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def _run(self) -> None:
        raise NotImplementedError

    def _acquire_slot(self) -> bool:
        """Blocks while max_in_flight requests are outstanding (slow backends), but not past stop()."""
        while not self._in_flight.acquire(timeout=0.1):
            if self._stop.is_set():
                return False
        return True
