"""The demo application is a real process on 127.0.0.1 with real Prometheus metrics and injectable failures."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from canarist.devstack.demoapp import DemoApp
from canarist.devstack.procs import pid_alive, stop_process_group, wait_until

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
    assert sample(samples, "http_requests_total", **base, code="200") == 10, "/healthz and /metrics not counted"
    assert sample(samples, "http_requests_total", **base, code="500") == 0, "error series exists from the start"
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
    assert sample(samples, "http_requests_total", **base, code="500") == codes.count(500)
    assert sample(samples, "http_requests_total", **base, code="200") == codes.count(200) + 1
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
        assert 'http_requests_total{deployment="web-primary",variant="primary",code="200"} 0' in app.metrics_text()


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


def test_process_exits_when_its_parent_is_killed(tmp_path):
    # A test run killed with SIGKILL cannot stop its demoapps: they must notice and exit by themselves.
    parent = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import time
        from pathlib import Path
        from canarist.devstack.demoapp import DemoApp
        app = DemoApp.start("web", "canary", workdir=Path({str(tmp_path / 'orphan')!r}))
        print(app.pid, flush=True)
        time.sleep(600)
    """)], stdout=subprocess.PIPE, text=True)
    child = 0
    try:
        child = int(parent.stdout.readline())
        assert pid_alive(child)
        parent.kill()
        parent.wait()
        wait_until(lambda: not pid_alive(child), 10, "the orphaned demoapp to exit")
    finally:
        parent.kill()
        parent.wait()
        parent.stdout.close()
        if child and pid_alive(child):
            stop_process_group(child, grace=1)
