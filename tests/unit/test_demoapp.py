"""The demo application is a real process on 127.0.0.1 with real Prometheus metrics and injectable failures."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import textwrap
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import requests

from canarist.devstack.demoapp import DemoApp
from canarist.devstack.procs import free_port, pid_alive, stop_process_group, wait_until

_SAMPLE = re.compile(r'^(?P<name>[a-zA-Z_:][\w:]*)(?:\{(?P<labels>[^}]*)\})? (?P<value>\S+)$')


def parse_metrics(text: str) -> dict[tuple[str, frozenset], float]:
    """(metric name, labels) -> value, from the Prometheus text format."""
    samples = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        match = _SAMPLE.match(line)
        assert match, f"not a valid sample line: {line!r}"
        labels = frozenset(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', match["labels"] or ""))
        samples[(match["name"], labels)] = float(match["value"])
    return samples


def sample(samples, name: str, **labels: str) -> float:
    return samples[(name, frozenset(labels.items()))]


@pytest.fixture
def app(tmp_path):
    with DemoApp.start("web", "canary", "abc123", seed=7, workdir=tmp_path / "app") as running:
        yield running


def test_answers_and_counts_application_requests_only(app):
    assert app.deployment == "web" and app.url.startswith("http://127.0.0.1:")
    assert app.metrics_address == app.url.removeprefix("http://")
    code, body = app.ask("what is a canary?")
    assert code == 200
    assert body["variant"] == "canary" and body["revision"] == "abc123" and "what is a canary?" in body["answer"]
    for _ in range(9):
        assert app.ask()[0] == 200
    app.healthy()
    app.metrics_text()

    samples = parse_metrics(app.metrics_text())
    base = {"deployment": "web", "variant": "canary"}
    assert sample(samples, "http_requests_total", **base, code="200", mirrored="false") == 10, "/healthz and /metrics not counted"
    assert sample(samples, "http_requests_total", **base, code="500", mirrored="false") == 0, "error series exists from the start"
    assert sample(samples, "http_request_duration_seconds_count", **base) == 10
    assert sample(samples, "http_request_duration_seconds_bucket", **base, le="+Inf") == 10
    buckets = sorted((float(dict(labels)["le"]), v) for (name, labels), v in samples.items()
                     if name == "http_request_duration_seconds_bucket")
    assert [v for _, v in buckets] == sorted(v for _, v in buckets), "histogram buckets are cumulative"
    assert sample(samples, "demoapp_info", **base, revision="abc123") == 1


def test_metrics_endpoint_speaks_prometheus_text_format(app):
    text = app.metrics_text()
    assert "# TYPE http_requests_total counter" in text
    assert "# TYPE http_request_duration_seconds histogram" in text
    assert text.endswith("\n")


def test_admin_config_changes_error_rate_and_latency_at_run_time(app):
    assert app.configure(error_rate=1.0) == {"errorRate": 1.0, "latencyMs": 0.0}
    codes = [app.ask()[0] for _ in range(5)]
    assert codes == [500] * 5
    app.configure(error_rate=0.5)
    codes += [app.ask()[0] for _ in range(200)]
    half = codes[5:].count(500)
    assert 60 < half < 140, half

    app.configure(error_rate=0.0, latency_ms=80)
    started = time.perf_counter()
    assert app.ask()[0] == 200
    assert time.perf_counter() - started >= 0.08

    samples = parse_metrics(app.metrics_text())
    base = {"deployment": "web", "variant": "canary"}
    assert sample(samples, "http_requests_total", **base, code="500", mirrored="false") == codes.count(500)
    assert sample(samples, "http_requests_total", **base, code="200", mirrored="false") == codes.count(200) + 1
    assert sample(samples, "http_request_duration_seconds_bucket", **base, le="0.075") == len(codes), \
        "only the slow request is above 75ms"


@pytest.mark.parametrize("change", [{"errorRate": 1.5}, {"latencyMs": -1}, {"nope": 1}, [1], "x"])
def test_admin_config_refuses_nonsense(app, change):
    code, body = app._call("POST", "/admin/config", json.dumps(change).encode())
    assert code == 400, body
    assert json.loads(app._call("GET", "/admin/config")[1]) == {"errorRate": 0.0, "latencyMs": 0.0}


def test_errors_are_random_but_reproducible_with_a_seed(tmp_path):
    def outcomes(seed: int | None, n: int = 40) -> list[int]:
        with DemoApp.start("web", "canary", error_rate=0.5, seed=seed, workdir=tmp_path / f"s{seed}") as app:
            return [app.ask()[0] for _ in range(n)]

    first, again, other = outcomes(1), outcomes(1), outcomes(2)
    assert first == again
    assert first != other
    assert 0 < first.count(500) < len(first)


def test_primary_deployment_label_defaults_to_target_primary(tmp_path):
    with DemoApp.start("web", "primary", workdir=tmp_path / "p") as app:
        assert app.deployment == "web-primary"
        assert 'http_requests_total{deployment="web-primary",variant="primary",code="200",mirrored="false"} 0' in app.metrics_text()


def test_stop_leaves_no_process_and_frees_the_port(tmp_path):
    app = DemoApp.start("web", "canary", workdir=tmp_path / "app")
    pid = app.pid
    assert pid_alive(pid)
    app.stop()
    assert not pid_alive(pid) and not app.running
    assert not (tmp_path / "app").exists(), "its work directory is removed"
    with pytest.raises(OSError):
        app.healthy()
    app.stop()  # idempotent


def test_start_failure_is_reported_and_leaves_nothing(tmp_path):
    with pytest.raises(ValueError):
        DemoApp.start("web", "blue", workdir=tmp_path / "x")
    with pytest.raises(RuntimeError, match="exited") as failed:
        DemoApp.start("web", "canary", error_rate=2.0, workdir=tmp_path / "y")  # the process refuses it
    assert "errorRate must be within" in "".join(failed.value.__notes__)


@pytest.mark.parametrize("module, cls", [("demoapp", "DemoApp"), ("scripted_llm", "ScriptedLLM")])
def test_process_exits_when_its_parent_is_killed(tmp_path, module, cls):
    # A test run killed with SIGKILL cannot stop its servers: they must notice and exit by themselves.
    parent = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import time
        from pathlib import Path
        from canarist.devstack.{module} import {cls}
        server = {cls}.start(workdir=Path({str(tmp_path / 'orphan')!r}))
        print(server.pid, flush=True)
        time.sleep(600)
    """)], stdout=subprocess.PIPE, text=True)
    child = 0
    try:
        child = int(parent.stdout.readline())
        assert pid_alive(child)
        parent.kill()
        parent.wait()
        wait_until(lambda: not pid_alive(child), 10, f"the orphaned {module} to exit")
    finally:
        parent.kill()
        parent.wait()
        parent.stdout.close()
        if child and pid_alive(child):
            stop_process_group(child, grace=1)


# -- a stand-in AI service: right, or plausibly wrong, answers --------------------------------------

_ANSWER = re.compile(r"^(?P<a>-?\d+) (?P<op>[-+*/]) (?P<b>-?\d+) = (?P<result>-?\d+)\.$")


def _truth(answer: str) -> tuple[int, int]:
    """(the answer's number, the right one) for an answer like "17 + 25 = 42."."""
    match = _ANSWER.match(answer)
    assert match, f"not a plausible arithmetic answer: {answer!r}"
    a, op, b = int(match["a"]), match["op"], int(match["b"])
    right = {"+": a + b, "-": a - b, "*": a * b, "/": a // b if b else None}[op]
    return int(match["result"]), right


def test_answers_arithmetic_correctly_and_politely_declines_the_rest(app):
    code, body = app.ask("What is 17 + 25?")
    assert code == 200 and body["answer"] == "17 + 25 = 42."
    assert app.ask("what is 6 * 7")[1]["answer"] == "6 * 7 = 42."
    assert app.ask("What is 96 / 8?")[1]["answer"] == "96 / 8 = 12."
    assert app.ask("What is 5 - 9?")[1]["answer"] == "5 - 9 = -4."
    code, body = app.ask("Write me a poem")
    assert code == 200 and body["answer"].startswith("I can only do arithmetic.")


def test_wrong_answers_are_plausible_200s_at_the_configured_rate_and_reproducible(tmp_path):
    from canarist.devstack.traffic import arithmetic_questions

    questions = arithmetic_questions(200, seed=3)

    def answers(seed: int) -> list[tuple[int, str]]:
        with DemoApp.start("web", "canary", wrong_rate=0.3, seed=seed, workdir=tmp_path / f"w{seed}") as app:
            asked = [app.ask(q) for q in questions]
            samples = parse_metrics(app.metrics_text())
            base = {"deployment": "web", "variant": "canary"}
            wrong = sum(got != right for got, right in (_truth(body["answer"]) for _, body in asked))
            assert sample(samples, "demoapp_wrong_answers_total", **base) == wrong, "ground truth for tests"
            assert sample(samples, "http_requests_total", **base, code="500", mirrored="false") == 0, "invisible to error rates"
            return [(code, body["answer"]) for code, body in asked]

    first = answers(5)
    assert {code for code, _ in first} == {200}
    off = [got - right for got, right in (_truth(answer) for _, answer in first)]
    wrong = sum(1 for d in off if d)
    assert 0.15 * 200 < wrong < 0.45 * 200, wrong
    assert {d for d in off if d} <= {-2, -1, 1, 2}, "off by a little: as plausible as a right answer"
    assert answers(5) == first, "same seed, same answers"
    assert answers(6) != first


def test_wrong_rate_changes_at_run_time_and_leaves_errors_as_they_were(app):
    assert app.configure(wrong_rate=0.8) == {"errorRate": 0.0, "latencyMs": 0.0, "wrongRate": 0.8}
    results = [_truth(app.ask(f"What is {i} + 1?")[1]["answer"]) for i in range(50)]
    assert sum(got != right for got, right in results) > 25
    assert app.configure(wrong_rate=1.0, error_rate=1.0)["wrongRate"] == 1.0
    assert app.ask("What is 1 + 1?") == (500, {"error": "injected failure", "variant": "canary",
                                               "revision": "abc123", "deployment": "web"}), "errors stay errors"
    assert app.configure(wrong_rate=0, error_rate=0) == {"errorRate": 0.0, "latencyMs": 0.0}, \
        "wrongRate shown only when set"
    assert all(got == right for got, right in (_truth(app.ask(f"What is {i} * 3?")[1]["answer"])
                                               for i in range(20)))
    code, body = app._call("POST", "/admin/config", json.dumps({"wrongRate": 1.5}).encode())
    assert code == 400 and "wrongRate" in json.loads(body)["error"]


# -- reporting every answer to a judge ------------------------------------------------------------

class _FakeJudge(ThreadingHTTPServer):
    """`POST /v1/samples` on 127.0.0.1 that records what is posted; `hang` holds every answer back."""

    daemon_threads = True

    def __init__(self):
        super().__init__(("127.0.0.1", 0), _JudgeHandler)
        self.samples: list[dict] = []
        self.hang = threading.Event()
        self.unhang = threading.Event()
        threading.Thread(target=self.serve_forever, args=(0.05,), daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _JudgeHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_POST(self):  # noqa: N802 - http.server's naming
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        if self.server.hang.is_set():
            self.server.unhang.wait(30)
        if self.path == "/v1/samples":
            self.server.samples.extend(body["samples"])
        self.send_response(202 if self.path == "/v1/samples" else 404)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture
def judge():
    server = _FakeJudge()
    yield server
    server.unhang.set()
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize("variant", ["canary", "primary"])
def test_every_answer_is_reported_to_the_judge(tmp_path, judge, variant):
    with DemoApp.start("web", variant, "rev9", wrong_rate=0.5, error_rate=0.2, seed=4, judge_url=judge.url,
                       release="shop/web", workdir=tmp_path / "app") as app:
        asked = {f"What is {i} + {i}?": app.ask(f"What is {i} + {i}?") for i in range(30)}
        answered = {q: body["answer"] for q, (code, body) in asked.items() if code == 200}
        assert 0 < len(answered) < 30, "some failed: failures are not answers, and are not reported"
        wait_until(lambda: len(judge.samples) >= len(answered), 10, "the answers to reach the judge")
    assert {s["request"]: s["response"] for s in judge.samples} == answered
    assert len(judge.samples) == len(answered)
    for s in judge.samples:
        assert (s["release"], s["variant"], s["revision"]) == ("shop/web", variant, "rev9")
        assert s["timestamp"].endswith("Z")


def test_a_hanging_or_missing_judge_slows_no_answer(tmp_path, judge):
    judge.hang.set()
    with DemoApp.start("web", "canary", judge_url=judge.url, release="shop/web", workdir=tmp_path / "h") as app:
        for i in range(40):
            started = time.perf_counter()
            assert app.ask(f"What is {i} + 2?") == (200, {"answer": f"{i} + 2 = {i + 2}.", "name": "web",
                                                         "variant": "canary", "revision": "v1",
                                                         "deployment": "web"})
            assert time.perf_counter() - started < 0.5
    with DemoApp.start("web", "canary", judge_url=f"http://127.0.0.1:{free_port()}", release="shop/web",
                       workdir=tmp_path / "down") as app:
        assert all(app.ask(f"What is {i} + 2?")[0] == 200 for i in range(20))


def test_judge_url_needs_a_release(tmp_path):
    with pytest.raises(ValueError, match="together"):
        DemoApp.start("web", "canary", judge_url="http://127.0.0.1:9", workdir=tmp_path / "x")
    with pytest.raises(RuntimeError, match="exited") as failed:
        DemoApp.start("web", "canary", judge_url="http://127.0.0.1:9", release="no-slash", workdir=tmp_path / "y")
    assert "namespace/name" in "".join(failed.value.__notes__)


class _Route:
    """Stands in for CustomObjectsApi: an HTTPRoute with fixed weights."""

    def __init__(self, weights):
        self.route = {"spec": {"rules": [{"backendRefs": [{"name": n, "weight": w} for n, w in weights.items()]}]}}

    def get_namespaced_custom_object(self, *args, **kwargs):
        return self.route


def test_traffic_questions_reach_primary_and_canary_in_the_same_order(tmp_path, judge):
    from canarist.devstack.traffic import TrafficDriver, arithmetic_questions

    questions = arithmetic_questions(10, seed=1)
    assert questions == arithmetic_questions(10, seed=1) and len(set(questions)) == 10
    assert questions != arithmetic_questions(10, seed=2)
    with DemoApp.start("web", "primary", "p1", judge_url=judge.url, release="shop/web",
                       workdir=tmp_path / "p") as primary, \
         DemoApp.start("web", "canary", "c1", judge_url=judge.url, release="shop/web",
                       workdir=tmp_path / "c") as canary:
        driver = TrafficDriver(None, "ns", "web", {"web-primary": primary.url, "web-canary": canary.url},
                               rps=200, poll_interval=0.05, questions=questions)
        driver._custom = _Route({"web-primary": 75, "web-canary": 25})
        with driver:
            wait_until(lambda: driver.sent.get("web-canary", 0) >= 25, 10, "25 requests to the canary")
        wait_until(lambda: len(judge.samples) == sum(driver.sent.values()), 10, "every answer to reach the judge")
    assert driver.responses == {"web-primary": {"200": driver.sent["web-primary"]},
                                "web-canary": {"200": driver.sent["web-canary"]}}
    for variant, sent in (("primary", driver.sent["web-primary"]), ("canary", driver.sent["web-canary"])):
        got = [s["request"] for s in judge.samples if s["variant"] == variant]
        # Each backend goes through the same rotation from the first question. Requests are in
        # flight concurrently, so their order of arrival may differ a little, their multiset not.
        assert sorted(got) == sorted((questions * (sent // 10 + 1))[:sent]), variant
    assert all(got == right for got, right in (_truth(s["response"]) for s in judge.samples))


def test_on_sigterm_a_draining_pod_fails_its_health_check_but_goes_on_answering_then_exits(tmp_path):
    port_file = tmp_path / "port"
    proc = subprocess.Popen([sys.executable, "-m", "canarist.devstack.demoapp", "--variant", "canary",
                             "--port-file", str(port_file), "--drain-seconds", "1.5"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_until(lambda: port_file.exists() and port_file.read_text().strip(), 10, "the port file")
        base = f"http://127.0.0.1:{int(port_file.read_text())}"
        wait_until(lambda: requests.get(f"{base}/healthz", timeout=1).status_code == 200, 10, "healthy")
        proc.send_signal(signal.SIGTERM)
        wait_until(lambda: requests.get(f"{base}/healthz", timeout=1).status_code == 503, 5, "draining")
        answer = requests.get(f"{base}/answer", params={"q": "What is 2 + 2?"}, timeout=1)
        assert answer.status_code == 200 and answer.json()["answer"] == "2 + 2 = 4."
        assert proc.wait(10) == 0, "exits once drained"
    finally:
        proc.kill()
        proc.wait()


def test_a_system_prompt_that_asks_for_round_numbers_makes_answers_plausible_and_wrong():
    from canarist.devstack.demoapp import answer_question, prompt_digest, rounding_in

    assert rounding_in("You are a helpful calculator. Be exact.") is None
    assert rounding_in("Keep it friendly: round every result to the nearest ten.") == 10
    assert rounding_in("Round results to the nearest 5") == 5
    assert answer_question("What is 17 + 25?", round_to=10) == ("17 + 25 = 40.", False)
    assert answer_question("What is 17 + 23?", round_to=10) == ("17 + 23 = 40.", True)
    assert answer_question("What is 17 + 25?") == ("17 + 25 = 42.", True)
    assert len(prompt_digest("Be exact.")) == 12 and prompt_digest("a") != prompt_digest("b")


def test_a_mirrored_request_is_answered_labelled_and_acts_nowhere(tmp_path):
    """Envoy-based gateways append -shadow to the Host of a mirrored copy: the app answers it (the
    judge needs the answer), labels it in its metrics, and skips the follow-up a real one sends."""
    with DemoApp.start("web", "canary", workdir=tmp_path / "app") as app:
        for host in ("bot.example-shadow", "bot.example-shadow:8080", "bot.example"):
            response = requests.get(f"{app.url}/answer", params={"q": "2+2"}, timeout=5,
                                    headers={"Host": host, "X-Request-Id": "r-1"})
            assert response.status_code == 200 and response.json()["answer"]
            assert response.json().get("mirrored", False) is host.split(":")[0].endswith("-shadow")
        samples = parse_metrics(app.metrics_text())
        base = {"deployment": "web", "variant": "canary"}
        assert sample(samples, "http_requests_total", **base, code="200", mirrored="true") == 2
        assert sample(samples, "http_requests_total", **base, code="200", mirrored="false") == 1
        assert sample(samples, "demoapp_notifications_total", **base, outcome="sent") == 1
        assert sample(samples, "demoapp_notifications_total", **base, outcome="skipped_mirrored") == 2


def test_binding_a_pods_address_resolves_no_names(monkeypatch):
    """http.server asks reverse DNS for the bound address's name; a pod's IP has none in the stack's
    network namespace, and the resolver waited 10 s before the pod's process could answer."""
    import socket

    from canarist.devstack.demoapp import Behaviour, DemoServer

    asked = []
    monkeypatch.setattr(socket, "getfqdn", lambda *a: asked.append(a) or "unused")
    monkeypatch.setattr(socket, "gethostbyaddr", lambda *a: asked.append(a) or ("unused", [], []))
    server = DemoServer(0, name="web", variant="canary", revision="v2", deployment="web",
                        behaviour=Behaviour(0.0, 0.0, None, 0.0))
    try:
        assert server.server_address[0] == "127.0.0.1" and server.server_address[1] > 0
        assert server.server_name == "127.0.0.1" and server.server_port == server.server_address[1]
        assert asked == []
    finally:
        server.server_close()
