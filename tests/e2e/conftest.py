"""End-to-end fixtures: the CanaryRelease CRD, the operator process, stand-in apps and traffic."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from canarist.devstack.demoapp import DemoApp
from canarist.devstack.gateway_traffic import GatewayTraffic
from canarist.devstack.judge_server import JudgeServer
from canarist.devstack.scripted_llm import ScriptedLLM
from canarist.devstack.traffic import TrafficDriver

from canarist.devstack.chart import install_chart, operator_kubeconfig, uninstall_chart
from .harness import Cluster, OperatorProcess

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def canarist_crd(stack):
    stack.cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f",
                          str(ROOT / "crds" / "canarist.dev_canaryreleases.yaml"))
    stack.cluster.kubectl("wait", "--for=condition=Established", "crd/canaryreleases.canarist.dev", "--timeout=30s")


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


@contextmanager
def scraped_apps(stack, namespace: str, workdir: Path, **reporting) -> Iterator[dict[str, DemoApp]]:
    """Local processes standing in for web-primary (stable) and web (canary), scraped by Prometheus.
    `reporting` (judge_url, release) makes them report their answers to a judge."""
    apps = {variant: DemoApp.start("web", variant, revision, workdir=workdir / variant, seed=seed, **reporting)
            for variant, revision, seed in (("primary", "v1", 1), ("canary", "v2", 2))}
    try:
        for app in apps.values():
            stack.prometheus.add_target(app.metrics_address, {"namespace": namespace})
        yield apps
    finally:
        for app in apps.values():
            stack.prometheus.remove_target(app.metrics_address)
            app.stop()


@pytest.fixture
def apps(stack, namespace, tmp_path) -> Iterator[dict[str, DemoApp]]:
    with scraped_apps(stack, namespace, tmp_path) as running:
        yield running


@pytest.fixture
def traffic(kube_client, namespace, apps) -> Iterator[TrafficDriver]:
    driver = TrafficDriver(kube_client, namespace, "web",
                           {"web-primary": apps["primary"].url, "web-canary": apps["canary"].url}, rps=40, poll_interval=0.2)
    driver.start()
    yield driver
    driver.stop()


@pytest.fixture
def judge(tmp_path) -> Iterator[JudgeServer]:
    """The judge service as a process, scoring with a scripted OpenAI-compatible LLM server."""
    with ScriptedLLM.start(workdir=tmp_path / "llm") as llm:
        server = JudgeServer.start(tmp_path / "judge", llm.base_url, sample_rate=1.0)
        yield server
        server.stop()


@pytest.fixture
def judged_apps(stack, namespace, judge, tmp_path) -> Iterator[dict[str, DemoApp]]:
    """Stand-in apps that report every answer to the judge."""
    with scraped_apps(stack, namespace, tmp_path / "judged", judge_url=judge.url,
                      release=f"{namespace}/web") as running:
        yield running


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
