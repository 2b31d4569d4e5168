"""The gateway traffic driver: it sends the route's hostname, splits nothing, and records who answered."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from canarist.devstack.gateway_traffic import GATEWAY, GatewayTraffic
from canarist.devstack.procs import wait_until


class _Gateway(BaseHTTPRequestHandler):
    """Answers as a pod of Deployment "web" for Host web.test, as a gateway with no route otherwise."""

    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:  # noqa: N802
        if self.headers.get("Host") == "web.test":
            body, code, kind = json.dumps({"answer": "ok", "deployment": "web"}).encode(), 200, "application/json"
        else:
            body, code, kind = b"no route\n", 404, "text/plain"
        self.send_response(code)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def gateway():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Gateway)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_answers_are_counted_by_the_deployment_that_gave_them(gateway):
    with GatewayTraffic(gateway, "web.test", rps=100) as traffic:
        wait_until(lambda: len(traffic.answers) >= 20, 10, "20 answers")
    assert set(traffic.served()) == {"web"} and traffic.failures() == []
    assert traffic.codes()["200"] == len(traffic.answers)


def test_the_gateways_own_errors_are_failures_no_pod_gave(gateway):
    with GatewayTraffic(gateway, "elsewhere.test", rps=100) as traffic:
        wait_until(lambda: len(traffic.answers) >= 10, 10, "10 answers")
    assert set(traffic.served()) == {GATEWAY}
    assert {a.code for a in traffic.failures()} == {"404"}


def test_only_a_local_gateway_is_a_target():
    with pytest.raises(ValueError, match="127.0.0.1"):
        GatewayTraffic("http://example.com:80", "web.test")
    with pytest.raises(ValueError, match="positive"):
        GatewayTraffic("http://127.0.0.1:1", "web.test", rps=0)


def test_questions_are_drawn_at_random_so_a_periodic_split_still_gives_both_variants_the_same_inputs(gateway):
    questions = [f"q{i}" for i in range(6)]
    with GatewayTraffic(gateway, "web.test", rps=200, questions=questions, seed=3) as traffic:
        wait_until(lambda: len(traffic.answers) >= 120, 10, "120 answers")
    asked = [a.question for a in sorted(traffic.answers, key=lambda a: a.sent)]
    # Every other request (what a 50 % round-robin would give one variant) still asks every question.
    assert set(asked[0::2]) == set(questions) and set(asked[1::2]) == set(questions)
