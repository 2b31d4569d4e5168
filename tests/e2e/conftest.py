"""End-to-end fixtures: the CanaryRelease CRD, the operator process, the judge, and traffic through
the stack's gateway to pods that are processes."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from canarist.devstack.gateway_traffic import GatewayTraffic
from canarist.devstack.judge_server import JudgeServer
from canarist.devstack.scripted_llm import ScriptedLLM

from canarist.devstack.chart import install_chart, operator_kubeconfig, uninstall_chart
from .harness import Cluster, OperatorProcess

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def canarist_crd(stack):
    stack.cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f",
                          str(ROOT / "crds" / "canarist.dev_canaryreleases.yaml"))
    stack.cluster.wait_established("canaryreleases.canarist.dev")


@pytest.fixture
def cluster(kube_client, namespace, canarist_crd) -> Cluster:
    return Cluster(kube_client, namespace)


@pytest.fixture
def operator(stack, namespace, canarist_crd, tmp_path) -> Iterator[OperatorProcess]:
    """The operator as users run it: `kopf run -m canarist.handlers`, authenticated with the
    ServiceAccount token of the Helm chart installed for this namespace (never the admin's)."""
    install_chart(stack, namespace, "canarist", "--set", f"watchNamespaces={{{namespace}}}",
                  "--set", "judge.enabled=false")
    kubeconfig = operator_kubeconfig(stack, namespace, "canarist")
    proc = OperatorProcess(kubeconfig, namespace, stack.prometheus.url, tmp_path / "operator.log").start()
    yield proc
    proc.stop()
    uninstall_chart(stack, namespace, "canarist")


@pytest.fixture
def judge(tmp_path) -> Iterator[JudgeServer]:
    """The judge service as a process, scoring with a scripted OpenAI-compatible LLM server."""
    with ScriptedLLM.start(workdir=tmp_path / "llm") as llm:
        server = JudgeServer.start(tmp_path / "judge", llm.base_url, sample_rate=1.0)
        yield server
        server.stop()


@pytest.fixture
def hostname(namespace) -> str:
    """The test's own hostname at the stack's gateway (routes of other tests' namespaces may linger)."""
    return f"web.{namespace}.test"


@pytest.fixture
def pods(stack):
    """The stack's runner of pods that are processes (deployment(..., process=True))."""
    assert stack.pods is not None and stack.gateway is not None, "the stack runs without its data plane"
    return stack.pods


@pytest.fixture
def gateway_traffic(stack, pods, hostname) -> Iterator[GatewayTraffic]:
    """40 requests/s through the stack's gateway (Traefik) to the test's hostname, as users send them."""
    with GatewayTraffic(stack.gateway.url, hostname, rps=40) as driver:
        yield driver
