"""Prompts and configuration are releases (issue 11): the ConfigMaps and Secrets the Deployment
uses are part of its revision. On the local stack with its data plane: pods are processes that
read their environment from the ConfigMap and Secret when they start, users' requests go through
the gateway, and a real judge scores the answers."""

from __future__ import annotations

import base64
import json
import time

import pytest

from canarist.devstack.demoapp import prompt_digest
from canarist.devstack.gateway_traffic import GatewayTraffic
from canarist.devstack.procs import wait_until
from canarist.devstack.traffic import arithmetic_questions

from .harness import canary_release, deployment

pytestmark = [pytest.mark.cluster, pytest.mark.prometheus]

PROMPTS = "support-bot-prompts"
MODEL = "support-bot-model"
EXACT = "You are a careful calculator. Give every result exactly."
ROUNDED = "You are a friendly calculator. Keep it light: round every result to the nearest ten."
TERSE = "You are a calculator. Answer with the exact result and nothing else."
OLD_KEY = "sk-test-ROTATE-ME-0f3e9a1c"
NEW_KEY = "sk-test-ROTATED-7b2d44e0"


def with_config(body: dict) -> dict:
    """The app's container reads its system prompt from the ConfigMap and its model key from the Secret."""
    container = body["spec"]["template"]["spec"]["containers"][0]
    container["env"] = [
        {"name": "SYSTEM_PROMPT", "valueFrom": {"configMapKeyRef": {"name": PROMPTS, "key": "system-prompt"}}},
        {"name": "MODEL_API_KEY", "valueFrom": {"secretKeyRef": {"name": MODEL, "key": "api-key"}}},
    ]
    return body


def set_prompt(cluster, text: str) -> None:
    cluster.core.patch_namespaced_config_map(PROMPTS, cluster.namespace, {"data": {"system-prompt": text}})


def copy_prompt(cluster) -> str:
    return cluster.core.read_namespaced_config_map(f"{PROMPTS}-primary", cluster.namespace).data["system-prompt"]


def env_sources(cluster, deployment_name: str) -> dict[str, str]:
    """Which object each env var of the Deployment's pods comes from, read from the pods' spec."""
    pods = cluster.core.list_namespaced_pod(cluster.namespace).items
    sources: dict[str, set[str]] = {}
    for pod in pods:
        if pod.metadata.deletion_timestamp or not any(o.name.startswith(f"{deployment_name}-")
                                                      and o.name.count("-") == deployment_name.count("-") + 1
                                                      for o in pod.metadata.owner_references or []):
            continue
        for item in pod.spec.containers[0].env or []:
            ref = item.value_from and (item.value_from.config_map_key_ref or item.value_from.secret_key_ref)
            if ref:
                sources.setdefault(item.name, set()).add(ref.name)
    return {name: "+".join(sorted(refs)) for name, refs in sources.items()}


@pytest.fixture
def setup(stack, cluster, operator, judge, hostname, pods):
    cluster.core.create_namespaced_config_map(cluster.namespace, {"metadata": {"name": PROMPTS},
                                                                  "data": {"system-prompt": EXACT}})
    cluster.core.create_namespaced_secret(cluster.namespace, {"metadata": {"name": MODEL},
                                                              "stringData": {"api-key": OLD_KEY}})
    reporting = f"--judge-url {judge.url} --release {cluster.namespace}/web"
    cluster.apps.create_namespaced_deployment(cluster.namespace, with_config(
        deployment("web", "registry.test/web:v1", process=True, args=reporting)))
    release = canary_release("web", "web", hostname=hostname, failureLimit=0)
    release["spec"]["steps"] = [20, 50, 100]
    release["spec"]["analysis"]["judge"] = {"url": judge.url, "minScore": 0.8, "maxRegression": 0.1,
                                            "minSamples": 8, "timeout": "2s"}
    cluster.custom.create_namespaced_custom_object("canarist.dev", "v1alpha1", cluster.namespace, "canaryreleases",
                                                   release)
    cluster.wait_phase("web", "Idle", 90)
    with GatewayTraffic(stack.gateway.url, hostname, rps=30, questions=arithmetic_questions(40)) as traffic:
        traffic.wait_served("web-primary")
        yield traffic


def test_a_worse_prompt_is_rolled_back_by_the_judge_and_a_good_one_promoted(cluster, setup, operator):
    traffic = setup
    status = cluster.status("web")
    assert {(c["kind"], c["name"]) for c in status["revisions"]["primaryConfig"]} == {("ConfigMap", PROMPTS),
                                                                                     ("Secret", MODEL)}
    # The primary runs on canarist's copies, owned by the release; the target reads the originals.
    assert env_sources(cluster, "web-primary") == {"SYSTEM_PROMPT": f"{PROMPTS}-primary", "MODEL_API_KEY": f"{MODEL}-primary"}
    copy = cluster.core.read_namespaced_config_map(f"{PROMPTS}-primary", cluster.namespace)
    assert copy.data["system-prompt"] == EXACT
    assert [o.kind for o in copy.metadata.owner_references] == ["CanaryRelease"]

    edited = time.time()
    set_prompt(cluster, ROUNDED)
    status = wait_until(lambda: (s := cluster.status("web")).get("phase") == "Progressing" and s, 15,
                        "the prompt edit to start a rollout")
    started_after = time.time() - edited
    print(f"prompt edit -> rollout started (Progressing) in {started_after:.1f}s")
    assert started_after < 12, f"a tracked object's change starts the rollout within a tick or two ({started_after:.1f}s)"
    assert any(f"ConfigMap '{PROMPTS}' changed" in c for c in status["revisions"]["changes"]), status["revisions"]
    assert not any("pod template" in c for c in status["revisions"]["changes"])

    # During the rollout the primary answers with the old prompt and the canary with the new one.
    wait_until(lambda: cluster.status("web").get("canaryWeight", 0) > 0 or cluster.status("web")["phase"] != "Progressing",
               60, "the first step")
    mid = time.time()
    assert env_sources(cluster, "web") == {"SYSTEM_PROMPT": PROMPTS, "MODEL_API_KEY": MODEL}
    status = cluster.wait_phase("web", {"RolledBack", "Succeeded"}, 150)
    assert status["phase"] == "RolledBack", status
    seen = traffic.prompts(since=edited)
    assert seen[("web-primary", prompt_digest(EXACT))] > 0
    assert seen[("web", prompt_digest(ROUNDED))] > 0, seen
    assert seen[("web-primary", prompt_digest(ROUNDED))] == 0 and seen[("web", prompt_digest(EXACT))] == 0, seen
    assert traffic.served(since=mid)["web"] > 0
    judge_score = next(c for c in status["lastChecks"] if c["name"] == "judge-score")
    assert judge_score["result"] == "Failed" and judge_score["value"] < 0.8
    assert copy_prompt(cluster) == EXACT, "a rollback leaves the primary's copy with the stable prompt"
    # The route leaves the canary in the tick that records the rollback; the gateway follows within moments.
    settled = time.time() + 2
    time.sleep(5)
    assert set(traffic.prompts(since=settled)) == {("web-primary", prompt_digest(EXACT))}

    # A good prompt walks the steps and is promoted: the copy then holds it, and so does the primary.
    set_prompt(cluster, TERSE)
    cluster.wait_phase("web", "Progressing", 15)
    status = cluster.wait_phase("web", {"RolledBack", "Succeeded"}, 180)
    assert status["phase"] == "Succeeded", status
    assert copy_prompt(cluster) == TERSE
    assert [c["hash"] for c in status["revisions"]["primaryConfig"] if c["name"] == PROMPTS] == \
        [c["hash"] for c in status["revisions"]["canaryConfig"] if c["name"] == PROMPTS]
    wait_until(lambda: set(traffic.prompts(since=time.time() - 2)) == {("web-primary", prompt_digest(TERSE))}, 60,
               "the primary's pods to answer with the promoted prompt")
    assert not [a for a in traffic.failures(since=edited) if a.served_by != "web"], \
        "no user request to the stable version failed"

    # Deletion hands the Deployment back: it reads the ConfigMap itself, and the copies go with the release.
    cluster.custom.delete_namespaced_custom_object("canarist.dev", "v1alpha1", cluster.namespace, "canaryreleases", "web")
    wait_until(lambda: set(traffic.prompts(since=time.time() - 2)) == {("web", prompt_digest(TERSE))}, 90,
               "the handed-back Deployment to answer alone, with the promoted prompt")
    wait_until(lambda: not cluster.core.list_namespaced_config_map(
        cluster.namespace, field_selector=f"metadata.name={PROMPTS}-primary").items, 60, "the copy to be collected")
    assert cluster.core.read_namespaced_config_map(PROMPTS, cluster.namespace).data["system-prompt"] == TERSE


def test_a_rotated_model_key_is_released_like_a_new_image_and_its_value_is_written_nowhere(cluster, setup,
                                                                                           operator):
    traffic = setup
    secret = cluster.core.read_namespaced_secret(MODEL, cluster.namespace)
    cluster.core.patch_namespaced_secret(MODEL, cluster.namespace, {"stringData": {"api-key": NEW_KEY}})
    status = wait_until(lambda: (s := cluster.status("web")).get("phase") == "Progressing" and s, 15,
                        "the key rotation to start a rollout")
    assert any(f"Secret '{MODEL}' changed" in c for c in status["revisions"]["changes"]), status["revisions"]
    status = cluster.wait_phase("web", {"RolledBack", "Succeeded"}, 180)
    assert status["phase"] == "Succeeded", status
    copy = cluster.core.read_namespaced_secret(f"{MODEL}-primary", cluster.namespace)
    assert base64.b64decode(copy.data["api-key"]).decode() == NEW_KEY
    assert copy.type == secret.type

    # Neither key, nor its base64, appears in anything canarist writes.
    written = [json.dumps(cluster.release("web"))]
    written += [f"{e.reason} {e.message}" for e in cluster.core.list_namespaced_event(cluster.namespace).items]
    written.append(operator.log_path.read_text(errors="replace"))
    for key in (OLD_KEY, NEW_KEY):
        for form in (key, base64.b64encode(key.encode()).decode()):
            assert not any(form in text for text in written), "a Secret's value leaked"
    assert traffic.codes()["200"] > 0
