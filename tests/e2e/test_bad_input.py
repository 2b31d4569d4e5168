"""Bad input gets a status condition naming the field and the fix; the stable version is never touched."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator

import kubernetes
import pytest

from canarist.devstack.cluster import LocalCluster
from canarist.devstack.procs import wait_until
from canarist.devstack.stack import default_workdir

from .conftest import ROOT
from .harness import Cluster, OperatorProcess, canary_release, deployment

pytestmark = pytest.mark.cluster


def ready_condition(cluster: Cluster, name: str) -> dict | None:
    conditions = cluster.status(name).get("conditions", [])
    return next((c for c in conditions if c["type"] == "Ready"), None)


def wait_not_ready(cluster: Cluster, name: str, reason: str) -> dict:
    def found():
        cond = ready_condition(cluster, name)
        return cond if cond and cond["status"] == "False" and cond["reason"] == reason else None

    return wait_until(found, 30, f"Ready=False/{reason} on {name}")


def test_missing_target_is_reported_and_nothing_is_created(cluster, operator):
    cluster.custom.create_namespaced_custom_object("canarist.dev", "v1alpha1", cluster.namespace, "canaryreleases",
                                                   canary_release("web", "does-not-exist"))
    cond = wait_not_ready(cluster, "web", "Blocked")
    assert "spec.targetRef.name" in cond["message"] and "does-not-exist" in cond["message"]
    assert "create it or fix the name" in cond["message"]
    names = [d.metadata.name for d in cluster.apps.list_namespaced_deployment(cluster.namespace).items]
    assert "does-not-exist-primary" not in names
    assert cluster.route_weights("does-not-exist") is None
    assert operator.proc.poll() is None, "the operator keeps running"

    # Fixing the input is enough: the release initializes without being re-created.
    cluster.apps.create_namespaced_deployment(cluster.namespace, deployment("does-not-exist", "registry.test/web:v1"))
    cluster.wait_phase("web", "Idle", 60)


def test_unknown_template_variable_blocks_the_release_but_not_the_stable_version(cluster, operator):
    cluster.apps.create_namespaced_deployment(cluster.namespace, deployment("web", "registry.test/web:v1"))
    release = canary_release("web", "web")
    release["spec"]["analysis"]["metrics"][0]["prometheus"]["query"] = 'rate(x{app="{{ app }}"}[1m])'
    cluster.custom.create_namespaced_custom_object("canarist.dev", "v1alpha1", cluster.namespace, "canaryreleases",
                                                   release)
    cluster.wait_phase("web", "Idle", 60)  # the stable version is set up and serves
    cluster.set_image("web", "registry.test/web:v2")
    cond = wait_not_ready(cluster, "web", "InvalidSpec")
    assert "spec.analysis.metrics[0].prometheus.query" in cond["message"] and "{{ app }}" in cond["message"]
    time.sleep(2)
    status = cluster.status("web")
    assert status["phase"] == "Idle" and "cannot start" in status["message"]
    assert cluster.deployment("web-primary").spec.template.spec.containers[0].image == "registry.test/web:v1"
    assert cluster.route_weights("web") == (100, 0)


@pytest.fixture(scope="module")
def bare_cluster() -> Iterator[LocalCluster]:
    """A second cluster without the Gateway API CRDs, as many real clusters are."""
    name = f"canarist-nogw-{os.getpid()}"
    cluster = LocalCluster(name, default_workdir(name) / "cluster", nodes=1).start()
    try:
        cluster.kubectl("apply", "--server-side", "-f", str(ROOT / "crds" / "canarist.dev_canaryreleases.yaml"))
        cluster.wait_established("canaryreleases.canarist.dev")
        yield cluster
    finally:
        cluster.stop()


def test_missing_gateway_api_crds_are_reported_with_the_fix(bare_cluster, tmp_path):
    api = kubernetes.config.new_client_from_config(config_file=str(bare_cluster.kubeconfig))
    kubernetes.client.CoreV1Api(api).create_namespace({"metadata": {"name": "app"}})
    cluster = Cluster(api, "app")
    cluster.apps.create_namespaced_deployment("app", deployment("web", "registry.test/web:v1"))
    operator = OperatorProcess(bare_cluster.kubeconfig, "app", "http://127.0.0.1:9", tmp_path / "op.log").start()
    try:
        cluster.custom.create_namespaced_custom_object("canarist.dev", "v1alpha1", "app", "canaryreleases",
                                                       canary_release("web", "web"))
        cond = wait_not_ready(cluster, "web", "Blocked")
        assert "spec.routing.gatewayAPI" in cond["message"] and "httproutes.gateway.networking.k8s.io" in cond["message"]
        time.sleep(1)
        assert operator.proc.poll() is None, operator.log()
        # Nothing was created and the user's Deployment was not scaled down.
        names = [d.metadata.name for d in cluster.apps.list_namespaced_deployment("app").items]
        assert names == ["web"] and cluster.deployment("web").spec.replicas == 2
    finally:
        operator.stop()
