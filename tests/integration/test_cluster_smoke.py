"""The local cluster is a real Kubernetes control plane: workloads become Ready, CRDs and RBAC work."""

from __future__ import annotations

import re
import subprocess
import uuid
from pathlib import Path

import kubernetes
import pytest

from canarist.devstack.procs import wait_until

pytestmark = pytest.mark.cluster


def test_deployment_reaches_two_ready_replicas(kube_client, namespace):
    apps = kubernetes.client.AppsV1Api(kube_client)
    apps.create_namespaced_deployment(namespace, {
        "metadata": {"name": "web"},
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": {"app": "web"}},
            "template": {
                "metadata": {"labels": {"app": "web"}},
                "spec": {"containers": [{"name": "web", "image": "example.invalid/web:1"}]},
            },
        },
    })

    def ready() -> bool:
        return (apps.read_namespaced_deployment_status("web", namespace).status.ready_replicas or 0) == 2

    wait_until(ready, 60, "deployment web to have 2 ready replicas")
    pods = kubernetes.client.CoreV1Api(kube_client).list_namespaced_pod(namespace).items
    nodes = {pod.spec.node_name for pod in pods}
    assert len(pods) == 2 and None not in nodes, "the scheduler bound both pods to simulated nodes"


def test_custom_resource_round_trips_through_status_subresource(kube_client, namespace):
    group, plural = "smoke.canarist.dev", f"widgets{uuid.uuid4().hex[:6]}"
    ext = kubernetes.client.ApiextensionsV1Api(kube_client)
    ext.create_custom_resource_definition({
        "metadata": {"name": f"{plural}.{group}"},
        "spec": {
            "group": group,
            "scope": "Namespaced",
            "names": {"plural": plural, "singular": plural[:-1], "kind": f"W{plural}"},
            "versions": [{
                "name": "v1", "served": True, "storage": True,
                "subresources": {"status": {}},
                "schema": {"openAPIV3Schema": {
                    "type": "object",
                    "properties": {
                        "spec": {"type": "object", "properties": {"size": {"type": "integer", "minimum": 1}}},
                        "status": {"type": "object", "properties": {"phase": {"type": "string"}}},
                    },
                }},
            }],
        },
    })
    try:
        custom = kubernetes.client.CustomObjectsApi(kube_client)

        def established() -> bool:
            crd = ext.read_custom_resource_definition(f"{plural}.{group}")
            return any(c.type == "Established" and c.status == "True" for c in crd.status.conditions or [])

        wait_until(established, 30, "the CRD to be established")
        body = {"apiVersion": f"{group}/v1", "kind": f"W{plural}", "metadata": {"name": "w1"}, "spec": {"size": 3}}
        wait_until(lambda: custom.create_namespaced_custom_object(group, "v1", namespace, plural, body), 30,
                   "the new resource to be served")

        # A status written through the main resource is dropped; through /status it sticks.
        custom.patch_namespaced_custom_object(group, "v1", namespace, plural, "w1", {"status": {"phase": "Ignored"}})
        custom.patch_namespaced_custom_object_status(group, "v1", namespace, plural, "w1", {"status": {"phase": "Ready"}})
        obj = custom.get_namespaced_custom_object(group, "v1", namespace, plural, "w1")
        assert obj["status"] == {"phase": "Ready"}
        assert obj["spec"] == {"size": 3}

        with pytest.raises(kubernetes.client.ApiException) as invalid:
            custom.create_namespaced_custom_object(group, "v1", namespace, plural, {**body, "metadata": {"name": "w2"},
                                                                                     "spec": {"size": 0}})
        assert invalid.value.status == 422 and "spec.size" in invalid.value.body
    finally:
        ext.delete_custom_resource_definition(f"{plural}.{group}")


def test_rbac_is_enforced(stack, kube_client, namespace):
    core = kubernetes.client.CoreV1Api(kube_client)
    core.create_namespaced_service_account(namespace, {"metadata": {"name": "nobody"}})
    out = stack.cluster.kubectl("auth", "can-i", "list", "pods", "-n", namespace,
                                f"--as=system:serviceaccount:{namespace}:nobody", check=False)
    assert out.stdout.strip() == "no"
    out = stack.cluster.kubectl("auth", "can-i", "list", "pods", "-n", namespace, check=False)
    assert out.stdout.strip() == "yes"


def test_binaries_report_their_real_versions(stack):
    bin_dir = stack.cluster.bin_dir
    versions = Path(__file__).resolve().parents[2] / "hack" / "versions.env"
    k8s = re.search(r"K8S_VERSION=(\S+)", versions.read_text()).group(1)
    for name in ("kube-apiserver", "kube-controller-manager", "kube-scheduler"):
        out = subprocess.run([str(bin_dir / name), "--version"], capture_output=True, text=True, check=True).stdout
        assert out.strip() == f"Kubernetes {k8s}", (name, out)
    server = stack.cluster.kubectl("version", "-o", "json").stdout
    assert f'"gitVersion": "{k8s}"' in server


def _listening_sockets(pid: int) -> list[str]:
    """Local addresses of the TCP sockets `pid` listens on, read from /proc."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = fd.readlink().as_posix()
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    found = []
    for table in ("tcp", "tcp6"):
        for line in Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and fields[9] in inodes:  # 0A: LISTEN
                found.append(_decode_address(fields[1], table))
    return found


def _decode_address(hex_addr: str, table: str) -> str:
    host, port = hex_addr.split(":")
    if table == "tcp":
        ip = ".".join(str(int(host[i:i + 2], 16)) for i in (6, 4, 2, 0))
    else:
        ip = "::1" if host == "00000000000000000000000001000000" else f"[{host}]"
    return f"{ip}:{int(port, 16)}"


def test_everything_listens_on_loopback_only(stack):
    pids = stack.cluster.pids() + [stack.prometheus._pid]
    assert len(pids) >= 6, "etcd, apiserver, controller-manager, scheduler, kwok and prometheus all run"
    listening = {pid: _listening_sockets(pid) for pid in pids}
    assert all(listening.values()), listening
    for pid, addresses in listening.items():
        for address in addresses:
            assert address.startswith(("127.", "::1")), f"pid {pid} listens on {address}"
