"""Pods that are processes: each simulated pod annotated `devstack.canarist.dev/process` is backed by a
real local process listening on the pod's IP, so Services, EndpointSlices and readiness are the
cluster's own and traffic reaches the pods themselves.

kwok leaves these pods' status alone (its `disregardStatusWithAnnotationSelector`, set by
`cluster.LocalCluster`); this runner plays the kubelet for them instead:
- a scheduled pod gets an IP from 10.244.128.0/17 (bindable in the stack's network namespace,
  hack/in-netns.sh; apart from the addresses kwok gives other pods from their node's podCIDR) and
  its process is started: `devstack.canarist.dev/process: demoapp` runs canarist.devstack.demoapp
  with `--host <pod IP> --port <first containerPort>` and the words of `devstack.canarist.dev/args`;
- the pod is Ready while the process answers `GET /healthz`; a process that stops answering makes
  the pod unready, one that exits is restarted (restartCount grows), as a kubelet would;
- a pod being deleted has its process stopped and is then removed.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import shlex
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import kubernetes
import requests

from .cluster import PROCESS_ANNOTATION

ARGS_ANNOTATION = "devstack.canarist.dev/args"
PROCESS_RANGE = ipaddress.ip_network("10.244.128.0/17")
COMMANDS: dict[str, list[str]] = {"demoapp": [sys.executable, "-m", "canarist.devstack.demoapp"]}
HOST_IP = "10.255.0.1"  # the namespace's own address (hack/in-netns.sh): every simulated node's
RESTART_BACKOFF = 1.0   # s before a process that exited is started again

log = logging.getLogger(__name__)


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class PodProcess:
    namespace: str
    name: str
    uid: str
    ip: str
    port: int
    argv: list[str]
    container: str
    image: str
    log_path: Path
    proc: subprocess.Popen | None = None
    ready: bool | None = None  # as last written to the pod's status
    restarts: int = 0
    exited_at: float | None = None

    def launch(self) -> None:
        with open(self.log_path, "ab") as out:
            self.proc = subprocess.Popen(self.argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         start_new_session=True)

    def end(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGCONT)  # a stopped process would not act on SIGTERM
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(5)
        except ProcessLookupError:
            pass


@dataclass
class PodProcesses:
    """The runner: `start()` watches every namespace's pods; `stop()` ends every process it started."""

    api: kubernetes.client.ApiClient
    log_dir: Path
    probe_interval: float = 0.5
    pods: dict[str, PodProcess] = field(default_factory=dict)  # by pod uid
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)
    _used: set[str] = field(default_factory=set)

    def __post_init__(self) -> None:
        self.core = kubernetes.client.CoreV1Api(self.api)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.http = requests.Session()

    def start(self) -> "PodProcesses":
        for target in (self._watch, self._probe):
            thread = threading.Thread(target=target, daemon=True, name=f"podprocs-{target.__name__}")
            thread.start()
            self._threads.append(thread)
        return self

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(10)
        with self._lock:
            for pod in self.pods.values():
                pod.end()
            self.pods.clear()

    def __enter__(self) -> "PodProcesses":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def find(self, namespace: str, name: str) -> PodProcess | None:
        with self._lock:
            return next((p for p in self.pods.values() if (p.namespace, p.name) == (namespace, name)), None)

    # -- watching -------------------------------------------------------------------------------

    def _watch(self) -> None:
        while not self._stop.is_set():
            try:
                for event in kubernetes.watch.Watch().stream(self.core.list_pod_for_all_namespaces, timeout_seconds=5):
                    if self._stop.is_set():
                        return
                    self._on_pod(event["type"], event["object"])
            except Exception as exc:  # the apiserver restarting, a dropped watch: watch again
                log.debug("pod watch: %s", exc)
                self._stop.wait(0.5)

    def _on_pod(self, kind: str, pod) -> None:
        annotations = pod.metadata.annotations or {}
        command = annotations.get(PROCESS_ANNOTATION)
        if command is None or not pod.spec.node_name:
            return
        uid = pod.metadata.uid
        if kind == "DELETED" or pod.metadata.deletion_timestamp is not None:
            with self._lock:
                known = self.pods.pop(uid, None)
            if known is not None:
                known.end()
                self._used.discard(known.ip)
            if kind != "DELETED":
                self._remove(pod)
            return
        with self._lock:
            if uid in self.pods:
                return
            process = self._prepare(pod, command, annotations.get(ARGS_ANNOTATION, ""))
            if process is None:
                return
            process.launch()  # before the prober can see it
            self.pods[uid] = process
        self._write_status(process, ready=False)

    def _prepare(self, pod, command: str, args: str) -> PodProcess | None:
        base = COMMANDS.get(command)
        if base is None:
            log.warning("pod %s/%s: no process %r (known: %s)", pod.metadata.namespace, pod.metadata.name, command,
                        ", ".join(COMMANDS))
            return None
        container = pod.spec.containers[0]
        port = next((p.container_port for p in container.ports or []), 8080)
        ip = (pod.status.pod_ip if pod.status and pod.status.pod_ip else None) or self._allocate()
        self._used.add(ip)
        argv = [*base, "--host", ip, "--port", str(port), "--parent-pid", str(os.getpid()), *shlex.split(args)]
        return PodProcess(pod.metadata.namespace, pod.metadata.name, pod.metadata.uid, ip, port, argv, container.name,
                          container.image, self.log_dir / f"{pod.metadata.namespace}_{pod.metadata.name}.log")

    def _allocate(self) -> str:
        for address in PROCESS_RANGE.hosts():
            if str(address) not in self._used:
                return str(address)
        raise RuntimeError(f"no free address left in {PROCESS_RANGE}")

    def _remove(self, pod) -> None:
        try:
            self.core.delete_namespaced_pod(pod.metadata.name, pod.metadata.namespace, grace_period_seconds=0)
        except kubernetes.client.ApiException as exc:
            if exc.status != 404:
                log.warning("deleting pod %s/%s: %s", pod.metadata.namespace, pod.metadata.name, exc.reason)

    # -- readiness --------------------------------------------------------------------------------

    def _probe(self) -> None:
        while not self._stop.wait(self.probe_interval):
            with self._lock:
                pods = list(self.pods.values())
            for pod in pods:
                try:
                    self._probe_one(pod)
                except Exception as exc:  # one pod's trouble must not stop the others' probes
                    log.warning("probing pod %s/%s: %s", pod.namespace, pod.name, exc)

    def _probe_one(self, pod: PodProcess) -> None:
        assert pod.proc is not None
        if pod.proc.poll() is not None:  # exited: unready, then started again after a pause
            now = time.monotonic()
            if pod.exited_at is None:
                pod.exited_at = now
                self._write_status(pod, ready=False)
            elif now - pod.exited_at >= RESTART_BACKOFF:
                pod.exited_at, pod.restarts = None, pod.restarts + 1
                pod.launch()
            return
        try:
            answered = self.http.get(f"http://{pod.ip}:{pod.port}/healthz", timeout=0.5).status_code == 200
        except requests.RequestException:
            answered = False
        if answered != pod.ready:
            self._write_status(pod, ready=answered)

    def _write_status(self, pod: PodProcess, ready: bool) -> None:
        running = pod.proc is not None and pod.proc.poll() is None
        flag = "True" if ready else "False"
        now = _now()
        state = {"running": {"startedAt": now}} if running else {"waiting": {"reason": "CrashLoopBackOff"}}
        body = {"status": {
            "phase": "Running", "hostIP": HOST_IP, "hostIPs": [{"ip": HOST_IP}], "podIP": pod.ip,
            "podIPs": [{"ip": pod.ip}], "startTime": now,
            "conditions": [{"type": kind, "status": status, "lastTransitionTime": now}
                           for kind, status in (("PodScheduled", "True"), ("Initialized", "True"),
                                                ("ContainersReady", flag), ("Ready", flag))],
            "containerStatuses": [{"name": pod.container, "image": pod.image, "imageID": "", "ready": ready,
                                   "started": running, "restartCount": pod.restarts, "state": state}]}}
        try:
            self.core.patch_namespaced_pod_status(pod.name, pod.namespace, body)
            pod.ready = ready
        except kubernetes.client.ApiException as exc:
            if exc.status != 404:
                log.warning("pod %s/%s status: %s", pod.namespace, pod.name, exc.reason)
