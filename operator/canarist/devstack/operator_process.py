"""The operator as users run it, `kopf run -m canarist.handlers`, as a local process."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from .procs import start_process, stop_process_group


@dataclass
class OperatorProcess:
    """Watches one namespace with the identity in `kubeconfig`."""

    kubeconfig: Path
    namespace: str
    prometheus_url: str
    log_path: Path
    tick_seconds: float = 0.5
    proc: subprocess.Popen | None = None
    env: dict[str, str] | None = None  # more environment, as the chart's Deployment sets it


    def start(self) -> "OperatorProcess":
        env = {**os.environ, "KUBECONFIG": str(self.kubeconfig), "CANARIST_TICK_SECONDS": str(self.tick_seconds),
               "CANARIST_PROMETHEUS_URL": self.prometheus_url, **(self.env or {})}
        self.proc = start_process([sys.executable, "-m", "kopf", "run", "-m", "canarist.handlers", "--standalone",
                                   "--namespace", self.namespace], self.log_path, env=env)
        return self

    def kill(self) -> None:
        """SIGKILL: no cleanup, no goodbye — like a node dying under the operator."""
        assert self.proc is not None
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            stop_process_group(self.proc.pid, grace=5)
            self.proc.wait()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-6000:]
