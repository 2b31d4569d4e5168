"""A rollout judged by a judge with authentication on, every party with its ServiceAccount token.

The app's pods (processes on their pod IPs) report their answers with a token of their own
namespace read from the file their Deployment names, as a projected volume would hold it; the
operator reads verdicts with its own token, as the chart's Deployment mounts it; the judge
verifies both with the local cluster's TokenReview.
"""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Iterator

import pytest

from canarist.devstack.chart import (
    install_chart, operator_service_account, serviceaccount_kubeconfig, serviceaccount_token, uninstall_chart,
)
from canarist.devstack.gateway_traffic import GatewayTraffic
from canarist.devstack.identities import create_service_accounts, grant_token_review, revoke_token_review
from canarist.devstack.judge_server import JudgeServer
from canarist.devstack.operator_process import OperatorProcess
from canarist.devstack.scripted_llm import ScriptedLLM
from canarist.devstack.traffic import arithmetic_questions

from .harness import canary_release, deployment

pytestmark = [pytest.mark.cluster, pytest.mark.prometheus]

AUDIENCE = "canarist-judge"


@pytest.fixture
def authenticated(stack, kube_client, namespace, canarist_crd, tmp_path) -> Iterator[dict]:
    """The judge (auth on) and the operator (with its judge token), both by their ServiceAccounts."""
    create_service_accounts(kube_client, {"judge": namespace, "web": namespace})
    binding = grant_token_review(kube_client, namespace, "judge")
    install_chart(stack, namespace, "canarist", "--set", f"watchNamespaces={{{namespace}}}",
                  "--set", "judge.enabled=false")
    operator_sa = operator_service_account(stack, namespace, "canarist")
    with ScriptedLLM.start(workdir=tmp_path / "llm") as llm:
        judge = JudgeServer.start(tmp_path / "judge", llm.base_url, sample_rate=1.0, extra=(
            "--auth", "kubernetes", "--kubeconfig", str(serviceaccount_kubeconfig(stack, namespace, "judge", f"{namespace}-judge")),
            "--readers", f"{namespace}/{operator_sa}"))
        tokens = tmp_path / "tokens"
        tokens.mkdir()
        for sa in (operator_sa, "web"):
            (tokens / sa).write_text(serviceaccount_token(stack, namespace, sa, audience=AUDIENCE))
        operator = OperatorProcess(
            serviceaccount_kubeconfig(stack, namespace, operator_sa, f"{namespace}-operator"), namespace,
            stack.prometheus.url, tmp_path / "operator.log",
            env={"CANARIST_JUDGE_TOKEN_FILE": str(tokens / operator_sa), "CANARIST_JUDGE_TRUSTED_URLS": judge.url},
        ).start()
        try:
            yield {"judge": judge, "web_token_file": str(tokens / "web"), "operator_token": (tokens / operator_sa).read_text()}
        finally:
            operator.stop()
            judge.stop()
            print(operator.log()[-3000:])
            print(judge.log_tail())
            uninstall_chart(stack, namespace, "canarist")
            revoke_token_review(kube_client, binding)


def verdict(judge: JudgeServer, release: str, token: str) -> dict:
    url = f"{judge.url}/v1/verdict?release={release}&variant=canary&since=2020-01-01T00:00:00Z"
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
    with urllib.request.build_opener(urllib.request.ProxyHandler({})).open(request, timeout=10) as response:
        return json.loads(response.read())


def test_a_rollout_is_judged_with_every_caller_authenticated(stack, cluster, pods, hostname, authenticated):
    judge = authenticated["judge"]
    reporting = f"--judge-url {judge.url} --release {cluster.namespace}/web"
    body = deployment("web", "registry.test/web:v1", process=True, args=reporting)
    body["spec"]["template"]["spec"]["containers"][0]["env"] = [
        {"name": "CANARIST_JUDGE_TOKEN_FILE", "value": authenticated["web_token_file"]}]
    cluster.apps.create_namespaced_deployment(cluster.namespace, body)
    release = canary_release("web", "web", hostname=hostname, failureLimit=0)
    release["spec"]["steps"] = [20, 100]
    release["spec"]["analysis"]["judge"] = {"url": judge.url, "minScore": 0.8, "minSamples": 8, "timeout": "2s"}
    cluster.custom.create_namespaced_custom_object("canarist.dev", "v1alpha1", cluster.namespace, "canaryreleases",
                                                   release)
    cluster.wait_phase("web", "Idle", 60)
    with GatewayTraffic(stack.gateway.url, hostname, rps=30, questions=arithmetic_questions(40)):
        cluster.set_image("web", "registry.test/web:v2", args=reporting)
        status = cluster.wait_phase("web", {"RolledBack", "Succeeded"}, 150)
    assert status["phase"] == "Succeeded", status
    checks = {c["name"]: c for c in status["lastChecks"]}
    assert checks["judge-score"]["result"] == "Passed" and checks["judge-score"]["value"] >= 0.8
    seen = verdict(judge, f"{cluster.namespace}/web", authenticated["operator_token"])
    print(f"judged with authentication on: {seen['judged']} canary samples, mean score {seen['meanScore']}")
    assert seen["judged"] >= 8
