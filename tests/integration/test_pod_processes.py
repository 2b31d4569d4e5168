"""Pods that are processes: a Deployment's pods are local processes on their pod IPs, the real
EndpointSlice controller lists them, and readiness comes from the process, as a kubelet's would."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator

import kubernetes
import pytest
import requests

from canarist.devstack.cluster import PROCESS_ANNOTATION
from canarist.devstack.podprocs import PROCESS_RANGE, PodProcesses
from canarist.devstack.procs import wait_until
from tests.endpointslices import endpoints


@pytest.fixture
def runner(stack) -> PodProcesses:
    """The stack's own runner (one per cluster: two would both claim the annotated pods)."""
    assert stack.pods is not None, "the stack runs without its data plane"
    return stack.pods


def deployment(name: str, replicas: int) -> dict:
    labels = {"app": name}
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name},
            "spec": {"replicas": replicas, "selector": {"matchLabels": labels},
                     "template": {"metadata": {"labels": labels,
                                               "annotations": {PROCESS_ANNOTATION: "demoapp",
                                                               "devstack.canarist.dev/args": f"--name {name}"}},
                                  "spec": {"containers": [{"name": "app", "image": "registry.test/web:v1",
                                                           "ports": [{"containerPort": 8080}]}]}}}}


def test_a_deployments_pods_are_processes_on_their_ips_and_readiness_is_theirs(kube_client, namespace, runner):
    apps = kubernetes.client.AppsV1Api(kube_client)
    core = kubernetes.client.CoreV1Api(kube_client)
    apps.create_namespaced_deployment(namespace, deployment("web", 2))
    core.create_namespaced_service(namespace, {"metadata": {"name": "web"}, "spec": {
        "selector": {"app": "web"}, "ports": [{"port": 80, "targetPort": 8080}]}})

    ready = wait_until(lambda: (e := endpoints(kube_client, namespace, "web")) and len(e) == 2 and all(e.values())
                       and e, 60, "two ready endpoints")
    pods = {p.status.pod_ip: p for p in core.list_namespaced_pod(namespace, label_selector="app=web").items}
    assert set(ready) == set(pods), (ready, list(pods))
    for ip in ready:
        assert ipaddress_in_range(ip)
        assert requests.get(f"http://{ip}:8080/healthz", timeout=2).status_code == 200
        answer = requests.get(f"http://{ip}:8080/answer", params={"q": "hi"}, timeout=2)
        assert answer.status_code == 200

    # A process that stops answering: its pod turns unready and leaves the Service's ready endpoints.
    frozen_ip, frozen_pod = next(iter(pods.items()))
    process = runner.find(namespace, frozen_pod.metadata.name)
    assert process is not None and process.proc is not None
    os.killpg(process.proc.pid, signal.SIGSTOP)
    wait_until(lambda: endpoints(kube_client, namespace, "web").get(frozen_ip) is False, 30,
               "the frozen pod unready in the EndpointSlice")
    os.killpg(process.proc.pid, signal.SIGCONT)
    wait_until(lambda: endpoints(kube_client, namespace, "web").get(frozen_ip) is True, 30, "ready again")

    # One that exits is restarted, as a kubelet would, and counted.
    process.proc.kill()
    wait_until(lambda: (s := core.read_namespaced_pod(frozen_pod.metadata.name, namespace).status)
               and s.container_statuses[0].restart_count == 1 and s.container_statuses[0].ready, 30,
               "the restarted process ready")

    # Scaled down: the removed pod's process ends and the pod is gone.
    apps.patch_namespaced_deployment_scale("web", namespace, {"spec": {"replicas": 1}})
    wait_until(lambda: len(core.list_namespaced_pod(namespace, label_selector="app=web").items) == 1, 30,
               "one pod left")
    wait_until(lambda: sum(p.namespace == namespace for p in list(runner.pods.values())) == 1, 10,
               "one process left")


def ipaddress_in_range(ip: str) -> bool:
    import ipaddress

    return ipaddress.ip_address(ip) in PROCESS_RANGE
