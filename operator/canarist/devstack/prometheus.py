"""A real Prometheus (Debian's `prometheus` package) on 127.0.0.1 with a config we write.

Scrape targets are added while it runs through a file_sd file, which Prometheus watches, so
tests can add their own exporters without a restart.
"""

from __future__ import annotations

import json
import shutil
import threading
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from .procs import free_port, kill_pidfile, start_process, stop_process_group, wait_until

INSTALL_HINT = "install Debian's prometheus package (`apt-get install prometheus`; `make test` does it when run as root)"


def prometheus_binary() -> str:
    found = shutil.which("prometheus") or ("/usr/bin/prometheus" if Path("/usr/bin/prometheus").exists() else None)
    if not found:
        raise RuntimeError(f"prometheus not found on PATH: {INSTALL_HINT}")
    return found


@dataclass
class LocalPrometheus:
    workdir: Path
    scrape_interval: str = "1s"
    port: int = 0
    _pid: int | None = field(default=None, init=False)
    _targets: dict[str, dict] = field(default_factory=dict, init=False)
    _targets_lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)

    def __post_init__(self) -> None:
        self.workdir = Path(self.workdir)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def _pidfile(self) -> Path:
        return self.workdir / "prometheus.pid"

    @property
    def _sd_file(self) -> Path:
        return self.workdir / "targets.json"

    def start(self) -> "LocalPrometheus":
        prometheus_binary()  # fail early, before removing anything, when it is not installed
        self.stop()  # a crashed earlier run may have left one behind
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = self.port or free_port()
        self._write_targets()
        config = {
            "global": {"scrape_interval": self.scrape_interval, "evaluation_interval": self.scrape_interval},
            "scrape_configs": [{
                "job_name": "tests",
                "file_sd_configs": [{"files": [str(self._sd_file)], "refresh_interval": "1s"}],
            }],
        }
        (self.workdir / "prometheus.yml").write_text(yaml.safe_dump(config))
        return self._launch()

    def _launch(self) -> "LocalPrometheus":
        """Run the Prometheus process on the config, data and port in place; wait until it is ready."""
        proc = start_process([
            prometheus_binary(),
            f"--config.file={self.workdir / 'prometheus.yml'}",
            f"--storage.tsdb.path={self.workdir / 'data'}",
            f"--web.listen-address=127.0.0.1:{self.port}",
            "--web.enable-lifecycle",
            "--storage.tsdb.retention.time=1d",
        ], self.workdir / "prometheus.log")
        self._pid = proc.pid
        self._pidfile.write_text(str(proc.pid))
        try:
            wait_until(self._ready, 60, f"Prometheus ready on {self.url} (log: {self.workdir / 'prometheus.log'})")
        except BaseException:
            self.stop()
            raise
        return self

    def halt(self) -> None:
        """Stop the Prometheus process only (an outage, not a teardown): its port, data, config and
        targets stay, for `resume()`."""
        if self._pid is not None:
            stop_process_group(self._pid)
            self._pid = None
        self._pidfile.unlink(missing_ok=True)

    def resume(self) -> "LocalPrometheus":
        """Start Prometheus again after `halt()`: same port (clients keep their URL), same data."""
        if self._pid is not None:
            raise RuntimeError("Prometheus is running; halt() it first")
        return self._launch()

    def _ready(self) -> bool:
        with urllib.request.urlopen(f"{self.url}/-/ready", timeout=2) as response:
            return response.status == 200

    def add_target(self, address: str, labels: dict[str, str] | None = None) -> None:
        """Scrape `address` (host:port) from now on, with extra `labels` on its series."""
        with self._targets_lock:  # tests and the stack's pod runner add targets from their own threads
            self._targets[address] = {"targets": [address], "labels": labels or {}}
            self._write_targets()

    def remove_target(self, address: str) -> None:
        with self._targets_lock:
            self._targets.pop(address, None)
            self._write_targets()

    def _write_targets(self) -> None:
        tmp = self._sd_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(list(self._targets.values())))
        tmp.replace(self._sd_file)  # atomic, so Prometheus never reads half a file

    def active_targets(self) -> list[dict]:
        with urllib.request.urlopen(f"{self.url}/api/v1/targets?state=active", timeout=5) as response:
            return json.load(response)["data"]["activeTargets"]

    def stop(self) -> None:
        if self._pid is not None:
            stop_process_group(self._pid)
            self._pid = None
        kill_pidfile(self._pidfile, expect="prometheus")
        shutil.rmtree(self.workdir, ignore_errors=True)
