"""Sends traffic to local stand-in processes in the proportions an HTTPRoute declares.

The older path, kept for the integration test of the demo application's metrics against stand-in
processes on 127.0.0.1: it reads the route's weights about once a second, as a gateway controller
would watch it, and splits a steady request rate between the local processes standing in for the
route's Services. Every e2e test and the demo send their traffic through the stack's real gateway
to the pods (devstack.gateway_traffic).

The split is a smooth weighted round-robin rather than random, so it is exact: at weights 1/99
every 100 requests send exactly 1 to the canary, and a test can assert counts, not odds.

With `questions` (e.g. `arithmetic_questions()`) each backend asks them in the same fixed
rotation, so primary and canary see the same inputs: the judge samples by a hash of the input,
and judges both variants' answers to one input together.
"""

from __future__ import annotations

import http.client
import logging
import random
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import Counter
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor

import kubernetes
import urllib3

from .background_traffic import BackgroundTraffic

log = logging.getLogger(__name__)

GATEWAY_GROUP, GATEWAY_VERSION, HTTPROUTES = "gateway.networking.k8s.io", "v1", "httproutes"

# Direct connections only: an http_proxy in the environment must not capture loopback calls.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class SmoothWeightedRoundRobin:
    """nginx's smooth weighted round-robin: deterministic, exact over every `sum(weights)` picks,
    and spreading the small backend's picks evenly instead of in a burst."""

    def __init__(self, weights: Mapping[str, int] | None = None) -> None:
        self._weights: dict[str, int] = {}
        self._current: dict[str, int] = {}
        self.set_weights(weights or {})

    @property
    def weights(self) -> dict[str, int]:
        return dict(self._weights)

    @property
    def total(self) -> int:
        return sum(self._weights.values())

    def set_weights(self, weights: Mapping[str, int]) -> bool:
        """Use `weights` from now on; returns whether they changed.

        A change restarts the cycle, so the new proportions are exact from the first pick after
        it rather than skewed by credit built up under the old weights.
        """
        if any(int(w) < 0 for w in weights.values()):
            raise ValueError(f"weights must not be negative: {dict(weights)}")
        new = {name: int(w) for name, w in weights.items() if int(w) > 0}
        if new == self._weights:
            return False
        self._weights = new
        self._current = dict.fromkeys(new, 0)
        return True

    def next(self) -> str | None:
        """The backend for the next request; None when every weight is 0."""
        total = self.total
        if total == 0:
            return None
        for name, weight in self._weights.items():
            self._current[name] += weight
        # max() keeps the first of equal values, so ties break by backendRefs order: deterministic.
        chosen = max(self._current, key=self._current.__getitem__)
        self._current[chosen] -= total
        return chosen


def route_weights(route: Mapping) -> dict[str, int]:
    """Service name -> weight from rules[0].backendRefs of an HTTPRoute (weight defaults to 1)."""
    rules = (route.get("spec") or {}).get("rules") or []
    weights: dict[str, int] = {}
    for ref in (rules[0].get("backendRefs") or []) if rules else []:
        if ref.get("group", "") != "" or ref.get("kind", "Service") != "Service":
            continue  # only core Services stand for our local processes
        weights[ref["name"]] = weights.get(ref["name"], 0) + int(ref.get("weight", 1))
    return weights


def arithmetic_questions(n: int = 50, seed: int = 0) -> list[str]:
    """`n` different questions like "What is 17 + 25?", the same for the same (n, seed).

    Sums and differences of numbers below 100, products by 2 to 12 and divisions that come out
    whole: each has one short, checkable answer (the demo application's kind of question).
    """
    if not 1 <= n <= 10_000:  # about 21,000 different ones exist: far more would never finish
        raise ValueError(f"n must be within [1, 10000], got {n}")
    rng = random.Random(seed)
    questions: list[str] = []
    seen: set[str] = set()
    while len(questions) < n:
        op = rng.choice("+-*/")
        a, b = rng.randint(2, 99), rng.randint(2, 99)
        if op == "*":
            b = rng.randint(2, 12)
        elif op == "/":
            a = rng.randint(2, 12) * b  # whole quotients only
        question = f"What is {a} {op} {b}?"
        if question not in seen:
            seen.add(question)
            questions.append(question)
    return questions


def _require_loopback(url: str) -> str:
    parts = urllib.parse.urlsplit(url)
    if parts.scheme != "http" or parts.hostname != "127.0.0.1" or parts.port is None:
        raise ValueError(f"traffic goes only to http://127.0.0.1:PORT stand-ins, not {url!r}")
    return url.rstrip("/")


class TrafficDriver(BackgroundTraffic):
    """Background traffic at `rps` requests/s, split as the HTTPRoute `route_name` says.

    `backends` maps a Service name of the route (e.g. "web-primary", "web-canary") to the base URL
    of the local process standing in for it. While the route is missing or its weights sum to 0
    nothing is sent. Requests picked for a Service with no stand-in are counted in `dropped`.
    The driver stops itself after `max_duration` seconds, so a forgotten one cannot run on.

    `questions`, if given, are sent as `?q=` in rotation, each backend going through them in the
    same order from the first (so at any weights every backend's inputs are the same ones, not
    a share of them); without them request n asks "request n".
    """

    def __init__(self, api: kubernetes.client.ApiClient, namespace: str, route_name: str,
                 backends: Mapping[str, str], rps: float = 20, *, max_duration: float = 30 * 60,
                 poll_interval: float = 1.0, request_timeout: float = 5.0, max_in_flight: int = 32,
                 path: str = "/answer", questions: Sequence[str] | None = None) -> None:
        super().__init__(route_name, rps, max_duration=max_duration, request_timeout=request_timeout,
                         max_in_flight=max_in_flight)
        if isinstance(questions, str):
            raise TypeError("questions is a sequence of strings, not one string")
        self.questions: tuple[str, ...] | None = None if questions is None else tuple(str(q) for q in questions)
        if self.questions == ():
            raise ValueError("questions must not be empty (pass None for the default 'request n')")
        self.namespace, self.route_name = namespace, route_name
        self.backends = {name: _require_loopback(url) for name, url in backends.items()}
        self.poll_interval, self.path = float(poll_interval), path
        self._custom = kubernetes.client.CustomObjectsApi(api)
        self._rr = SmoothWeightedRoundRobin()
        self._lock = threading.Lock()
        self._sent: Counter[str] = Counter()
        self._dropped: Counter[str] = Counter()
        self._responses: dict[str, Counter[str]] = {}
        self._asked: Counter[str] = Counter()  # per backend: questions sent so far, for the rotation
        self._route_seen = False

    # -- what tests look at ------------------------------------------------------------------

    @property
    def sent(self) -> dict[str, int]:
        """Requests sent per backend (counted when sent; after stop() all have completed)."""
        with self._lock:
            return dict(self._sent)

    @property
    def responses(self) -> dict[str, dict[str, int]]:
        """Per backend, completed requests by status code ("200", "500", ... or "error")."""
        with self._lock:
            return {name: dict(codes) for name, codes in self._responses.items()}

    @property
    def dropped(self) -> dict[str, int]:
        """Requests the route assigned to a Service without a local stand-in: not sent."""
        with self._lock:
            return dict(self._dropped)

    @property
    def weights(self) -> dict[str, int]:
        """The weights last read from the route ({} if missing), without zero weights."""
        with self._lock:
            return self._rr.weights

    @property
    def route_seen(self) -> bool:
        """Whether the route existed at the last successful read."""
        with self._lock:
            return self._route_seen

    # -- the loop --------------------------------------------------------------------------------

    def refresh(self) -> dict[str, int]:
        """Read the route now and use its weights; returns them."""
        try:
            route = self._custom.get_namespaced_custom_object(
                GATEWAY_GROUP, GATEWAY_VERSION, self.namespace, HTTPROUTES, self.route_name,
                _request_timeout=5)
        except kubernetes.client.ApiException as exc:
            if exc.status != 404:
                # Like a gateway that lost its control plane: keep routing as last programmed.
                log.warning("reading HTTPRoute %s/%s failed (%s); keeping weights %s",
                            self.namespace, self.route_name, exc.status, self.weights)
                return self.weights
            route, seen = {}, False
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            log.warning("reading HTTPRoute %s/%s failed (%s); keeping weights %s",
                        self.namespace, self.route_name, exc, self.weights)
            return self.weights
        else:
            seen = True
        weights = route_weights(route)
        with self._lock:
            self._route_seen = seen
            if self._rr.set_weights(weights):
                log.info("HTTPRoute %s/%s weights now %s", self.namespace, self.route_name, weights)
            return self._rr.weights

    def _run(self) -> None:
        interval = 1.0 / self.rps
        deadline = time.monotonic() + self.max_duration
        next_poll = next_send = time.monotonic()
        count = 0
        with ThreadPoolExecutor(self._max_in_flight, thread_name_prefix=f"traffic-{self.route_name}") as pool:
            while not self._stop.is_set():
                now = time.monotonic()
                if now >= deadline:
                    log.warning("traffic to %s/%s stopped after its max duration of %.0fs",
                                self.namespace, self.route_name, self.max_duration)
                    break
                if now >= next_poll:
                    self.refresh()
                    next_poll = now + self.poll_interval
                with self._lock:
                    idle = self._rr.total == 0
                if idle:
                    next_send = time.monotonic()  # a route that appears later starts at rate, not with a burst
                    self._stop.wait(max(0.0, next_poll - time.monotonic()))
                    continue
                if next_send > now:
                    self._stop.wait(min(next_send, next_poll) - now)
                    continue
                with self._lock:
                    backend = self._rr.next()
                next_send += interval
                if now - next_send > 1.0:
                    next_send = now  # fell far behind (slow API read, full pool): resume, no burst
                if backend is None:
                    continue
                if backend not in self.backends:
                    with self._lock:
                        self._dropped[backend] += 1
                    continue
                if not self._acquire_slot():
                    break
                count += 1
                with self._lock:
                    self._sent[backend] += 1
                    question = self._question(backend, count)
                pool.submit(self._send, backend, question)

    def _question(self, backend: str, count: int) -> str:
        """With the lock held: what request number `count`, going to `backend`, asks."""
        if self.questions is None:
            return f"request {count}"
        question = self.questions[self._asked[backend] % len(self.questions)]
        self._asked[backend] += 1
        return question

    def _send(self, backend: str, question: str) -> None:
        url = f"{self.backends[backend]}{self.path}?{urllib.parse.urlencode({'q': question})}"
        try:
            with _OPENER.open(url, timeout=self.request_timeout) as response:
                response.read()
                code = str(response.status)
        except urllib.error.HTTPError as err:
            code = str(err.code)
            err.close()
        except (OSError, http.client.HTTPException) as exc:  # refused, reset, timed out, garbled
            log.debug("request to %s failed: %s", backend, exc)
            code = "error"
        finally:
            self._in_flight.release()
        with self._lock:
            self._responses.setdefault(backend, Counter())[code] += 1
