"""Tracked configuration: which objects a pod template references, how they enter the revision,
how the primary's template points at its copies, and the engine's handling of a config-only change."""

from __future__ import annotations

import base64

from canarist.api.status import Phase, TrackedConfig
from canarist.engine import ScaleCanary, SetRoute
from canarist.engine.changes import changes
from canarist.kube.configcache import ConfigCache
from canarist.kube.configtracking import (ConfigRef, TrackedObject, content_digest, name_problems, primary_template,
                                          references, revision_of_target)

from .engine_sim import PASS, Sim

TEMPLATE = {
    "metadata": {"labels": {"app": "bot"}},
    "spec": {
        "volumes": [
            {"name": "prompts", "configMap": {"name": "bot-prompts"}},
            {"name": "tls", "secret": {"secretName": "bot-tls", "optional": True}},
            {"name": "all", "projected": {"sources": [{"configMap": {"name": "bot-extra", "optional": True}},
                                                      {"secret": {"name": "bot-key"}},
                                                      {"downwardAPI": {"items": []}}]}},
        ],
        "initContainers": [{"name": "init", "envFrom": [{"configMapRef": {"name": "bot-init"}}]}],
        "containers": [{
            "name": "app",
            "envFrom": [{"secretRef": {"name": "bot-env", "optional": True}}, {"configMapRef": {"name": "bot-prompts"}}],
            "env": [
                {"name": "LITERAL", "value": "x"},
                {"name": "MODEL", "valueFrom": {"configMapKeyRef": {"name": "bot-model", "key": "model", "optional": True}}},
                {"name": "API_KEY", "valueFrom": {"secretKeyRef": {"name": "bot-key", "key": "key"}}},
                {"name": "POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
            ],
        }],
    },
}


def test_every_kind_of_reference_is_found_once_and_optional_only_if_every_use_is():
    assert references(TEMPLATE) == [
        ConfigRef("ConfigMap", "bot-extra", True), ConfigRef("ConfigMap", "bot-init", False),
        ConfigRef("ConfigMap", "bot-model", True), ConfigRef("ConfigMap", "bot-prompts", False),
        ConfigRef("Secret", "bot-env", True), ConfigRef("Secret", "bot-key", False),
        ConfigRef("Secret", "bot-tls", True)]
    assert references({"spec": {"containers": [{"name": "a", "image": "x"}]}}) == []


def test_the_primarys_template_points_every_tracked_reference_at_the_copy_and_leaves_the_rest():
    tracked = [TrackedObject("ConfigMap", "bot-prompts", "a"), TrackedObject("Secret", "bot-key", "b"),
               TrackedObject("Secret", "bot-tls", None)]
    out = primary_template(TEMPLATE, tracked)
    volumes = {v["name"]: v for v in out["spec"]["volumes"]}
    assert volumes["prompts"]["configMap"]["name"] == "bot-prompts-primary"
    assert volumes["tls"]["secret"]["secretName"] == "bot-tls-primary"
    sources = volumes["all"]["projected"]["sources"]
    assert sources[0]["configMap"]["name"] == "bot-extra"  # not tracked (e.g. opted out): shared
    assert sources[1]["secret"]["name"] == "bot-key-primary"
    app = out["spec"]["containers"][0]
    assert app["envFrom"][1]["configMapRef"]["name"] == "bot-prompts-primary"
    assert app["env"][2]["valueFrom"]["secretKeyRef"] == {"name": "bot-key-primary", "key": "key"}
    assert out["spec"]["initContainers"][0]["envFrom"][0]["configMapRef"]["name"] == "bot-init"
    assert TEMPLATE["spec"]["volumes"][0]["configMap"]["name"] == "bot-prompts", "the target's template is untouched"


def test_the_revision_changes_with_the_content_of_a_tracked_object_and_not_without_one():
    prompt = TrackedObject("ConfigMap", "bot-prompts", content_digest("ConfigMap", {"data": {"p": "Be exact."}}))
    edited = TrackedObject("ConfigMap", "bot-prompts", content_digest("ConfigMap", {"data": {"p": "Round it."}}))
    assert revision_of_target("t1", []) == "t1", "without tracked objects the revision is the template hash"
    assert revision_of_target("t1", [prompt]) != revision_of_target("t1", [edited])
    assert revision_of_target("t1", [prompt]) != revision_of_target("t2", [prompt])
    assert revision_of_target("t1", [prompt, edited][:1]) == revision_of_target("t1", [prompt])
    absent = TrackedObject("ConfigMap", "bot-prompts", None)
    assert revision_of_target("t1", [absent]) not in (revision_of_target("t1", [prompt]), "t1")


def test_a_secrets_hash_is_keyed_by_its_uid_so_a_guess_of_its_value_cannot_be_checked():
    def secret(value: str, uid: str) -> dict:
        return {"metadata": {"uid": uid}, "type": "Opaque", "data": {"key": base64.b64encode(value.encode()).decode()}}
    a = content_digest("Secret", secret("hunter2", "uid-1"))
    assert a == content_digest("Secret", secret("hunter2", "uid-1"))
    assert a != content_digest("Secret", secret("hunter3", "uid-1"))
    assert a != content_digest("Secret", secret("hunter2", "uid-2"))
    # Hashing the guessed content without the key does not give what status shows.
    unkeyed = content_digest("ConfigMap", {"data": secret("hunter2", "")["data"]})
    assert a != unkeyed and "hunter2" not in a


def test_a_copy_name_past_the_limit_is_a_problem_that_names_the_object_and_the_way_out():
    problems = name_problems([TrackedObject("ConfigMap", "p" * 250, "a"), TrackedObject("ConfigMap", "ok", "b")])
    assert len(problems) == 1 and "canarist.dev/track" in problems[0] and "ConfigMap" in problems[0]


class FakeApi:
    """Counts the GETs the cache falls back to (it is meant to live off the watch)."""

    def __init__(self, objects: dict) -> None:
        self.objects, self.gets = objects, 0


def cache_with(objects: dict, monkeypatch, clock=None) -> tuple[ConfigCache, FakeApi]:
    api = FakeApi(objects)

    def read(_api, namespace, kind, name):
        api.gets += 1
        return api.objects.get((kind, name))
    monkeypatch.setattr("canarist.kube.configcache.read_object", read)
    return ConfigCache(clock=clock or (lambda: 0.0)), api


def test_the_cache_answers_from_watch_events_without_reading_the_api(monkeypatch):
    cache, api = cache_with({}, monkeypatch)
    cache.on_event("ConfigMap", None, {"metadata": {"namespace": "ns", "name": "p"}, "data": {"a": "1"}})
    first = cache.get(api, "ns", "ConfigMap", "p")
    cache.on_event("ConfigMap", "MODIFIED", {"metadata": {"namespace": "ns", "name": "p"}, "data": {"a": "2"}})
    second = cache.get(api, "ns", "ConfigMap", "p")
    assert first.digest != second.digest and api.gets == 0
    cache.on_event("ConfigMap", "DELETED", {"metadata": {"namespace": "ns", "name": "p"}, "data": {"a": "2"}})
    assert cache.get(api, "ns", "ConfigMap", "p") is None and api.gets == 0


def test_an_object_the_watch_has_not_reported_is_read_once_then_again_only_after_a_while(monkeypatch):
    now = [0.0]
    cache, api = cache_with({("Secret", "k"): {"metadata": {"uid": "u"}, "data": {"x": "eQ=="}}}, monkeypatch,
                            clock=lambda: now[0])
    assert cache.get(api, "ns", "Secret", "k") is not None and api.gets == 1
    cache.get(api, "ns", "Secret", "k")
    assert api.gets == 1
    now[0] += 60
    cache.get(api, "ns", "Secret", "k")
    assert api.gets == 2, "without the watch an unconfirmed entry is re-read, so a change is not missed for ever"


def test_opted_out_objects_are_not_tracked_and_missing_required_ones_block_with_the_fix(monkeypatch):
    cache, api = cache_with({}, monkeypatch)
    cache.on_event("ConfigMap", None, {"metadata": {"namespace": "ns", "name": "limits",
                                                    "annotations": {"canarist.dev/track": "false"}}, "data": {}})
    cache.on_event("ConfigMap", None, {"metadata": {"namespace": "ns", "name": "p"}, "data": {"a": "1"}})
    refs = [ConfigRef("ConfigMap", "limits"), ConfigRef("ConfigMap", "p"), ConfigRef("ConfigMap", "gone", True),
            ConfigRef("Secret", "needed")]
    tracked, problems = cache.tracked(api, "ns", "bot", refs)
    assert [(t.kind, t.name, t.digest is None) for t in tracked] == [
        ("ConfigMap", "p", False), ("ConfigMap", "gone", True), ("Secret", "needed", True)]
    assert len(problems) == 1 and "Secret 'needed'" in problems[0] and "optional: true" in problems[0]
    assert problems[0].startswith("spec.targetRef.name:")


def test_changes_name_the_objects_and_short_hashes_only():
    before = [TrackedConfig(kind="ConfigMap", name="bot-prompts", hash="aaaaaaaa11"),
              TrackedConfig(kind="Secret", name="bot-key", hash="bbbbbbbb22")]
    after = [TrackedConfig(kind="ConfigMap", name="bot-prompts", hash="cccccccc33"),
             TrackedConfig(kind="Secret", name="bot-key", hash="bbbbbbbb22"),
             TrackedConfig(kind="ConfigMap", name="bot-model", hash=None)]
    assert changes("t1", "t1", before, after) == [
        "ConfigMap 'bot-prompts' changed (aaaaaaaa -> cccccccc)", "ConfigMap 'bot-model' is now referenced (absent)"]
    assert changes("t1", "t2", before, before[:1]) == ["pod template changed (t1 -> t2)",
                                                        "Secret 'bot-key' is no longer referenced"]


def prompt(digest: str) -> tuple:
    return (TrackedConfig(kind="ConfigMap", name="bot-prompts", hash=digest),)


def test_a_prompt_change_mid_rollout_replaces_the_canarys_pods_before_any_user_reaches_them():
    sim = Sim(template="t1", config=prompt("p1"), target="rev1").initialized()
    assert sim.status.revisions.primary_config == list(prompt("p1"))
    sim.target, sim.config = "rev2", prompt("p2")
    d = sim.tick()
    assert sim.status.phase == Phase.PROGRESSING and sim.status.revisions.changes == [
        "ConfigMap 'bot-prompts' changed (p1 -> p2)"]
    started = next(e for e in d.events if e.reason == "RolloutStarted")
    assert "ConfigMap 'bot-prompts' changed" in started.message
    for _ in range(10):
        sim.tick(PASS)
        if sim.status.canary_weight == 20:
            break
    assert sim.canary_up and sim.status.canary_weight == 20
    # The prompt is edited again: same pod template, so the Deployment would keep its pods, which
    # read the old prompt. They are replaced while no user is routed to them.
    sim.target, sim.config = "rev3", prompt("p3")
    d = sim.tick(PASS)
    assert sim.status.restarting_canary and sim.route == (100, 0)
    assert d.actions.index(SetRoute(100, 0)) < d.actions.index(ScaleCanary(up=False)) and not sim.canary_up
    d = sim.tick(PASS)  # the pods are gone: the canary comes up again with the new prompt
    assert not sim.status.restarting_canary and sim.canary_up and ScaleCanary(up=True) in d.actions
    assert sim.status.canary_weight == 0
    for _ in range(40):
        sim.tick(PASS)
        if sim.status.phase == Phase.SUCCEEDED:
            break
    assert sim.status.phase == Phase.SUCCEEDED
    assert sim.status.revisions.primary_config == list(prompt("p3"))


def test_a_new_pod_template_mid_rollout_needs_no_restart_its_pods_are_new():
    sim = Sim(template="t1", config=prompt("p1"), target="rev1").initialized()
    sim.target, sim.template = "rev2", "t2"
    for _ in range(10):
        sim.tick(PASS)
    sim.target, sim.template, sim.config = "rev3", "t3", prompt("p2")
    sim.tick(PASS)
    assert not sim.status.restarting_canary and sim.canary_up


def test_canarist_status_shows_the_tracked_objects_of_both_revisions_and_why_the_rollout_started():
    from canarist.cli.releases import render_config

    lines = render_config({
        "changes": ["ConfigMap 'bot-prompts' changed (aaaaaaaa -> cccccccc)"],
        "primaryConfig": [{"kind": "ConfigMap", "name": "bot-prompts", "hash": "aaaaaaaa11"},
                          {"kind": "Secret", "name": "bot-key", "hash": "bbbbbbbb22"}],
        "canaryConfig": [{"kind": "ConfigMap", "name": "bot-prompts", "hash": "cccccccc33"},
                         {"kind": "Secret", "name": "bot-key", "hash": "bbbbbbbb22"}]})
    text = "\n".join(lines)
    assert "changes    ConfigMap 'bot-prompts' changed (aaaaaaaa -> cccccccc)" in text
    row = next(line for line in lines if "ConfigMap/bot-prompts" in line)
    assert "aaaaaaaa" in row and "cccccccc" in row and row.endswith("changed")
    assert not next(line for line in lines if "Secret/bot-key" in line).endswith("changed")
    assert render_config({}) == []
