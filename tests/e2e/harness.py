"""Helpers for end-to-end rollouts: CanaryRelease objects, cluster reads, route watching."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

import kubernetes

from canarist.api.crd import GROUP, PLURAL, VERSION
from canarist.devstack.operator_process import OperatorProcess  # noqa: F401 - re-exported for tests
from canarist.devstack.procs import wait_until

ERROR_RATE = ('sum(rate(http_requests_total{namespace="{{ namespace }}",deployment="{{ canary }}",code=~"5.."}[15s]))'
              ' / sum(rate(http_requests_total{namespace="{{ namespace }}",deployment="{{ canary }}"}[15s]))')
REQUESTS = 'sum(increase(http_requests_total{namespace="{{ namespace }}",deployment="{{ canary }}"}[15s]))'


def deployment(name: str, image: str, replicas: int = 2) -> dict:
    return {
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {"metadata": {"labels": {"app": name}},
                         "spec": {"containers": [{"name": "app", "image": image, "ports": [{"containerPort": 8080}]}]}},
        },
    }


def canary_release(name: str, target: str, **analysis) -> dict:
    return {
        "apiVersion": f"{GROUP}/{VERSION}", "kind": "CanaryRelease", "metadata": {"name": name},
        "spec": {
            "targetRef": {"name": target},
            "service": {"port": 8080},
            "routing": {"gatewayAPI": {"parentRefs": [{"name": "public", "namespace": "infra"}],
                                       "hostnames": ["web.example.test"]}},
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

    def set_image(self, deployment_name: str, image: str) -> None:
        self.apps.patch_namespaced_deployment(deployment_name, self.namespace, {"spec": {"template": {"spec": {
            "containers": [{"name": "app", "image": image}]}}}})

    def deployment(self, name: str):
        return self.apps.read_namespaced_deployment(name, self.namespace)

    def events(self, name: str) -> list:
        items = self.core.list_namespaced_event(self.namespace, field_selector=f"involvedObject.name={name}").items
        return sorted(items, key=lambda e: (e.first_timestamp or e.event_time, e.metadata.creation_timestamp))

    def route_weights(self, name: str) -> tuple[int, int] | None:
        try:
            route = self.custom.get_namespaced_custom_object("gateway.networking.k8s.io", "v1", self.namespace,
                                                             "httproutes", name)
        except kubernetes.client.ApiException as exc:
            if exc.status == 404:
                return None
            raise
        refs = route["spec"]["rules"][0]["backendRefs"]
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
