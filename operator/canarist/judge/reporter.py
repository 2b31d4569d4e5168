"""Send samples of a service's answers to canarist's judge, without ever slowing the service down.

Standard library only, and it imports nothing else from canarist: copy this one file into an
application if installing canarist there is not wanted.

    from canarist.judge.reporter import JudgeReporter

    reporter = JudgeReporter()          # configured from the environment, see below
    ...
    answer = model(question)
    reporter.report(question, answer)   # never blocks, never raises
    return answer

Configuration (arguments win over the environment):

- `CANARIST_JUDGE_URL`: the judge's base URL (`http://canarist-judge.canarist:8080`) or its
  `.../v1/samples` URL. Unset or empty: the reporter is disabled and `report()` does nothing.
- `CANARIST_RELEASE`: the CanaryRelease, `namespace/name`.
- `CANARIST_VARIANT`: `primary` or `canary`, default `canary`. The operator sets
  `CANARIST_VARIANT=primary` (and `CANARIST_REVISION`) on the primary's pods only; it never edits
  the user's own Deployment, which is the canary, so an application without it is the canary.
- `CANARIST_REVISION`: the pod template hash, if known.
- `CANARIST_JUDGE_TOKEN_FILE`: the file holding the pod's ServiceAccount token for the judge (a
  projected `serviceAccountToken` volume with the judge's audience, `canarist-judge`). Default:
  `/var/run/secrets/canarist.dev/judge/token` when that file exists. The file is read again
  whenever it changes (the kubelet rotates the token), and sent as `Authorization: Bearer`. A
  judge with authentication on refuses samples without it (401), and samples for a release of
  another namespace than the pod's (403).

A bad value passed as an argument raises ValueError; a bad value from the environment disables
the reporter with one logged error instead, so monitoring configuration cannot crash a service.

`report()` only appends to a bounded in-memory queue (a full queue drops the sample and counts
it); a daemon thread posts batches as `{"samples": [...]}` to `POST /v1/samples` with a short
timeout. Failures are counted in `.stats` and logged at most once a minute. `JudgeMiddleware`
does the same for any WSGI application without touching its code.

Shadow traffic. In a shadow phase the gateway mirrors copies of real requests to the canary; the
canary's answers reach no user and are judged against the primary's answers to the same request.
The headers that matter:

- `X-Request-Id` pairs the two answers: report it as `request_id` (the middleware does). Envoy
  generates one and the mirror carries the same value; elsewhere set it in your app or gateway.
  Without it, the judge pairs answers to the same input close in time.
- A mirrored request is marked by the gateway: Envoy-based gateways (Envoy Gateway, Istio,
  Contour) append `-shadow` to the Host/authority (`bot.example.com-shadow`, before any port);
  meshes that mark it otherwise can send `X-Canarist-Mirrored: true`. `is_mirrored()` reads both;
  report such answers with `mirrored=True`. A mirrored request must not act twice in the world (an
  e-mail sent, a tool call that writes): check `is_mirrored()`, or `environ["canarist.mirrored"]`
  under the middleware, before any side effect.

Cohorts. A CanaryRelease's cohorts are HTTPRoute rules that set `X-Canarist-Cohort: <cohort>` on
the requests they match (the default rule removes it, so clients cannot claim one). Report it as
`segment`: `cohort_of()` reads it, and the middleware does so itself; the judge's verdicts are then
also given per cohort, and each cohort is judged on its own.
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import weakref
from collections import deque
from datetime import datetime, timezone

__all__ = ["JudgeMiddleware", "JudgeReporter", "cohort_of", "default_extract", "is_mirrored"]

# A fixed name, so that a vendored copy logs under the same logger as the installed one.
log = logging.getLogger("canarist.judge.reporter")

ENV_URL, ENV_RELEASE, ENV_VARIANT, ENV_REVISION, ENV_TOKEN_FILE = (
    "CANARIST_JUDGE_URL", "CANARIST_RELEASE", "CANARIST_VARIANT", "CANARIST_REVISION", "CANARIST_JUDGE_TOKEN_FILE")
DEFAULT_TOKEN_FILE = "/var/run/secrets/canarist.dev/judge/token"
VARIANTS = ("primary", "canary")
SAMPLES_PATH = "/v1/samples"
MAX_TEXT_BYTES = 64 * 1024   # the judge refuses a request or response longer than this (UTF-8)
MAX_BATCH = 1000             # the judge's limit of samples per POST
MAX_POST_BYTES = 1_000_000   # below common server body limits (aiohttp's default is 1 MiB)
LOG_EVERY = 60.0             # seconds between two warnings about failed or dropped samples
USER_AGENT = "canarist-judge-reporter/1"
_LOOPBACK = {"127.0.0.1", "::1", "localhost"}


MIRRORED_HEADER = "X-Canarist-Mirrored"
SHADOW_SUFFIX = "-shadow"
COHORT_HEADER = "X-Canarist-Cohort"
_MAX_COHORT_CHARS = 63  # a cohort's name is a DNS label


def cohort_of(headers) -> str | None:
    """The cohort the route put a request in (the `X-Canarist-Cohort` header its rule sets), or None.

    `headers`: any mapping with `.get`, as for is_mirrored()."""
    try:
        value = headers.get(COHORT_HEADER) or headers.get(COHORT_HEADER.lower())
    except Exception:  # noqa: BLE001 - a strange mapping must not fail the request
        return None
    value = str(value).strip() if value is not None else ""
    return value[:_MAX_COHORT_CHARS] or None


def is_mirrored(host: str | None, headers=None) -> bool:
    """True when a request is a mirrored copy (shadow traffic) rather than a user's: its Host ends in
    `-shadow` (before any port), as Envoy-based gateways mark it, or `X-Canarist-Mirrored` is true.

    `headers`: any mapping with `.get` (case-insensitive ones such as http.server's or
    requests' work with the canonical name; WSGI environs are read by the middleware).
    """
    if host:
        name = host.strip().lower()
        if name.startswith("["):  # an IPv6 literal: "[::1]:8080"
            name = name[1:].partition("]")[0]
        else:
            name = name.rsplit(":", 1)[0] if name.count(":") == 1 else name
        if name.endswith(SHADOW_SUFFIX):
            return True
    if headers is not None:
        try:
            value = headers.get(MIRRORED_HEADER) or headers.get(MIRRORED_HEADER.lower())
        except Exception:  # noqa: BLE001 - a strange mapping must not fail the request
            value = None
        if value is not None and str(value).strip().lower() in ("true", "1", "yes"):
            return True
    return False


def _setting(explicit, env: str) -> tuple[str | None, str]:
    """(value, where it came from); an empty environment variable counts as unset."""
    if explicit is not None:
        return str(explicit), "argument"
    value = os.environ.get(env, "").strip()
    return (value or None), f"${env}"


def _samples_url(url: str) -> str:
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"judge URL must be http(s)://host[:port][/path], got {url!r}")
    path = parts.path.rstrip("/")
    if not path.endswith(SAMPLES_PATH):
        path += SAMPLES_PATH
    return urllib.parse.urlunsplit((parts.scheme, parts.netloc, path, parts.query, ""))


def _check_release(release: str | None) -> str:
    namespace, _, name = (release or "").partition("/")
    if not namespace or not name or "/" in name:
        raise ValueError(f"release must be 'namespace/name', got {release!r}")
    return release


def _text(value) -> str | None:
    """`value` as a str the judge accepts, or None when it cannot be sent (wrong type, too long)."""
    if isinstance(value, (bytes, bytearray)):
        value = bytes(value).decode("utf-8", "replace")
    elif not isinstance(value, str):
        return None
    if len(value) > MAX_TEXT_BYTES:
        return None
    if len(value) * 4 > MAX_TEXT_BYTES and len(value.encode("utf-8", "surrogatepass")) > MAX_TEXT_BYTES:
        return None  # only long strings pay for the encoding: 4 bytes a character at most
    return value


def _rfc3339(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


# Every live reporter, for the fork and exit hooks.
_REPORTERS: "weakref.WeakSet[JudgeReporter]" = weakref.WeakSet()


class JudgeReporter:
    """Queues samples of (request, response) and posts them to the judge from a daemon thread.

    `report()` never blocks and never raises. At most `queue_size` samples wait; more are
    dropped and counted. A batch is posted when `batch_size` samples wait or the oldest has waited
    `flush_interval` seconds; each POST gives up after `timeout` seconds and is not retried (a
    judge that is down must not build up a backlog), except that a batch refused as malformed
    (400) is sent again one sample at a time, so one bad sample does not cost the others.
    `.stats` counts samples `sent`, `dropped`
    (queue full, text over 64 KiB, or unsent at close) and `failed` (the judge refused them or
    could not be reached).
    """

    def __init__(self, url: str | None = None, *, release: str | None = None, variant: str | None = None,
                 revision: str | None = None, queue_size: int = 1000, batch_size: int = 50,
                 flush_interval: float = 0.5, timeout: float = 2.0, token_file: str | None = None) -> None:
        if int(queue_size) < 1:
            raise ValueError(f"queue_size must be at least 1, got {queue_size!r}")
        if not 1 <= int(batch_size) <= MAX_BATCH:
            raise ValueError(f"batch_size must be within [1, {MAX_BATCH}], got {batch_size!r}")
        if float(flush_interval) < 0 or float(timeout) <= 0:
            raise ValueError(f"flush_interval must be >= 0 and timeout > 0, got {flush_interval!r}, {timeout!r}")
        self.queue_size, self.batch_size = int(queue_size), int(batch_size)
        self.flush_interval, self.timeout = float(flush_interval), float(timeout)
        self.url: str | None = None
        self.release: str | None = None
        self.variant: str = "canary"
        self.revision: str | None = None
        self._configure(url, release, variant, revision)
        token_file, _ = _setting(token_file, ENV_TOKEN_FILE)
        if token_file is None and os.path.exists(DEFAULT_TOKEN_FILE):
            token_file = DEFAULT_TOKEN_FILE
        self.token_file: str | None = token_file
        self._token: tuple[float, str] | None = None  # (the file's mtime, its token)
        self._opener = None
        if self.url is not None:
            host = urllib.parse.urlsplit(self.url).hostname
            # Loopback never goes through a proxy; anything else honours the usual *_proxy variables.
            self._opener = urllib.request.build_opener(
                *([urllib.request.ProxyHandler({})] if host in _LOOPBACK else []))
        self._reset()
        self._log_at = None
        self._logged = {"failed": 0, "dropped": 0}
        _REPORTERS.add(self)

    def _configure(self, url, release, variant, revision) -> None:
        url, url_from = _setting(url, ENV_URL)
        if url is None:
            return  # disabled: nothing to report to
        release, release_from = _setting(release, ENV_RELEASE)
        variant, variant_from = _setting(variant, ENV_VARIANT)
        revision, _ = _setting(revision, ENV_REVISION)
        problems: list[tuple[str, bool]] = []  # (message, came from an argument)
        try:
            url = _samples_url(url)
        except ValueError as exc:
            problems.append((f"{url_from}: {exc}", url_from == "argument"))
        if release is None:
            problems.append((f"no release: pass release= or set ${ENV_RELEASE} to 'namespace/name'",
                             url_from == "argument"))
        else:
            try:
                _check_release(release)
            except ValueError as exc:
                problems.append((f"{release_from}: {exc}", release_from == "argument"))
        variant = variant or "canary"
        if variant not in VARIANTS:
            problems.append((f"{variant_from}: variant must be one of {VARIANTS}, got {variant!r}",
                             variant_from == "argument"))
        if any(explicit for _, explicit in problems):
            raise ValueError("; ".join(message for message, _ in problems))
        if problems:
            log.error("judge reporting disabled: %s", "; ".join(message for message, _ in problems))
            return
        self.url, self.release, self.variant, self.revision = url, release, variant, revision

    def _reset(self) -> None:
        """Fresh queue, counters and locks: at construction, and in a child after fork()."""
        self._lock = threading.Lock()
        self._has_work = threading.Condition(self._lock)   # the sender waits on it
        self._progress = threading.Condition(self._lock)   # flush() waits on it
        self._buffer: deque = deque()
        self._thread: threading.Thread | None = None
        self._closed = self._stopping = False
        self._counts = {"sent": 0, "dropped": 0, "failed": 0}
        self._queued = self._taken = self._done = self._flush_target = 0
        self._last_error = ""

    # -- what applications call -------------------------------------------------------------------

    @property
    def enabled(self) -> bool:
        """Configured with a judge URL, and not closed."""
        return self.url is not None and not self._closed

    @property
    def stats(self) -> dict[str, int]:
        """Samples `sent` (accepted by the judge), `dropped` (never sent) and `failed` (refused or unreachable)."""
        with self._lock:
            return dict(self._counts)

    def report(self, request: str, response: str, *, request_id: str | None = None,
               trace_id: str | None = None, segment: str | None = None, mirrored: bool = False) -> bool:
        """Queue one sample; True if queued. Never blocks on the judge and never raises.

        `mirrored`: the answer was to a mirrored copy of a request (see is_mirrored()), which no user saw."""
        if self.url is None:
            return False
        try:
            request, response = _text(request), _text(response)
            now, queued_at = time.time(), time.monotonic()
            with self._lock:
                if self._closed:
                    return False
                if request is None or response is None or len(self._buffer) >= self.queue_size:
                    self._counts["dropped"] += 1
                    return False
                sample = {"release": self.release, "variant": self.variant,
                          "request": request, "response": response}
                if self.revision:
                    sample["revision"] = self.revision
                if request_id is not None:
                    sample["requestId"] = str(request_id)
                if trace_id is not None:
                    sample["traceId"] = str(trace_id)
                if segment is not None:
                    sample["segment"] = str(segment)
                if mirrored:
                    sample["mirrored"] = True
                self._buffer.append((queued_at, now, sample))
                self._queued += 1
                if self._thread is None:
                    self._thread = threading.Thread(target=self._run, name="canarist-judge-reporter", daemon=True)
                    self._thread.start()
                elif len(self._buffer) == 1 or len(self._buffer) >= self.batch_size:
                    self._has_work.notify()
                return True
        except Exception:  # noqa: BLE001 - reporting must never fail the caller's request
            return False

    def flush(self, timeout: float | None = 5.0) -> bool:
        """Post what is queued now and wait for it (at most `timeout` s); True if none is left waiting."""
        if self.url is None:
            return True
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._lock:
            target = self._queued
            if self._done >= target:
                return True
            self._flush_target = max(self._flush_target, target)
            self._has_work.notify()
            while self._done < target:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return False
                self._progress.wait(remaining)
            return True

    def close(self, timeout: float | None = 5.0) -> None:
        """Refuse new samples, flush (at most `timeout` s), then stop the thread; what is left is dropped."""
        if self.url is None:
            self._closed = True
            return
        started = time.monotonic()
        with self._lock:
            if self._closed and self._stopping:
                return
            self._closed = True
        self.flush(timeout)
        with self._lock:
            left = len(self._buffer)
            self._buffer.clear()
            self._counts["dropped"] += left
            self._taken += left
            self._done += left
            self._stopping = True
            self._has_work.notify_all()
            self._progress.notify_all()
            thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            remaining = None if timeout is None else max(0.0, timeout - (time.monotonic() - started))
            thread.join(remaining)  # a POST still hanging on the judge ends by its own timeout

    def __enter__(self) -> "JudgeReporter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        if self.url is None:
            return "JudgeReporter(disabled)"
        return (f"JudgeReporter({self.url!r}, release={self.release!r}, variant={self.variant!r}, "
                f"revision={self.revision!r}, stats={self.stats})")

    # -- the sender thread ------------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            with self._lock:
                batch = self._next_batch()
            if batch is None:
                return
            if not batch:
                continue
            try:
                self._post_all([(epoch, sample) for _, epoch, sample in batch])
            except Exception as exc:  # noqa: BLE001 - the thread must survive anything
                with self._lock:
                    self._counts["failed"] += len(batch)
                    self._last_error = f"{type(exc).__name__}: {exc}"
            with self._lock:
                self._done += len(batch)
                self._progress.notify_all()
            self._maybe_log()

    def _next_batch(self) -> list | None:
        """With the lock held: wait for a batch to be due and take it; None once stopped and empty."""
        while not self._buffer:
            if self._stopping:
                return None
            self._has_work.wait()
        due = self._buffer[0][0] + self.flush_interval
        while (len(self._buffer) < self.batch_size and not self._stopping
               and self._flush_target <= self._taken):
            remaining = due - time.monotonic()
            if remaining <= 0:
                break
            self._has_work.wait(remaining)
        batch = [self._buffer.popleft() for _ in range(min(self.batch_size, len(self._buffer)))]
        self._taken += len(batch)
        return batch

    def _post_all(self, batch: list[tuple[float, dict]]) -> None:
        """POST the batch, in as many requests as keep each body under MAX_POST_BYTES."""
        encoded = []
        for epoch, sample in batch:
            sample = dict(sample, timestamp=_rfc3339(epoch))
            # ensure_ascii=False then "replace": a lone surrogate becomes "?" rather than invalid JSON text.
            encoded.append(json.dumps(sample, ensure_ascii=False).encode("utf-8", "replace"))
        chunk: list[bytes] = []
        size = 0
        for item in encoded:
            if chunk and size + len(item) + 1 > MAX_POST_BYTES:
                self._post(chunk)
                chunk, size = [], 0
            chunk.append(item)
            size += len(item) + 1
        if chunk:
            self._post(chunk)

    def _post(self, samples: list[bytes]) -> None:
        error, code = self._send(samples)
        if code == 400 and len(samples) > 1:
            # The judge refuses a whole batch for one bad sample: find it, and send the others.
            for sample in samples:
                self._post([sample])
            return
        with self._lock:
            if error:
                self._counts["failed"] += len(samples)
                self._last_error = error
            else:
                self._counts["sent"] += len(samples)

    def _send(self, samples: list[bytes]) -> tuple[str, int | None]:
        """One POST: ("", status) if accepted, else (what went wrong, HTTP status or None)."""
        body = b'{"samples":[' + b",".join(samples) + b"]}"
        headers = {"Content-Type": "application/json", "User-Agent": USER_AGENT}
        try:
            token = self._read_token()
        except OSError as exc:
            return f"the token file {self.token_file} cannot be read: {exc}", None
        if token:
            headers["Authorization"] = f"Bearer {token}"
        request = urllib.request.Request(self.url, data=body, method="POST", headers=headers)
        try:
            with self._opener.open(request, timeout=self.timeout) as response:
                response.read(65536)
                if not 200 <= response.status < 300:
                    return f"HTTP {response.status}", response.status
                return "", response.status
        except urllib.error.HTTPError as exc:
            try:
                detail = exc.read(1000).decode("utf-8", "replace").strip()
            except Exception:  # noqa: BLE001
                detail = ""
            finally:
                exc.close()
            return f"HTTP {exc.code}" + (f": {detail}" if detail else ""), exc.code
        except Exception as exc:  # noqa: BLE001 - refused, reset, timed out, DNS, garbled answer
            return f"{type(exc).__name__}: {exc}", None

    def _read_token(self) -> str | None:
        """The token file's content, read again only when the file changed (kubelet rotation)."""
        if self.token_file is None:
            return None
        mtime = os.stat(self.token_file).st_mtime
        if self._token is None or self._token[0] != mtime:
            with open(self.token_file, encoding="utf-8") as handle:
                self._token = (mtime, handle.read().strip())
        return self._token[1]

    def _maybe_log(self) -> None:
        """One warning a minute at most about samples that failed or were dropped since the last one."""
        with self._lock:
            failed, dropped, last_error = self._counts["failed"], self._counts["dropped"], self._last_error
        new_failed, new_dropped = failed - self._logged["failed"], dropped - self._logged["dropped"]
        if not (new_failed or new_dropped):
            return
        now = time.monotonic()
        if self._log_at is not None and now - self._log_at < LOG_EVERY:
            return
        self._log_at = now
        self._logged = {"failed": failed, "dropped": dropped}
        log.warning("judge reporter (%s %s): %d sample(s) failed to reach %s%s, %d dropped (queue full or text "
                    "over 64 KiB); the service's answers are not affected (at most one such warning a minute)",
                    self.release, self.variant, new_failed, self.url,
                    f" (last error: {last_error})" if new_failed else "", new_dropped)


def _after_fork_in_child() -> None:
    # The parent's thread does not exist here and its lock may be held forever: start afresh,
    # without the parent's queued samples (the parent sends those).
    for reporter in list(_REPORTERS):
        if reporter.url is not None and not reporter._closed:
            reporter._reset()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


@atexit.register
def _close_all_at_exit() -> None:
    # Daemon threads die with the interpreter: give what is queued a short chance to go out.
    for reporter in list(_REPORTERS):
        if reporter.enabled:
            reporter.close(timeout=1.0)


# -------------------------------------------------------------------------------------------------
# WSGI


def default_extract(environ: dict, request_body: bytes, response_body: bytes) -> tuple[str, str] | None:
    """The raw bodies as UTF-8 text; a request without a body stands as its decoded path and query."""
    request = request_body.decode("utf-8", "replace")
    if not request:
        query = environ.get("QUERY_STRING", "")
        request = environ.get("PATH_INFO", "") + ("?" + urllib.parse.unquote_plus(query) if query else "")
    return request, response_body.decode("utf-8", "replace")


class _Capture:
    """The first `limit` bytes of a stream; `complete` stays False once more went by."""

    __slots__ = ("chunks", "size", "limit", "overflow")

    def __init__(self, limit: int) -> None:
        self.chunks: list[bytes] = []
        self.size, self.limit, self.overflow = 0, limit, False

    def add(self, data) -> None:
        if self.overflow or not data:
            return
        self.size += len(data)
        if self.size > self.limit:
            self.overflow, self.chunks = True, []
        else:
            self.chunks.append(bytes(data))

    @property
    def data(self) -> bytes:
        return b"".join(self.chunks)


class _TeeInput:
    """wsgi.input as the application reads it, also recorded into a _Capture."""

    def __init__(self, stream, capture: _Capture) -> None:
        self._stream, self._capture = stream, capture

    def read(self, *args):
        data = self._stream.read(*args)
        self._capture.add(data)
        return data

    def readline(self, *args):
        data = self._stream.readline(*args)
        self._capture.add(data)
        return data

    def readlines(self, *args):
        lines = self._stream.readlines(*args)
        for line in lines:
            self._capture.add(line)
        return lines

    def __iter__(self):
        for line in self._stream:
            self._capture.add(line)
            yield line

    def __getattr__(self, name):
        return getattr(self._stream, name)


class _TeeResponse:
    """The application's response iterable, passed on chunk by chunk; reports once it is exhausted."""

    def __init__(self, result, capture: _Capture, on_done) -> None:
        self._result, self._capture, self._on_done = result, capture, on_done

    def __iter__(self):
        for chunk in self._result:
            self._capture.add(chunk)
            yield chunk
        self._on_done()

    def __len__(self) -> int:
        return len(self._result)  # TypeError if it has none, as servers expect

    def close(self) -> None:
        close = getattr(self._result, "close", None)
        if close is not None:
            close()


class JudgeMiddleware:
    """WSGI middleware reporting each request and its answer through `reporter`.

    The response passes through unchanged, chunk by chunk (streaming keeps streaming); only the
    first `max_body` bytes of each body are kept, and a request or response longer than that is
    not reported. `extract(environ, request_body, response_body)` turns the bodies into the
    (request, response) texts to report, or None to skip that request; it runs in the request's
    thread after the last chunk, so it should be cheap. Only 2xx answers are reported unless
    `report_errors` (failures already show in error-rate metrics), and answers with a
    Content-Encoding (gzip...) are skipped. `X-Request-Id` and a W3C `traceparent` header become
    the sample's `requestId` and `traceId`. A mirrored request (see is_mirrored()) is reported as
    such, and `environ["canarist.mirrored"]` tells the application before it runs, so that it can
    skip side effects for it.
    """

    def __init__(self, app, reporter: JudgeReporter, extract=None, *, max_body: int = MAX_TEXT_BYTES,
                 report_errors: bool = False) -> None:
        self.app, self.reporter = app, reporter
        self.extract = extract or default_extract
        self.max_body, self.report_errors = int(max_body), report_errors
        self._warned_at: float | None = None

    def __call__(self, environ, start_response):
        try:
            environ["canarist.mirrored"] = is_mirrored(
                environ.get("HTTP_HOST"), {MIRRORED_HEADER: environ.get("HTTP_X_CANARIST_MIRRORED")})
        except Exception:  # noqa: BLE001 - never fail the request over a marking
            environ["canarist.mirrored"] = False
        environ["canarist.cohort"] = cohort_of({COHORT_HEADER: environ.get("HTTP_X_CANARIST_COHORT")})
        if not self.reporter.enabled:
            return self.app(environ, start_response)
        request_body, response_body = _Capture(self.max_body), _Capture(self.max_body)
        if environ.get("wsgi.input") is not None:
            environ["wsgi.input"] = _TeeInput(environ["wsgi.input"], request_body)
        answered: dict = {}

        def tee_start_response(status, headers, exc_info=None):
            answered["status"], answered["headers"] = status, headers
            write = start_response(status, headers, exc_info) if exc_info is not None \
                else start_response(status, headers)

            def tee_write(data):
                response_body.add(data)
                return write(data)
            return tee_write

        result = self.app(environ, tee_start_response)
        file_wrapper = environ.get("wsgi.file_wrapper")
        if isinstance(file_wrapper, type) and isinstance(result, file_wrapper):
            return result  # a file sent by sendfile(): not an answer, and must stay fast
        return _TeeResponse(result, response_body,
                            lambda: self._report(environ, answered, request_body, response_body))

    def _report(self, environ, answered: dict, request_body: _Capture, response_body: _Capture) -> None:
        try:
            status = str(answered.get("status", ""))
            if request_body.overflow or response_body.overflow:
                return
            if not (self.report_errors or status.startswith("2")):
                return
            for name, value in answered.get("headers") or ():
                if name.lower() == "content-encoding" and value.strip().lower() not in ("", "identity"):
                    return
            texts = self.extract(environ, request_body.data, response_body.data)
            if texts is None:
                return
            request, response = texts
            trace_id = None
            traceparent = environ.get("HTTP_TRACEPARENT", "").split("-")
            if len(traceparent) == 4 and len(traceparent[1]) == 32:
                trace_id = traceparent[1]
            self.reporter.report(request, response, request_id=environ.get("HTTP_X_REQUEST_ID") or None,
                                 trace_id=trace_id, segment=environ.get("canarist.cohort"),
                                 mirrored=bool(environ.get("canarist.mirrored")))
        except Exception as exc:  # noqa: BLE001 - a bad extract() must not fail the request
            now = time.monotonic()
            if self._warned_at is None or now - self._warned_at >= LOG_EVERY:
                self._warned_at = now
                log.warning("judge middleware: extract failed (%s: %s); request not reported",
                            type(exc).__name__, exc)
