"""Many stand-in applications in one process: each a full demoapp server on its own port.

A rollout needs a primary and a canary stand-in, and a test that runs thirty rollouts at once
would need sixty demoapp processes, too many for a small machine. This process runs any number
of `demoapp.DemoServer`s, one thread each: every one has its own port, `/metrics` (scraped by
Prometheus as its own target), `/answer` and `/admin/config`, exactly as a lone demoapp.

    python -m canarist.devstack.fleet --spec apps.json --ports-file ports.json --port-file port \
        [--parent-pid PID]

`apps.json` is a list of `FleetApp` objects (as JSON); `ports.json` receives {deployment: port}
before `port` (the control port, serving `/healthz`) is written.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import threading
import urllib.parse
from dataclasses import asdict, dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from ..judge.reporter import JudgeReporter
from .demoapp import Behaviour, DemoServer
from .localproc import LocalServerProcess, exit_with_parent, make_workdir, write_port_file
from .procs import start_process


@dataclass(frozen=True)
class FleetApp:
    """One stand-in: the `deployment` label its metrics carry is also its key in the fleet."""

    name: str
    variant: str
    revision: str
    deployment: str
    error_rate: float = 0.0
    wrong_rate: float = 0.0
    seed: int | None = None
    judge_url: str | None = None
    release: str | None = None  # namespace/name, with judge_url: report every answer to the judge


class _Control(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        body = b"ok\n" if urllib.parse.urlsplit(self.path).path == "/healthz" else b"not found\n"
        self.send_response(200 if body == b"ok\n" else 404)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


def _serve(app: FleetApp) -> tuple[DemoServer, JudgeReporter | None]:
    reporter = None
    if app.judge_url:
        reporter = JudgeReporter(app.judge_url, release=app.release, variant=app.variant, revision=app.revision)
    server = DemoServer(0, name=app.name, variant=app.variant, revision=app.revision, deployment=app.deployment,
                        behaviour=Behaviour(app.error_rate, 0.0, app.seed, app.wrong_rate), reporter=reporter)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.5}, daemon=True,
                     name=f"app-{app.deployment}").start()
    return server, reporter


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m canarist.devstack.fleet", description=__doc__.split("\n")[0])
    parser.add_argument("--spec", type=Path, required=True, help="JSON list of FleetApp objects")
    parser.add_argument("--ports-file", type=Path, required=True, help="where to write {deployment: port}")
    parser.add_argument("--port-file", type=Path, required=True, help="where to write the control port")
    parser.add_argument("--parent-pid", type=int, help="exit when this process (our parent) is gone")
    args = parser.parse_args(argv)

    apps = [FleetApp(**item) for item in json.loads(args.spec.read_text())]
    served = {app.deployment: _serve(app) for app in apps}
    tmp = args.ports_file.with_name(args.ports_file.name + ".tmp")
    tmp.write_text(json.dumps({d: s.server_address[1] for d, (s, _) in served.items()}))
    tmp.replace(args.ports_file)  # atomic, and before the port file that tells the parent we are up
    control = ThreadingHTTPServer(("127.0.0.1", 0), _Control)
    control.daemon_threads = True
    if args.parent_pid:
        threading.Thread(target=exit_with_parent, args=(args.parent_pid,), daemon=True).start()
    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=control.shutdown, daemon=True).start())
    write_port_file(args.port_file, control.server_address[1])
    print(f"fleet of {len(apps)} apps on 127.0.0.1, control port {control.server_address[1]}", flush=True)
    try:
        control.serve_forever(poll_interval=0.5)
    finally:
        for server, reporter in served.values():
            server.shutdown()
            if reporter is not None:
                reporter.close(timeout=2.0)


@dataclass(eq=False)
class AppFleet(LocalServerProcess):
    """The fleet process, started by `AppFleet.start`; `stop()` (or `with`) ends it."""

    workdir: Path
    ports: dict[str, int]
    port: int = 0
    _proc: subprocess.Popen | None = field(default=None, repr=False)
    _owns_workdir: bool = field(default=True, repr=False)

    LOG = "fleet.log"

    @classmethod
    def start(cls, apps: list[FleetApp], workdir: Path | None = None, timeout: float = 60.0) -> "AppFleet":
        workdir, owns = make_workdir(workdir, "canarist-fleet-")
        port_file = cls._fresh_port_file(workdir)
        spec, ports_file = workdir / "apps.json", workdir / "ports.json"
        ports_file.unlink(missing_ok=True)
        spec.write_text(json.dumps([asdict(app) for app in apps]))
        argv = [sys.executable, "-m", "canarist.devstack.fleet", "--spec", str(spec), "--ports-file", str(ports_file),
                "--port-file", str(port_file), "--parent-pid", str(os.getpid())]
        fleet = cls(workdir, {}, 0, start_process(argv, workdir / cls.LOG), owns)
        fleet._until_ready(port_file, timeout)
        fleet.ports = json.loads(ports_file.read_text())  # written before the port file
        return fleet

    def app_url(self, deployment: str) -> str:
        return f"http://127.0.0.1:{self.ports[deployment]}"

    def metrics_address(self, deployment: str) -> str:
        """host:port, as a Prometheus scrape target."""
        return f"127.0.0.1:{self.ports[deployment]}"


if __name__ == "__main__":
    main()
