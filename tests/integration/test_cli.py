"""`canarist` / `kubectl canarist` against the local cluster."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

import kubernetes
import pytest
import yaml

from canarist.api.crd import GROUP, PLURAL, VERSION
from canarist.devstack.procs import wait_until

pytestmark = pytest.mark.cluster

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def crd(stack):
    stack.cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f",
                          str(ROOT / "crds" / "canarist.dev_canaryreleases.yaml"))
    stack.cluster.wait_established("canaryreleases.canarist.dev")


def canarist(stack, *args: str, env: dict | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "canarist"), *args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "KUBECONFIG": str(stack.kubeconfig), **(env or {})})


NOW = datetime.now(timezone.utc).isoformat().replace("+00:00", "Z")
STATUS = {
    "phase": "Progressing", "canaryWeight": 20, "stepIndex": 2, "message": "step 3/5: 20% to the canary",
    "revisions": {"primary": "aaaa1111", "canary": "bbbb2222"}, "pinnedSteps": [1, 5, 20, 50, 100],
    "pinnedAnalysis": {"interval": "1m", "failureLimit": 1, "checksPerStep": 1, "onNoData": "Hold",
                       "onError": "Hold", "metrics": []},
    "checksPassed": 0, "checksFailed": 1, "checksInconclusive": 0, "providerErrors": 0, "lastCheckAt": NOW,
    "lastChecks": [
        {"name": "error-rate", "kind": "prometheus", "result": "Failed", "value": 0.031, "max": 0.01,
         "message": "above max 0.01", "at": NOW},
        {"name": "judge-score", "kind": "judge", "result": "Passed", "value": 0.91, "min": 0.8, "message": "", "at": NOW},
    ],
    "conditions": [{"type": "Ready", "status": "True", "reason": "PrimaryServing", "message": "",
                    "lastTransitionTime": NOW}],
}


@pytest.fixture
def release(kube_client, namespace, crd) -> str:
    custom = kubernetes.client.CustomObjectsApi(kube_client)
    custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, {
        "apiVersion": f"{GROUP}/{VERSION}", "kind": "CanaryRelease", "metadata": {"name": "bot"},
        "spec": {"targetRef": {"name": "bot"}, "service": {"port": 8080},
                 "routing": {"gatewayAPI": {"parentRefs": [{"name": "gw"}]}}}})
    custom.patch_namespaced_custom_object_status(GROUP, VERSION, namespace, PLURAL, "bot", {"status": STATUS})
    obj = custom.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "bot")
    kubernetes.client.CoreV1Api(kube_client).create_namespaced_event(namespace, {
        "metadata": {"generateName": "bot."},
        "involvedObject": {"apiVersion": f"{GROUP}/{VERSION}", "kind": "CanaryRelease", "name": "bot",
                           "namespace": namespace, "uid": obj["metadata"]["uid"]},
        "reason": "StepStarted", "message": "step 3/5: canary weight 20%", "type": "Normal",
        "firstTimestamp": NOW, "lastTimestamp": NOW, "count": 1, "source": {"component": "canarist"}})
    return "bot"


def annotations(kube_client, namespace: str, name: str) -> dict:
    obj = kubernetes.client.CustomObjectsApi(kube_client).get_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, name)
    return obj["metadata"].get("annotations") or {}


def test_status_shows_phase_weights_checks_and_events(stack, namespace, release):
    out = canarist(stack, "status", release, "-n", namespace)
    assert out.returncode == 0, out.stderr
    text = out.stdout
    assert "Progressing" in text and "primary 80%  canary 20%" in text
    assert "1%✓ → 5%✓ → [20%] → 50% → 100%" in text
    assert "error-rate" in text and "0.031" in text and "<= 0.01" in text and "above max 0.01" in text
    assert "judge-score" in text and "0.91" in text and ">= 0.8" in text
    assert "failed 1 (limit 1)" in text
    assert "StepStarted" in text and "canary weight 20%" in text


def test_list(stack, namespace, release):
    out = canarist(stack, "list", "-n", namespace)
    assert out.returncode == 0 and "bot" in out.stdout and "Progressing" in out.stdout and "20%" in out.stdout
    everywhere = canarist(stack, "list", "-A")
    assert namespace in everywhere.stdout


def test_manual_control_writes_annotations_acted_on_once(stack, kube_client, namespace, release):
    for action in ("abort", "promote", "retry"):
        out = canarist(stack, action, release, "-n", namespace)
        assert out.returncode == 0 and f"{action} requested" in out.stdout, out.stderr
        assert annotations(kube_client, namespace, release)[f"canarist.dev/{action}"]
    first = annotations(kube_client, namespace, release)["canarist.dev/abort"]
    time.sleep(0.01)
    canarist(stack, "abort", release, "-n", namespace)
    assert annotations(kube_client, namespace, release)["canarist.dev/abort"] != first, "a fresh token per request"
    canarist(stack, "pause", release, "-n", namespace)
    assert annotations(kube_client, namespace, release)["canarist.dev/paused"] == "true"
    canarist(stack, "resume", release, "-n", namespace)
    assert "canarist.dev/paused" not in annotations(kube_client, namespace, release)


def test_watch_follows_until_the_rollout_ends(stack, kube_client, namespace, release):
    proc = subprocess.Popen([str(BIN / "canarist"), "watch", release, "-n", namespace, "--interval", "0.2"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "KUBECONFIG": str(stack.kubeconfig)})
    lines: list[str] = []

    def read() -> None:
        for line in proc.stdout:
            lines.append(line.rstrip("\n"))

    reader = threading.Thread(target=read, daemon=True)
    reader.start()

    def printed(text: str) -> None:
        # How soon the CLI starts depends on the machine's load (seconds on a busy one), so each
        # change waits for the watch to have shown the previous state rather than for a fixed time.
        wait_until(lambda: any(text in line for line in lines) or proc.poll() is not None, 60,
                   f"`canarist watch` to print {text!r}")
        if proc.poll() is not None:
            reader.join(5)
        assert any(text in line for line in lines), (lines, proc.stderr.read() if proc.poll() is not None else "")

    custom = kubernetes.client.CustomObjectsApi(kube_client)
    try:
        printed("canary  20%")
        for weight, index in ((50, 3), (100, 4)):
            custom.patch_namespaced_custom_object_status(GROUP, VERSION, namespace, PLURAL, release, {"status": {
                "canaryWeight": weight, "stepIndex": index, "message": f"step {index + 1}/5"}})
            printed(f"canary {weight:>3}%")
        custom.patch_namespaced_custom_object_status(GROUP, VERSION, namespace, PLURAL, release, {"status": {
            "phase": "Succeeded", "canaryWeight": 0, "message": "revision bbbb2222 promoted"}})
        proc.wait(timeout=20)
        reader.join(5)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == 0, proc.stderr.read()
    assert "Succeeded" in lines[-1], lines


def test_watch_exits_3_on_rollback(stack, kube_client, namespace, release):
    kubernetes.client.CustomObjectsApi(kube_client).patch_namespaced_custom_object_status(
        GROUP, VERSION, namespace, PLURAL, release, {"status": {"phase": "RolledBack", "canaryWeight": 0}})
    out = canarist(stack, "watch", release, "-n", namespace, "--interval", "0.2")
    assert out.returncode == 3 and "RolledBack" in out.stdout


def test_missing_release_is_a_clear_error(stack, namespace, crd):
    out = canarist(stack, "status", "nope", "-n", namespace)
    assert out.returncode == 1
    assert f"canaryrelease 'nope' not found in namespace '{namespace}'" in out.stderr and "Traceback" not in out.stderr


def test_no_cluster_access_is_a_clear_error(stack, tmp_path):
    config = yaml.safe_load(Path(stack.kubeconfig).read_text())
    for cluster in config["clusters"]:
        cluster["cluster"]["server"] = "https://127.0.0.1:1"
    broken = tmp_path / "kubeconfig"
    broken.write_text(yaml.safe_dump(config))
    out = canarist(stack, "list", env={"KUBECONFIG": str(broken)})
    assert out.returncode == 2 and "no cluster access" in out.stderr and "Traceback" not in out.stderr
    out = canarist(stack, "list", env={"KUBECONFIG": str(tmp_path / "missing")})
    assert out.returncode == 2 and "no cluster access" in out.stderr


def test_kubectl_plugin(stack, namespace, release):
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", "KUBECONFIG": str(stack.kubeconfig)}
    out = subprocess.run([str(stack.cluster.bin_dir / "kubectl"), "canarist", "list", "-n", namespace],
                         capture_output=True, text=True, env=env, timeout=60)
    assert out.returncode == 0 and "bot" in out.stdout, out.stderr
