"""The operator's Kubernetes client: every request bounded in time, and in rate.

The generated client waits forever by default. A half-open connection (a dead peer, a NAT that
forgot the flow) would then pin a tick and its worker thread forever and freeze that release's
timer, so every call gets a connect and a read timeout unless the caller sets its own.

A client-side rate limit (a token bucket, like client-go's: CANARIST_API_QPS 50, CANARIST_API_BURST 100)
keeps a burst of work (a restart with a thousand releases) from reaching the API server's
priority-and-fairness limits, whose 429s would hold up every release.
"""

from __future__ import annotations

import os
import threading
import time
from urllib.parse import urlparse

import kubernetes

from canarist.metrics import record_api_error

DEFAULT_TIMEOUT = (5.0, 20.0)  # connect, read (seconds); the API server answers writes in well under that


class TokenBucket:
    """`rate` requests a second on average, `burst` at once; `take` waits for a token."""

    def __init__(self, rate: float, burst: int, clock=time.monotonic, sleep=time.sleep) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError(f"rate must be > 0 and burst >= 1, got {rate} and {burst}")
        self.rate, self.burst, self._clock, self._sleep = rate, burst, clock, sleep
        self._tokens, self._at = float(burst), clock()
        self._lock = threading.Lock()

    def take(self) -> float:
        """Take a token, waiting if none is left; returns the seconds waited."""
        with self._lock:
            now = self._clock()
            self._tokens = min(self.burst, self._tokens + (now - self._at) * self.rate)
            self._at = now
            self._tokens -= 1  # reserved now; a negative balance is the wait of those queued
            wait = -self._tokens / self.rate if self._tokens < 0 else 0.0
        if wait:
            self._sleep(wait)
        return wait


def _bucket_from_env() -> TokenBucket | None:
    qps = float(os.environ.get("CANARIST_API_QPS", "50"))
    return TokenBucket(qps, int(os.environ.get("CANARIST_API_BURST", "100"))) if qps > 0 else None


class BoundedApiClient(kubernetes.client.ApiClient):
    def __init__(self, configuration: kubernetes.client.Configuration | None = None,
                 timeout: tuple[float, float] = DEFAULT_TIMEOUT, limit: TokenBucket | None = None) -> None:
        super().__init__(configuration)
        self.timeout = timeout
        self.limit = limit

    def call_api(self, method, url, header_params=None, body=None, post_params=None, _request_timeout=None,
                 **kwargs):
        if self.limit is not None:
            self.limit.take()
        try:
            response = super().call_api(method, url, header_params=header_params, body=body,
                                        post_params=post_params, _request_timeout=_request_timeout or self.timeout,
                                        **kwargs)
        except Exception as exc:  # no answer (the client raises its HTTP errors after this returns)
            record_api_error(resource_of(url), method.lower(), getattr(exc, "status", None) or type(exc).__name__)
            raise
        status = getattr(response, "status", 200)
        if isinstance(status, int) and not 200 <= status <= 299 and not (status == 404 and method == "GET"):
            record_api_error(resource_of(url), method.lower(), status)  # reading what is not there is no error
        return response


def resource_of(url: str) -> str:
    """The resource (and subresource) a request's URL names: .../namespaces/x/deployments/y/scale ->
    deployments/scale; a discovery request -> discovery."""
    parts = [p for p in urlparse(url).path.split("/") if p]
    rest = parts[2:] if parts[:1] == ["api"] else parts[3:] if parts[:1] == ["apis"] else parts
    if rest[:1] == ["namespaces"] and len(rest) > 2:
        rest = rest[2:]
    if not rest:
        return "discovery"
    return rest[0] + (f"/{rest[2]}" if len(rest) > 2 else "")


def load_client(timeout: tuple[float, float] = DEFAULT_TIMEOUT, limit: TokenBucket | None = None) -> BoundedApiClient:
    """In-cluster credentials when running in a pod, else the kubeconfig (KUBECONFIG). `limit`: the
    rate limit (None: CANARIST_API_QPS and CANARIST_API_BURST, 50 and 100 by default)."""
    configuration = kubernetes.client.Configuration()
    try:
        kubernetes.config.load_incluster_config(client_configuration=configuration)
    except kubernetes.config.ConfigException:
        kubernetes.config.load_kube_config(client_configuration=configuration)
    return BoundedApiClient(configuration, timeout, limit if limit is not None else _bucket_from_env())
