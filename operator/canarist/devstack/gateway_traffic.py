"""Traffic as users send it: requests to the stack's gateway with the route's hostname, at a steady
rate. The gateway (Traefik, devstack.gateway) splits them by the HTTPRoute's weights over the
Services' EndpointSlices; this driver splits nothing itself. Which pod answered is read from the
answer (the demo application names its Deployment), so a test counts the split where it landed.

Every request carries a fresh `X-Request-Id`, as a gateway or the client would set it: the judge
pairs both versions' answers to one request by it. Traefik lacks the RequestMirror filter, so with
a `mirror` (devstack.shadow_mirror, for `spec.shadow.mirror: External`) this driver copies the
shadow's share of requests to the canary itself, and only that: the copy's answer reaches no user.
"""

from __future__ import annotations

import http.client
import json
import logging
import random
import threading
import time
import urllib.parse
import uuid
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from .background_traffic import BackgroundTraffic
from .shadow_mirror import ShadowMirror, shadow_host

log = logging.getLogger(__name__)

GATEWAY = "gateway"  # what answered when no pod did: the gateway's own 404/502/503


@dataclass(frozen=True)
class Answer:
    sent: float  # time.time() when the request left
    done: float
    served_by: str  # the answering pod's Deployment, or GATEWAY
    code: str  # "200", "500", ... or "error" (refused, reset, timed out)
    question: str = ""
    prompt: str = ""  # the digest of the system prompt the answering pod runs with, if it has one
    request_id: str = ""
    kind: str = ""  # which entry of the driver's `mix` the request was
    cohort: str = ""  # the cohort the route put it in, as the answering pod saw it (X-Canarist-Cohort)


def _require_loopback(url: str) -> tuple[str, int]:
    parts = urllib.parse.urlsplit(url)
    if parts.scheme != "http" or parts.hostname != "127.0.0.1" or parts.port is None:
        raise ValueError(f"traffic goes only to the local gateway at http://127.0.0.1:PORT, not {url!r}")
    return parts.hostname, parts.port


class GatewayTraffic(BackgroundTraffic):
    """Background requests at `rps` to `gateway_url` with `Host: host`; every answer is recorded.

    `questions`, if given, are asked as `?q=`, each request drawing one at random (seeded, so a run
    replays): not in rotation, because a gateway's weighted round-robin is periodic too, and at 50 %
    an even rotation would send the primary only even questions and the canary only odd ones, so
    the judge would never see both answer the same input. `in_order` asks them one after the other
    instead, each once while they last: every request different, as most real traffic is (pairs then
    come only from the mirror, by request id). Without questions request n asks "request n".
    `mix`, if given, is [(kind, headers, weight)]: each request draws a kind by weight and carries its
    headers (an Accept-Language, a client type), so a test can send cohorts' traffic and count, per
    kind, where it landed and which cohort the route put it in.
    The driver stops itself after `max_duration` seconds, so a forgotten one cannot run on.
    """

    def __init__(self, gateway_url: str, host: str, rps: float = 20, *, questions: Sequence[str] | None = None,
                 path: str = "/answer", max_duration: float = 30 * 60, request_timeout: float = 5.0,
                 max_in_flight: int = 32, seed: int = 0, mirror: ShadowMirror | None = None,
                 in_order: bool = False, mix: Sequence[tuple[str, dict[str, str], float]] | None = None) -> None:
        super().__init__(host, rps, max_duration=max_duration, request_timeout=request_timeout,
                         max_in_flight=max_in_flight)
        if isinstance(questions, str):
            raise TypeError("questions is a sequence of strings, not one string")
        if questions is not None and not questions:
            raise ValueError("questions must not be empty (pass None for the default 'request n')")
        self.address = _require_loopback(gateway_url)
        self.host, self.path = host, path
        self.questions = None if questions is None else tuple(str(q) for q in questions)
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self._answers: list[Answer] = []
        self._local = threading.local()  # one keep-alive connection per sending thread
        self.mirror, self.in_order = mirror, in_order
        self._mirrored: list[Answer] = []  # the copies' answers, which no user saw
        self._mirror_slots = threading.Semaphore(max_in_flight)
        if mix is not None and (not mix or any(weight <= 0 for _, _, weight in mix)):
            raise ValueError("mix needs at least one (kind, headers, weight) with a positive weight")
        self.mix = None if mix is None else tuple((kind, dict(headers), float(w)) for kind, headers, w in mix)

    # -- what tests look at ------------------------------------------------------------------

    @property
    def answers(self) -> list[Answer]:
        with self._lock:
            return list(self._answers)

    def served(self, since: float = 0.0, until: float = float("inf")) -> Counter[str]:
        """Answers per Deployment (or GATEWAY) for requests sent within [since, until)."""
        return Counter(a.served_by for a in self.answers if since <= a.sent < until)

    def codes(self, since: float = 0.0, until: float = float("inf")) -> Counter[str]:
        """Answers per status code ("200", "503", "error", ...) for requests sent within [since, until)."""
        return Counter(a.code for a in self.answers if since <= a.sent < until)

    def prompts(self, since: float = 0.0, until: float = float("inf")) -> Counter[tuple[str, str]]:
        """Good answers per (Deployment, system prompt digest) for requests sent within [since, until)."""
        return Counter((a.served_by, a.prompt) for a in self.answers if since <= a.sent < until and a.code == "200")

    def failures(self, since: float = 0.0, until: float = float("inf")) -> list[Answer]:
        """Requests that got no good answer: anything but 200, the gateway's own errors included."""
        return [a for a in self.answers if since <= a.sent < until and a.code != "200"]

    def landed(self, kind: str, since: float = 0.0, until: float = float("inf")) -> Counter[tuple[str, str]]:
        """Good answers to requests of one `mix` kind, per (answering Deployment, cohort it was put in)."""
        return Counter((a.served_by, a.cohort) for a in self.answers
                       if since <= a.sent < until and a.kind == kind and a.code == "200")

    def mirrored(self, since: float = 0.0, until: float = float("inf")) -> Counter[str]:
        """Mirrored copies answered, per Deployment, for copies sent within [since, until)."""
        with self._lock:
            return Counter(a.served_by for a in self._mirrored if since <= a.sent < until)

    def wait_for(self, count: int, timeout: float = 30) -> None:
        """Block until `count` answers have come back (whatever they were)."""
        deadline = time.monotonic() + timeout
        while len(self.answers) < count:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{len(self.answers)} of {count} answers from {self.host} within {timeout}s")
            time.sleep(0.05)

    def wait_served(self, deployment: str, count: int = 3, timeout: float = 60) -> float:
        """Block until `deployment`'s pods have answered `count` requests through the gateway, and return
        the time: a route just written is served a moment later (Traefik loads it), and what users got
        before that is the gateway's 404, not the release's doing."""
        deadline = time.monotonic() + timeout
        while self.served()[deployment] < count:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.served()[deployment]} of {count} answers from {deployment} through "
                                   f"{self.host} within {timeout}s: {dict(self.codes())}")
            time.sleep(0.05)
        return time.time()

    # -- the loop --------------------------------------------------------------------------------

    def _run(self) -> None:
        interval = 1.0 / self.rps
        deadline = time.monotonic() + self.max_duration
        next_send = time.monotonic()
        count = 0
        with ThreadPoolExecutor(self._max_in_flight, thread_name_prefix=f"traffic-{self.host}") as pool, \
                ThreadPoolExecutor(4, thread_name_prefix=f"mirror-{self.host}") as mirrors:
            while not self._stop.is_set():
                now = time.monotonic()
                if now >= deadline:
                    log.warning("traffic to %s stopped after its max duration of %.0fs", self.host, self.max_duration)
                    break
                if next_send > now:
                    self._stop.wait(next_send - now)
                    continue
                next_send += interval
                if now - next_send > 1.0:
                    next_send = now  # fell far behind (slow answers, full pool): resume, no burst
                if not self._acquire_slot():
                    break
                if self.questions is None:
                    question = f"request {count}"
                elif self.in_order:
                    question = self.questions[count % len(self.questions)]
                else:
                    question = self._rng.choice(self.questions)
                count += 1
                request_id = uuid.uuid4().hex
                kind, headers = "", {}
                if self.mix is not None:
                    kind, headers, _ = self._rng.choices(self.mix, weights=[m[2] for m in self.mix])[0]
                pool.submit(self._send, question, request_id, kind, headers)
                if self.mirror is not None and self._rng.random() * 100 < self.mirror.percent():
                    endpoint = self.mirror.endpoint(self._rng)
                    # Best effort, as a gateway's mirror is: a copy that finds no free slot is dropped.
                    if endpoint is not None and self._mirror_slots.acquire(blocking=False):
                        mirrors.submit(self._send_copy, endpoint, question, request_id)

    def _connection(self) -> http.client.HTTPConnection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._local.conn = http.client.HTTPConnection(*self.address, timeout=self.request_timeout)
        return conn

    def _send_copy(self, endpoint: tuple[str, int], question: str, request_id: str) -> None:
        sent, served_by = time.time(), GATEWAY
        conn = http.client.HTTPConnection(*endpoint, timeout=self.request_timeout)
        try:
            conn.request("GET", f"{self.path}?{urllib.parse.urlencode({'q': question})}",
                         headers={"Host": shadow_host(self.host), "X-Request-Id": request_id})
            response = conn.getresponse()
            body = response.read()
            if response.getheader("Content-Type", "").startswith("application/json"):
                served_by = str(json.loads(body).get("deployment") or GATEWAY)
            code = str(response.status)
        except (OSError, http.client.HTTPException, ValueError) as exc:
            log.debug("mirrored request to %s:%s failed: %s", *endpoint, exc)
            code = "error"
        finally:
            conn.close()
            self._mirror_slots.release()
        with self._lock:
            self._mirrored.append(Answer(sent, time.time(), served_by, code, question, "", request_id))

    def _send(self, question: str, request_id: str = "", kind: str = "", extra: dict[str, str] | None = None) -> None:
        sent = time.time()
        target = f"{self.path}?{urllib.parse.urlencode({'q': question})}"
        served_by, code, prompt, cohort = GATEWAY, "error", "", ""
        try:
            conn = self._connection()
            try:
                headers = {**(extra or {}), "Host": self.host}
                if request_id:
                    headers["X-Request-Id"] = request_id
                conn.request("GET", target, headers=headers)
                response = conn.getresponse()
                body = response.read()
                code = str(response.status)
                if response.getheader("Content-Type", "").startswith("application/json"):
                    payload = json.loads(body)
                    served_by = str(payload.get("deployment") or GATEWAY)
                    prompt = str(payload.get("prompt") or "")
                    cohort = str(payload.get("cohort") or "")
            except (OSError, http.client.HTTPException, ValueError) as exc:  # refused, reset, timed out, garbled
                log.debug("request to %s failed: %s", self.host, exc)
                conn.close()
                self._local.conn = None
        finally:
            self._in_flight.release()
        with self._lock:
            self._answers.append(Answer(sent, time.time(), served_by, code, question, prompt, request_id, kind,
                                        cohort))
