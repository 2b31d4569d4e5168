"""No failure path ships a rejected revision, blackholes a Service, or hangs (issue: safe by construction).

Each test drives the operator process (the chart's identity) on the real local cluster into one
failure path and checks what users of the stable version rely on: which revision the route and
the Services send them to, and that the operator keeps going.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import kubernetes
import pytest

from canarist.devstack.faults import ApiFaults, TcpFaultProxy
from canarist.devstack.procs import wait_until

from tests.endpointslices import endpoints

from .harness import RouteWatcher, canary_release, deployment

pytestmark = [pytest.mark.cluster]

GROUP, VERSION, PLURAL = "canarist.dev", "v1alpha1", "canaryreleases"
HTTPROUTES = ("gateway.networking.k8s.io", "v1", "httproutes")


def create_release(cluster, name: str = "web", **spec_extra) -> None:
    body = canary_release(name, name)
    body["spec"].update(spec_extra)
    cluster.custom.create_namespaced_custom_object(GROUP, VERSION, cluster.namespace, PLURAL, body)


def setup_idle(cluster, name: str = "web", replicas: int = 2, **spec_extra) -> None:
    cluster.apps.create_namespaced_deployment(cluster.namespace, deployment(name, f"registry.test/{name}:v1",
                                                                            replicas=replicas))
    create_release(cluster, name, **spec_extra)
    cluster.wait_phase(name, "Idle", 60)
    wait_until(lambda: cluster.deployment(name).spec.replicas == 0, 30, "the target scaled to zero")


def start_rollout_holding_at_first_step(cluster, name: str = "web") -> None:
    """No traffic: the canary gets its 1 % and the step holds there (no data is not a pass)."""
    cluster.set_image(name, f"registry.test/{name}:v2")
    wait_until(lambda: cluster.route_weights(name) == (99, 1), 60, "the first step routed")


def delete_release(cluster, name: str = "web") -> None:
    cluster.custom.delete_namespaced_custom_object(GROUP, VERSION, cluster.namespace, PLURAL, name)


def release_gone(cluster, name: str = "web") -> bool:
    try:
        cluster.release(name)
    except kubernetes.client.ApiException as exc:
        if exc.status == 404:
            return True
        raise
    return False


def owners(obj) -> list:
    return [o.uid for o in obj.metadata.owner_references or []]


def assert_primary_left_serving(cluster, primary_image: str = "registry.test/web:v1") -> None:
    """After deletion: the primary, its Service and the route serve the primary's revision and
    nothing is left for the garbage collector to take."""
    wait_until(lambda: release_gone(cluster), 60, "the CanaryRelease to go")
    time.sleep(3)  # give the garbage collector its chance to (wrongly) take what it still owns
    primary = cluster.deployment("web-primary")
    assert primary.spec.template.spec.containers[0].image == primary_image
    assert owners(primary) == [], "the primary must not be left to garbage collection"
    assert owners(cluster.core.read_namespaced_service("web-primary", cluster.namespace)) == []
    assert cluster.route_weights("web") == (100, 0), "all traffic on the primary"
    route = cluster.custom.get_namespaced_custom_object(*HTTPROUTES[:2], cluster.namespace, HTTPROUTES[2], "web")
    assert not route["metadata"].get("ownerReferences")
    wait_until(lambda: cluster.deployment("web").spec.replicas == 0, 30, "the unpromoted revision scaled to zero")
    left = [e for e in cluster.events("web") if e.reason == "LeftPrimaryServing"]
    assert len(left) == 1 and "revert Deployment 'web'" in left[0].message and "kubectl" in left[0].message


def canary_never_routed_after(watcher: RouteWatcher, since: float) -> None:
    """Once deletion began the route only ever moved users off the canary, never onto the target.
    The weights in force when it began count too: a route already at 100 % primary (a rolled-back
    release) never changes again, and the watcher's first read may land just before `since`."""
    later = [weights for at, weights in watcher.changes if at < since][-1:]
    later += [weights for at, weights in watcher.changes if at >= since]
    assert all(canary <= 1 for _, canary in later) and later[-1] == (100, 0), watcher.changes
    assert (0, 100) not in later, f"traffic handed to a revision the primary does not run: {watcher.changes}"


# -- 1. deletion never moves traffic to a revision other than the primary's -------------------------

def roll_back(cluster) -> None:
    cluster.annotate("web", abort="a1")
    cluster.wait_phase("web", "RolledBack", 30)


def pause(cluster) -> None:
    cluster.annotate("web", paused="true")
    cluster.wait_phase("web", "Paused", 30)


@pytest.mark.parametrize("then", [roll_back, None, pause], ids=["RolledBack", "Progressing", "Paused"])
def test_delete_keeps_the_primary_serving_when_the_target_holds_another_revision(cluster, operator, then):
    setup_idle(cluster)
    start_rollout_holding_at_first_step(cluster)
    if then is not None:
        then(cluster)
    with RouteWatcher(cluster, "web") as watcher:
        since = time.time()
        delete_release(cluster)
        assert_primary_left_serving(cluster)
    canary_never_routed_after(watcher, since)


def test_delete_while_promoting_retries_api_errors_and_keeps_the_primary(cluster, kube_client, operator):
    """The primary's update fails (HTTP 500 from the API server): promotion holds; the deletion
    then retries its own failing writes until they succeed, and never hands traffic over."""
    setup_idle(cluster)
    start_rollout_holding_at_first_step(cluster)
    faults = ApiFaults(kube_client)
    with faults.failing_writes(cluster.namespace, [("apps", "v1", "deployments")], ["UPDATE"],
                               object_selector={"matchLabels": {"app.kubernetes.io/managed-by": "canarist"}}):
        cluster.annotate("web", promote="p1")
        cluster.wait_phase("web", "Promoting", 30)
        with RouteWatcher(cluster, "web") as watcher:
            since = time.time()
            delete_release(cluster)
            time.sleep(8)  # several finalizer attempts, every one refused
            assert not release_gone(cluster), "the finalizer must stay until the primary is released"
            assert cluster.route_weights("web") == (100, 0)
    assert_primary_left_serving(cluster)
    canary_never_routed_after(watcher, since)


# -- 2. the finalizer does not let go on a transient error --------------------------------------------

def test_transient_errors_during_hand_back_are_retried_not_swallowed(cluster, kube_client, operator):
    setup_idle(cluster)
    with ApiFaults(kube_client).failing_writes(cluster.namespace, [HTTPROUTES]):
        delete_release(cluster)
        time.sleep(8)
        assert not release_gone(cluster), "a 500 from the API server must not let the CanaryRelease go"
    wait_until(lambda: release_gone(cluster), 60, "the CanaryRelease to go once the API answers")
    time.sleep(3)
    assert cluster.route_weights("web") == (0, 100), "the hostname is handed to the target, not dark"
    assert cluster.deployment("web").status.ready_replicas == 2


# -- 3. route before scale; a failing tick retries on its own interval -----------------------------

def test_canary_is_not_scaled_down_while_the_route_still_sends_it_users(cluster, kube_client, operator):
    setup_idle(cluster)
    start_rollout_holding_at_first_step(cluster)
    with ApiFaults(kube_client).failing_writes(cluster.namespace, [HTTPROUTES], ["UPDATE"]):
        cluster.annotate("web", abort="a1")
        cluster.wait_phase("web", "RolledBack", 30)
        for _ in range(10):
            assert cluster.route_weights("web") == (99, 1)
            assert cluster.deployment("web").spec.replicas == 2, "scaled to zero while the route sends it users"
            assert cluster.status("web")["canaryWeight"] == 1, "status must say the weight in force"
            time.sleep(0.5)
        healed = time.monotonic()
    wait_until(lambda: cluster.route_weights("web") == (100, 0), 30, "the route back on the primary")
    assert time.monotonic() - healed < 15, "a failing tick must retry on its own interval, not kopf's 60 s"
    wait_until(lambda: cluster.deployment("web").spec.replicas == 0, 15, "then the canary scaled down")
    wait_until(lambda: cluster.status("web")["canaryWeight"] == 0, 15, "status follows the route")


# -- 4. install never blackholes the user's own Service -------------------------------------------

def user_service(name: str, selector: dict[str, str]) -> dict:
    return {"metadata": {"name": name}, "spec": {"selector": selector, "ports": [{"port": 80, "targetPort": 8080}]}}


def test_install_keeps_the_users_service_serving_and_names_other_selectors(cluster, operator):
    cluster.apps.create_namespaced_deployment(cluster.namespace, deployment("web", "registry.test/web:v1"))
    cluster.core.create_namespaced_service(cluster.namespace, user_service("web", {"app": "web"}))
    cluster.core.create_namespaced_service(cluster.namespace, user_service("legacy", {"app": "web"}))
    wait_until(lambda: sum(endpoints(cluster.api, cluster.namespace, "web").values()) == 2, 60, "the user's Service serving the target")
    create_release(cluster)
    low = 2
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        low = min(low, sum(endpoints(cluster.api, cluster.namespace, "web").values()))
        if cluster.status("web").get("phase") == "Idle" and cluster.deployment("web").spec.replicas == 0 \
                and not cluster.deployment("web").status.ready_replicas:
            break
        time.sleep(0.1)
    wait_until(lambda: sum(endpoints(cluster.api, cluster.namespace, "web").values()) >= 1, 10, "the user's Service on the primary's pods")
    for _ in range(10):
        low = min(low, sum(endpoints(cluster.api, cluster.namespace, "web").values()))
        time.sleep(0.2)
    assert low >= 1, "the user's Service lost every endpoint during install"
    service = cluster.core.read_namespaced_service("web", cluster.namespace)
    assert service.spec.selector == {"app": "web-primary"}
    assert owners(service) == [], "the user's Service must never be garbage-collected with the release"
    warning = next(c for c in cluster.status("web")["conditions"] if c["type"] == "Warning")
    assert warning["status"] == "True" and "'legacy'" in warning["message"]
    wait_until(lambda: any(e.reason == "TargetPodsSelectedElsewhere" for e in cluster.events("web")), 10,
               "the warning Event")

    delete_release(cluster)
    wait_until(lambda: release_gone(cluster), 60, "the CanaryRelease to go")
    restored = cluster.core.read_namespaced_service("web", cluster.namespace)
    assert restored.spec.selector == {"app": "web"}
    assert "canarist.dev/original-selector" not in (restored.metadata.annotations or {})
    wait_until(lambda: sum(endpoints(cluster.api, cluster.namespace, "web").values()) == 2, 60, "the user's Service back on the target")


def test_adopting_the_users_service_can_be_turned_off(cluster, operator):
    cluster.apps.create_namespaced_deployment(cluster.namespace, deployment("web", "registry.test/web:v1"))
    cluster.core.create_namespaced_service(cluster.namespace, user_service("web", {"app": "web"}))
    body = canary_release("web", "web")
    body["spec"]["service"]["adoptTargetService"] = False
    cluster.custom.create_namespaced_custom_object(GROUP, VERSION, cluster.namespace, PLURAL, body)
    cluster.wait_phase("web", "Idle", 60)
    assert cluster.core.read_namespaced_service("web", cluster.namespace).spec.selector == {"app": "web"}
    warning = next(c for c in cluster.status("web")["conditions"] if c["type"] == "Warning")
    assert "'web'" in warning["message"] and "adoptTargetService" in warning["message"]


# -- 5. bounded calls: a half-open connection or a dead gate stops nothing else ------------------

class HangingServer:
    """Accepts connections, reads what callers send and never answers; records when each came."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.address = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        self.arrivals: list[float] = []
        self._held: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                connection, _ = self.listener.accept()
            except OSError:
                return  # closed
            self._held.append(connection)
            self.arrivals.append(time.monotonic())

    def close(self) -> None:
        self.listener.close()
        for connection in self._held:
            connection.close()


@contextmanager
def blackhole() -> Iterator[str]:
    """An address that accepts connections and never answers."""
    server = HangingServer()
    try:
        yield server.address
    finally:
        server.close()


def test_half_open_api_connections_do_not_freeze_a_rollout(stack, cluster, tmp_path, request):
    """The operator reaches the API server through a proxy; mid-rollout every open connection
    turns into a black hole. Bounded calls fail, new connections are made, the rollout goes on."""
    from canarist.devstack.chart import install_chart, operator_kubeconfig, uninstall_chart
    from canarist.devstack.operator_process import OperatorProcess

    install_chart(stack, cluster.namespace, "canarist", "--set", f"watchNamespaces={{{cluster.namespace}}}",
                  "--set", "judge.enabled=false")
    request.addfinalizer(lambda: uninstall_chart(stack, cluster.namespace, "canarist"))
    kubeconfig = operator_kubeconfig(stack, cluster.namespace, "canarist")
    with TcpFaultProxy.for_kubeconfig(kubeconfig) as proxy:
        via = proxy.kubeconfig_via(kubeconfig, tmp_path / "via-proxy.kubeconfig")
        proc = OperatorProcess(via, cluster.namespace, stack.prometheus.url, tmp_path / "operator.log").start()
        try:
            setup_idle(cluster)
            cluster.set_image("web", "registry.test/web:v2")
            wait_until(lambda: cluster.route_weights("web") == (99, 1), 60, "the first step routed")
            proxy.sever()
            cluster.annotate("web", promote="p1")  # seen only by a tick made after the sever
            status = cluster.wait_phase("web", "Succeeded", 120)
            assert status["revisions"]["primary"] == status["revisions"]["canary"]
        finally:
            proc.stop()
            print(proc.log()[-3000:])


def test_a_blackholed_gate_on_one_release_does_not_delay_another_releases_rollback(cluster, operator):
    with blackhole() as dead_prometheus:
        for name, address in (("slow", dead_prometheus), ("web", None)):
            cluster.apps.create_namespaced_deployment(cluster.namespace, deployment(name, f"registry.test/{name}:v1"))
            body = canary_release(name, name)
            body["spec"]["analysis"]["interval"] = "2s"
            if address:
                for metric in body["spec"]["analysis"]["metrics"]:
                    metric["prometheus"]["address"] = address
                body["spec"]["analysis"]["minSamples"]["address"] = address
            cluster.custom.create_namespaced_custom_object(GROUP, VERSION, cluster.namespace, PLURAL, body)
        for name in ("slow", "web"):
            cluster.wait_phase(name, "Idle", 60)
            cluster.set_image(name, f"registry.test/{name}:v2")
        wait_until(lambda: cluster.route_weights("slow") == (99, 1), 60, "slow at its first step")
        wait_until(lambda: cluster.route_weights("web") == (99, 1), 60, "web at its first step")
        time.sleep(3)  # slow's gates are now hanging on the black hole
        asked = time.monotonic()
        cluster.annotate("web", abort="a1")
        wait_until(lambda: cluster.route_weights("web") == (100, 0), 30, "web rolled back")
        assert time.monotonic() - asked < 4, "a hanging gate elsewhere delayed this rollback"


def test_deleting_a_release_whose_tick_hangs_on_a_gate_waits_for_that_tick_only(cluster, operator):
    """Deletion stops the release's timer, and the finalizer goes once the tick in flight returns
    (bounded by the gate's 10 s timeout), not at kopf's next poll of a stopping timer a minute
    later: CI saw a paused release outlive its deletion by 60 s that way."""
    dead_prometheus = HangingServer()
    try:
        cluster.apps.create_namespaced_deployment(cluster.namespace, deployment("web", "registry.test/web:v1"))
        body = canary_release("web", "web")
        for metric in body["spec"]["analysis"]["metrics"]:
            metric["prometheus"]["address"] = dead_prometheus.address
        body["spec"]["analysis"]["minSamples"]["address"] = dead_prometheus.address
        cluster.custom.create_namespaced_custom_object(GROUP, VERSION, cluster.namespace, PLURAL, body)
        cluster.wait_phase("web", "Idle", 60)
        start_rollout_holding_at_first_step(cluster)
        wait_until(lambda: dead_prometheus.arrivals, 60, "a tick's gate query to reach the hanging Prometheus")
        asked = time.monotonic()
        assert asked - dead_prometheus.arrivals[-1] < 5, "the tick is still waiting for its answer"
        delete_release(cluster)
        wait_until(lambda: release_gone(cluster), 90, "the CanaryRelease to go")
        took = time.monotonic() - asked
        print(f"deleted {took:.1f}s after the request, with its tick hanging on a gate (timeout 10s)")
        assert took < 30, f"the deletion waited {took:.0f}s for a tick bounded by a 10s gate timeout"
        assert cluster.route_weights("web") == (100, 0)
    finally:
        dead_prometheus.close()


# -- 6. invalid spec mid-rollout; status from a newer operator -----------------------------------

@pytest.fixture
def lenient_crd(stack):
    """A CanaryRelease CRD of another chart version (Helm never upgrades CRDs): it lets through
    specs this operator's validation rejects, and keeps status fields it does not know. Restored
    afterwards."""
    from pathlib import Path

    import yaml

    path = Path(__file__).resolve().parents[2] / "crds" / "canarist.dev_canaryreleases.yaml"
    crd = yaml.safe_load(path.read_text())
    schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]
    schema["spec"] = {"type": "object", "x-kubernetes-preserve-unknown-fields": True}
    schema["status"] = {"type": "object", "x-kubernetes-preserve-unknown-fields": True}
    stack.cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", "-", input=yaml.safe_dump(crd))
    yield
    stack.cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(path))


def test_invalid_spec_mid_rollout_sends_users_back_to_the_primary(cluster, operator, lenient_crd):
    setup_idle(cluster)
    start_rollout_holding_at_first_step(cluster)
    cluster.custom.patch_namespaced_custom_object(GROUP, VERSION, cluster.namespace, PLURAL, "web",
                                                  {"spec": {"analysis": {"interval": "0s"}}})
    wait_until(lambda: cluster.route_weights("web") == (100, 0), 20, "users back on the primary")
    status = wait_until(lambda: (s := cluster.status("web")) and s.get("canaryWeight") == 0 and s, 20, "status")
    ready = next(c for c in status["conditions"] if c["type"] == "Ready")
    assert ready["status"] == "False" and ready["reason"] == "InvalidSpec"
    assert "spec.analysis.interval" in ready["message"]
    assert "back on the primary" in status["message"]
    cluster.custom.patch_namespaced_custom_object(GROUP, VERSION, cluster.namespace, PLURAL, "web",
                                                  {"spec": {"analysis": {"interval": "3s"}}})
    wait_until(lambda: cluster.route_weights("web") == (99, 1), 30, "the steps restarted")


def test_unknown_fields_in_status_never_break_a_tick(cluster, operator, lenient_crd):
    setup_idle(cluster)
    start_rollout_holding_at_first_step(cluster)
    # A newer operator pinned a field this one does not know; the tick must go on.
    def pin_unknown_field() -> bool:
        release = cluster.release("web")
        release["status"]["pinnedAnalysis"]["sequential"] = {"alpha": 0.01}
        try:
            cluster.custom.replace_namespaced_custom_object_status(GROUP, VERSION, cluster.namespace, PLURAL, "web",
                                                                   release)
        except kubernetes.client.ApiException as exc:
            if exc.status == 409:  # the operator wrote status between our read and write: read again
                return False
            raise
        return True

    wait_until(pin_unknown_field, 30, "the unknown status field written")
    cluster.annotate("web", abort="a1")
    cluster.wait_phase("web", "RolledBack", 30)


# -- 8. replicas follow the user's count; an HPA is never fought ---------------------------------

def test_primary_follows_the_users_replica_count(cluster, operator):
    setup_idle(cluster)
    cluster.apps.patch_namespaced_deployment_scale("web", cluster.namespace, {"spec": {"replicas": 3}})
    wait_until(lambda: cluster.deployment("web-primary").spec.replicas == 3, 30, "the primary at the user's 3")
    wait_until(lambda: cluster.deployment("web").spec.replicas == 0, 30, "the target back at zero")


def test_hpa_on_the_target_gets_a_primary_twin_and_is_never_fought(cluster, operator):
    setup_idle(cluster)
    autoscaling = kubernetes.client.AutoscalingV2Api(cluster.api)
    autoscaling.create_namespaced_horizontal_pod_autoscaler(cluster.namespace, {
        "metadata": {"name": "web"},
        "spec": {"scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "web"},
                 "minReplicas": 2, "maxReplicas": 6,
                 "metrics": [{"type": "Resource", "resource": {"name": "cpu",
                                                               "target": {"type": "Utilization",
                                                                          "averageUtilization": 80}}}]}})
    twin = wait_until(lambda: _read_hpa(autoscaling, cluster.namespace, "web-primary"), 30, "the primary's HPA")
    assert twin.spec.scale_target_ref.name == "web-primary" and twin.spec.max_replicas == 6
    start_rollout_holding_at_first_step(cluster)
    # The HPA scales the canary (as it would under load): canarist leaves it there.
    cluster.apps.patch_namespaced_deployment_scale("web", cluster.namespace, {"spec": {"replicas": 4}})
    for _ in range(10):
        time.sleep(0.5)
        assert cluster.deployment("web").spec.replicas == 4, "canarist fought the HPA"


def _read_hpa(api, namespace: str, name: str):
    try:
        return api.read_namespaced_horizontal_pod_autoscaler(name, namespace)
    except kubernetes.client.ApiException as exc:
        if exc.status == 404:
            return None
        raise


# -- 12. writes the API server rejects are surfaced, never retried silently ----------------------

@pytest.fixture
def route_policy(cluster):
    """A cluster policy (a ValidatingAdmissionPolicy, as Kyverno or Gatekeeper would add) that
    refuses HTTPRoutes for hostnames under blocked.test in this namespace."""
    admission = kubernetes.client.AdmissionregistrationV1Api(cluster.api)
    name = f"no-blocked-hosts-{cluster.namespace}"
    admission.create_validating_admission_policy({
        "metadata": {"name": name},
        "spec": {"failurePolicy": "Fail",
                 "matchConstraints": {"resourceRules": [{"apiGroups": ["gateway.networking.k8s.io"],
                                                         "apiVersions": ["v1"], "resources": ["httproutes"],
                                                         "operations": ["CREATE", "UPDATE"]}]},
                 "validations": [{"expression": "!has(object.spec.hostnames) || "
                                                "object.spec.hostnames.all(h, !h.endsWith('.blocked.test'))",
                                  "message": "hostnames under blocked.test are not allowed here",
                                  "reason": "Invalid"}]}})
    admission.create_validating_admission_policy_binding({
        "metadata": {"name": name},
        "spec": {"policyName": name, "validationActions": ["Deny"],
                 "matchResources": {"namespaceSelector": {"matchLabels": {
                     "kubernetes.io/metadata.name": cluster.namespace}}}}})
    yield
    admission.delete_validating_admission_policy_binding(name)
    admission.delete_validating_admission_policy(name)


def test_a_route_the_api_server_rejects_is_reported_and_nothing_is_scaled(cluster, operator, route_policy):
    cluster.apps.create_namespaced_deployment(cluster.namespace, deployment("web", "registry.test/web:v1"))
    body = canary_release("web", "web")
    body["spec"]["routing"]["gatewayAPI"]["hostnames"] = ["web.blocked.test"]
    cluster.custom.create_namespaced_custom_object(GROUP, VERSION, cluster.namespace, PLURAL, body)

    def reported():
        ready = next((c for c in cluster.status("web").get("conditions", []) if c["type"] == "Ready"), None)
        return ready if ready and "blocked.test are not allowed" in ready["message"] else None

    ready = wait_until(reported, 60, "the refusal in the Ready condition")
    assert ready["status"] == "False" and "spec.routing.gatewayAPI" in ready["message"]
    for _ in range(6):
        time.sleep(0.5)
        assert cluster.deployment("web").spec.replicas == 2, "the target must keep serving"
        assert next(c for c in cluster.status("web")["conditions"] if c["type"] == "Ready")["status"] == "False"
    cluster.custom.patch_namespaced_custom_object(GROUP, VERSION, cluster.namespace, PLURAL, "web", {
        "spec": {"routing": {"gatewayAPI": {"hostnames": ["web.example.test"]}}}})
    cluster.wait_phase("web", "Idle", 60)
    wait_until(lambda: cluster.route_weights("web") == (100, 0), 30, "the route on the primary")
