"""The judge process with authentication on, against the local cluster's real TokenReview.

Workloads of two namespaces hold ServiceAccount tokens from the TokenRequest API, for the judge's
audience. The judge runs as its own ServiceAccount, bound to `system:auth-delegator` as the chart
binds it. Every refused call must leave the verdicts exactly as they were.
"""

from __future__ import annotations

import base64
import json
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import kubernetes
import pytest

from canarist.devstack.chart import serviceaccount_kubeconfig, serviceaccount_token
from canarist.devstack.identities import create_service_accounts, grant_token_review, revoke_token_review
from canarist.devstack.judge_server import JudgeServer
from canarist.devstack.scripted_llm import ScriptedLLM
from canarist.judge.reporter import JudgeReporter

pytestmark = [pytest.mark.cluster]

AUDIENCE = "canarist-judge"
WINDOW = {"since": "2020-01-01T00:00:00Z", "until": "2100-01-01T00:00:00Z"}
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


@dataclass
class Setup:
    judge: JudgeServer
    team: str      # the namespace whose workload reports
    other: str     # another team's namespace
    tokens: dict[str, str]
    sa_uid: str    # the reporting workload's ServiceAccount uid (for minted tokens)
    signing_key: Path


def call(setup: Setup, method: str, path: str, *, token: str | None = None, body=None,
         **params) -> tuple[int, dict | str]:
    url = f"http://127.0.0.1:{setup.judge.port}{path}"
    if params:
        url += "?" + urllib.parse.urlencode(params)
    headers = {"Content-Type": "application/json"} if body is not None else {}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(url, data=json.dumps(body).encode() if body is not None else None,
                                     method=method, headers=headers)
    try:
        with _OPENER.open(request, timeout=10) as response:
            raw, status = response.read().decode(), response.status
    except urllib.error.HTTPError as err:
        raw, status = err.read().decode(), err.code
    try:
        return status, json.loads(raw)
    except ValueError:
        return status, raw


def ingested(setup: Setup, release: str) -> int:
    status, verdict = call(setup, "GET", "/v1/verdict", token=setup.tokens["operator"], release=release,
                           variant="canary", **WINDOW)
    assert status == 200, verdict
    return verdict["ingested"]


def samples(release: str, n: int = 2) -> dict:
    return {"samples": [{"release": release, "variant": "canary", "request": f"What is {i} + {i}?",
                         "response": f"{i} + {i} = {2 * i}."} for i in range(n)]}


def mint(setup: Setup, exp_in: float, audience: str = AUDIENCE) -> str:
    """A ServiceAccount token for the reporting workload, signed with the cluster's own signing key
    (the API server's --service-account-signing-key-file), expiring `exp_in` seconds from now."""
    now = int(time.time())
    claims = {"iss": "https://kubernetes.default.svc.cluster.local", "aud": [audience],
              "sub": f"system:serviceaccount:{setup.team}:web", "iat": now - 7200, "nbf": now - 7200,
              "exp": now + int(exp_in),
              "kubernetes.io": {"namespace": setup.team, "serviceaccount": {"name": "web", "uid": setup.sa_uid}}}

    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).decode().rstrip("=")
    signing_input = f"{b64(json.dumps({'alg': 'RS256', 'typ': 'JWT'}).encode())}.{b64(json.dumps(claims).encode())}"
    signature = subprocess.run(["openssl", "dgst", "-sha256", "-sign", str(setup.signing_key)],
                               input=signing_input.encode(), capture_output=True, check=True).stdout
    return f"{signing_input}.{b64(signature)}"


@pytest.fixture(scope="module")
def setup(stack, kube_client, tmp_path_factory) -> Iterator[Setup]:
    core = kubernetes.client.CoreV1Api(kube_client)
    suffix = uuid.uuid4().hex[:6]
    team, other, system = f"team-{suffix}", f"other-{suffix}", f"judge-{suffix}"
    for ns in (team, other, system):
        core.create_namespace({"metadata": {"name": ns, "labels": {"canarist.dev/test": "true"}}})
    accounts = {"web": team, "intruder": other, "judge": system, "operator": system, "auditor": system}
    create_service_accounts(kube_client, accounts)
    binding = grant_token_review(kube_client, system, "judge")
    tokens = {name: serviceaccount_token(stack, ns, name, audience=AUDIENCE) for name, ns in accounts.items()}
    tokens["web-other-audience"] = serviceaccount_token(stack, team, "web")  # the API server's own audience
    kubeconfig = serviceaccount_kubeconfig(stack, system, "judge", f"{system}-judge")
    workdir = tmp_path_factory.mktemp("judge-auth")
    with ScriptedLLM.start(workdir=workdir / "llm") as llm:
        judge = JudgeServer.start(workdir / "judge", llm.base_url, extra=(
            "--auth", "kubernetes", "--kubeconfig", str(kubeconfig),
            "--readers", f"{system}/operator", "--admins", f"{system}/auditor"))
        try:
            yield Setup(judge, team, other, tokens,
                        core.read_namespaced_service_account("web", team).metadata.uid,
                        stack.cluster.service_account_signing_key)
        finally:
            judge.stop()
            print(judge.log_tail())
            revoke_token_review(kube_client, binding)
            for ns in (team, other, system):
                core.delete_namespace(ns, propagation_policy="Background")


def test_a_workload_reports_for_its_own_namespace(setup):
    before = ingested(setup, f"{setup.team}/web")
    status, body = call(setup, "POST", "/v1/samples", token=setup.tokens["web"], body=samples(f"{setup.team}/web", 3))
    assert (status, body) == (202, {"accepted": 3, "sampled": 3})
    assert ingested(setup, f"{setup.team}/web") == before + 3


@pytest.mark.parametrize("who, status", [(None, 401), ("web-other-audience", 401), ("intruder", 403),
                                         ("operator", 403), ("auditor", 403)])
def test_refused_writes_change_nothing(setup, who, status):
    release = f"{setup.team}/web"
    before = ingested(setup, release)
    got, body = call(setup, "POST", "/v1/samples", token=setup.tokens.get(who), body=samples(release))
    assert got == status, body
    assert body["error"].startswith("Authorization:" if status == 401 else "release:"), body
    assert ingested(setup, release) == before


def test_an_expired_token_is_refused_and_the_same_token_unexpired_is_not(setup):
    release = f"{setup.team}/web"
    before = ingested(setup, release)
    status, body = call(setup, "POST", "/v1/samples", token=mint(setup, exp_in=-600), body=samples(release))
    assert status == 401 and "expired" in body["error"], body
    assert ingested(setup, release) == before
    # The control: minted the same way with a future expiry, the API server accepts it.
    status, body = call(setup, "POST", "/v1/samples", token=mint(setup, exp_in=600), body=samples(release, 1))
    assert status == 202, body
    assert ingested(setup, release) == before + 1


def test_reads_and_exports_follow_the_identity(setup):
    release = f"{setup.team}/web"
    verdict = {"release": release, "variant": "canary", **WINDOW}
    assert call(setup, "GET", "/v1/verdict", token=setup.tokens["web"], **verdict)[0] == 200
    assert call(setup, "GET", "/v1/verdict", token=setup.tokens["intruder"], **verdict)[0] == 403
    assert call(setup, "GET", "/v1/verdict", **verdict)[0] == 401
    assert call(setup, "GET", "/v1/pairs", token=setup.tokens["operator"], release=release)[0] == 200
    assert call(setup, "GET", "/v1/export", token=setup.tokens["web"], release=release)[0] == 403
    assert call(setup, "GET", "/v1/export", token=setup.tokens["operator"], release=release)[0] == 403
    assert call(setup, "GET", "/v1/export", token=setup.tokens["auditor"], release=release)[0] == 200
    assert call(setup, "GET", "/healthz")[0] == 200


def test_the_reporter_sends_the_token_from_its_file(setup, tmp_path):
    release = f"{setup.team}/web"
    token_file = tmp_path / "token"
    token_file.write_text(setup.tokens["intruder"])  # first a token of the wrong namespace
    before = ingested(setup, release)
    url = f"http://127.0.0.1:{setup.judge.port}"
    with JudgeReporter(url, release=release, token_file=str(token_file), flush_interval=0.05) as reporter:
        reporter.report("What is 2 + 2?", "2 + 2 = 4.")
        assert reporter.flush(10)
        assert reporter.stats["failed"] == 1 and ingested(setup, release) == before
        time.sleep(0.01)  # a new mtime for the rotated token
        token_file.write_text(setup.tokens["web"])  # the kubelet rotated it
        reporter.report("What is 3 + 3?", "3 + 3 = 6.")
        assert reporter.flush(10)
        assert reporter.stats["sent"] == 1
    assert ingested(setup, release) == before + 1
