"""Cohorts (issue 13) on the local stack: the route gives a named segment of traffic a larger canary
share than the rest, the gateway (Traefik) tags its requests, the pods report the tag to the judge,
and each cohort gets its own verdict. Everything is real: the gateway splits, the pods are
processes, the judge is the service with its scripted LLM, Prometheus scrapes the pods."""

from __future__ import annotations

import math
import time

import pytest

from canarist.devstack.gateway_traffic import GatewayTraffic
from canarist.devstack.procs import wait_until
from canarist.devstack.traffic import arithmetic_questions

from .harness import canary_release, deployment

pytestmark = [pytest.mark.cluster, pytest.mark.prometheus]

GERMAN = {"name": "Accept-Language", "value": "de"}
# Errors per cohort: {{ cohort }} is the cohort's name when the gate is evaluated for one cohort, and
# ".*" (every request) for all traffic together.
COHORT_ERROR_RATE = (
    'sum(rate(http_requests_total{namespace="{{ namespace }}",deployment="{{ canary }}",code=~"5..",'
    'cohort=~"{{ cohort }}"}[15s])) / sum(rate(http_requests_total{namespace="{{ namespace }}",'
    'deployment="{{ canary }}",cohort=~"{{ cohort }}"}[15s]))')


def within(count: int, n: int, share: float, sigmas: float = 4.0) -> bool:
    """`count` of `n` is a binomial draw at `share`, within `sigmas` standard deviations."""
    return abs(count - n * share) <= sigmas * math.sqrt(n * share * (1 - share)) + 1


def start(stack, cluster, release: dict, hostname: str, args: str = "") -> None:
    cluster.apps.create_namespaced_deployment(cluster.namespace, deployment("web", "registry.test/web:v1",
                                                                            process=True, args=args))
    cluster.custom.create_namespaced_custom_object("canarist.dev", "v1alpha1", cluster.namespace, "canaryreleases",
                                                   release)
    cluster.wait_phase("web", "Idle", 90)
    # The route canarist wrote is in the gateway's configuration once the primary's pods answer
    # through it (Traefik loads a new route a moment after it is written).
    with GatewayTraffic(stack.gateway.url, hostname, rps=20) as probe:
        probe.wait_served("web-primary")


def test_a_cohort_gets_its_factor_of_the_step_where_its_requests_land(stack, cluster, operator, hostname, pods):
    release = canary_release("web", "web", hostname=hostname, interval="10m")  # no check: step 1 stays
    release["spec"]["steps"] = [1, 100]
    release["spec"]["cohorts"] = [{"name": "de", "matches": [{"headers": [GERMAN]}], "factor": 5}]
    start(stack, cluster, release, hostname)
    cluster.set_image("web", "registry.test/web:v2")

    def at_first_step():
        status = cluster.status("web")
        cohorts = status.get("cohorts") or []
        return status if status.get("canaryWeight") == 1 and cohorts and cohorts[0]["canaryWeight"] == 5 else None

    status = wait_until(at_first_step, 90, "step 1 with the cohort at 5 % in the route")
    route = cluster.custom.get_namespaced_custom_object("gateway.networking.k8s.io", "v1", cluster.namespace,
                                                        "httproutes", "web")
    assert [r["backendRefs"][1]["weight"] for r in route["spec"]["rules"]] == [5, 1], "the cohort's rule comes first"
    mix = [("de", {"Accept-Language": "de"}, 1), ("en", {"Accept-Language": "en"}, 1),
           # A client claiming a cohort by sending the header the route sets gets no cohort.
           ("spoofed", {"Accept-Language": "en", "X-Canarist-Cohort": "de"}, 0.25)]
    with GatewayTraffic(stack.gateway.url, hostname, rps=90, mix=mix) as traffic:
        wait_until(lambda: len(traffic.answers) >= 4500, 120, "4500 answers")
    assert not traffic.failures(), traffic.failures()[:5]
    german, english, spoofed = traffic.landed("de"), traffic.landed("en"), traffic.landed("spoofed")
    n_de, n_en = sum(german.values()), sum(english.values())
    canary_de = german[("web", "de")]
    canary_en = english[("web", "")] + spoofed[("web", "")]
    n_rest = n_en + sum(spoofed.values())
    print(f"cohort de: {canary_de} of {n_de} on the canary ({canary_de / n_de:.2%}, want 5 %); rest: {canary_en} "
          f"of {n_rest} ({canary_en / n_rest:.2%}, want 1 %)")
    assert set(german) <= {("web", "de"), ("web-primary", "de")}, "every German request is tagged, on both sides"
    assert set(english) | set(spoofed) <= {("web", ""), ("web-primary", "")}, "no other request is tagged"
    assert within(canary_de, n_de, 0.05), (canary_de, n_de)
    assert within(canary_en, n_rest, 0.01), (canary_en, n_rest)
    assert status["phase"] == "Progressing"


def test_a_canary_bad_in_one_language_is_rolled_back_by_that_cohort_while_all_traffic_passes(
        stack, cluster, operator, judge, hostname, pods):
    reporting = f"--judge-url {judge.url} --release {cluster.namespace}/web"
    release = canary_release("web", "web", hostname=hostname, failureLimit=0)
    release["spec"]["steps"] = [20, 50, 100]
    release["spec"]["analysis"]["metrics"] = [
        {"name": "error-rate", "prometheus": {"query": COHORT_ERROR_RATE}, "max": 0.05}]
    release["spec"]["analysis"]["judge"] = {"url": judge.url, "minScore": 0.8, "minSamples": 8, "timeout": "2s"}
    # Each step holds until 8 German answers are judged: few Germans reach the canary, and a step of
    # all traffic passes within seconds.
    release["spec"]["cohorts"] = [{"name": "de", "matches": [{"headers": [GERMAN]}], "factor": 2, "minSamples": 8}]
    start(stack, cluster, release, hostname, reporting)
    mix = [("de", {"Accept-Language": "de"}, 0.05), ("en", {"Accept-Language": "en-GB,en;q=0.9"}, 0.95)]
    with GatewayTraffic(stack.gateway.url, hostname, rps=40, questions=arithmetic_questions(10_000), in_order=True,
                        mix=mix) as traffic:
        released = time.time()
        # Right in English, wrong in German: every German answer is off, with status 200.
        cluster.set_image("web", "registry.test/web:v2", args=f"{reporting} --wrong-languages de")
        status = cluster.wait_phase("web", {"RolledBack", "Succeeded"}, 180)
        assert not traffic.failures(since=released), "no user request failed"
        german = traffic.landed("de", since=released)
    assert status["phase"] == "RolledBack", status
    checks = {c["name"]: c for c in status["lastChecks"]}
    everything, cohort = checks["judge-score"], checks["judge-score[de]"]
    print(f"rolled back by the cohort: judge-score[de]={cohort['value']} ({cohort['message']}); all traffic "
          f"together judge-score={everything['value']} ({everything['message']})")
    assert cohort["result"] == "Failed" and cohort["value"] < 0.8 and cohort["cohort"] == "de"
    assert everything["result"] == "Passed" and everything["value"] >= 0.8, "all traffic together passed"
    assert "judge-score[de]" in status["message"]
    assert german[("web", "de")] > 0, "German users reached the canary through the cohort's rule"
    # The error-rate gate ran for the cohort too, on the pods' own per-cohort series.
    assert "error-rate" in checks and "error-rate[de]" in checks and checks["error-rate[de]"]["cohort"] == "de"
    [de] = status["cohorts"]
    assert de["name"] == "de" and de["judged"] >= 8, de
    # The next tick reads the route back: the cohort's share is 0 again, as is everyone's.
    wait_until(lambda: cluster.status("web")["cohorts"][0]["canaryWeight"] == 0, 30, "the cohort's rule at 0 %")
    assert cluster.route_weights("web") == (100, 0)


def test_overlapping_cohorts_are_named_in_a_condition_and_the_stable_version_keeps_serving(
        stack, cluster, operator, hostname, pods, gateway_traffic):
    release = canary_release("web", "web", hostname=hostname)
    release["spec"]["cohorts"] = [
        {"name": "de", "matches": [{"headers": [GERMAN]}], "factor": 5},
        {"name": "ios", "matches": [{"headers": [{"name": "X-Client", "value": "ios"}]}], "factor": 2}]
    start(stack, cluster, release, hostname)
    released = time.time()
    cluster.set_image("web", "registry.test/web:v2")

    def refused():
        ready = next((c for c in cluster.status("web").get("conditions", []) if c["type"] == "Ready"), {})
        return ready if ready.get("reason") == "InvalidSpec" else None

    ready = wait_until(refused, 30, "the overlap to be named")
    assert "spec.cohorts[1] (ios) overlaps spec.cohorts[0] (de)" in ready["message"], ready
    assert "make them exclusive" in ready["message"]
    time.sleep(3)
    assert cluster.status("web")["phase"] == "Idle"
    assert not gateway_traffic.failures(since=released)
    assert set(gateway_traffic.served(since=released)) == {"web-primary"}
