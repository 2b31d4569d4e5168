"""The application-side judge reporter: batches samples to `POST /v1/samples`, and never slows or fails the app."""

from __future__ import annotations

import io
import json
import logging
import os
import statistics
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from wsgiref.simple_server import WSGIRequestHandler, make_server
from wsgiref.util import setup_testing_defaults

import pytest

from canarist.devstack.procs import free_port, wait_until
from canarist.judge.reporter import JudgeMiddleware, JudgeReporter, is_mirrored

RELEASE = "shop/support-bot"
ENV = ("CANARIST_JUDGE_URL", "CANARIST_RELEASE", "CANARIST_VARIANT", "CANARIST_REVISION")


class FakeJudge:
    """`POST /v1/samples` on 127.0.0.1, recording what it accepts; it can hang or refuse on request."""

    def __init__(self) -> None:
        self.posts: list[list[dict]] = []
        self.refused: list[list[dict]] = []
        self.hang = False
        self.unhang = threading.Event()
        self.refuse_request: str | None = None  # a sample with this request makes the whole POST a 400
        self._lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _JudgeHandler)
        self.server.daemon_threads = True
        self.server.judge = self
        threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    @property
    def samples(self) -> list[dict]:
        with self._lock:
            return [sample for post in self.posts for sample in post]

    def stop(self) -> None:
        self.unhang.set()
        self.server.shutdown()
        self.server.server_close()


class _JudgeHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_POST(self):  # noqa: N802 - http.server's naming
        judge: FakeJudge = self.server.judge
        body = self.rfile.read(int(self.headers["Content-Length"]))
        if judge.hang:
            judge.unhang.wait(30)
        if self.path != "/v1/samples":
            return self._reply(404, {"error": f"no route {self.path}"})
        payload = json.loads(body)
        samples = payload["samples"] if "samples" in payload else [payload]
        for sample in samples:  # the protocol's required fields
            assert sample["release"].count("/") == 1 and sample["variant"] in ("primary", "canary")
            assert isinstance(sample["request"], str) and isinstance(sample["response"], str)
        if judge.refuse_request is not None and any(s["request"] == judge.refuse_request for s in samples):
            with judge._lock:
                judge.refused.append(samples)
            return self._reply(400, {"error": "request: refused by the test"})
        with judge._lock:
            judge.posts.append(samples)
        self._reply(202, {"accepted": len(samples), "sampled": len(samples)})

    def _reply(self, code: int, payload: dict) -> None:
        data = json.dumps(payload).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    for name in ENV:
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def judge():
    fake = FakeJudge()
    yield fake
    fake.stop()


@pytest.fixture
def reporters():
    """Reporters a test makes, closed at the end without waiting on a judge the test made hang."""
    made: list[JudgeReporter] = []

    def make(*args, **kwargs) -> JudgeReporter:
        made.append(JudgeReporter(*args, **kwargs))
        return made[-1]
    yield make
    for reporter in made:
        reporter.close(timeout=0)


# -- configuration ---------------------------------------------------------------------------------

def test_batches_of_batch_size_then_flush_sends_the_rest(judge, reporters):
    reporter = reporters(judge.url, release=RELEASE, variant="primary", revision="abc123",
                         batch_size=5, flush_interval=30)
    for i in range(12):
        assert reporter.report(f"q{i}", f"a{i}", request_id=f"r{i}", trace_id="t" * 32, segment="eu") is True
    wait_until(lambda: len(judge.posts) == 2, 5, "two full batches")
    time.sleep(0.2)
    assert [len(post) for post in judge.posts] == [5, 5], "the last 2 wait for the flush interval (30s)"
    assert reporter.flush(5) is True
    assert [len(post) for post in judge.posts] == [5, 5, 2]
    assert [s["request"] for s in judge.samples] == [f"q{i}" for i in range(12)], "in order"
    first = judge.samples[0]
    timestamp = first.pop("timestamp")
    assert first == {"release": RELEASE, "variant": "primary", "revision": "abc123", "request": "q0",
                     "response": "a0", "requestId": "r0", "traceId": "t" * 32, "segment": "eu"}
    assert timestamp.endswith("Z") and abs(
        time.time() - time.mktime(time.strptime(timestamp[:19], "%Y-%m-%dT%H:%M:%S")) + time.timezone) < 60
    assert reporter.stats == {"sent": 12, "dropped": 0, "failed": 0}


def test_a_partial_batch_goes_after_flush_interval(judge, reporters):
    reporter = reporters(judge.url, release=RELEASE, batch_size=50, flush_interval=0.2)
    started = time.monotonic()
    for i in range(3):
        reporter.report(f"q{i}", "a")
    wait_until(lambda: judge.samples, 5, "the partial batch", interval=0.01)
    assert 0.15 < time.monotonic() - started < 2
    assert [len(post) for post in judge.posts] == [3]
    assert "revision" not in judge.samples[0], "no revision known: none sent"


def test_defaults_come_from_the_environment_and_variant_defaults_to_canary(judge, reporters, monkeypatch):
    monkeypatch.setenv("CANARIST_JUDGE_URL", judge.url + "/")
    monkeypatch.setenv("CANARIST_RELEASE", RELEASE)
    monkeypatch.setenv("CANARIST_REVISION", "7d4f")
    reporter = reporters(flush_interval=0.05)
    assert reporter.enabled
    assert reporter.url == judge.url + "/v1/samples"
    assert (reporter.release, reporter.variant, reporter.revision) == (RELEASE, "canary", "7d4f"), \
        "no CANARIST_VARIANT: the user's own Deployment, i.e. the canary"
    reporter.report("q", "a")
    assert reporter.flush(5)
    assert judge.samples[0]["variant"] == "canary" and judge.samples[0]["revision"] == "7d4f"

    monkeypatch.setenv("CANARIST_VARIANT", "primary")  # what the operator injects into the primary's pods
    assert reporters().variant == "primary"
    explicit = reporters(judge.url + "/v1/samples", release="other/bot", variant="canary", revision="r2")
    assert (explicit.url, explicit.release, explicit.variant, explicit.revision) == (
        judge.url + "/v1/samples", "other/bot", "canary", "r2"), "arguments win over the environment"


def test_without_a_url_the_reporter_is_a_no_op(reporters):
    reporter = reporters()
    assert not reporter.enabled and reporter.url is None
    assert reporter.report("q", "a") is False
    assert reporter.flush(0) is True
    assert reporter.stats == {"sent": 0, "dropped": 0, "failed": 0}
    assert reporter._thread is None, "no thread either"
    reporter.close()
    with JudgeReporter() as again:
        assert again.report("q", "a") is False


@pytest.mark.parametrize("kwargs", [
    {"release": "no-slash"}, {"release": "a/b/c"}, {"release": RELEASE, "variant": "blue"}, {},
    {"release": RELEASE, "batch_size": 0}, {"release": RELEASE, "queue_size": 0},
])
def test_bad_arguments_are_refused(kwargs):
    with pytest.raises(ValueError):
        JudgeReporter("http://127.0.0.1:9", **kwargs)
    with pytest.raises(ValueError, match="judge URL"):
        JudgeReporter("ftp://127.0.0.1:9", release=RELEASE)


def test_bad_environment_disables_with_one_error_instead_of_crashing_the_app(monkeypatch, caplog):
    monkeypatch.setenv("CANARIST_JUDGE_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("CANARIST_VARIANT", "blue")
    with caplog.at_level(logging.ERROR, logger="canarist.judge.reporter"):
        reporter = JudgeReporter()  # CANARIST_RELEASE is missing too
    assert not reporter.enabled and reporter.report("q", "a") is False
    assert "CANARIST_RELEASE" in caplog.text and "$CANARIST_VARIANT" in caplog.text


# -- never slowing or failing the application ------------------------------------------------------

def test_a_hanging_judge_fills_the_queue_then_drops_and_report_stays_fast(judge, reporters):
    judge.hang = True
    reporter = reporters(judge.url, release=RELEASE, queue_size=20, batch_size=5, flush_interval=0.01, timeout=10)
    reporter.report("warm-up", "a")
    wait_until(lambda: not reporter._buffer, 5, "the first POST to be in flight", interval=0.01)

    durations, results = [], []
    for i in range(5000):
        started = time.perf_counter()
        results.append(reporter.report(f"q{i}", "a"))
        durations.append(time.perf_counter() - started)
    # Only the queue's room (20, less what the thread took before its POST hung) gets in.
    assert 0 < results.count(True) <= 25
    assert reporter.stats["dropped"] == results.count(False) >= 4975
    assert statistics.median(durations) < 50e-6, f"median {statistics.median(durations) * 1e6:.1f}µs"
    assert sum(durations) < 0.5, f"5000 reports took {sum(durations):.3f}s"
    assert reporter.flush(0.2) is False, "flush gives up at its timeout"

    judge.unhang.set()
    assert reporter.flush(10) is True
    stats = reporter.stats
    assert stats["sent"] == 1 + results.count(True) and stats["failed"] == 0


def test_a_judge_that_is_down_counts_failures_logs_once_and_raises_nothing(reporters, caplog):
    reporter = reporters(f"http://127.0.0.1:{free_port()}", release=RELEASE, flush_interval=0.01, timeout=0.5)
    with caplog.at_level(logging.WARNING, logger="canarist.judge.reporter"):
        for round_ in range(3):
            for i in range(4):
                assert reporter.report(f"q{round_}-{i}", "a") is True
            assert reporter.flush(5) is True, "failed samples are done with, not waiting"
    assert reporter.stats == {"sent": 0, "dropped": 0, "failed": 12}
    warnings = [r for r in caplog.records if r.name == "canarist.judge.reporter"]
    assert len(warnings) == 1, "at most one warning a minute"
    assert "failed to reach" in warnings[0].getMessage() and "Connection refused" in warnings[0].getMessage()


def test_a_batch_refused_for_one_bad_sample_still_delivers_the_others(judge, reporters):
    judge.refuse_request = "bad"
    reporter = reporters(judge.url, release=RELEASE, batch_size=10, flush_interval=30)
    for request in ("q1", "bad", "q2", "q3"):
        reporter.report(request, "a")
    assert reporter.flush(5)
    assert sorted(s["request"] for s in judge.samples) == ["q1", "q2", "q3"]
    assert reporter.stats == {"sent": 3, "dropped": 0, "failed": 1}


def test_texts_the_judge_would_refuse_are_dropped_not_sent(judge, reporters):
    reporter = reporters(judge.url, release=RELEASE, flush_interval=0.01)
    assert reporter.report("q", "x" * (64 * 1024 + 1)) is False
    assert reporter.report("é" * 40_000, "a") is False, "64 KiB is counted in UTF-8 bytes"
    assert reporter.report(None, "a") is False
    assert reporter.report(b"bytes are decoded", "a") is True
    assert reporter.report("q", "x" * 64 * 1024) is True
    assert reporter.flush(5)
    assert reporter.stats == {"sent": 2, "dropped": 3, "failed": 0}
    assert judge.samples[0]["request"] == "bytes are decoded"


def test_close_flushes_then_refuses_and_the_context_manager_closes(judge):
    with JudgeReporter(judge.url, release=RELEASE, batch_size=50, flush_interval=30) as reporter:
        for i in range(7):
            reporter.report(f"q{i}", "a")
        assert judge.samples == [], "waiting for the 30s flush interval"
    assert len(judge.samples) == 7, "close() flushed them"
    assert not reporter.enabled and reporter.report("late", "a") is False
    assert not reporter._thread.is_alive()
    reporter.close()  # idempotent


def test_close_does_not_wait_past_its_timeout_for_a_hanging_judge(judge):
    judge.hang = True
    reporter = JudgeReporter(judge.url, release=RELEASE, flush_interval=0, timeout=10)
    for i in range(3):
        reporter.report(f"q{i}", "a")
    started = time.monotonic()
    reporter.close(timeout=0.3)
    assert time.monotonic() - started < 1.5


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork()")
def test_a_forked_worker_gets_its_own_queue_and_thread(judge):
    # gunicorn --preload: made in the master, used in the workers.
    reporter = JudgeReporter(judge.url, release=RELEASE, flush_interval=0.01)
    reporter.report("from the parent", "a")
    pid = os.fork()
    if pid == 0:
        try:
            ok = reporter.report("from the child", "a") and reporter.flush(5)
            os._exit(0 if ok and reporter.stats["sent"] == 1 else 1)
        finally:
            os._exit(2)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert reporter.flush(5)
    reporter.close()
    assert sorted(s["request"] for s in judge.samples) == ["from the child", "from the parent"]


# -- WSGI middleware -------------------------------------------------------------------------------

def _environ(method="POST", body=b"", path="/chat", query="", **extra) -> dict:
    environ = {"REQUEST_METHOD": method, "PATH_INFO": path, "QUERY_STRING": query,
               "CONTENT_LENGTH": str(len(body)), "wsgi.input": io.BytesIO(body), **extra}
    setup_testing_defaults(environ)
    return environ


def _call(app, environ) -> tuple[str, list, list[bytes]]:
    started = {}

    def start_response(status, headers, exc_info=None):
        started["status"], started["headers"] = status, headers
        return lambda data: None
    result = app(environ, start_response)
    try:
        chunks = list(result)
    finally:
        getattr(result, "close", lambda: None)()
    return started["status"], started["headers"], chunks


def echo_app(environ, start_response):
    body = environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))
    start_response("200 OK", [("Content-Type", "text/plain"), ("X-App", "yes")])
    return [b"you said: ", body]


def test_middleware_passes_everything_through_and_reports_the_bodies(judge, reporters):
    reporter = reporters(judge.url, release=RELEASE, flush_interval=0.01)
    app = JudgeMiddleware(echo_app, reporter)
    status, headers, chunks = _call(app, _environ(body="Où est ma commande ?".encode(),
                                                  HTTP_X_REQUEST_ID="req-1",
                                                  HTTP_TRACEPARENT=f"00-{'ab' * 16}-{'cd' * 8}-01"))
    assert (status, headers) == ("200 OK", [("Content-Type", "text/plain"), ("X-App", "yes")])
    assert chunks == [b"you said: ", "Où est ma commande ?".encode()], "the same chunks, unchanged"
    assert reporter.flush(5)
    sample = judge.samples[0]
    assert (sample["request"], sample["response"]) == ("Où est ma commande ?", "you said: Où est ma commande ?")
    assert sample["requestId"] == "req-1" and sample["traceId"] == "ab" * 16


def test_middleware_streams_chunk_by_chunk(judge, reporters):
    reporter = reporters(judge.url, release=RELEASE, flush_interval=0.01)
    produced = []

    def streaming_app(environ, start_response):
        start_response("200 OK", [("Content-Type", "text/event-stream")])
        for token in (b"data: 17", b" + 25", b" = 42\n\n"):
            produced.append(token)
            yield token

    result = JudgeMiddleware(streaming_app, reporter)(_environ("GET", query="q=What+is+17+%2B+25%3F"),
                                                      lambda *a: None)
    seen = []
    for chunk in result:
        seen.append(chunk)
        assert produced == seen, "each chunk is passed on before the next is produced"
    result.close()
    assert reporter.flush(5)
    assert judge.samples[0]["response"] == "data: 17 + 25 = 42\n\n"
    assert judge.samples[0]["request"] == "/chat?q=What is 17 + 25?", "no body: the decoded request target"


def test_middleware_skips_large_bodies_but_passes_them_through(judge, reporters):
    reporter = reporters(judge.url, release=RELEASE, flush_interval=0.01)
    big = os.urandom(200 * 1024)

    def big_app(environ, start_response):
        start_response("200 OK", [("Content-Type", "application/octet-stream")])
        return [big[i:i + 8192] for i in range(0, len(big), 8192)]

    _, _, chunks = _call(JudgeMiddleware(big_app, reporter), _environ(body=b"small"))
    assert b"".join(chunks) == big
    _, _, chunks = _call(JudgeMiddleware(echo_app, reporter), _environ(body=big))
    assert b"".join(chunks) == b"you said: " + big
    _, _, chunks = _call(JudgeMiddleware(echo_app, reporter, max_body=8), _environ(body=b"0123456789"))
    assert chunks == [b"you said: ", b"0123456789"]
    assert reporter.flush(5)
    assert judge.samples == [] and reporter.stats == {"sent": 0, "dropped": 0, "failed": 0}


def test_middleware_extract_chooses_what_is_reported_and_cannot_break_the_request(judge, reporters):
    reporter = reporters(judge.url, release=RELEASE, flush_interval=0.01)

    def json_app(environ, start_response):
        question = json.loads(environ["wsgi.input"].read())["question"]
        start_response("200 OK", [("Content-Type", "application/json")])
        return [json.dumps({"answer": f"echo {question}", "model": "m1"}).encode()]

    def extract(environ, request_body, response_body):
        if environ["PATH_INFO"] == "/skip":
            return None
        return json.loads(request_body)["question"], json.loads(response_body)["answer"]

    def broken(environ, request_body, response_body):
        raise RuntimeError("bug in extract")

    body = json.dumps({"question": "hello?"}).encode()
    for path in ("/chat", "/skip"):
        assert _call(JudgeMiddleware(json_app, reporter, extract), _environ(body=body, path=path))[0] == "200 OK"
    status, _, chunks = _call(JudgeMiddleware(json_app, reporter, broken), _environ(body=body))
    assert status == "200 OK" and json.loads(b"".join(chunks))["answer"] == "echo hello?"
    assert reporter.flush(5)
    assert [(s["request"], s["response"]) for s in judge.samples] == [("hello?", "echo hello?")]


def test_middleware_reports_only_successful_plain_answers_unless_asked(judge, reporters):
    reporter = reporters(judge.url, release=RELEASE, flush_interval=0.01)

    def app_with(status, headers=()):
        def app(environ, start_response):
            environ["wsgi.input"].read()
            start_response(status, [("Content-Type", "text/plain"), *headers])
            return [b"body"]
        return app

    _call(JudgeMiddleware(app_with("500 Internal Server Error"), reporter), _environ(body=b"e1"))
    _call(JudgeMiddleware(app_with("200 OK", [("Content-Encoding", "gzip")]), reporter), _environ(body=b"gz"))
    _call(JudgeMiddleware(app_with("503 Service Unavailable"), reporter, report_errors=True), _environ(body=b"e2"))
    _call(JudgeMiddleware(app_with("201 Created"), reporter), _environ(body=b"ok"))
    assert reporter.flush(5)
    assert sorted(s["request"] for s in judge.samples) == ["e2", "ok"]


def test_middleware_with_a_disabled_reporter_returns_the_apps_own_result():
    result = [b"untouched"]
    app = JudgeMiddleware(lambda environ, start_response: result, JudgeReporter())
    assert app(_environ(), lambda *a: None) is result


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, *args):
        pass


def test_middleware_under_a_real_wsgi_server(judge, reporters):
    reporter = reporters(judge.url, release=RELEASE, flush_interval=0.01)
    server = make_server("127.0.0.1", 0, JudgeMiddleware(echo_app, reporter), handler_class=_QuietHandler)
    threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
    try:
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        url = f"http://127.0.0.1:{server.server_address[1]}/chat"
        with opener.open(urllib.request.Request(url, data=b"ping", method="POST"), timeout=10) as response:
            assert response.status == 200 and response.headers["X-App"] == "yes"
            assert response.read() == b"you said: ping"
    finally:
        server.shutdown()
        server.server_close()
    assert reporter.flush(5)
    assert [(s["request"], s["response"]) for s in judge.samples] == [("ping", "you said: ping")]


# -- shadow traffic --------------------------------------------------------------------------------

@pytest.mark.parametrize("host, headers, expected", [
    ("bot.example.com-shadow", None, True),            # Envoy's marking
    ("bot.example.com-shadow:8080", None, True),       # before the port
    ("BOT.example.com-Shadow", None, True),
    ("bot.example.com", None, False),
    ("bot.example.com:8080", None, False),
    ("shadow.example.com", None, False),
    ("bot-shadow.example.com", None, False),           # only a suffix of the whole host counts
    ("[::1]:8080", None, False),
    (None, None, False),
    ("bot.example.com", {"X-Canarist-Mirrored": "true"}, True),
    ("bot.example.com", {"x-canarist-mirrored": "1"}, True),
    ("bot.example.com", {"X-Canarist-Mirrored": "false"}, False),
])
def test_is_mirrored_reads_the_gateways_marking(host, headers, expected):
    assert is_mirrored(host, headers) is expected


def test_middleware_tells_the_app_before_it_runs_and_reports_the_copy_as_mirrored(judge, reporters):
    reporter = reporters(judge.url, release=RELEASE, flush_interval=0.01)
    seen = []

    def app(environ, start_response):
        seen.append(environ["canarist.mirrored"])  # an app skips its side effects on True
        return echo_app(environ, start_response)

    wrapped = JudgeMiddleware(app, reporter)
    _call(wrapped, _environ(body=b"refund order 7", HTTP_HOST="shop.example-shadow:80", HTTP_X_REQUEST_ID="r-9"))
    _call(wrapped, _environ(body=b"refund order 7", HTTP_HOST="shop.example", HTTP_X_REQUEST_ID="r-9"))
    _call(wrapped, _environ(body=b"refund order 8", HTTP_HOST="shop.example", HTTP_X_CANARIST_MIRRORED="true"))
    assert seen == [True, False, True]
    assert reporter.flush(5)
    assert [(s["requestId"] if "requestId" in s else None, s.get("mirrored", False)) for s in judge.samples] == \
        [("r-9", True), ("r-9", False), (None, True)]
    # Disabled reporting still marks the request for the app.
    marks = []
    JudgeMiddleware(lambda e, sr: (marks.append(e["canarist.mirrored"]), echo_app(e, sr))[1],
                    JudgeReporter(None))(_environ(HTTP_HOST="x-shadow"), lambda *a: (lambda d: None))
    assert marks == [True]


def test_middleware_reports_the_cohort_the_route_put_the_request_in(judge, reporters):
    reporter = reporters(judge.url, release=RELEASE, flush_interval=0.01)
    seen = {}

    def app(environ, start_response):
        seen["cohort"] = environ["canarist.cohort"]
        return echo_app(environ, start_response)

    _call(JudgeMiddleware(app, reporter), _environ(body=b"Wie spat ist es?", HTTP_X_CANARIST_COHORT="de"))
    _call(JudgeMiddleware(app, reporter), _environ(body=b"What time is it?"))
    assert reporter.flush(5)
    assert [s.get("segment") for s in judge.samples] == ["de", None]
    assert seen["cohort"] is None


def test_cohort_of_reads_the_route_header_and_ignores_blanks():
    from canarist.judge.reporter import cohort_of
    assert cohort_of({"X-Canarist-Cohort": " de "}) == "de"
    assert cohort_of({"x-canarist-cohort": "mobile"}) == "mobile"
    assert cohort_of({"X-Canarist-Cohort": "  "}) is None and cohort_of({}) is None
