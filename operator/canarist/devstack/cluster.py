"""A real Kubernetes control plane on 127.0.0.1, with nodes simulated by kwok.

etcd, kube-apiserver, kube-controller-manager, kube-scheduler and the kwok controller run as
local processes wired together by kwokctl's `binary` runtime, from binaries built by
hack/build-binaries.sh. kwok makes the simulated nodes Ready and moves scheduled pods to
Running/Ready, so Deployments reach their ready replica counts without any container runtime;
pods annotated devstack.canarist.dev/process are left to devstack.podprocs, which backs each with
a real process on the pod's IP.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from .binaries import ensure_binaries
from .procs import pid_alive, stop_process_group, wait_until

K8S_COMPONENTS = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok-controller")
PROCESS_ANNOTATION = "devstack.canarist.dev/process"  # a pod the stack backs with a local process
POD_RANGE_PREFIX = "10.244"  # nodes get 10.244.N.0/24; hack/in-netns.sh makes 10.244.0.0/16 local
# kube-apiserver's own default is 10.0.0.0/24: about 250 Services, an eighth of what 1,000 releases
# need (two Services each, bench/scale.py). A /16 of its own, apart from the pod range above and from
# 10.255.0.1, the namespace's address (hack/in-netns.sh); nothing routes to ClusterIPs here (no
# kube-proxy: the gateway sends to EndpointSlices' pod IPs), so only the apiserver allocates from it.
SERVICE_RANGE = "10.96.0.0/16"
# Pods one simulated node takes: kwok hands out pod IPs from the node's /24 without looking at its
# end (a 257th pod would get the next node's first address), so a node holds no more than its range.
NODE_PODS = 250


def nodes_for(pods: int) -> int:
    """Simulated nodes that hold `pods` pods (at least the stack's usual two)."""
    return max(2, -(-pods // NODE_PODS))


def node_manifest(name: str, pod_cidr: str) -> dict:
    """A Node kwok manages (the annotation kwokctl's controller selects) with room for as many pods as
    its pod range has addresses (NODE_PODS)."""
    capacity = {"cpu": "64", "memory": "256Gi", "pods": str(NODE_PODS)}
    return {"apiVersion": "v1", "kind": "Node",
            "metadata": {"name": name, "annotations": {"kwok.x-k8s.io/node": "fake", "node.alpha.kubernetes.io/ttl": "0"},
                         "labels": {"kubernetes.io/hostname": name, "kubernetes.io/os": "linux",
                                    "kubernetes.io/arch": "amd64", "type": "kwok"}},
            "spec": {"podCIDR": pod_cidr, "podCIDRs": [pod_cidr]},
            "status": {"allocatable": capacity, "capacity": capacity}}


@dataclass
class LocalCluster:
    """One local cluster. `workdir` holds its state, pki, logs and kubeconfig; `stop()` removes it all."""

    name: str
    workdir: Path
    nodes: int = 2
    bin_dir: Path | None = None
    kubeconfig: Path = field(init=False)
    _restarted: list[subprocess.Popen] = field(default_factory=list, init=False, repr=False)  # ours to reap

    def __post_init__(self) -> None:
        self.workdir = Path(self.workdir)
        if not 1 <= self.nodes <= 256:  # node i's pods are 10.244.i.0/24
            raise ValueError(f"nodes must be 1..256, not {self.nodes}")
        self.kubeconfig = self.workdir / "kubeconfig"

    # kwokctl keeps each cluster under $KWOK_WORKDIR/clusters/<name>.
    @property
    def _kwok_home(self) -> Path:
        return self.workdir / "kwok"

    @property
    def _cluster_dir(self) -> Path:
        return self._kwok_home / "clusters" / self.name

    @property
    def service_account_signing_key(self) -> Path:
        """The API server's --service-account-signing-key-file (kwokctl's admin key, RSA): tests
        mint ServiceAccount tokens with it that the API server cannot tell from its own."""
        return self._cluster_dir / "pki" / "admin.key"

    def _env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["KWOK_WORKDIR"] = str(self._kwok_home)
        env["KUBECONFIG"] = str(self.kubeconfig)
        return env

    def _kwokctl(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
        assert self.bin_dir is not None
        argv = [str(self.bin_dir / "kwokctl"), "--name", self.name, *args]
        result = subprocess.run(argv, env=self._env(), capture_output=True, text=True, timeout=timeout)
        if result.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
        return result

    def _write_config(self) -> Path:
        assert self.bin_dir is not None
        b = self.bin_dir
        config = {
            "kind": "KwokctlConfiguration",
            "apiVersion": "config.kwok.x-k8s.io/v1alpha1",
            "options": {
                "runtime": "binary",
                "bindAddress": "127.0.0.1",  # kwokctl's default is 0.0.0.0
                "kubeVersion": _binary_version(b / "kube-apiserver"),
                "kubeApiserverBinary": str(b / "kube-apiserver"),
                "kubeControllerManagerBinary": str(b / "kube-controller-manager"),
                "kubeSchedulerBinary": str(b / "kube-scheduler"),
                "kubectlBinary": str(b / "kubectl"),
                "etcdBinary": str(b / "etcd"),
                "kwokControllerBinary": str(b / "kwok"),
                "kubeAuthorization": True,
                "kubeAdmission": True,
                "disableQPSLimits": True,
            },
            "componentsPatches": [{"name": "kube-apiserver", "extraArgs": [
                {"key": "service-cluster-ip-range", "value": SERVICE_RANGE}]}],
        }
        # Pods whose process the stack runs (devstack.podprocs) get their status from that runner
        # (IP, readiness from the process), never from kwok.
        kwok = {"kind": "KwokConfiguration", "apiVersion": "config.kwok.x-k8s.io/v1alpha1",
                "options": {"disregardStatusWithAnnotationSelector": PROCESS_ANNOTATION}}
        path = self.workdir / "kwokctl.yaml"
        path.write_text(yaml.safe_dump_all([config, kwok]))
        return path

    def start(self) -> "LocalCluster":
        self.bin_dir = self.bin_dir or ensure_binaries()
        self.stop()  # a crashed earlier run may have left this cluster behind
        self.workdir.mkdir(parents=True, exist_ok=True)
        config = self._write_config()
        try:
            self._kwokctl("--config", str(config), "create", "cluster", "--kubeconfig", str(self.kubeconfig),
                          "--wait", "3m", "--timeout", "5m", timeout=400)
            # Right after start the apiserver may still refuse writes for a moment on a loaded machine.
            wait_until(self._create_nodes, 60, f"{self.nodes} simulated nodes", interval=2)
            wait_until(self._nodes_ready, 120, f"{self.nodes} Ready nodes")
        except BaseException:
            self.stop()
            raise
        return self

    def wait_established(self, crd: str, timeout: float = 300) -> None:
        """Wait for a CRD to be Established, read from the API rather than with `kubectl wait`, and say
        what was seen when it does not come: on a loaded machine a large CRD (CEL rules to compile)
        can take well over kubectl's usual 30 s."""
        import kubernetes  # the cluster itself needs no client; only this wait does

        api = kubernetes.client.ApiextensionsV1Api(kubernetes.config.new_client_from_config(
            config_file=str(self.kubeconfig)))
        seen: list = []

        def established() -> bool:
            try:
                conditions = api.read_custom_resource_definition(crd).status.conditions or []
            except Exception as exc:  # noqa: BLE001 - a loaded apiserver may refuse a read for a moment
                seen[:] = [repr(exc)]
                return False
            seen[:] = [(c.type, c.status, c.reason) for c in conditions]
            return any(c.type == "Established" and c.status == "True" for c in conditions)

        try:
            wait_until(established, timeout, f"CRD {crd} to be Established", interval=0.5)
        except TimeoutError as exc:
            raise TimeoutError(f"{exc}; last seen: {seen}") from None

    def kubectl(self, *args: str, input: str | None = None, check: bool = True) -> subprocess.CompletedProcess:
        assert self.bin_dir is not None, "cluster not started"
        return subprocess.run([str(self.bin_dir / "kubectl"), "--kubeconfig", str(self.kubeconfig), *args],
                              input=input, capture_output=True, text=True, check=check, timeout=120)

    def _create_nodes(self) -> bool:
        """The simulated nodes, made here rather than by `kwokctl scale node` so that each has its own
        pod range, 10.244.N.0/24: kwok gives pods addresses from their node's podCIDR, and in the
        stack's network namespace that range is bindable (hack/in-netns.sh), so a pod's process can
        listen on the pod's IP."""
        nodes = [node_manifest(f"kwok-node-{i}", f"{POD_RANGE_PREFIX}.{i}.0/24") for i in range(self.nodes)]
        self.kubectl("apply", "-f", "-", input=yaml.safe_dump_all(nodes))
        return True

    def _nodes_ready(self) -> bool:
        out = self.kubectl("get", "nodes", "-o",
                           "jsonpath={range .items[*]}{.status.conditions[?(@.type=='Ready')].status}{'\\n'}{end}").stdout
        return out.split().count("True") >= self.nodes

    def pids(self) -> list[int]:
        """Pids of the cluster's component processes that are still alive."""
        found = []
        for pidfile in (self._cluster_dir / "pids").glob("*.pid"):
            try:
                pid = int(pidfile.read_text().strip())
            except (OSError, ValueError):
                continue
            if pid_alive(pid):
                found.append(pid)
        return found

    def _command(self, component: str) -> tuple[int, list[str], str, dict[str, str]]:
        """(pid, argv, working directory, environment) of a running component, from /proc."""
        pid = int((self._cluster_dir / "pids" / f"{component}.pid").read_text().strip())
        proc = Path(f"/proc/{pid}")
        argv = proc.joinpath("cmdline").read_bytes().rstrip(b"\0").decode().split("\0")
        environ = proc.joinpath("environ").read_bytes().decode().split("\0")
        return pid, argv, os.readlink(proc / "cwd"), dict(item.split("=", 1) for item in environ if "=" in item)

    def _relaunch(self, component: str, argv: list[str], cwd: str, env: dict[str, str]) -> int:
        """Start a component again as kwokctl does: its own session, output appended to its log, pid
        in its pid file (so `stop()` and the reaper still end it)."""
        with open(self._cluster_dir / "logs" / f"{component}.log", "ab") as log:
            proc = subprocess.Popen(argv, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, start_new_session=True)
        self._restarted.append(proc)
        (self._cluster_dir / "pids" / f"{component}.pid").write_text(str(proc.pid))
        return proc.pid

    def restart_apiserver(self, down_for: float = 0.0, timeout: float = 120, lease_seconds: float = 15) -> int:
        """Kill kube-apiserver alone (SIGKILL: its graceful stop drains for a minute) and start it again
        with the same command line, working directory and environment, leaving etcd and the others
        running. Returns the new pid once /readyz answers.

        kube-controller-manager and kube-scheduler exit when they cannot renew their leader lease
        during the outage; a kubelet would restart them, and here this does, with their own command
        lines, for `lease_seconds` (the lease duration) after the API server is back.
        """
        commands = {c: self._command(c) for c in K8S_COMPONENTS
                    if (self._cluster_dir / "pids" / f"{c}.pid").exists()}
        pid, argv, cwd, env = commands["kube-apiserver"]
        os.kill(pid, signal.SIGKILL)
        wait_until(lambda: not pid_alive(pid), 30, "kube-apiserver to die")
        time.sleep(down_for)  # the length of the outage is the caller's choice, not a wait for a state
        new_pid = self._relaunch("kube-apiserver", argv, cwd, env)
        wait_until(lambda: self.kubectl("get", "--raw", "/readyz", check=False).returncode == 0, timeout,
                   "kube-apiserver to be ready again", interval=0.5)

        # A supervisor's watch over one lease period (no state to wait for: a component may yet exit).
        deadline = time.monotonic() + lease_seconds
        while time.monotonic() < deadline:
            for component, (old_pid, *command) in commands.items():
                if component != "kube-apiserver" and not pid_alive(old_pid):
                    commands[component] = (self._relaunch(component, *command), *command)
            time.sleep(0.5)
        return new_pid

    def stop(self) -> None:
        """Stop every process of the cluster and delete its state. Safe to call more than once."""
        if self._cluster_dir.exists() and self.bin_dir and (self.bin_dir / "kwokctl").exists():
            try:
                self._kwokctl("delete", "cluster", timeout=120)
            except (RuntimeError, subprocess.TimeoutExpired):
                pass  # fall through to killing the recorded pids
        for pid in self.pids():
            stop_process_group(pid)
        shutil.rmtree(self.workdir, ignore_errors=True)


def _binary_version(path: Path) -> str:
    out = subprocess.run([str(path), "--version"], capture_output=True, text=True, check=True).stdout
    return out.split()[-1]  # "Kubernetes v1.34.4"
