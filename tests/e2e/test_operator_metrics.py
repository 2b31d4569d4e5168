"""The operator's own metrics end to end: the operator process serves /metrics, the stack's
Prometheus scrapes it, and every query of the chart's Grafana dashboard and every alert of its
PrometheusRule returns data after a real rollout rolled back and another one promoted."""

from __future__ import annotations

import copy
import json
import math
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass

import kubernetes
import pytest
import yaml

from canarist.devstack.chart import CHART, helm, install_chart, operator_kubeconfig, uninstall_chart
from canarist.devstack.gateway_traffic import GatewayTraffic
from canarist.devstack.procs import free_port, wait_until

from .harness import ERROR_RATE, OperatorProcess, configure_pods
from .test_rollout import setup_release

pytestmark = [pytest.mark.cluster, pytest.mark.prometheus]

JOB = "tests"  # the local Prometheus' one scrape job (devstack.prometheus)
RATE_INTERVAL = "5m"  # for Grafana's $__rate_interval: the whole test fits in it
DASHBOARD = CHART / "dashboards" / "canarist.json"


@dataclass
class MeteredOperator:
    proc: OperatorProcess
    address: str  # host:port of its /metrics
    selector: str  # the label Prometheus puts on its series, e.g. canarist_test="ns"


@pytest.fixture
def metered_operator(stack, namespace, canarist_crd, tmp_path) -> Iterator[MeteredOperator]:
    """The operator as the chart runs it (its ServiceAccount, CANARIST_METRICS_PORT), on a loopback
    port of its own that the stack's Prometheus scrapes."""
    install_chart(stack, namespace, "canarist", "--set", f"watchNamespaces={{{namespace}}}",
                  "--set", "judge.enabled=false")
    port = free_port()
    proc = OperatorProcess(operator_kubeconfig(stack, namespace, "canarist"), namespace, stack.prometheus.url,
                           tmp_path / "operator.log",
                           env={"CANARIST_METRICS_PORT": str(port), "CANARIST_METRICS_ADDR": "127.0.0.1"}).start()
    address = f"127.0.0.1:{port}"
    stack.prometheus.add_target(address, {"canarist_test": namespace})
    try:
        yield MeteredOperator(proc, address, f'canarist_test="{namespace}"')
    finally:
        stack.prometheus.remove_target(address)
        proc.stop()
        uninstall_chart(stack, namespace, "canarist")


def query(prometheus_url: str, promql: str) -> list[dict]:
    url = f"{prometheus_url}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
    with urllib.request.urlopen(url, timeout=10) as response:
        body = json.load(response)
    assert body["status"] == "success", body
    assert body["data"]["resultType"] in ("vector", "matrix"), body
    return body["data"]["result"]


def has_data(result: list[dict]) -> bool:
    """At least one series with a number (a quantile of no observations is NaN: no data)."""
    values = [float(r["value"][1]) for r in result if "value" in r]
    values += [float(v[1]) for r in result for v in r.get("values", [])]
    return any(not math.isnan(v) for v in values)


def value(prometheus_url: str, promql: str) -> float | None:
    result = query(prometheus_url, promql)
    assert len(result) <= 1, (promql, result)
    return float(result[0]["value"][1]) if result else None


def wait_value(prometheus_url: str, promql: str, expected: float, timeout: float = 30) -> None:
    """Prometheus scrapes every second: wait until the query shows `expected`, then it must stay there."""
    try:
        wait_until(lambda: value(prometheus_url, promql) == expected, timeout, f"{promql} == {expected}")
    except TimeoutError:
        raise AssertionError(f"{promql} is {value(prometheus_url, promql)}, expected {expected}") from None


def dashboard_queries() -> list[tuple[str, str]]:
    """(panel title, PromQL) of every panel target, Grafana's variables replaced by concrete values."""
    dashboard = json.loads(DASHBOARD.read_text())
    out = []
    for panel in dashboard["panels"]:
        for inner in [panel, *panel.get("panels", [])]:
            for target in inner.get("targets", []):
                expr = target["expr"].replace("$__rate_interval", RATE_INTERVAL).replace("$job", JOB)
                assert "$" not in expr, f"a Grafana variable the test does not know: {expr}"
                out.append((inner["title"], expr))
    assert len(out) >= 10
    return out


def alert_queries(stack, tmp_path) -> list[tuple[str, str]]:
    """(alert, PromQL) of the chart's PrometheusRule, rendered with thresholds this short test can
    reach: any rollback, any step older than 0 s, any provider or API error."""
    rendered = helm(stack, "template", "canarist", str(CHART), "--namespace", "canarist-system",
                    "--set", "metrics.prometheusRule.enabled=true", "--set", "metrics.prometheusRule.stepStuckSeconds=0",
                    "--set", "metrics.prometheusRule.providerErrorRatio=0",
                    "--set", "metrics.prometheusRule.apiErrorsPerSecond=0",
                    "--show-only", "templates/prometheusrule.yaml").stdout
    rule = yaml.safe_load(rendered)
    alerts = [(r["alert"], r["expr"]) for g in rule["spec"]["groups"] for r in g["rules"]]
    assert {a for a, _ in alerts} == {"CanaristRolledBack", "CanaristStepStuck", "CanaristProviderErrors"}
    return alerts


class StatusWritesRevoked:
    """Takes `canaryreleases/status` out of the operator's Role while inside: its status writes get
    403 from the API server (a real API error), and the rollout resumes once the Role is back."""

    def __init__(self, api: kubernetes.client.ApiClient, namespace: str, role: str = "canarist") -> None:
        self.rbac = kubernetes.client.RbacAuthorizationV1Api(api)
        self.namespace, self.role = namespace, role

    def __enter__(self) -> "StatusWritesRevoked":
        role = self.rbac.read_namespaced_role(self.role, self.namespace)
        self.original = [self.rbac.api_client.sanitize_for_serialization(r) for r in role.rules]
        rules = copy.deepcopy(self.original)
        for rule in rules:
            rule["resources"] = [r for r in rule["resources"] if r != "canaryreleases/status"]
        rules = [r for r in rules if r["resources"]]
        assert rules != self.original, "the Role has no rule on canaryreleases/status"
        self.rbac.patch_namespaced_role(self.role, self.namespace, {"rules": rules})
        return self

    def __exit__(self, *exc) -> None:
        self.rbac.patch_namespaced_role(self.role, self.namespace, {"rules": self.original})


def test_dashboard_and_alerts_show_a_rollback_and_a_promotion(stack, cluster, metered_operator, pods, hostname,
                                                             kube_client, tmp_path):
    prom, sel = stack.prometheus.url, metered_operator.selector
    # The Prometheus of the stack scrapes the operator; a fresh operator leads alone (no election).
    wait_value(prom, f"canarist_leader{{{sel}}}", 1)

    # Rollout 1 rolls back: its canary answers 5xx (error-rate fails twice, failureLimit 1). It also
    # has a gate whose Prometheus does not answer: every one of its queries is a provider error.
    unreachable = f"http://127.0.0.1:{free_port()}"
    metrics = [{"name": "error-rate", "prometheus": {"query": ERROR_RATE}, "max": 0.05},
               {"name": "unreachable", "prometheus": {"query": "vector(0)", "address": unreachable}, "max": 1}]
    with GatewayTraffic(stack.gateway.url, hostname, rps=40) as traffic:
        setup_release(cluster, hostname, traffic, metrics=metrics)
        cluster.set_image("web", "registry.test/web:v2-broken")
        # Its unreachable gate holds the first step (an error is inconclusive) until the canary fails.
        wait_until(lambda: cluster.status("web").get("canaryWeight") == 1, 60, "the 1% step")
        assert configure_pods(pods, cluster.namespace, "web", errorRate=1.0) == 2
        status = cluster.wait_phase("web", {"RolledBack", "Succeeded"}, 90)
    assert status["phase"] == "RolledBack" and status["message"].count("error-rate=") == 1, status
    # Rollout 2's canary is the same Deployment: its error rate starts once rollout 1's errors left the window.
    canary_errors = ERROR_RATE.replace("{{ namespace }}", cluster.namespace).replace("{{ canary }}", "web")
    wait_until(lambda: not has_data(query(prom, canary_errors)), 60, "rollout 1's errors out of the gate's window")

    # Rollout 2 is promoted, after holding a while without traffic (checks with no data).
    cluster.custom.patch_namespaced_custom_object("canarist.dev", "v1alpha1", cluster.namespace, "canaryreleases",
                                                  "web", {"spec": {"analysis": {"metrics": metrics[:1]}}})
    cluster.set_image("web", "registry.test/web:v3")
    try:
        wait_until(lambda: (s := cluster.status("web")).get("canaryWeight") == 1 and s.get("checksInconclusive", 0) >= 2,
                   90, "the 1% step holding without traffic")
    except TimeoutError as exc:
        raise AssertionError(f"{exc}; status: {cluster.status('web')}\noperator log:\n{metered_operator.proc.log()}") from None
    assert cluster.status("web")["phase"] == "Progressing"

    # A real API error: the operator's status writes are refused while its Role lacks them.
    with StatusWritesRevoked(kube_client, cluster.namespace):
        wait_until(lambda: (value(prom, f'sum(canarist_api_errors_total{{{sel},code="403"}})') or 0) >= 1, 60,
                   "a refused status write counted by the operator")
    assert query(prom, f'canarist_api_errors_total{{{sel},code="403"}}'), query(prom, f"canarist_api_errors_total{{{sel}}}")

    # Mid-rollout (a release Progressing, one rolled back before): every panel and every alert has data.
    queries = [(f"panel {title!r}", expr) for title, expr in dashboard_queries()]
    queries += [(f"alert {name}", expr) for name, expr in alert_queries(stack, tmp_path)]
    missing = []
    for what, expr in queries:
        try:
            wait_until(lambda: has_data(query(prom, expr)), 20, f"{what}: {expr}")
        except TimeoutError:
            missing.append(f"{what}: {expr} -> {query(prom, expr)}")
    assert not missing, "queries without data:\n" + "\n".join(missing) + f"\noperator log:\n{metered_operator.proc.log()}"

    with GatewayTraffic(stack.gateway.url, hostname, rps=40):
        status = cluster.wait_phase("web", {"Succeeded", "RolledBack"}, 150)
    assert status["phase"] == "Succeeded", status

    # Exact counts, as Prometheus scraped them from this operator.
    wait_value(prom, f'canarist_promotions_total{{{sel},reason="Analysis"}}', 1)
    wait_value(prom, f'canarist_promotions_total{{{sel},reason="Manual"}}', 0)
    wait_value(prom, f'canarist_rollbacks_total{{{sel},reason="CheckFailed"}}', 1)
    for reason in ("Aborted", "Regression", "HoldTimeout"):
        wait_value(prom, f'canarist_rollbacks_total{{{sel},reason="{reason}"}}', 0)
    wait_value(prom, f'canarist_releases{{{sel},phase="Succeeded"}}', 1)
    wait_value(prom, f'sum(canarist_releases{{{sel}}})', 1)
    # The two failed checks that rolled rollout 1 back; no other error-rate check failed.
    wait_value(prom, f'canarist_checks_total{{{sel},gate="error-rate",kind="prometheus",result="Failed"}}', 2)
    assert (value(prom, f'canarist_checks_total{{{sel},gate="unreachable",result="Error"}}') or 0) >= 1
    assert (value(prom, f'canarist_checks_total{{{sel},gate="unreachable",result="Passed"}}') or 0) == 0
    assert (value(prom, f'sum(canarist_gate_duration_seconds_count{{{sel},kind="prometheus",outcome="error"}})')
            or 0) >= 1
    assert (value(prom, f'sum(canarist_tick_duration_seconds_count{{{sel}}})') or 0) > 10
    # The step clock leaves with the rollout.
    wait_until(lambda: not query(prom, f"canarist_release_step_started_timestamp_seconds{{{sel}}}"), 20,
               "no step clock once the release is Succeeded")
