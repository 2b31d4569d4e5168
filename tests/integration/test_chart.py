"""The Helm chart (charts/canarist): lint, rendering, schema, CRD copy, and a least-privilege install.

That the RBAC is also *sufficient* is proven in tests/e2e/test_chart_identity.py, which runs the
operator with the chart's ServiceAccount.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import uuid
from pathlib import Path

import pytest
import yaml

from canarist.devstack.binaries import ensure_binaries
from canarist.devstack.procs import wait_until
from canarist.devstack.binaries import REPO_ROOT as ROOT
from canarist.devstack.chart import CHART, helm, install_chart, operator_service_account, uninstall_chart

REPO_CRD = ROOT / "crds" / "canarist.dev_canaryreleases.yaml"
CHART_CRD = CHART / "crds" / "canarist.dev_canaryreleases.yaml"
RELEASE = "canarist"

# The operator's API calls, and nothing else (see charts/canarist/templates/_helpers.tpl for why each).
OPERATOR_RULES: dict[tuple[str, str], set[str]] = {
    ("canarist.dev", "canaryreleases"): {"get", "list", "watch", "patch", "update"},
    ("canarist.dev", "canaryreleases/status"): {"get", "update", "patch"},
    ("canarist.dev", "canaryreleases/finalizers"): {"update"},
    ("apps", "deployments"): {"get", "list", "watch", "create", "update", "patch"},
    ("apps", "deployments/scale"): {"get", "update", "patch"},
    ("", "services"): {"get", "list", "watch", "create", "update", "patch"},
    # Tracked configuration: watched, and the primary's <name>-primary copies written.
    ("", "configmaps"): {"get", "list", "watch", "create", "update", "patch", "delete"},
    ("", "secrets"): {"get", "list", "watch", "create", "update", "patch", "delete"},
    ("", "events"): {"create", "patch"},
    ("events.k8s.io", "events"): {"create", "patch"},
    ("gateway.networking.k8s.io", "httproutes"): {"get", "list", "watch", "create", "update", "patch", "delete"},
    ("autoscaling", "horizontalpodautoscalers"): {"get", "list", "watch", "create", "update", "delete"},
}
# Read-only and cluster-wide, for kopf's own observation of the cluster (rbac.discovery).
DISCOVERY_RULES_ALL_NAMESPACES = {("apiextensions.k8s.io", "customresourcedefinitions"): {"list", "watch"},
                                  # the shadow phase checks that the route's Gateway can mirror
                                  ("gateway.networking.k8s.io", "gateways"): {"get"},
                                  ("gateway.networking.k8s.io", "gatewayclasses"): {"get"}}
DISCOVERY_RULES_WATCH_NAMESPACES = {**DISCOVERY_RULES_ALL_NAMESPACES, ("", "namespaces"): {"list", "watch"}}

# What the operator must never be able to do, in any namespace it manages.
FORBIDDEN_IN_WATCHED = [
    ("delete", "deployments.apps", None), ("deletecollection", "deployments.apps", None),
    ("delete", "services", None), ("create", "canaryreleases.canarist.dev", None),
    ("delete", "canaryreleases.canarist.dev", None), ("get", "pods", None),
    ("create", "pods", None), ("create", "roles.rbac.authorization.k8s.io", None),
    ("create", "rolebindings.rbac.authorization.k8s.io", None), ("create", "serviceaccounts", None),
    ("get", "deployments.apps", "status"),  # no subresource beyond scale
    ("update", "canaryreleases.canarist.dev", "scale"),
]


# -- helpers -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def helm_bin() -> list[str]:
    """helm for offline commands (lint, template): no cluster needed, so no stack is started."""
    return [str(ensure_binaries() / "helm")]


def offline_helm(helm_bin: list[str], tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "HELM_CACHE_HOME": str(tmp_path / "helm-cache"),
           "HELM_CONFIG_HOME": str(tmp_path / "helm-config"), "HELM_DATA_HOME": str(tmp_path / "helm-data")}
    return subprocess.run([*helm_bin, *args], capture_output=True, text=True, env=env, timeout=120)


def render(helm_bin, tmp_path, *values: str, namespace: str = "canarist-system") -> list[dict]:
    result = offline_helm(helm_bin, tmp_path, "template", RELEASE, str(CHART), "--namespace", namespace, *values)
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def of_kind(docs: list[dict], kind: str) -> list[dict]:
    return [d for d in docs if d["kind"] == kind]


def one(docs: list[dict], kind: str, name: str) -> dict:
    found = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    present = [(d["kind"], d["metadata"]["name"]) for d in docs]
    assert len(found) == 1, f"{kind} {name}: {len(found)} found among {present}"
    return found[0]


def component(docs: list[dict], kind: str, name: str) -> list[dict]:
    return [d for d in of_kind(docs, kind)
            if d["metadata"].get("labels", {}).get("app.kubernetes.io/component") == name]


def rules_of(role: dict) -> dict[tuple[str, str], set[str]]:
    """A (Cluster)Role's rules as {(apiGroup, resource): verbs}; wildcards and resourceNames fail."""
    rules: dict[tuple[str, str], set[str]] = {}
    for rule in role["rules"]:
        assert "nonResourceURLs" not in rule and "resourceNames" not in rule, rule
        for field in ("apiGroups", "resources", "verbs"):
            assert "*" not in rule[field], f"wildcard in {role['metadata']['name']}: {rule}"
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                rules.setdefault((group, resource), set()).update(rule["verbs"])
    return rules


def container(deployment: dict) -> dict:
    containers = deployment["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return containers[0]


def env_of(c: dict) -> dict[str, dict]:
    return {e["name"]: e for e in c.get("env", [])}


def assert_hardened(deployment: dict) -> None:
    pod = deployment["spec"]["template"]["spec"]
    c = container(deployment)
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    sc = c["securityContext"]
    assert sc["runAsNonRoot"] is True and sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert sc["seccompProfile"] == {"type": "RuntimeDefault"}
    assert c["resources"]["requests"] and c["resources"]["limits"]["memory"]


# -- offline: lint, template, schema, CRD ----------------------------------------------------------


def test_helm_lint(helm_bin, tmp_path):
    for values in ([], ["--set", "watchNamespaces={a,b}", "--set", "judge.enabled=false"],
                   ["--set", "judge.llm.apiKeySecret.name=llm-key", "--set", "judge.persistence.enabled=false"]):
        result = offline_helm(helm_bin, tmp_path, "lint", "--strict", str(CHART), *values)
        assert result.returncode == 0, result.stdout + result.stderr
        assert "0 chart(s) failed" in result.stdout


def test_chart_crd_is_a_copy_of_the_generated_crd():
    # crds/ is generated from the pydantic models; the chart ships a copy that must not drift.
    assert CHART_CRD.read_bytes() == REPO_CRD.read_bytes(), (
        f"{CHART_CRD.relative_to(ROOT)} differs from {REPO_CRD.relative_to(ROOT)}: "
        f"cp {REPO_CRD.relative_to(ROOT)} {CHART_CRD.relative_to(ROOT)}")
    assert [p.name for p in CHART_CRD.parent.iterdir()] == [CHART_CRD.name]


def test_template_defaults_watch_all_namespaces(helm_bin, tmp_path):
    docs = render(helm_bin, tmp_path)
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())

    operator = one(docs, "Deployment", "canarist")
    spec = operator["spec"]
    # Two replicas: one leads (the Lease), one stands by (test_template_operator_replicas_leader_election_and_pdb).
    assert spec["replicas"] == 2 and spec["strategy"]["type"] == "RollingUpdate"
    pod = spec["template"]["spec"]
    c = container(operator)
    assert c["image"] == f"ghcr.io/canarist/canarist:{chart['appVersion']}"
    assert c["command"] == ["kopf", "run", "-m", "canarist.handlers", "--standalone",
                            "--liveness=http://0.0.0.0:8080/healthz", "--all-namespaces"]
    env = env_of(c)
    assert env["CANARIST_PROMETHEUS_URL"]["value"] == "http://prometheus-operated.monitoring:9090"
    assert env["CANARIST_TICK_SECONDS"]["value"] == "30"
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "health"}
    assert {p["name"]: p["containerPort"] for p in c["ports"]} == {"health": 8080, "metrics": 8081}
    assert_hardened(operator)
    assert pod["serviceAccountName"] == "canarist"
    one(docs, "ServiceAccount", "canarist")

    cluster_role = one(docs, "ClusterRole", "canarist-canarist-system")
    assert rules_of(cluster_role) == OPERATOR_RULES
    binding = one(docs, "ClusterRoleBinding", "canarist-canarist-system")
    assert binding["roleRef"]["name"] == "canarist-canarist-system"
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "canarist", "namespace": "canarist-system"}]
    discovery = one(docs, "ClusterRole", "canarist-canarist-system-discovery")
    assert rules_of(discovery) == DISCOVERY_RULES_ALL_NAMESPACES
    # The only namespaced Role is the leader election's, on Leases of the release namespace.
    assert [r["metadata"]["name"] for r in of_kind(docs, "Role")] == ["canarist-leader-election"]
    assert [b["metadata"]["name"] for b in of_kind(docs, "RoleBinding")] == ["canarist-leader-election"]

    # The judge, on by default, with its own identity that may only review tokens.
    judge = one(docs, "Deployment", "canarist-judge")
    jc = container(judge)
    assert jc["command"][:7] == ["canarist", "judge", "serve", "--listen", "0.0.0.0:8080", "--db", "/data/judge.db"]
    args = jc["command"]
    for flag in ("--sample-rate", "--llm-base-url", "--llm-model"):
        assert args[args.index(flag) + 1]
    assert "--llm-api-key-env" not in args  # no Secret named: no key
    assert_hardened(judge)
    jpod = judge["spec"]["template"]["spec"]
    # Its token is mounted only for TokenReview (auth.mode kubernetes, the default).
    assert jpod["serviceAccountName"] == "canarist-judge" and jpod["automountServiceAccountToken"] is True
    assert one(docs, "ServiceAccount", "canarist-judge")["automountServiceAccountToken"] is False
    service = one(docs, "Service", "canarist-judge")
    assert [(p["port"], p["targetPort"]) for p in service["spec"]["ports"]] == [(8080, "http")]
    assert service["spec"]["selector"] == judge["spec"]["selector"]["matchLabels"]
    pvc = one(docs, "PersistentVolumeClaim", "canarist-judge-data")
    volumes = {v["name"]: v for v in jpod["volumes"]}
    assert volumes["data"]["persistentVolumeClaim"]["claimName"] == pvc["metadata"]["name"]
    # The judge is bound to system:auth-delegator (TokenReview) and nothing else; no Secret at all.
    bound = [b["roleRef"]["name"] for b in of_kind(docs, "ClusterRoleBinding") + of_kind(docs, "RoleBinding")
             if any(s["name"] == "canarist-judge" for s in b["subjects"])]
    assert bound == ["system:auth-delegator"]
    assert not of_kind(docs, "Secret")


def test_template_judge_retention_and_postgresql_replicas(helm_bin, tmp_path):
    args = container(one(render(helm_bin, tmp_path), "Deployment", "canarist-judge"))["command"]
    assert args[args.index("--retention") + 1] == "14d" and args[args.index("--db") + 1] == "/data/judge.db"
    # Token budgets by default: per release and for every release together over a day.
    assert args[args.index("--token-budget") + 1] == "2000000"
    assert args[args.index("--global-token-budget") + 1] == "20000000"
    unlimited = container(one(render(helm_bin, tmp_path, "--set", "judge.tokenBudget.perRelease=null",
                                     "--set", "judge.tokenBudget.global24h=50000000"),
                              "Deployment", "canarist-judge"))["command"]
    assert "--token-budget" not in unlimited
    assert unlimited[unlimited.index("--global-token-budget") + 1] == "50000000"

    docs = render(helm_bin, tmp_path, "--set", "judge.database.url=postgresql://judge@pg.db:5432/judge",
                  "--set", "judge.database.passwordSecret.name=judge-db", "--set", "judge.replicas=2",
                  "--set", "judge.retention=7d")
    judge = one(docs, "Deployment", "canarist-judge")
    jc = container(judge)
    assert judge["spec"]["replicas"] == 2 and "strategy" not in judge["spec"]
    assert jc["command"][jc["command"].index("--db") + 1] == "postgresql://judge@pg.db:5432/judge"
    assert jc["command"][jc["command"].index("--retention") + 1] == "7d"
    assert env_of(jc)["PGPASSWORD"]["valueFrom"] == {"secretKeyRef": {"name": "judge-db", "key": "password"}}
    assert not of_kind(docs, "PersistentVolumeClaim")

    refused = offline_helm(helm_bin, tmp_path, "template", RELEASE, str(CHART), "--set", "judge.replicas=2")
    assert refused.returncode != 0 and "judge.replicas" in refused.stderr and "judge.database.url" in refused.stderr


def test_template_judge_authentication_is_wired_end_to_end(helm_bin, tmp_path):
    docs = render(helm_bin, tmp_path, "--set", "judge.auth.readers={sre/dashboards,group:auditors}",
                  "--set", "judge.auth.admins={sre/eval-export}")
    args = container(one(docs, "Deployment", "canarist-judge"))["command"]
    assert args[args.index("--auth") + 1] == "kubernetes"
    assert args[args.index("--auth-audience") + 1] == "canarist-judge"
    assert args[args.index("--readers") + 1] == "canarist-system/canarist,sre/dashboards,group:auditors"
    assert args[args.index("--admins") + 1] == "sre/eval-export"
    binding = one(docs, "ClusterRoleBinding", "canarist-judge-canarist-system-tokenreview")
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                                  "name": "system:auth-delegator"}
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "canarist-judge",
                                    "namespace": "canarist-system"}]
    policy = one(docs, "NetworkPolicy", "canarist-judge")["spec"]
    assert policy["policyTypes"] == ["Ingress"]
    assert policy["podSelector"]["matchLabels"] == one(docs, "Deployment", "canarist-judge")["spec"]["selector"]["matchLabels"]
    assert policy["ingress"] == [{"ports": [{"port": "http", "protocol": "TCP"}], "from": [{"namespaceSelector": {}}]}]
    # The operator: a token for the judge's audience only, sent only to this chart's judge.
    operator = one(docs, "Deployment", "canarist")
    env = env_of(container(operator))
    assert env["CANARIST_JUDGE_TOKEN_FILE"]["value"] == "/var/run/secrets/canarist.dev/judge/token"
    assert env["CANARIST_JUDGE_TRUSTED_URLS"]["value"].split(",") == [
        "http://canarist-judge.canarist-system:8080", "http://canarist-judge.canarist-system.svc:8080",
        "http://canarist-judge.canarist-system.svc.cluster.local:8080"]
    volumes = {v["name"]: v for v in operator["spec"]["template"]["spec"]["volumes"]}
    assert volumes["judge-token"]["projected"]["sources"] == [
        {"serviceAccountToken": {"audience": "canarist-judge", "expirationSeconds": 3600, "path": "token"}}]
    mounts = {m["name"]: m for m in container(operator)["volumeMounts"]}
    assert mounts["judge-token"] == {"name": "judge-token", "mountPath": "/var/run/secrets/canarist.dev/judge",
                                     "readOnly": True}

    plain = render(helm_bin, tmp_path, "--set", "judge.auth.mode=none", "--set", "judge.networkPolicy.enabled=false")
    args = container(one(plain, "Deployment", "canarist-judge"))["command"]
    assert args[args.index("--auth") + 1] == "none" and "--readers" not in args
    assert one(plain, "Deployment", "canarist-judge")["spec"]["template"]["spec"]["automountServiceAccountToken"] is False
    assert not of_kind(plain, "NetworkPolicy")
    assert not [b for b in of_kind(plain, "ClusterRoleBinding") if b["subjects"][0]["name"] == "canarist-judge"]
    assert "CANARIST_JUDGE_TOKEN_FILE" not in env_of(container(one(plain, "Deployment", "canarist")))


def test_without_secret_tracking_the_operator_gets_no_access_to_secrets(helm_bin, tmp_path):
    docs = render(helm_bin, tmp_path, "--set", "trackSecrets=false", "--set", "judge.enabled=false")
    rules = rules_of(one(docs, "ClusterRole", "canarist-canarist-system"))
    assert ("", "secrets") not in rules and rules[("", "configmaps")] == OPERATOR_RULES[("", "configmaps")]
    assert env_of(container(one(docs, "Deployment", "canarist")))["CANARIST_TRACK_SECRETS"]["value"] == "false"


def test_template_watch_namespaces_gives_roles_in_each_and_no_cluster_role(helm_bin, tmp_path):
    docs = render(helm_bin, tmp_path, "--set", "watchNamespaces={a,b}", "--set", "judge.enabled=false")
    c = container(one(docs, "Deployment", "canarist"))
    assert c["command"][-2:] == ["--namespace=a", "--namespace=b"] and "--all-namespaces" not in c["command"]

    roles = [r for r in of_kind(docs, "Role") if r["metadata"]["name"] != "canarist-leader-election"]
    assert sorted(r["metadata"]["namespace"] for r in roles) == ["a", "b"]
    for role in roles:
        assert rules_of(role) == OPERATOR_RULES
    bindings = [b for b in of_kind(docs, "RoleBinding") if b["metadata"]["name"] != "canarist-leader-election"]
    assert sorted(b["metadata"]["namespace"] for b in bindings) == ["a", "b"]
    for b in bindings:
        assert b["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "canarist"}
        assert b["subjects"] == [{"kind": "ServiceAccount", "name": "canarist", "namespace": "canarist-system"}]

    # Nothing cluster-wide about workloads: the only ClusterRole is kopf's read-only discovery.
    cluster_roles = of_kind(docs, "ClusterRole")
    assert [r["metadata"]["name"] for r in cluster_roles] == ["canarist-canarist-system-discovery"]
    assert rules_of(cluster_roles[0]) == DISCOVERY_RULES_WATCH_NAMESPACES

    # With rbac.discovery=false the release has no cluster-scoped object at all.
    docs = render(helm_bin, tmp_path, "--set", "watchNamespaces={a,b}", "--set", "judge.enabled=false",
                  "--set", "rbac.discovery=false")
    assert not of_kind(docs, "ClusterRole") and not of_kind(docs, "ClusterRoleBinding")
    assert len(of_kind(docs, "Role")) == 3  # a, b and the leader election's in the release namespace


def test_template_judge_disabled(helm_bin, tmp_path):
    docs = render(helm_bin, tmp_path, "--set", "judge.enabled=false")
    assert not component(docs, "Deployment", "judge") and not of_kind(docs, "Service")
    assert not of_kind(docs, "PersistentVolumeClaim")
    assert [sa["metadata"]["name"] for sa in of_kind(docs, "ServiceAccount")] == ["canarist"]


def test_template_judge_key_from_an_existing_secret_and_emptydir(helm_bin, tmp_path):
    docs = render(helm_bin, tmp_path, "--set", "judge.llm.apiKeySecret.name=llm-key",
                  "--set", "judge.persistence.enabled=false", "--set", "judge.sampleRate=0.25",
                  "--set", "judge.llm.model=gpt-4o-mini", "--set", "tickSeconds=0.5")
    jc = container(one(docs, "Deployment", "canarist-judge"))
    args = jc["command"]
    assert args[args.index("--llm-api-key-env") + 1] == "CANARIST_JUDGE_LLM_API_KEY"
    assert args[args.index("--sample-rate") + 1] == "0.25"
    assert args[args.index("--llm-model") + 1] == "gpt-4o-mini"
    assert env_of(jc)["CANARIST_JUDGE_LLM_API_KEY"]["valueFrom"] == {
        "secretKeyRef": {"name": "llm-key", "key": "api-key"}}
    volumes = {v["name"]: v for v in one(docs, "Deployment", "canarist-judge")["spec"]["template"]["spec"]["volumes"]}
    assert volumes["data"] == {"name": "data", "emptyDir": {}}
    assert not of_kind(docs, "PersistentVolumeClaim") and not of_kind(docs, "Secret")
    assert env_of(container(one(docs, "Deployment", "canarist")))["CANARIST_TICK_SECONDS"]["value"] == "0.5"


def test_template_operator_replicas_leader_election_and_pdb(helm_bin, tmp_path):
    docs = render(helm_bin, tmp_path)
    operator = one(docs, "Deployment", "canarist")
    assert operator["spec"]["replicas"] == 2
    assert operator["spec"]["strategy"] == {"type": "RollingUpdate",
                                            "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}}
    env = env_of(container(operator))
    assert env["CANARIST_LEADER_ELECTION"]["value"] == "true"
    assert env["CANARIST_LEASE_NAME"]["value"] == "canarist-operator"
    assert env["POD_NAME"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    assert env["POD_NAMESPACE"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.namespace"}}
    # Leases of the release namespace only: get, create, update, for the operator's ServiceAccount.
    role = one(docs, "Role", "canarist-leader-election")
    assert role["metadata"]["namespace"] == "canarist-system"
    assert rules_of(role) == {("coordination.k8s.io", "leases"): {"get", "create", "update"}}
    binding = one(docs, "RoleBinding", "canarist-leader-election")
    assert binding["metadata"]["namespace"] == "canarist-system"
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                                  "name": "canarist-leader-election"}
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "canarist", "namespace": "canarist-system"}]
    # No other rule anywhere mentions Leases.
    for r in of_kind(docs, "ClusterRole") + of_kind(docs, "Role"):
        if r is not role:
            assert ("coordination.k8s.io", "leases") not in rules_of(r), r["metadata"]["name"]
    # A drain never takes the last replica.
    pdb = one(docs, "PodDisruptionBudget", "canarist")
    assert pdb["spec"]["minAvailable"] == 1
    assert pdb["spec"]["selector"]["matchLabels"] == operator["spec"]["selector"]["matchLabels"]
    assert pdb["spec"]["selector"]["matchLabels"]["app.kubernetes.io/component"] == "operator"

    # One replica without leader election: as before (Recreate, no Lease, no PDB).
    docs = render(helm_bin, tmp_path, "--set", "operator.replicas=1", "--set", "operator.leaderElection.enabled=false")
    operator = one(docs, "Deployment", "canarist")
    assert operator["spec"]["replicas"] == 1 and operator["spec"]["strategy"] == {"type": "Recreate"}
    assert "CANARIST_LEADER_ELECTION" not in env_of(container(operator))
    assert not of_kind(docs, "PodDisruptionBudget") and not of_kind(docs, "Role")
    # One replica with leader election (a restarted pod waits for the old lease): no PDB.
    docs = render(helm_bin, tmp_path, "--set", "operator.replicas=1")
    assert not of_kind(docs, "PodDisruptionBudget") and one(docs, "Role", "canarist-leader-election")
    docs = render(helm_bin, tmp_path, "--set", "operator.replicas=3", "--set", "operator.leaderElection.leaseName=ops")
    assert one(docs, "Deployment", "canarist")["spec"]["replicas"] == 3
    assert env_of(container(one(docs, "Deployment", "canarist")))["CANARIST_LEASE_NAME"]["value"] == "ops"
    assert one(docs, "PodDisruptionBudget", "canarist")["spec"]["minAvailable"] == 1


def test_several_replicas_without_leader_election_are_refused(helm_bin, tmp_path):
    result = offline_helm(helm_bin, tmp_path, "template", RELEASE, str(CHART), "--set", "operator.replicas=2",
                          "--set", "operator.leaderElection.enabled=false")
    assert result.returncode != 0 and "operator.replicas > 1 needs operator.leaderElection.enabled" in result.stderr


@pytest.mark.parametrize(("values", "field"), [
    ('tickSeconds: "fast"', "/tickSeconds"),
    ("tickSeconds: 0", "/tickSeconds"),
    ("image: {repository: 3}", "/image/repository"),
    ("watchNamespaces: [Team_A]", "/watchNamespaces/0"),
    ("watchNamespaces: team-a", "/watchNamespaces"),
    ("judge: {sampleRate: 1.5}", "/judge/sampleRate"),
    ("judge: {auth: {mode: basic}}", "/judge/auth/mode"),
    ("judge: {database: {url: mysql://db}}", "/judge/database/url"),
    ("judge: {retention: two weeks}", "/judge/retention"),
    ("judge: {tokenBudget: {perRelease: 0}}", "/judge/tokenBudget/perRelease"),
    ("judge: {tokenBudget: {global: 5}}", "/judge/tokenBudget"),
    ("judge: {auth: {admins: [\"a, b\"]}}", "/judge/auth/admins/0"),
    ("judge: {llm: {baseUrl: ollama:11434}}", "/judge/llm/baseUrl"),
    ("prometheus: {url: 9090}", "/prometheus/url"),
    ("tickSecond: 5", "tickSecond"),  # a typo is not silently ignored
    ("operator: {replicas: 0}", "/operator/replicas"),
    ("operator: {leaderElection: {enabled: yes-please}}", "/operator/leaderElection/enabled"),
    ("operator: {leaderElection: {leaseName: Not_A_Name}}", "/operator/leaderElection/leaseName"),
])
def test_bad_values_are_rejected_naming_the_field(helm_bin, tmp_path, values, field):
    values_file = tmp_path / "bad.yaml"
    values_file.write_text(values + "\n")
    result = offline_helm(helm_bin, tmp_path, "template", RELEASE, str(CHART), "-f", str(values_file))
    assert result.returncode != 0, result.stdout
    assert "values don't meet the specifications of the schema" in result.stderr
    assert field in result.stderr, result.stderr


# -- against the real cluster ------------------------------------------------------------------------


def can_i(stack, sa: str, verb: str, resource: str, namespace: str | None,
          subresource: str | None = None) -> bool:
    args = ["auth", "can-i", verb, resource, f"--as={sa}"]
    args += ["-n", namespace] if namespace else []
    args += [f"--subresource={subresource}"] if subresource else []
    result = stack.cluster.kubectl(*args, check=False)
    answer = result.stdout.strip()
    assert answer in ("yes", "no"), f"kubectl {' '.join(args)}: {result.stdout}{result.stderr}"
    return answer == "yes"


def as_resource(group: str, resource: str) -> tuple[str, str | None]:
    """("apps", "deployments/scale") -> ("deployments.apps", "scale") for `kubectl auth can-i`."""
    name, _, sub = resource.partition("/")
    return (f"{name}.{group}" if group else name), (sub or None)


def assert_operator_can(stack, sa: str, namespace: str | None) -> None:
    denied = []
    for (group, resource), verbs in OPERATOR_RULES.items():
        kind, sub = as_resource(group, resource)
        denied += [f"{verb} {resource}" for verb in sorted(verbs) if not can_i(stack, sa, verb, kind, namespace, sub)]
    assert not denied, f"{sa} lacks in {namespace}: {denied}"


def assert_operator_cannot_in(stack, sa: str, namespace: str) -> None:
    allowed = [f"{verb} {kind}{'/' + sub if sub else ''}" for verb, kind, sub in FORBIDDEN_IN_WATCHED
               if can_i(stack, sa, verb, kind, namespace, sub)]
    assert not allowed, f"{sa} may in {namespace}: {allowed}"


def assert_cannot_touch(stack, sa: str, namespace: str) -> None:
    """Not one of the operator's rules holds in `namespace`."""
    allowed = []
    for (group, resource), verbs in OPERATOR_RULES.items():
        kind, sub = as_resource(group, resource)
        allowed += [f"{verb} {resource}" for verb in sorted(verbs) if can_i(stack, sa, verb, kind, namespace, sub)]
    assert not allowed, f"{sa} may in {namespace}: {allowed}"


def assert_cluster_wide_denied(stack, sa: str, secrets_tracked: bool = False) -> None:
    """`secrets_tracked`: an operator watching every namespace with trackSecrets lists Secrets
    cluster-wide (tracked configuration); that is the one read it is granted everywhere."""
    for verb, kind in [*([] if secrets_tracked else [("list", "secrets")]), ("create", "namespaces"), ("delete", "namespaces"), ("get", "nodes"),
                       ("create", "customresourcedefinitions.apiextensions.k8s.io"),
                       ("update", "customresourcedefinitions.apiextensions.k8s.io"),
                       ("create", "clusterrolebindings.rbac.authorization.k8s.io"),
                       ("impersonate", "serviceaccounts")]:
        assert not can_i(stack, sa, verb, kind, None), f"{sa} may {verb} {kind} cluster-wide"


def release_objects(stack, namespace: str) -> list[str]:
    selector = f"app.kubernetes.io/instance={RELEASE}"
    names = stack.cluster.kubectl("get", "deployments,replicasets,pods,serviceaccounts,services,"
                                  "persistentvolumeclaims,roles,rolebindings", "-n", namespace,
                                  "-l", selector, "-o", "name").stdout.split()
    cluster_scoped = stack.cluster.kubectl("get", "clusterroles,clusterrolebindings", "-l", selector,
                                           "-o", "name").stdout.split()
    return names + [n for n in cluster_scoped if namespace in n]


# -- the operator's own metrics: /metrics, the Grafana dashboard, the ServiceMonitor, the alerts ---

DASHBOARD = CHART / "dashboards" / "canarist.json"


def dashboard_exprs(dashboard: dict) -> list[str]:
    """Every panel target's PromQL in a Grafana dashboard (rows' nested panels included)."""
    exprs = []
    for panel in dashboard["panels"]:
        for inner in [panel, *panel.get("panels", [])]:
            exprs += [t["expr"] for t in inner.get("targets", [])]
    return exprs


def rule_file(rule: dict, path: Path) -> Path:
    """A PrometheusRule's groups as a Prometheus rule file (what promtool and Prometheus read)."""
    path.write_text(yaml.safe_dump({"groups": rule["spec"]["groups"]}))
    return path


def promtool() -> str:
    found = shutil.which("promtool") or ("/usr/bin/promtool" if Path("/usr/bin/promtool").exists() else None)
    assert found, "promtool ships with Debian's prometheus package (hack/install-prometheus.sh)"
    return found


def test_metrics_port_env_and_dashboard_configmap_by_default(helm_bin, tmp_path):
    docs = render(helm_bin, tmp_path)
    c = container(one(docs, "Deployment", "canarist"))
    assert env_of(c)["CANARIST_METRICS_PORT"]["value"] == "8081"
    assert {p["name"]: p["containerPort"] for p in c["ports"]}["metrics"] == 8081

    cm = one(docs, "ConfigMap", "canarist-dashboard")
    assert cm["metadata"]["namespace"] == "canarist-system"
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    dashboard = json.loads(cm["data"]["canarist.json"])
    assert dashboard == json.loads(DASHBOARD.read_text()), "the ConfigMap ships the file as it is"
    exprs = dashboard_exprs(dashboard)
    for metric in ("canarist_releases", "canarist_rollbacks_total", "canarist_promotions_total",
                   "canarist_checks_total", "canarist_tick_duration_seconds_bucket", "canarist_tick_lag_seconds_bucket",
                   "canarist_gate_duration_seconds_bucket", "canarist_api_errors_total", "canarist_cache_objects",
                   "canarist_leader", "canarist_ticks_overdue"):
        assert any(metric in e for e in exprs), f"no panel shows {metric}"
    titles = [p["title"] for p in dashboard["panels"]]
    assert len(titles) == len(set(titles)) and len({p["id"] for p in dashboard["panels"]}) == len(titles)
    # Off by default: their CRDs may be absent.
    assert not of_kind(docs, "ServiceMonitor") and not of_kind(docs, "PrometheusRule")


def test_dashboard_label_and_namespace_are_configurable_and_metrics_can_be_off(helm_bin, tmp_path):
    docs = render(helm_bin, tmp_path, "--set", "metrics.dashboard.labelName=grafana_dashboard_canarist",
                  "--set", "metrics.dashboard.labelValue=yes", "--set", "metrics.dashboard.namespace=monitoring",
                  "--set", "metrics.dashboard.annotations.grafana_folder=Canarist")
    cm = one(docs, "ConfigMap", "canarist-dashboard")
    assert cm["metadata"]["labels"]["grafana_dashboard_canarist"] == "yes"
    assert "grafana_dashboard" not in cm["metadata"]["labels"]
    assert cm["metadata"]["namespace"] == "monitoring"
    assert cm["metadata"]["annotations"] == {"grafana_folder": "Canarist"}

    assert not of_kind(render(helm_bin, tmp_path, "--set", "metrics.dashboard.enabled=false"), "ConfigMap")
    docs = render(helm_bin, tmp_path, "--set", "metrics.enabled=false", "--set", "metrics.serviceMonitor.enabled=true",
                  "--set", "metrics.prometheusRule.enabled=true")
    c = container(one(docs, "Deployment", "canarist"))
    assert "CANARIST_METRICS_PORT" not in env_of(c)
    assert [p["name"] for p in c["ports"]] == ["health"]
    assert not of_kind(docs, "ConfigMap") and not of_kind(docs, "ServiceMonitor") and not of_kind(docs, "PrometheusRule")


def test_service_monitor_scrapes_every_operator_replica(helm_bin, tmp_path):
    docs = render(helm_bin, tmp_path, "--set", "metrics.serviceMonitor.enabled=true",
                  "--set", "metrics.serviceMonitor.labels.release=kube-prometheus-stack")
    operator = one(docs, "Deployment", "canarist")
    pod_labels = operator["spec"]["template"]["metadata"]["labels"]
    service = one(docs, "Service", "canarist-metrics")
    assert service["spec"]["clusterIP"] == "None"
    assert service["spec"]["selector"].items() <= pod_labels.items()
    assert service["spec"]["ports"] == [{"name": "metrics", "port": 8081, "targetPort": "metrics", "protocol": "TCP"}]
    monitor = one(docs, "ServiceMonitor", "canarist")
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": ["canarist-system"]}
    assert [(e["port"], e["path"]) for e in monitor["spec"]["endpoints"]] == [("metrics", "/metrics")]
    # The judge's pods are not selected: it is another component.
    judge = one(docs, "Deployment", "canarist-judge")
    assert not service["spec"]["selector"].items() <= judge["spec"]["template"]["metadata"]["labels"].items()


def test_prometheus_rule_renders_and_promtool_accepts_every_alert(helm_bin, tmp_path):
    docs = render(helm_bin, tmp_path, "--set", "metrics.prometheusRule.enabled=true",
                  "--set", "metrics.prometheusRule.labels.release=kube-prometheus-stack",
                  "--set", "metrics.prometheusRule.stepStuckSeconds=1800")
    rule = one(docs, "PrometheusRule", "canarist")
    assert rule["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    alerts = {r["alert"]: r for g in rule["spec"]["groups"] for r in g["rules"]}
    assert set(alerts) == {"CanaristRolledBack", "CanaristStepStuck", "CanaristProviderErrors"}
    assert "canarist_rollbacks_total" in alerts["CanaristRolledBack"]["expr"]
    assert alerts["CanaristStepStuck"]["expr"].endswith("> 1800")
    assert "canarist_api_errors_total" in alerts["CanaristProviderErrors"]["expr"]
    assert 'outcome="error"' in alerts["CanaristProviderErrors"]["expr"]
    # promtool parses every expression and every annotation template.
    checked = subprocess.run([promtool(), "check", "rules", str(rule_file(rule, tmp_path / "rules.yml"))],
                             capture_output=True, text=True, timeout=60)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "SUCCESS: 3 rules found" in checked.stdout, checked.stdout


def test_dashboard_queries_parse_as_promql(helm_bin, tmp_path):
    """promtool parses each panel's query once Grafana's variables are replaced (as a rule's expr)."""
    dashboard = json.loads(DASHBOARD.read_text())
    rules = [{"record": f"canarist:panel_{i}", "expr": grafana_to_promql(e)} for i, e in enumerate(dashboard_exprs(dashboard))]
    path = tmp_path / "panels.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "panels", "rules": rules}]}))
    checked = subprocess.run([promtool(), "check", "rules", str(path)], capture_output=True, text=True, timeout=60)
    assert checked.returncode == 0, checked.stdout + checked.stderr


def grafana_to_promql(expr: str, job: str = ".+", rate_interval: str = "1m") -> str:
    """A panel's query with Grafana's variables replaced by concrete values."""
    return expr.replace("$__rate_interval", rate_interval).replace("$job", job)


def test_metrics_port_must_differ_from_the_liveness_port(helm_bin, tmp_path):
    result = offline_helm(helm_bin, tmp_path, "template", RELEASE, str(CHART), "--set", "metrics.port=8080")
    assert result.returncode != 0 and "metrics.port must differ from healthPort" in result.stderr
    for values, field in (("metrics: {port: 0}", "/metrics/port"),
                          ("metrics: {dashboard: {labelName: \"\"}}", "/metrics/dashboard/labelName"),
                          ("metrics: {prometheusRule: {providerErrorRatio: 2}}", "/metrics/prometheusRule/providerErrorRatio"),
                          ("metrics: {prometheusRule: {rolledBackWindow: soon}}", "/metrics/prometheusRule/rolledBackWindow"),
                          ("metrics: {serviceMonitor: {enable: true}}", "enable")):
        values_file = tmp_path / "bad.yaml"
        values_file.write_text(values + "\n")
        result = offline_helm(helm_bin, tmp_path, "template", RELEASE, str(CHART), "-f", str(values_file))
        assert result.returncode != 0 and field in result.stderr, (values, result.stderr)


@pytest.fixture
def other_namespace(kube_client):
    import kubernetes

    core = kubernetes.client.CoreV1Api(kube_client)
    name = f"t-{uuid.uuid4().hex[:8]}"
    core.create_namespace({"metadata": {"name": name, "labels": {"canarist.dev/test": "true"}}})
    yield name
    core.delete_namespace(name, propagation_policy="Background")


@pytest.mark.cluster
@pytest.mark.parametrize("values", [
    [],
    ["--set", "judge.llm.apiKeySecret.name=llm-key", "--set", "judge.persistence.enabled=false"],
    ["--set", "judge.auth.mode=none", "--set", "judge.networkPolicy.from[0].podSelector.matchLabels.team=a"],
    ["--set", "judge.database.url=postgresql://judge@pg:5432/judge", "--set", "judge.replicas=3",
     "--set", "judge.database.passwordSecret.name=judge-db"],
], ids=["defaults", "judge-with-secret-emptydir", "judge-without-auth-narrow-networkpolicy", "judge-on-postgresql"])
def test_template_output_is_accepted_by_server_side_dry_run(stack, namespace, helm_bin, tmp_path, values):
    result = offline_helm(helm_bin, tmp_path, "template", RELEASE, str(CHART), "--namespace", namespace,
                          "--set", f"watchNamespaces={{{namespace}}}", *values)
    assert result.returncode == 0, result.stderr
    documents = [d for d in yaml.safe_load_all(result.stdout) if d]
    applied = stack.cluster.kubectl("apply", "--dry-run=server", "-n", namespace, "-f", "-", input=result.stdout,
                                    check=False)
    assert applied.returncode == 0, applied.stderr
    assert applied.stdout.count("(server dry run)") == len(documents), applied.stdout


def test_bad_values_fail_helm_install_and_create_nothing(stack, namespace):
    result = helm(stack, "install", RELEASE, str(CHART), "--namespace", namespace, "--skip-crds",
                  "--set", "tickSeconds=fast", check=False)
    assert result.returncode != 0 and "/tickSeconds" in result.stderr, result.stderr
    assert helm(stack, "list", "--namespace", namespace, "-q").stdout.strip() == ""
    assert release_objects(stack, namespace) == []


@pytest.mark.cluster
def test_install_in_watched_namespace_is_least_privilege_and_uninstalls_cleanly(stack, namespace):
    install_chart(stack, namespace, RELEASE, "--set", f"watchNamespaces={{{namespace}}}")
    try:
        sa_name = operator_service_account(stack, namespace, RELEASE)
        sa = f"system:serviceaccount:{namespace}:{sa_name}"
        kubectl = stack.cluster.kubectl
        kubectl("get", "serviceaccount", sa_name, "-n", namespace)
        kubectl("get", "role", RELEASE, "-n", namespace)
        kubectl("get", "rolebinding", RELEASE, "-n", namespace)
        kubectl("get", "deployment", "canarist-judge", "-n", namespace)
        kubectl("get", "service", "canarist-judge", "-n", namespace)
        kubectl("get", "persistentvolumeclaim", "canarist-judge-data", "-n", namespace)
        judge_sa = yaml.safe_load(kubectl("get", "serviceaccount", "canarist-judge", "-n", namespace, "-o",
                                          "yaml").stdout)
        assert judge_sa["automountServiceAccountToken"] is False
        # kwok runs no containers but creates and readies pods: the pod spec passes the API server.
        kubectl("rollout", "status", f"deployment/{RELEASE}", "-n", namespace, "--timeout=90s")

        assert_operator_can(stack, sa, namespace)
        assert_operator_cannot_in(stack, sa, namespace)
        for elsewhere in ("default", "kube-system", f"{namespace}-other"):
            assert_cannot_touch(stack, sa, elsewhere)
        assert_cluster_wide_denied(stack, sa)
        # Leader election: Leases of the release namespace, nowhere else, never deleted.
        for verb in ("get", "create", "update"):
            assert can_i(stack, sa, verb, "leases.coordination.k8s.io", namespace)
            assert not can_i(stack, sa, verb, "leases.coordination.k8s.io", "kube-system")
        assert not can_i(stack, sa, "delete", "leases.coordination.k8s.io", namespace)
        # kopf's discovery: read-only, cluster-wide.
        assert can_i(stack, sa, "list", "namespaces", None) and can_i(stack, sa, "watch", "namespaces", None)
        assert not can_i(stack, sa, "get", "namespaces", None)
        assert can_i(stack, sa, "watch", "customresourcedefinitions.apiextensions.k8s.io", None)

        judge = f"system:serviceaccount:{namespace}:canarist-judge"
        assert can_i(stack, judge, "create", "tokenreviews.authentication.k8s.io", None)
        assert_cannot_touch(stack, judge, namespace)
        for verb, kind in [("get", "secrets"), ("get", "configmaps"), ("get", "canaryreleases.canarist.dev"),
                           ("list", "pods")]:
            assert not can_i(stack, judge, verb, kind, namespace)
    finally:
        uninstall_chart(stack, namespace, RELEASE)

    wait_until(lambda: release_objects(stack, namespace) == [], 90, "every object of the release to be gone")
    assert helm(stack, "list", "--namespace", namespace, "-q").stdout.strip() == ""
    assert not can_i(stack, sa, "get", "canaryreleases.canarist.dev", namespace)
    assert not can_i(stack, sa, "list", "namespaces", None)


@pytest.mark.cluster
def test_install_watching_all_namespaces_uses_a_cluster_role(stack, namespace, other_namespace):
    install_chart(stack, namespace, RELEASE, "--set", "judge.persistence.enabled=false",
                  "--set", "judge.llm.apiKeySecret.name=judge-llm")
    try:
        sa = f"system:serviceaccount:{namespace}:{operator_service_account(stack, namespace, RELEASE)}"
        name = f"{RELEASE}-{namespace}"
        stack.cluster.kubectl("get", "clusterrole", name)
        binding = yaml.safe_load(stack.cluster.kubectl("get", "clusterrolebinding", name, "-o", "yaml").stdout)
        assert binding["subjects"] == [{"kind": "ServiceAccount", "name": RELEASE, "namespace": namespace}]
        for deployment in (RELEASE, "canarist-judge"):
            stack.cluster.kubectl("rollout", "status", f"deployment/{deployment}", "-n", namespace, "--timeout=90s")
        assert stack.cluster.kubectl("get", "secrets", "-n", namespace, "-l", f"app.kubernetes.io/instance={RELEASE}",
                                     "-o", "name").stdout.strip() == ""

        for ns in (namespace, other_namespace):
            assert_operator_can(stack, sa, ns)
            assert_operator_cannot_in(stack, sa, ns)
        assert_cluster_wide_denied(stack, sa, secrets_tracked=True)
        # --all-namespaces: kopf does not observe namespaces, so the chart does not grant it.
        assert not can_i(stack, sa, "list", "namespaces", None)
    finally:
        uninstall_chart(stack, namespace, RELEASE)

    wait_until(lambda: release_objects(stack, namespace) == [], 90, "every object of the release to be gone")
    assert not can_i(stack, sa, "get", "deployments.apps", other_namespace)
