"""The whole local stack as one object, with a guard against leftovers: the cluster, Prometheus and
the data plane (Traefik as the Gateway API implementation, and the runner that backs pods annotated
`devstack.canarist.dev/process` with processes on their pod IPs, scraped by Prometheus).

The data plane needs the stack's own network namespace (hack/in-netns.sh), where pod IPs are
bindable; `data_plane=False` leaves it out.

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

import kubernetes

from .binaries import cache_dir
from .cluster import LocalCluster
from .gateway import LocalGateway
from .gatewayapi import install_gateway_api_crds
from .podprocs import PodProcess, PodProcesses
from .procs import pid_alive
from .prometheus import LocalPrometheus

NETNS_HINT = ("the local stack's data plane puts pods' processes on pod IPs, bindable only in the stack's own "
              "network namespace: run through hack/in-netns.sh (make test, make demo and make stack do)")


def in_stack_netns() -> bool:
    return os.environ.get("CANARIST_NETNS") == "1"


def enter_command() -> str:
    """How to get a shell in this process's network namespace from another terminal (everything
    of the stack listens there only): nsenter, with the user namespace too if unshare made one."""
    pid = os.getpid()
    try:
        own_userns = os.readlink("/proc/self/ns/user") != os.readlink("/proc/1/ns/user")
    except OSError:
        own_userns = os.getuid() != 0
    if own_userns:
        return f"nsenter -t {pid} -U -n --preserve-credentials bash"
    return f"{'' if os.getuid() == 0 else 'sudo '}nsenter -t {pid} -n bash"


def default_workdir(name: str) -> Path:
    return cache_dir() / "stacks" / name


@dataclass
class LocalStack:
    name: str = "canarist"
    workdir: Path | None = None
    nodes: int = 2
    data_plane: bool = True
    cluster: LocalCluster = field(init=False)
    prometheus: LocalPrometheus = field(init=False)
    gateway: LocalGateway | None = field(default=None, init=False)
    pods: PodProcesses | None = field(default=None, init=False)
    _reaper: subprocess.Popen | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        self.workdir = Path(self.workdir or default_workdir(self.name))
        self.cluster = LocalCluster(self.name, self.workdir / "cluster", nodes=self.nodes)
        self.prometheus = LocalPrometheus(self.workdir / "prometheus")

    @property
    def kubeconfig(self) -> Path:
        return self.cluster.kubeconfig

    def start(self) -> "LocalStack":
        if self.data_plane and not in_stack_netns():
            raise RuntimeError(NETNS_HINT)
        try:
            self.cluster.start()
            install_gateway_api_crds(self.cluster.kubectl)
            self.prometheus.start()
            if self.data_plane:
                assert self.workdir is not None
                self.gateway = LocalGateway(self.kubeconfig, self.workdir / "gateway").start()
                api = kubernetes.config.new_client_from_config(config_file=str(self.kubeconfig))
                self.pods = PodProcesses(api, self.workdir / "pods", on_start=self._scrape,
                                         on_stop=self._unscrape).start()
        except BaseException:
            self.stop()
            raise
        self._reaper = subprocess.Popen(
            [sys.executable, "-m", "canarist.devstack.reaper", str(os.getpid()), self.name, str(self.workdir)],
            stdin=subprocess.DEVNULL, start_new_session=True,
        )
        return self

    def _scrape(self, pod: PodProcess) -> None:
        """Prometheus scrapes every pod process, labelled as a pod monitor would label it."""
        self.prometheus.add_target(f"{pod.ip}:{pod.port}", {"namespace": pod.namespace, "pod": pod.name})

    def _unscrape(self, pod: PodProcess) -> None:
        self.prometheus.remove_target(f"{pod.ip}:{pod.port}")

    def stop(self) -> None:
        if self._reaper is not None:
            self._reaper.kill()
            self._reaper.wait()
            self._reaper = None
        if self.pods is not None:
            self.pods.stop()
            self.pods = None
        if self.gateway is not None:
            self.gateway.stop()
            self.gateway = None
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
