"""The mirror of a gateway that has one, for the local stack's gateway that has none.

Traefik (v3.6) implements no HTTPRoute RequestMirror filter, so a CanaryRelease on the local stack
declares `spec.shadow.mirror: External` and this plays the external mirror, the way Envoy-based
gateways do it: while the release is in its shadow phase (status.shadow.state Running), a copy of
the declared share of requests goes to one ready endpoint of the `<target>-canary` Service, with
the same `X-Request-Id` and `-shadow` appended to the Host, and its answer is dropped. Nothing
else about routing is emulated: users' requests still go through Traefik, by the route's weights.
"""

from __future__ import annotations

import logging
import random
import threading

import kubernetes

from canarist.api.crd import GROUP, PLURAL, VERSION

log = logging.getLogger(__name__)


def shadow_host(host: str) -> str:
    """Envoy's marking of a mirrored request: `-shadow` appended to the host, before any port."""
    name, colon, port = host.partition(":")
    return f"{name}-shadow{colon}{port}"


class ShadowMirror:
    """Follows one CanaryRelease: how much to mirror now, and where to (polled every `poll` seconds)."""

    def __init__(self, api: kubernetes.client.ApiClient, namespace: str, release: str, service: str,
                 poll: float = 0.5) -> None:
        self._custom = kubernetes.client.CustomObjectsApi(api)
        self._slices = kubernetes.client.DiscoveryV1Api(api)
        self.namespace, self.release, self.service, self.poll = namespace, release, service, poll
        self._percent = 0
        self._endpoints: list[tuple[str, int]] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> "ShadowMirror":
        self._refresh()
        self._thread = threading.Thread(target=self._run, name=f"mirror-{self.release}", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)

    def percent(self) -> int:
        """The share of requests to copy now: the shadow's while it runs, else 0."""
        with self._lock:
            return self._percent if self._endpoints else 0

    def endpoint(self, rng: random.Random) -> tuple[str, int] | None:
        """One ready endpoint of the canary Service (a mirror goes to a single endpoint)."""
        with self._lock:
            return rng.choice(self._endpoints) if self._endpoints else None

    def _run(self) -> None:
        while not self._stop.wait(self.poll):
            try:
                self._refresh()
            except Exception as exc:  # noqa: BLE001 - a missed poll only delays the mirror
                log.debug("mirror of %s: %s", self.release, exc)

    def _refresh(self) -> None:
        release = self._custom.get_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL, self.release)
        shadow = (release.get("status") or {}).get("shadow") or {}
        running = shadow.get("state") == "Running" and shadow.get("mirror") == "External"
        percent = int(shadow.get("percent") or 0) if running else 0
        endpoints = []
        for item in self._slices.list_namespaced_endpoint_slice(
                self.namespace, label_selector=f"kubernetes.io/service-name={self.service}").items:
            ports = [p.port for p in item.ports or [] if p.port]
            for endpoint in item.endpoints or []:
                if endpoint.conditions and endpoint.conditions.ready and ports:
                    endpoints += [(address, ports[0]) for address in endpoint.addresses]
        with self._lock:
            self._percent, self._endpoints = percent, endpoints
