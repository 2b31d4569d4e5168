"""A real Gateway API implementation for the local stack: Traefik, built from its Go module by
hack/build-binaries.sh, watching the local apiserver with the Kubernetes Gateway provider.

`LocalGateway.start()` runs Traefik with one entrypoint on 127.0.0.1 and creates the stack's
GatewayClass and Gateway (its listener's port is the entrypoint's: Traefik ties listeners to
entrypoints by port). HTTPRoutes whose parentRef is that Gateway are then served at
`url` with the route's hostname as Host: Traefik splits by the route's weights over the backends'
EndpointSlices, so requests land on the pods themselves (devstack.podprocs).

Traefik does not implement the RequestMirror filter (pkg/provider/kubernetes/gateway/httproute.go
of v3.6.12 handles redirect, header modifiers, URL rewrite and extension refs only).
"""

from __future__ import annotations

import ctypes
import signal
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import kubernetes
import requests

from .binaries import ensure_binaries
from .procs import free_port, stop_process_group, wait_until

GATEWAY_NAMESPACE = "canarist-gateway"
GATEWAY_NAME = "gateway"
GATEWAY_CLASS = "traefik"
CONTROLLER_NAME = "traefik.io/gateway-controller"
GROUP, VERSION = "gateway.networking.k8s.io", "v1"


def _die_with_parent() -> None:
    """In the child before exec: Traefik has no --parent-pid, so the kernel ends it with its parent."""
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


@dataclass
class LocalGateway:
    kubeconfig: Path
    workdir: Path
    port: int = field(default_factory=free_port)
    ping_port: int = field(default_factory=free_port)
    proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> "LocalGateway":
        binary = ensure_binaries() / "traefik"
        self.workdir.mkdir(parents=True, exist_ok=True)
        argv = [str(binary),
                f"--entryPoints.web.address=127.0.0.1:{self.port}",
                f"--entryPoints.ping.address=127.0.0.1:{self.ping_port}",
                "--ping=true", "--ping.entryPoint=ping",
                "--providers.kubernetesgateway=true",
                "--global.checkNewVersion=false", "--global.sendAnonymousUsage=false",  # nothing leaves the machine
                "--log.level=INFO", f"--log.filePath={self.workdir / 'traefik.log'}",  # names the stack's dir
                # Routes take effect as soon as Traefik sees them (its default waits 2 s between updates).
                "--providers.providersThrottleDuration=100ms"]
        log = open(self.workdir / "traefik.out", "ab")  # noqa: SIM115 - the child's for its lifetime
        try:
            self.proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         start_new_session=True, preexec_fn=_die_with_parent,
                                         env={"KUBECONFIG": str(self.kubeconfig), "PATH": "/usr/bin:/bin"})
        finally:
            log.close()
        try:
            wait_until(lambda: requests.get(f"http://127.0.0.1:{self.ping_port}/ping", timeout=1).ok, 60,
                       "Traefik to answer /ping")
            self._create_gateway()
        except BaseException:
            self.stop()
            raise
        return self

    def _create_gateway(self) -> None:
        api = kubernetes.config.new_client_from_config(config_file=str(self.kubeconfig))
        core, custom = kubernetes.client.CoreV1Api(api), kubernetes.client.CustomObjectsApi(api)
        try:
            core.create_namespace({"metadata": {"name": GATEWAY_NAMESPACE}})
        except kubernetes.client.ApiException as exc:
            if exc.status != 409:
                raise
        gateway_class = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "GatewayClass",
                         "metadata": {"name": GATEWAY_CLASS}, "spec": {"controllerName": CONTROLLER_NAME}}
        gateway = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "Gateway",
                   "metadata": {"name": GATEWAY_NAME, "namespace": GATEWAY_NAMESPACE},
                   "spec": {"gatewayClassName": GATEWAY_CLASS, "listeners": [
                       {"name": "http", "protocol": "HTTP", "port": self.port,
                        "allowedRoutes": {"namespaces": {"from": "All"}}}]}}
        try:
            custom.create_cluster_custom_object(GROUP, VERSION, "gatewayclasses", gateway_class)
        except kubernetes.client.ApiException as exc:
            if exc.status != 409:
                raise
        try:
            custom.create_namespaced_custom_object(GROUP, VERSION, GATEWAY_NAMESPACE, "gateways", gateway)
        except kubernetes.client.ApiException as exc:
            if exc.status != 409:
                raise
            # Left by an earlier gateway of this cluster: its listener must have this entrypoint's port.
            custom.patch_namespaced_custom_object(GROUP, VERSION, GATEWAY_NAMESPACE, "gateways", GATEWAY_NAME,
                                                  {"spec": gateway["spec"]})

        def programmed() -> bool:
            status = custom.get_namespaced_custom_object(GROUP, VERSION, GATEWAY_NAMESPACE, "gateways",
                                                         GATEWAY_NAME).get("status") or {}
            return any(c.get("type") == "Programmed" and c.get("status") == "True"
                       for c in status.get("conditions") or [])

        wait_until(programmed, 60, f"Gateway {GATEWAY_NAMESPACE}/{GATEWAY_NAME} Programmed by Traefik")

    def parent_ref(self) -> dict:
        """What an HTTPRoute names to be served by this gateway."""
        return {"name": GATEWAY_NAME, "namespace": GATEWAY_NAMESPACE}

    def stop(self) -> None:
        if self.proc is not None:
            stop_process_group(self.proc.pid, grace=5)
            self.proc.wait(5)
            self.proc = None

    def __enter__(self) -> "LocalGateway":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
