"""The watch-fed object cache, the gate runner and the client's rate limit."""

from __future__ import annotations

import threading
import time

from canarist.analysis.runner import GateRunner
from canarist.kube.client import TokenBucket, resource_of
from canarist.kube.objectcache import ObjectCache


def obj(name="web", rv="5", uid="u1", ns="ns", **extra):
    return {"metadata": {"name": name, "namespace": ns, "uid": uid, "resourceVersion": rv,
                         "managedFields": [{"manager": "kubectl"}]}, **extra}


def test_a_kind_not_watched_is_read_from_the_api_every_time():
    cache, reads = ObjectCache(), []
    assert cache.get("Deployment", "ns", "web", lambda: reads.append(1) or obj()) == obj()
    cache.get("Deployment", "ns", "web", lambda: reads.append(1) or obj())
    assert len(reads) == 2 and cache.api_reads == 2


def test_a_watched_kind_is_read_from_the_cache_and_a_miss_means_absent():
    cache = ObjectCache(watched={"Deployment"})
    cache.on_event("Deployment", None, obj(spec={"replicas": 2}))
    never = lambda: (_ for _ in ()).throw(AssertionError("no API read"))  # noqa: E731
    got = cache.get("Deployment", "ns", "web", never)
    assert got["spec"] == {"replicas": 2} and "managedFields" not in got["metadata"]
    got["spec"]["replicas"] = 9  # callers edit what they read: the cache keeps its own copy
    assert cache.get("Deployment", "ns", "web", never)["spec"]["replicas"] == 2
    assert cache.get("Deployment", "ns", "other", never) is None
    assert cache.api_reads == 0


def test_a_list_looks_only_at_its_namespaces_objects_of_its_kind_and_copies_only_those_it_returns():
    cache = ObjectCache(watched={"Deployment", "HorizontalPodAutoscaler"})
    for i in range(1000):
        cache.on_event("Deployment", None, obj(f"d{i}", uid=f"d{i}"))
    for i in range(3):
        cache.on_event("HorizontalPodAutoscaler", None, obj(f"h{i}", uid=f"h{i}", spec={"target": f"d{i}"}))
    cache.on_event("HorizontalPodAutoscaler", None, obj("h0", uid="x", ns="other"))
    asked: list[str] = []

    def scales_d1(hpa: dict) -> bool:
        asked.append(hpa["metadata"]["name"])
        return hpa["spec"]["target"] == "d1"

    found = cache.list("HorizontalPodAutoscaler", "ns", lambda: [], where=scales_d1)
    assert [h["metadata"]["name"] for h in found] == ["h1"]
    assert sorted(asked) == ["h0", "h1", "h2"], "the 1,000 Deployments and the other namespace are not looked at"
    found[0]["spec"]["target"] = "edited"
    assert cache.list("HorizontalPodAutoscaler", "ns", lambda: [], where=scales_d1)[0]["spec"]["target"] == "d1"
    assert cache.sizes() == {"Deployment": 1000, "HorizontalPodAutoscaler": 4}
    cache.forget("HorizontalPodAutoscaler", "other", "h0")
    cache.on_event("Deployment", "DELETED", obj("d5", uid="d5"))
    assert cache.sizes() == {"Deployment": 999, "HorizontalPodAutoscaler": 3}
    # A kind not watched: read from the API, and `where` still applies.
    assert [o["metadata"]["name"] for o in cache.list("Service", "ns", lambda: [obj("a"), obj("b")],
                                                      where=lambda o: o["metadata"]["name"] == "b")] == ["b"]


def test_a_kind_the_operator_may_not_watch_in_a_namespace_is_read_from_the_api_there_every_time(caplog):
    asked, listed, reads = [], [], []
    cache = ObjectCache(watched={"HorizontalPodAutoscaler", "Deployment"},
                        lister=lambda kind, ns: listed.append((kind, ns)) or [],
                        permitted=lambda kind, ns: asked.append((kind, ns)) or not (kind == "HorizontalPodAutoscaler"
                                                                                   and ns == "locked"))
    # A watch event that did get through must not make the namespace's reads stale.
    cache.on_event("HorizontalPodAutoscaler", None, obj("h", ns="locked", spec={"v": "old"}))
    for _ in range(3):
        got = cache.list("HorizontalPodAutoscaler", "locked", lambda: reads.append(1) or [obj("h", ns="locked",
                                                                                               spec={"v": "new"})])
        assert [h["spec"]["v"] for h in got] == ["new"]
    assert len(reads) == 3, "read from the API on every tick"
    assert asked == [("HorizontalPodAutoscaler", "locked")], "asked once"
    assert not listed, "nothing listed into a cache no watch can keep"
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and "HorizontalPodAutoscaler" in warnings[0] and "'locked'" in warnings[0] \
        and "list and watch verbs" in warnings[0], warnings
    # Elsewhere, and other kinds there, are cached as before.
    assert cache.list("HorizontalPodAutoscaler", "open", lambda: reads.append(1) or []) == []
    assert cache.get("Deployment", "locked", "web", lambda: reads.append(1) or obj()) is None
    assert len(reads) == 3 and listed == [("HorizontalPodAutoscaler", "open"), ("Deployment", "locked")]


def test_entries_never_go_back_in_time_and_a_deletion_removes_only_its_incarnation():
    cache = ObjectCache(watched={"HTTPRoute"})
    cache.put("HTTPRoute", obj(rv="10", spec={"w": 1}))          # our write
    cache.on_event("HTTPRoute", "MODIFIED", obj(rv="9", spec={"w": 0}))  # the watch, late
    assert cache.get("HTTPRoute", "ns", "web", lambda: None)["spec"] == {"w": 1}
    cache.on_event("HTTPRoute", "DELETED", obj(rv="11", uid="old"))  # an older object of that name
    assert cache.get("HTTPRoute", "ns", "web", lambda: None) is not None
    cache.on_event("HTTPRoute", "DELETED", obj(rv="12"))
    assert cache.get("HTTPRoute", "ns", "web", lambda: None) is None


def test_a_fresh_read_refreshes_the_cache_and_lists_come_from_it():
    cache = ObjectCache(watched={"Service"})
    cache.on_event("Service", None, obj(name="a", rv="1"))
    fresh = cache.get("Service", "ns", "a", lambda: obj(name="a", rv="7", spec={"x": 1}), fresh=True)
    assert fresh["metadata"]["resourceVersion"] == "7"
    assert cache.get("Service", "ns", "a", lambda: None)["spec"] == {"x": 1}
    cache.on_event("Service", None, obj(name="b", rv="2", uid="u2"))
    cache.on_event("Service", None, obj(name="c", rv="3", uid="u3", ns="other"))
    assert sorted(o["metadata"]["name"] for o in cache.list("Service", "ns", lambda: [])) == ["a", "b"]
    assert cache.sizes() == {"Service": 3}


def test_the_gate_runner_hands_a_result_to_its_step_only_and_wakes_the_release():
    woken, release = [], threading.Event()
    runner = GateRunner(workers=2, on_done=woken.append)
    assert runner.submit("r", "step1", lambda: (release.wait(5), "checks")[1])
    assert not runner.submit("r", "step1", lambda: "twice"), "one run per release at a time"
    assert runner.take("r", "step1") is None and runner.busy("r")
    release.set()
    deadline = time.monotonic() + 5
    while not woken and time.monotonic() < deadline:
        time.sleep(0.01)
    assert woken == ["r"]
    assert runner.take("r", "step2") is None, "a result for another step is dropped"
    assert not runner.busy("r")
    assert runner.submit("r", "step2", lambda: "fresh")
    taken = None
    while taken is None and time.monotonic() < deadline + 5:
        taken = runner.take("r", "step2")
        time.sleep(0.01)
    assert taken is not None and taken.result == "fresh" and taken.error is None
    runner.shutdown()


def test_a_gate_run_past_its_deadline_is_given_up():
    clock = [0.0]
    runner = GateRunner(workers=1, deadline=30, clock=lambda: clock[0])
    hang = threading.Event()
    runner.submit("r", "s", lambda: hang.wait(5))
    clock[0] = 31
    given_up = runner.take("r", "s")
    assert given_up is not None and given_up.timed_out and not runner.busy("r")
    hang.set()
    runner.shutdown()


def test_the_token_bucket_allows_a_burst_then_paces_requests():
    now, slept = [0.0], []
    bucket = TokenBucket(20, 3, clock=lambda: now[0], sleep=slept.append)
    assert [bucket.take() for _ in range(5)] == [0.0, 0.0, 0.0, 0.05, 0.1]
    now[0] = 10.0
    assert bucket.take() == 0.0


def test_api_errors_are_labelled_by_resource():
    assert resource_of("https://k/apis/apps/v1/namespaces/x/deployments/y/scale") == "deployments/scale"
    assert resource_of("https://k/apis/canarist.dev/v1alpha1/namespaces/n/canaryreleases/w/status") == \
        "canaryreleases/status"
    assert resource_of("https://k/api/v1/namespaces/x/services?watch=1") == "services"
    assert resource_of("https://k/apis/gateway.networking.k8s.io/v1") == "discovery"
