"""The chart's RBAC is sufficient: the operator, authenticated as the chart's ServiceAccount, does its job.

test_chart.py proves the RBAC is small; this proves it is enough, by running the real operator
process with the chart's identity through setup, a rollout step and the deletion of a release.
"""

from __future__ import annotations

import re
import subprocess

import pytest

from canarist.api.crd import GROUP, PLURAL, VERSION
from canarist.devstack.procs import wait_until

from canarist.devstack.chart import install_chart, operator_kubeconfig, uninstall_chart
from .harness import Cluster, OperatorProcess, canary_release, deployment

pytestmark = pytest.mark.cluster

RELEASE = "canarist"
# What kopf and the kubernetes client log when the API server says 403.
RBAC_ERRORS = re.compile(r"forbidden|Forbidden|APIForbiddenError|Not enough permissions|Unauthorized")


@pytest.fixture
def chart_release(stack, namespace, canarist_crd):
    install_chart(stack, namespace, RELEASE, "--set", f"watchNamespaces={{{namespace}}}",
                  "--set", "judge.enabled=false")
    yield RELEASE
    uninstall_chart(stack, namespace, RELEASE)


@pytest.fixture
def chart_operator(stack, namespace, chart_release, tmp_path):
    kubeconfig = operator_kubeconfig(stack, namespace, chart_release)
    proc = OperatorProcess(kubeconfig, namespace, stack.prometheus.url, tmp_path / "operator.log").start()
    yield proc
    proc.stop()


def operator_log(proc: OperatorProcess) -> str:
    return proc.log_path.read_text(errors="replace")


def rbac_errors(log: str) -> list[str]:
    return [line for line in log.splitlines() if RBAC_ERRORS.search(line)]


def test_operator_with_the_chart_identity_is_not_the_admin(stack, namespace, chart_release):
    kubeconfig = operator_kubeconfig(stack, namespace, chart_release)

    def kubectl(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([str(stack.cluster.bin_dir / "kubectl"), "--kubeconfig", str(kubeconfig), *args],
                              capture_output=True, text=True, timeout=60)

    whoami = kubectl("auth", "whoami", "-o", "jsonpath={.status.userInfo.username}")
    assert whoami.stdout == f"system:serviceaccount:{namespace}:{chart_release}", whoami.stderr
    assert kubectl("get", "canaryreleases", "-n", namespace).returncode == 0
    denied = kubectl("get", "pods", "-n", namespace)
    assert denied.returncode != 0 and "forbidden" in denied.stderr


def test_operator_with_the_chart_identity_sets_up_rolls_and_releases(stack, cluster: Cluster, chart_operator):
    try:
        cluster.apps.create_namespaced_deployment(cluster.namespace, deployment("web", "registry.test/web:v1"))
        cluster.custom.create_namespaced_custom_object(GROUP, VERSION, cluster.namespace, PLURAL,
                                                       canary_release("web", "web"))
        # Setup: status written, primary Deployment and both Services created, target scaled to zero
        # through deployments/scale, HTTPRoute created, events posted.
        cluster.wait_phase("web", "Idle", 60)
        assert cluster.deployment("web-primary").spec.template.spec.containers[0].image == "registry.test/web:v1"
        wait_until(lambda: cluster.deployment("web").spec.replicas == 0, 20, "the target scaled to zero")
        assert cluster.route_weights("web") == (100, 0)
        assert {s.metadata.name for s in cluster.core.list_namespaced_service(cluster.namespace).items} >= {
            "web-primary", "web-canary"}
        cluster.wait_events("web", {"Initialized"}, 20)

        # A new revision: the first step scales the canary up and moves 1% of the traffic (route replaced).
        cluster.set_image("web", "registry.test/web:v2")
        wait_until(lambda: cluster.route_weights("web") == (99, 1), 60, "the 1% step on the route")
        assert cluster.status("web")["phase"] == "Progressing"

        # Deletion mid-rollout: kopf's finalizer handler leaves the primary serving (the target holds
        # an unpromoted revision): route, Services and primary released from the CanaryRelease.
        cluster.custom.delete_namespaced_custom_object(GROUP, VERSION, cluster.namespace, PLURAL, "web")
        wait_until(lambda: "Handler 'release' succeeded" in operator_log(chart_operator), 60,
                   "the deletion handler to succeed")
        assert cluster.route_weights("web") == (100, 0)  # all on web-primary: never the unpromoted target
        assert not cluster.deployment("web-primary").metadata.owner_references
        assert "LeftPrimaryServing" in {e.reason for e in cluster.events("web")}
    except (AssertionError, TimeoutError) as exc:
        # A missing permission shows up as a step that never happens; say which request was denied.
        errors = rbac_errors(operator_log(chart_operator))
        raise AssertionError(f"{exc}\nRBAC errors in the operator log:\n" + "\n".join(errors[:20])) from exc

    assert chart_operator.proc.poll() is None, chart_operator.log()
    log = operator_log(chart_operator)
    assert not rbac_errors(log), "\n".join(rbac_errors(log)[:20])
