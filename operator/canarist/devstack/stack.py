"""The whole local stack (cluster + Prometheus) as one object, with a guard against leftovers.

A reaper process watches the process that started the stack; if that one dies without tearing
down (SIGKILL, a crashed test run), the reaper stops every process of the stack.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from .binaries import cache_dir
from .cluster import LocalCluster
from .gatewayapi import install_gateway_api_crds
from .procs import pid_alive
from .prometheus import LocalPrometheus


def default_workdir(name: str) -> Path:
    return cache_dir() / "stacks" / name


@dataclass
class LocalStack:
    name: str = "canarist"
    workdir: Path | None = None
    nodes: int = 2
    cluster: LocalCluster = field(init=False)
    prometheus: LocalPrometheus = field(init=False)
    _reaper: subprocess.Popen | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        self.workdir = Path(self.workdir or default_workdir(self.name))
        self.cluster = LocalCluster(self.name, self.workdir / "cluster", nodes=self.nodes)
        self.prometheus = LocalPrometheus(self.workdir / "prometheus")

    @property
    def kubeconfig(self) -> Path:
        return self.cluster.kubeconfig

    def start(self) -> "LocalStack":
        try:
            self.cluster.start()
            install_gateway_api_crds(self.cluster.kubectl)
            self.prometheus.start()
        except BaseException:
            self.stop()
            raise
        self._reaper = subprocess.Popen(
            [sys.executable, "-m", "canarist.devstack.reaper", str(os.getpid()), self.name, str(self.workdir)],
            stdin=subprocess.DEVNULL, start_new_session=True,
        )
        return self

    def stop(self) -> None:
        if self._reaper is not None:
            self._reaper.kill()
            self._reaper.wait()
            self._reaper = None
        self.prometheus.stop()
        self.cluster.stop()

    def __enter__(self) -> "LocalStack":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def reap_when_gone(owner_pid: int, name: str, workdir: Path, poll: float = 1.0) -> None:
    while pid_alive(owner_pid):
        time.sleep(poll)
    stack = LocalStack(name, workdir)
    from .binaries import bin_dir

    stack.cluster.bin_dir = bin_dir()
    stack.stop()
