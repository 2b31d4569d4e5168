"""Reading a Service's endpoints as the gateways do: from its EndpointSlices."""

from __future__ import annotations

import kubernetes


def endpoints(api: kubernetes.client.ApiClient, namespace: str, service: str) -> dict[str, bool]:
    """Address -> ready, over the Service's EndpointSlices."""
    found = {}
    for item in kubernetes.client.DiscoveryV1Api(api).list_namespaced_endpoint_slice(
            namespace, label_selector=f"kubernetes.io/service-name={service}").items:
        for endpoint in item.endpoints or []:
            for address in endpoint.addresses:
                found[address] = bool(endpoint.conditions and endpoint.conditions.ready)
    return found
