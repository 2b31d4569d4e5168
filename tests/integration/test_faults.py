"""The fault helpers against the real local API server: a half-open or refused connection, and real 500s."""

from __future__ import annotations

import threading
import time
import uuid
from pathlib import Path

import kubernetes
import pytest
import urllib3
import yaml

from canarist.devstack.faults import ApiFaults, TcpFaultProxy, failing_writes
from canarist.devstack.procs import wait_until

pytestmark = pytest.mark.cluster


@pytest.fixture
def proxy(stack):
    with TcpFaultProxy.for_kubeconfig(stack.kubeconfig) as running:
        yield running


@pytest.fixture
def proxied_kubeconfig(stack, proxy, tmp_path) -> Path:
    return proxy.kubeconfig_via(stack.kubeconfig, tmp_path / "kubeconfig")


def client_from(kubeconfig: Path) -> kubernetes.client.ApiClient:
    """A client that does not retry: a failed request must surface, not be retried on a new connection."""
    config = kubernetes.client.Configuration()
    kubernetes.config.load_kube_config(config_file=str(kubeconfig), client_configuration=config)
    config.retries = False
    return kubernetes.client.ApiClient(config)


def core(api: kubernetes.client.ApiClient) -> kubernetes.client.CoreV1Api:
    return kubernetes.client.CoreV1Api(api)


def test_the_proxied_kubeconfig_verifies_tls_against_the_api_servers_own_certificate(stack, proxy,
                                                                                      proxied_kubeconfig):
    original, copy = (yaml.safe_load(Path(p).read_text()) for p in (stack.kubeconfig, proxied_kubeconfig))
    assert f"127.0.0.1:{proxy.port}" not in original["clusters"][0]["cluster"]["server"]
    cluster = copy["clusters"][0]["cluster"]
    assert cluster["server"] == f"https://127.0.0.1:{proxy.port}"
    assert not cluster.get("insecure-skip-tls-verify")
    assert cluster.get("certificate-authority") or cluster.get("certificate-authority-data")
    api = client_from(proxied_kubeconfig)
    assert api.configuration.verify_ssl
    assert any(ns.metadata.name == "default" for ns in core(api).list_namespace().items)


def follow_config_maps(api: kubernetes.client.ApiClient, namespace: str) -> list[str]:
    """Names of the ConfigMaps a watch through `api` reports, appended as they arrive (a daemon thread)."""
    seen: list[str] = []

    def follow() -> None:
        try:
            for event in kubernetes.watch.Watch().stream(core(api).list_namespaced_config_map, namespace,
                                                         timeout_seconds=120):
                seen.append(event["object"].metadata.name)
        except Exception:  # the stream ends with an error when the proxy stops; the test is over then
            pass

    threading.Thread(target=follow, daemon=True).start()
    return seen


def test_severed_connections_black_hole_while_new_ones_work(kube_client, namespace, proxy, proxied_kubeconfig):
    api = client_from(proxied_kubeconfig)
    core(api).list_namespace()
    core(api).list_namespace()
    assert proxy.open_connections == 1, "the client reuses its kept-alive connection"
    # A watch stream through the proxy, as the operator's are (its own client: a pool would hand the
    # watch the kept-alive connection above, and the request below would get a fresh one).
    severed_watch = follow_config_maps(client_from(proxied_kubeconfig), namespace)
    core(kube_client).create_namespaced_config_map(namespace, {"metadata": {"name": "before"}})
    wait_until(lambda: "before" in severed_watch, 30, "the watch to deliver a ConfigMap through the proxy")
    assert proxy.open_connections == 2

    proxy.sever()
    started = time.monotonic()
    with pytest.raises(urllib3.exceptions.ReadTimeoutError):
        core(api).list_namespace(_request_timeout=(5, 2))  # the kept-alive connection answers nothing
    assert time.monotonic() - started < 10

    # Fresh clients open fresh connections, which the proxy forwards: a request and a new watch.
    assert core(client_from(proxied_kubeconfig)).list_namespace().items
    fresh_watch = follow_config_maps(client_from(proxied_kubeconfig), namespace)
    wait_until(lambda: "before" in fresh_watch, 30, "a new watch through the proxy")
    core(kube_client).create_namespaced_config_map(namespace, {"metadata": {"name": "after"}})
    wait_until(lambda: "after" in fresh_watch, 30, "the new watch to see the next ConfigMap")
    # The API server sent the event to both watches at once; the severed one never hears of it.
    assert "after" not in severed_watch


def test_refusing_fails_new_and_open_connections_fast_until_accepted(proxy, proxied_kubeconfig):
    established = client_from(proxied_kubeconfig)
    core(established).list_namespace()

    proxy.refuse()
    for api in (established, client_from(proxied_kubeconfig)):
        started = time.monotonic()
        with pytest.raises(urllib3.exceptions.HTTPError):
            core(api).list_namespace(_request_timeout=10)
        assert time.monotonic() - started < 3, "a reset, not a timeout"

    proxy.accept()
    assert core(established).list_namespace().items
    assert core(client_from(proxied_kubeconfig)).list_namespace().items


def httproute(name: str) -> dict:
    return {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute", "metadata": {"name": name},
            "spec": {"parentRefs": [{"name": "gw"}], "rules": [{"backendRefs": [{"name": "svc", "port": 80}]}]}}


def create_route(kube_client, namespace: str, name: str) -> None:
    kubernetes.client.CustomObjectsApi(kube_client).create_namespaced_custom_object(
        "gateway.networking.k8s.io", "v1", namespace, "httproutes", httproute(name))


def test_failing_writes_answers_500_in_one_namespace_until_removed(kube_client, namespace):
    admission = kubernetes.client.AdmissionregistrationV1Api(kube_client)
    other = f"t-{uuid.uuid4().hex[:8]}"
    core(kube_client).create_namespace({"metadata": {"name": other, "labels": {"canarist.dev/test": "true"}}})
    try:
        with failing_writes(kube_client, namespace) as webhook:
            with pytest.raises(kubernetes.client.ApiException) as failed:
                create_route(kube_client, namespace, "r1")
            assert failed.value.status == 500 and "failed calling webhook" in failed.value.body
            create_route(kube_client, other, "r1")  # another namespace is unaffected
        with pytest.raises(kubernetes.client.ApiException) as gone:
            admission.read_validating_webhook_configuration(webhook)
        assert gone.value.status == 404
        create_route(kube_client, namespace, "r1")  # works again as soon as the context is left
    finally:
        core(kube_client).delete_namespace(other, propagation_policy="Background")


def test_failing_writes_on_a_subresource_and_a_core_resource(kube_client, namespace):
    apps = kubernetes.client.AppsV1Api(kube_client)
    labels = {"app": "web"}
    apps.create_namespaced_deployment(namespace, {
        "metadata": {"name": "web"},
        "spec": {"replicas": 1, "selector": {"matchLabels": labels}, "template": {
            "metadata": {"labels": labels}, "spec": {"containers": [{"name": "web", "image": "web"}]}}}})
    service = {"metadata": {"name": "web"}, "spec": {"selector": labels, "ports": [{"port": 80}]}}
    faults = ApiFaults(kube_client)
    with faults.failing_writes(namespace, [("apps", "v1", "deployments/scale"), ("", "v1", "services")]):
        with pytest.raises(kubernetes.client.ApiException) as scale:
            apps.patch_namespaced_deployment_scale("web", namespace, {"spec": {"replicas": 2}})
        with pytest.raises(kubernetes.client.ApiException) as create:
            core(kube_client).create_namespaced_service(namespace, service)
        assert scale.value.status == create.value.status == 500
        # Only the scale subresource fails: the Deployment itself can still be written.
        apps.patch_namespaced_deployment("web", namespace, {"metadata": {"labels": {"touched": "yes"}}})
    apps.patch_namespaced_deployment_scale("web", namespace, {"spec": {"replicas": 2}})
    core(kube_client).create_namespaced_service(namespace, service)
