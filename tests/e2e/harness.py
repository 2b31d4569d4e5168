"""Helpers for end-to-end rollouts: CanaryRelease objects, cluster reads, route watching."""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass, field

import kubernetes

from canarist.api.crd import GROUP, PLURAL, VERSION
from canarist.devstack.cluster import PROCESS_ANNOTATION
from canarist.devstack.gateway import GATEWAY_NAME, GATEWAY_NAMESPACE
from canarist.devstack.gateway_traffic import GatewayTraffic
from canarist.devstack.operator_process import OperatorProcess  # noqa: F401 - re-exported for tests
from canarist.devstack.podprocs import ARGS_ANNOTATION, PodProcesses
from canarist.devstack.procs import wait_until

ERROR_RATE = ('sum(rate(http_requests_total{namespace="{{ namespace }}",deployment="{{ canary }}",code=~"5.."}[15s]))'
              ' / sum(rate(http_requests_total{namespace="{{ namespace }}",deployment="{{ canary }}"}[15s]))')
REQUESTS = 'sum(increase(http_requests_total{namespace="{{ namespace }}",deployment="{{ canary }}"}[15s]))'


def deployment(name: str, image: str, replicas: int = 2, *, process: bool = False, args: str = "") -> dict:
    """A Deployment; with `process`, its pods are the demo application's processes on their pod IPs
    (the stack's data plane, devstack.podprocs), run with `args`."""
    template_meta: dict = {"labels": {"app": name}}
    if process:
        template_meta["annotations"] = {PROCESS_ANNOTATION: "demoapp", ARGS_ANNOTATION: args}
    return {
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {"metadata": template_meta,
                         "spec": {"containers": [{"name": "app", "image": image, "ports": [{"containerPort": 8080}]}]}},
        },
    }


def canary_release(name: str, target: str, *, hostname: str = "web.example.test", **analysis) -> dict:
    return {
        "apiVersion": f"{GROUP}/{VERSION}", "kind": "CanaryRelease", "metadata": {"name": name},
        "spec": {
            "targetRef": {"name": target},
            "service": {"port": 8080},
            # The stack's own gateway (Traefik): routes attached to it are served.
            "routing": {"gatewayAPI": {"parentRefs": [{"name": GATEWAY_NAME, "namespace": GATEWAY_NAMESPACE}],
                                       "hostnames": [hostname]}},
            "analysis": {
                "interval": "3s",
                "failureLimit": 1,
                "minSamples": {"query": REQUESTS, "count": 1},
                "metrics": [{"name": "error-rate", "prometheus": {"query": ERROR_RATE}, "max": 0.05}],
                **analysis,
            },
        },
    }


class Cluster:
    """Small typed wrappers over the Kubernetes API for one namespace."""

    def __init__(self, api: kubernetes.client.ApiClient, namespace: str) -> None:
        self.api, self.namespace = api, namespace
        self.apps = kubernetes.client.AppsV1Api(api)
        self.core = kubernetes.client.CoreV1Api(api)
        self.custom = kubernetes.client.CustomObjectsApi(api)

    def release(self, name: str) -> dict:
        return self.custom.get_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL, name)

    def status(self, name: str) -> dict:
        return self.release(name).get("status") or {}

    def wait_phase(self, name: str, phases: set[str] | str, timeout: float) -> dict:
        wanted = {phases} if isinstance(phases, str) else phases

        def reached():
            status = self.status(name)
            return status if status.get("phase") in wanted else None

        try:
            return wait_until(reached, timeout, f"{name} to reach {sorted(wanted)}")
        except TimeoutError as exc:
            raise TimeoutError(f"{exc}; status: {self.status(name)}") from None

    def annotate(self, name: str, **annotations: str | None) -> None:
        self.custom.patch_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL, name, {
            "metadata": {"annotations": {f"canarist.dev/{k}": v for k, v in annotations.items()}}})

    def set_image(self, deployment_name: str, image: str, args: str | None = None) -> None:
        """A new revision: another image and, for pods that are processes, other arguments."""
        template: dict = {"spec": {"containers": [{"name": "app", "image": image}]}}
        if args is not None:
            template["metadata"] = {"annotations": {ARGS_ANNOTATION: args}}
        self.apps.patch_namespaced_deployment(deployment_name, self.namespace, {"spec": {"template": template}})

    def deployment(self, name: str):
        return self.apps.read_namespaced_deployment(name, self.namespace)

    def events(self, name: str) -> list:
        items = self.core.list_namespaced_event(self.namespace, field_selector=f"involvedObject.name={name}").items
        return sorted(items, key=lambda e: (e.first_timestamp or e.event_time, e.metadata.creation_timestamp))

    def wait_events(self, name: str, reasons: set[str], timeout: float = 10) -> list[str]:
        """The reasons of `name`'s events once all of `reasons` are among them. A transition's
        events are posted just after the status write that makes it: a phase seen in the status
        may be a few milliseconds ahead of its events."""
        def posted():
            seen = [e.reason for e in self.events(name)]
            return seen if reasons <= set(seen) else None

        try:
            return wait_until(posted, timeout, f"events {sorted(reasons)} of {name}")
        except TimeoutError as exc:
            raise TimeoutError(f"{exc}; events: {[e.reason for e in self.events(name)]}") from None

    def route_weights(self, name: str) -> tuple[int, int] | None:
        try:
            route = self.custom.get_namespaced_custom_object("gateway.networking.k8s.io", "v1", self.namespace,
                                                             "httproutes", name)
        except kubernetes.client.ApiException as exc:
            if exc.status == 404:
                return None
            raise
        refs = route["spec"]["rules"][-1]["backendRefs"]  # the default rule: cohorts' rules come first
        weights = {r["name"]: r.get("weight", 1) for r in refs}
        return weights.get(f"{name}-primary", 0), weights.get(f"{name}-canary", 0)


@dataclass
class RouteWatcher:
    """Polls the HTTPRoute every 50 ms and records each change of weights with its time."""

    cluster: Cluster
    name: str
    changes: list[tuple[float, tuple[int, int]]] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def __enter__(self) -> "RouteWatcher":
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        assert self._thread is not None
        self._thread.join(5)
        # The test may have seen the last change itself just before leaving the block, ahead of the
        # polling thread: one more read so the record ends where the route ended.
        self._record()

    def _run(self) -> None:
        deadline = time.monotonic() + 900  # bounded even if a test forgets to stop it
        while not self._stop.is_set() and time.monotonic() < deadline:
            self._record()
            self._stop.wait(0.05)

    def _record(self) -> None:
        try:
            weights = self.cluster.route_weights(self.name)
        except Exception:
            weights = None
        if weights is not None and (not self.changes or self.changes[-1][1] != weights):
            self.changes.append((time.time(), weights))

    def canary_weights(self) -> list[int]:
        return [w[1] for _, w in self.changes]


def configure_pods(pods: PodProcesses, namespace: str, deployment_name: str, **change: float) -> int:
    """Change the behaviour of every running pod process of a Deployment (demoapp's /admin/config:
    errorRate, latencyMs, wrongRate); returns how many were changed."""
    import requests

    changed = 0
    for pod in pods.of_deployment(namespace, deployment_name):
        requests.post(f"http://{pod.ip}:{pod.port}/admin/config", json=change, timeout=5).raise_for_status()
        changed += 1
    return changed


def assert_split_follows_route(traffic: GatewayTraffic, changes: list[tuple[float, tuple[int, int]]],
                               primary: str, canary: str, *, settle: float = 1.5, sigmas: float = 4.0,
                               min_requests: int = 20) -> list[tuple[int, int, int]]:
    """Where requests landed, between one route change and the next (after `settle` s for the gateway
    to apply it), against the route's weights: the canary's count within `sigmas` binomial standard
    deviations of its weight's share; at 0 % or 100 % not one request on the other side.

    Returns (canary weight, requests, canary's count) per window with at least `min_requests`."""
    windows = []
    bounds = [t for t, _ in changes[1:]] + [float("inf")]
    for (start, (primary_weight, canary_weight)), end in zip(changes, bounds):
        served = traffic.served(start + settle, end)
        n, k = served[primary] + served[canary], served[canary]
        assert n == sum(served.values()), f"answers from elsewhere at weights {primary_weight}/{canary_weight}: {served}"
        if n < min_requests or primary_weight + canary_weight == 0:
            continue
        share = canary_weight / (primary_weight + canary_weight)
        tolerance = sigmas * math.sqrt(n * share * (1 - share))
        assert abs(k - n * share) <= tolerance + 1e-9, (
            f"at canary weight {canary_weight} the canary answered {k} of {n} requests, "
            f"expected {n * share:.1f} ± {tolerance:.1f}")
        windows.append((canary_weight, n, k))
    return windows
