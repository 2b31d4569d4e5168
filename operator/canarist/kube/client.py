"""The operator's Kubernetes client: every request bounded in time.

The generated client waits forever by default. A half-open connection (a dead peer, a NAT that
forgot the flow) would then pin a tick and its worker thread forever and freeze that release's
timer, so every call gets a connect and a read timeout unless the caller sets its own.
"""

from __future__ import annotations

import kubernetes

DEFAULT_TIMEOUT = (5.0, 20.0)  # connect, read (seconds); the API server answers writes in well under that


class BoundedApiClient(kubernetes.client.ApiClient):
    def __init__(self, configuration: kubernetes.client.Configuration | None = None,
                 timeout: tuple[float, float] = DEFAULT_TIMEOUT) -> None:
        super().__init__(configuration)
        self.timeout = timeout

    def call_api(self, method, url, header_params=None, body=None, post_params=None, _request_timeout=None):
        return super().call_api(method, url, header_params=header_params, body=body, post_params=post_params,
                                _request_timeout=_request_timeout or self.timeout)


def load_client(timeout: tuple[float, float] = DEFAULT_TIMEOUT) -> BoundedApiClient:
    """In-cluster credentials when running in a pod, else the kubeconfig (KUBECONFIG)."""
    configuration = kubernetes.client.Configuration()
    try:
        kubernetes.config.load_incluster_config(client_configuration=configuration)
    except kubernetes.config.ConfigException:
        kubernetes.config.load_kube_config(client_configuration=configuration)
    return BoundedApiClient(configuration, timeout)
