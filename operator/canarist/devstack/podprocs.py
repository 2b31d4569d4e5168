"""Pods that are processes: each simulated pod annotated `devstack.canarist.dev/process` is backed by a
real local process listening on the pod's IP, so Services, EndpointSlices and readiness are the
cluster's own and traffic reaches the pods themselves.

kwok leaves these pods' status alone (its `disregardStatusWithAnnotationSelector`, set by
`cluster.LocalCluster`); this runner plays the kubelet for them instead:
- a scheduled pod gets an IP from 10.244.128.0/17 (bindable in the stack's network namespace,
  hack/in-netns.sh; apart from the addresses kwok gives other pods from their node's podCIDR) and
  its process is started: `devstack.canarist.dev/process: demoapp` runs canarist.devstack.demoapp
  with `--host <pod IP> --port <first containerPort>` and the words of `devstack.canarist.dev/args`,
  in the container's environment as a kubelet builds it (literal values, envFrom and env from
  ConfigMaps and Secrets, read when the process starts: a running process keeps what it read);
- the pod is Ready while the process answers `GET /healthz`; a process that stops answering makes
  the pod unready, one that exits is restarted (restartCount grows), as a kubelet would;
- a pod being deleted has its process stopped and is then removed.
"""

from __future__ import annotations

import base64
import ipaddress
import logging
import os
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
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
DRAIN_SECONDS = 2.0     # a demoapp pod answers this long after SIGTERM (a preStop sleep's job in real pods)
MAX_GRACE = 10.0        # s a terminating pod's process gets before SIGKILL, whatever its spec says

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
    env: dict[str, str] = field(default_factory=dict)
    deployment: str = ""
    proc: subprocess.Popen | None = None
    ready: bool | None = None  # as last written to the pod's status
    restarts: int = 0
    exited_at: float | None = None

    def launch(self) -> None:
        with open(self.log_path, "ab") as out:
            self.proc = subprocess.Popen(self.argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         start_new_session=True, env={**os.environ, **self.env})

    def end(self, grace: float = 5.0) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGCONT)  # a stopped process would not act on SIGTERM
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(grace)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(5)
        except ProcessLookupError:
            pass


def _bindable(address: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind((address, port))
        except OSError:
            return False
    return True


def owner_deployment(pod) -> str:
    """The Deployment a pod belongs to: its ReplicaSet's name without the pod-template-hash suffix."""
    labels = pod.metadata.labels or {}
    template_hash = labels.get("pod-template-hash")
    for owner in pod.metadata.owner_references or []:
        if owner.kind == "ReplicaSet" and template_hash and owner.name.endswith(f"-{template_hash}"):
            return owner.name[: -len(template_hash) - 1]
    return pod.metadata.name


def image_tag(image: str) -> str:
    """"registry.test/web:v2" -> "v2" (a digest or no tag: "latest")."""
    last = image.rsplit("/", 1)[-1]
    return last.split(":", 1)[1] if ":" in last and "@" not in last else "latest"


class MissingConfig(Exception):
    """A ConfigMap, Secret or key the container needs does not exist (a kubelet's CreateContainerConfigError)."""


ConfigReader = Callable[[str, str], "dict[str, str] | None"]  # (kind, name) -> data, None if missing


def container_env(pod, container, ip: str, read: ConfigReader | None = None) -> dict[str, str]:
    """The container's environment as a kubelet sets it: envFrom (ConfigMaps, Secrets, with their
    prefix), then env in order (literal values, configMapKeyRef, secretKeyRef), and the downward
    API's usual three. A required object or key that is missing raises MissingConfig."""
    env: dict[str, str] = {}

    def lookup(kind: str, ref) -> dict[str, str] | None:
        data = read(kind, ref.name) if read is not None else None
        if data is None and not ref.optional:
            raise MissingConfig(f"{kind} {ref.name!r} not found")
        return data

    for source in container.env_from or []:
        kind, ref = ("ConfigMap", source.config_map_ref) if source.config_map_ref else ("Secret", source.secret_ref)
        env.update({(source.prefix or "") + k: v for k, v in (lookup(kind, ref) or {}).items()})
    for item in container.env or []:
        value_from = item.value_from
        if item.value is not None:
            env[item.name] = item.value
        elif value_from is not None and (value_from.config_map_key_ref or value_from.secret_key_ref):
            kind, ref = (("ConfigMap", value_from.config_map_key_ref) if value_from.config_map_key_ref
                         else ("Secret", value_from.secret_key_ref))
            value = (lookup(kind, ref) or {}).get(ref.key)
            if value is None and not ref.optional:
                raise MissingConfig(f"key {ref.key!r} of {kind} {ref.name!r} not found")
            if value is not None:
                env[item.name] = value
    env.update(POD_NAME=pod.metadata.name, POD_NAMESPACE=pod.metadata.namespace, POD_IP=ip)
    return env


@dataclass
class PodProcesses:
    """The runner: `start()` watches every namespace's pods; `stop()` ends every process it started."""

    api: kubernetes.client.ApiClient
    log_dir: Path
    probe_interval: float = 0.5
    # Called with each pod process once it is started, and again once it is gone (e.g. to have
    # Prometheus scrape it, as a pod monitor would).
    on_start: Callable[[PodProcess], None] | None = None
    on_stop: Callable[[PodProcess], None] | None = None
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
                pod.end(grace=0)  # the stack is going: no one is left to drain for
                self._notify(self.on_stop, pod)
            self.pods.clear()

    def __enter__(self) -> "PodProcesses":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def of_deployment(self, namespace: str, deployment: str) -> list[PodProcess]:
        """The running pod processes of one Deployment."""
        with self._lock:
            return [p for p in self.pods.values() if (p.namespace, p.deployment) == (namespace, deployment)]

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
                # As a kubelet: SIGTERM, the grace period to drain (the terminating pod's endpoint is
                # no longer ready, so gateways stop sending to it meanwhile), then the pod goes.
                grace = min(float(pod.spec.termination_grace_period_seconds or 30), MAX_GRACE)
                thread = threading.Thread(target=self._terminate, args=(known, pod if kind != "DELETED" else None,
                                                                        grace), daemon=True)
                thread.start()
                # Finished drains are dropped, so a long run that deletes many pods keeps few threads.
                self._threads = [t for t in self._threads if t.is_alive()] + [thread]
            elif kind != "DELETED":
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
        self._notify(self.on_start, process)
        self._write_status(process, ready=False)

    @staticmethod
    def _notify(hook: Callable[[PodProcess], None] | None, pod: PodProcess) -> None:
        if hook is None:
            return
        try:
            hook(pod)
        except Exception as exc:  # a hook's trouble must not stop the runner
            log.warning("pod %s/%s hook: %s", pod.namespace, pod.name, exc)

    def _terminate(self, process: PodProcess, pod, grace: float) -> None:
        process.end(grace)
        self._used.discard(process.ip)
        self._notify(self.on_stop, process)
        if pod is not None:
            self._remove(pod)

    def _prepare(self, pod, command: str, args: str) -> PodProcess | None:
        base = COMMANDS.get(command)
        if base is None:
            log.warning("pod %s/%s: no process %r (known: %s)", pod.metadata.namespace, pod.metadata.name, command,
                        ", ".join(COMMANDS))
            return None
        container = pod.spec.containers[0]
        port = next((p.container_port for p in container.ports or []), 8080)
        ip = (pod.status.pod_ip if pod.status and pod.status.pod_ip else None) or self._allocate(port)
        self._used.add(ip)
        try:
            env = container_env(pod, container, ip, lambda kind, name: self._config(pod.metadata.namespace, kind, name))
        except MissingConfig as exc:
            self._used.discard(ip)
            log.warning("pod %s/%s cannot start: %s", pod.metadata.namespace, pod.metadata.name, exc)
            return None
        # What a pod of the demo application knows about itself, as the real one would from its
        # environment: canarist sets CANARIST_VARIANT/REVISION on the primary's pods only.
        deployment = owner_deployment(pod)
        known = ["--name", deployment, "--deployment", deployment, "--drain-seconds", str(DRAIN_SECONDS),
                 "--variant", env.get("CANARIST_VARIANT") or "canary",
                 "--revision", env.get("CANARIST_REVISION") or image_tag(container.image)]
        argv = [*base, "--host", ip, "--port", str(port), "--parent-pid", str(os.getpid()), *known,
                *shlex.split(args)]
        return PodProcess(pod.metadata.namespace, pod.metadata.name, pod.metadata.uid, ip, port, argv, container.name,
                          container.image, self.log_dir / f"{pod.metadata.namespace}_{pod.metadata.name}.log", env,
                          deployment)

    def _config(self, namespace: str, kind: str, name: str) -> dict[str, str] | None:
        try:
            if kind == "ConfigMap":
                return dict(self.core.read_namespaced_config_map(name, namespace).data or {})
            data = self.core.read_namespaced_secret(name, namespace).data or {}
            return {k: base64.b64decode(v).decode("utf-8", "replace") for k, v in data.items()}
        except kubernetes.client.ApiException as exc:
            if exc.status == 404:
                return None
            raise

    def _allocate(self, port: int) -> str:
        # Another stack in the same network namespace (the demo's, started from a test) takes
        # addresses from the same range: an address is free only if its port can be bound.
        for address in PROCESS_RANGE.hosts():
            if str(address) not in self._used and _bindable(str(address), port):
                return str(address)
        raise RuntimeError(f"no free address left in {PROCESS_RANGE}")

    def _remove(self, pod) -> None:
        try:
            self.core.delete_namespaced_pod(pod.metadata.name, pod.metadata.namespace, grace_period_seconds=0)
        except kubernetes.client.ApiException as exc:
            if exc.status != 404:
                log.warning("deleting pod %s/%s: %s", pod.metadata.namespace, pod.metadata.name, exc.reason)
        except Exception as exc:  # the apiserver down (a chaos test restarts it): the watch's next
            # listing shows the pod still terminating, and it is removed then
            log.warning("deleting pod %s/%s: %s", pod.metadata.namespace, pod.metadata.name, exc)

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
