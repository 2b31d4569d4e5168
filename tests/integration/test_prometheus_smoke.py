"""The local Prometheus is real: it scrapes a test exporter and answers PromQL."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from prometheus_api_client import PrometheusConnect

from canarist.devstack.procs import wait_until

pytestmark = pytest.mark.prometheus


class _Exporter(BaseHTTPRequestHandler):
    body = b""

    def do_GET(self):  # noqa: N802 - http.server's naming
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; version=0.0.4")
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, *args):
        pass


@pytest.fixture
def exporter():
    handler = type("Handler", (_Exporter,), {
        "body": b"# TYPE canarist_smoke_value gauge\ncanarist_smoke_value{kind=\"answer\"} 42.5\n",
    })
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_prometheus_scrapes_exporter_and_answers_promql(stack, exporter):
    prom = stack.prometheus
    prom.add_target(exporter, {"test": "smoke"})
    try:
        client = PrometheusConnect(url=prom.url, disable_ssl=True)

        def value():
            result = client.custom_query('canarist_smoke_value{kind="answer",test="smoke"}')
            return result and float(result[0]["value"][1])

        assert wait_until(value, 60, "Prometheus to scrape the exporter") == 42.5
    finally:
        prom.remove_target(exporter)
