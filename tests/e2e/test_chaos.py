"""Chaos acceptance: many rollouts at once with the operator SIGKILLed at random moments, and each
outside component (Prometheus, the judge, kube-apiserver) stopped in the middle of a step. Every
release's pods are processes on their pod IPs and its users' requests go through the stack's
gateway (Traefik).

    make chaos        # or: .venv/bin/python -m pytest -s tests/e2e/test_chaos.py

The seed is printed; CANARIST_CHAOS_SEED=<seed> replays the same choices (which releases are bad
and how, when the operator dies). CANARIST_CHAOS_ROLLOUTS changes the number of rollouts (32).
"""

from __future__ import annotations

import os
import random
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from canarist.devstack.chaos import Figures, OperatorKiller, Recorder, chaos_seed, judge_back
from canarist.devstack.chart import install_chart, operator_kubeconfig, uninstall_chart
from canarist.devstack.gateway_traffic import GatewayTraffic
from canarist.devstack.judge_server import JudgeServer
from canarist.devstack.procs import wait_until
from canarist.devstack.scripted_llm import ScriptedLLM
from canarist.devstack.traffic import arithmetic_questions

from .harness import Cluster, OperatorProcess, canary_release, deployment

pytestmark = [pytest.mark.cluster, pytest.mark.prometheus]

STEPS = [20, 50, 100]
FINAL = {"Succeeded", "RolledBack"}
ROLLOUTS = int(os.environ.get("CANARIST_CHAOS_ROLLOUTS", "32"))
JUDGED = 6  # half good, half with bad answers; the judge scores every answer, so not all 32
# The route leaves the canary in the rollback's own tick; killed between the status write and the
# route write, the operator does it once restarted: counted from its start, which on a loaded
# 2-core machine takes seconds before the first tick.
ROUTE_BACK_SECONDS = 15.0
STEP_MESSAGES = [f"step {i + 1}/{len(STEPS)}: canary weight {w}%" for i, w in enumerate(STEPS)]


@dataclass(frozen=True)
class Plan:
    name: str
    kind: str                # "good", "errors" (canary answers HTTP 500) or "answers" (wrong, with 200)
    judged: bool             # the judge gate is in its analysis
    error_rate: float = 0.0

    @property
    def good(self) -> bool:
        return self.kind == "good"


def plan(rng: random.Random, rollouts: int) -> list[Plan]:
    metric_gated = rollouts - JUDGED
    kinds = ([("good", True)] * (JUDGED // 2) + [("answers", True)] * (JUDGED - JUDGED // 2)
             + [("good", False)] * (metric_gated // 2) + [("errors", False)] * (metric_gated - metric_gated // 2))
    rng.shuffle(kinds)
    # Half the canaries or more fail: a lucky all-200 check or two may pass, never a whole rollout.
    return [Plan(f"r{i:02d}", kind, judged, rng.choice((0.5, 0.8, 1.0)) if kind == "errors" else 0.0)
            for i, (kind, judged) in enumerate(kinds)]


def say(capsys, text: str) -> None:
    with capsys.disabled():  # shown even without -s: the seed and the figures are the point
        print(f"\n{text}", flush=True)


@contextmanager
def running_operator(stack, namespace: str, log: Path, tick_seconds: float) -> Iterator[OperatorProcess]:
    """The chart's identity and `kopf run`, as the `operator` fixture, with our own tick."""
    install_chart(stack, namespace, "canarist", "--set", f"watchNamespaces={{{namespace}}}",
                  "--set", "judge.enabled=false")
    proc = OperatorProcess(operator_kubeconfig(stack, namespace, "canarist"), namespace, stack.prometheus.url, log,
                           tick_seconds=tick_seconds).start()
    try:
        yield proc
    finally:
        proc.stop()
        uninstall_chart(stack, namespace, "canarist")


def hostname_of(p: Plan, namespace: str) -> str:
    return f"{p.name}.{namespace}.test"


def release_body(p: Plan, judge_url: str, namespace: str) -> dict:
    body = canary_release(p.name, p.name, hostname=hostname_of(p, namespace))
    body["spec"]["steps"] = STEPS
    if p.judged:
        body["spec"]["analysis"]["judge"] = {"url": judge_url, "minScore": 0.8, "maxRegression": 0.1,
                                             "minSamples": 8, "timeout": "2s"}
    return body


def canary_weights(changes: list[tuple[float, tuple[int, int]]]) -> list[int]:
    weights: list[int] = []
    for _, (_, canary) in changes:
        if not weights or weights[-1] != canary:
            weights.append(canary)
    return weights


def route_back_after(route: list[tuple[float, tuple[int, int]]], rolled_back_at: float,
                     starts: list[float]) -> tuple[float, bool] | None:
    """Seconds the operator was up between the RolledBack status and the route at 0%: from the
    rollback, or from the operator's last restart if it was killed in between (a kill right after
    the status write leaves the route to the next operator; the seconds then include the new
    process's start-up), and whether it was. Watch events of two kinds may arrive a little out of
    order, hence the second of slack."""
    back = next((t for t, (_, canary) in route if canary == 0 and t >= rolled_back_at - 1), None)
    if back is None:
        return None
    since = max([rolled_back_at, *(t for t in starts if t <= back)])
    return back - since, since > rolled_back_at


def judge_release(p: Plan, status: dict, events: list, route: list[tuple[float, tuple[int, int]]],
                  rolled_back_at: float | None, primary_image: str, starts: list[float]) -> list[str]:
    """Everything wrong with one finished rollout, as sentences naming it."""
    problems = []
    reasons = Counter(e.reason for e in events)
    started = [e.message for e in events if e.reason == "StepStarted"]
    pairs = Counter((e.reason, e.message) for e in events)
    problems += [f"event {reason} {message!r} posted {n} times" for (reason, message), n in pairs.items() if n > 1]
    for reason in ("Initialized", "RolloutStarted"):
        if reasons[reason] != 1:
            problems.append(f"{reason} events: {reasons[reason]}, expected 1")
    weights = canary_weights(route)
    if p.good:
        if status.get("phase") != "Succeeded":
            problems.append(f"good canary ended {status.get('phase')}: {status.get('message')}")
        if started != STEP_MESSAGES:
            problems.append(f"StepStarted events {started}, expected {STEP_MESSAGES}")
        for reason in ("AnalysisPassed", "Promoted"):
            if reasons[reason] != 1:
                problems.append(f"{reason} events: {reasons[reason]}, expected 1")
        if weights != [0, *STEPS, 0]:
            problems.append(f"route canary weights {weights}, expected [0, *{STEPS}, 0]")
        if not primary_image.endswith(":v2-good"):
            problems.append(f"the primary runs {primary_image} after the promotion")
        return problems

    if status.get("phase") != "RolledBack":
        problems.append(f"bad canary ({p.kind}) ended {status.get('phase')}: {status.get('message')}")
    gate = "judge-" if p.kind == "answers" else "error-rate="
    rolled = [e.message for e in events if e.reason == "RolledBack"]
    if len(rolled) != 1:
        problems.append(f"RolledBack events: {len(rolled)}, expected 1")
    elif gate not in rolled[0]:
        problems.append(f"rolled back for the wrong reason (expected {gate}...): {rolled[0]}")
    if reasons["Promoted"] or reasons["AnalysisPassed"]:
        problems.append(f"bad canary has Promoted/AnalysisPassed events: {dict(reasons)}")
    if started != STEP_MESSAGES[:len(started)] or not started:
        problems.append(f"StepStarted events {started} are not a prefix of {STEP_MESSAGES}")
    if weights != [0, *STEPS[:len(started)], 0]:
        problems.append(f"route canary weights {weights}, expected [0, *{STEPS[:len(started)]}, 0]")
    if rolled_back_at is None:
        problems.append("the RolledBack phase was never seen by the watch")
    else:
        after = [(round(t - rolled_back_at, 2), w) for t, w in route if t > rolled_back_at and w[1] > 0]
        if after:
            problems.append(f"route sent traffic to the canary after the rollback (s after, weights): {after}")
        measured = route_back_after(route, rolled_back_at, starts)
        if measured is None or measured[0] > ROUTE_BACK_SECONDS:
            problems.append(f"the route kept the canary's share {measured if measured is None else round(measured[0], 1)}s "
                            f"(operator up) after the rollback was recorded (limit {ROUTE_BACK_SECONDS}s)")
    return problems


def test_rollouts_are_right_with_the_operator_killed_at_random(stack, kube_client, namespace, canarist_crd, tmp_path,
                                                              capsys):
    seed = chaos_seed()
    plans = plan(random.Random(seed), ROLLOUTS)
    figures = Figures(seed, rollouts=len(plans), good=sum(p.good for p in plans),
                      bad_errors=sum(p.kind == "errors" for p in plans),
                      bad_answers=sum(p.kind == "answers" for p in plans))
    say(capsys, f"chaos: seed {seed}; {figures.rollouts} rollouts through steps {STEPS} "
                f"({', '.join(f'{p.name}={p.kind}' for p in plans)})")
    began, began_at = time.monotonic(), time.time()
    cluster = Cluster(kube_client, namespace)
    problems: list[str] = []
    with ExitStack() as later:
        llm = later.enter_context(ScriptedLLM.start(workdir=tmp_path / "llm"))
        judge = JudgeServer.start(tmp_path / "judge", llm.base_url, sample_rate=1.0)
        later.callback(judge.stop)
        operator = later.enter_context(running_operator(stack, namespace, tmp_path / "operator.log", tick_seconds=1.0))

        # Every release's pods are processes on their pod IPs; a canary's failures are part of its
        # revision (its pod template's arguments).
        reporting = {p.name: f"--judge-url {judge.url} --release {namespace}/{p.name}" if p.judged else ""
                     for p in plans}
        for p in plans:
            cluster.apps.create_namespaced_deployment(namespace, deployment(
                p.name, f"registry.test/{p.name}:v1", replicas=1, process=True, args=reporting[p.name]))
            cluster.custom.create_namespaced_custom_object("canarist.dev", "v1alpha1", namespace, "canaryreleases",
                                                           release_body(p, judge.url, namespace))
        wait_until(lambda: all(cluster.status(p.name).get("phase") == "Idle" for p in plans), 180,
                   "every release Idle")
        drivers = {}
        for i, p in enumerate(plans):
            drivers[p.name] = GatewayTraffic(stack.gateway.url, hostname_of(p, namespace), rps=3 if p.judged else 2,
                                             questions=arithmetic_questions(40) if p.judged else None, seed=i)
            later.callback(drivers[p.name].stop)
            drivers[p.name].start()
        wait_until(lambda: all(drivers[p.name].served(time.time() - 2)[f"{p.name}-primary"] for p in plans), 60,
                   "every release's primary answering through the gateway")
        serving_since = time.time()
        recorder = later.enter_context(Recorder(kube_client, namespace))
        for p in plans:
            behaviour = {"good": "", "errors": f"--error-rate {p.error_rate}", "answers": "--wrong-rate 0.8"}[p.kind]
            cluster.set_image(p.name, f"registry.test/{p.name}:v2-{p.kind}", args=f"{reporting[p.name]} {behaviour}")
        # A kill every 3-9 s after the last restart: 5-10 over a run of a minute or two.
        killer = OperatorKiller(operator, random.Random(f"{seed}/kills"), gap=(3.0, 9.0), max_kills=10).start()
        later.callback(killer.stop)

        def finished() -> list[str]:
            return [p.name for p in plans if cluster.status(p.name).get("phase") not in FINAL]

        try:
            wait_until(lambda: not finished(), 360, "every rollout to finish", interval=2)
        except TimeoutError as exc:
            problems.append(f"{exc}; unfinished: {finished()}")
        killer.stop()
        figures.kills = len(killer.kills)
        kills = [round(t - began_at, 1) for t in killer.kills]
        try:
            wait_until(lambda: all(cluster.route_weights(p.name) == (100, 0) for p in plans), 30,
                       "every route back on the primary")
        except TimeoutError as exc:
            problems.append(str(exc))
        # Listed by name (a hash): put them back in the order they were posted.
        events = sorted((e for e in cluster.core.list_namespaced_event(namespace).items
                         if e.involved_object.kind == "CanaryRelease"),
                        key=lambda e: (e.first_timestamp or e.event_time, e.metadata.creation_timestamp))
        statuses = {p.name: cluster.status(p.name) for p in plans}
        images = {p.name: cluster.deployment(f"{p.name}-primary").spec.template.spec.containers[0].image
                  for p in plans}
        for driver in drivers.values():
            driver.stop()
        # Users of a good release never notice: not one request failed, operator kills and all.
        for p in plans:
            if p.good and (failed := drivers[p.name].failures(serving_since)):
                problems.append(f"{p.name} (good): {len(failed)} user requests failed: "
                                f"{dict(drivers[p.name].codes(serving_since))}")
        # Its last lines that say something (each tick's success would fill any tail).
        operator_log = "\n".join([line for line in operator.log_path.read_text(errors="replace").splitlines()
                                  if "Timer 'tick' succeeded" not in line][-40:])

    latencies: list[tuple[float, str]] = []
    stories: list[str] = []
    for p in plans:
        status = statuses[p.name]
        right = status.get("phase") == ("Succeeded" if p.good else "RolledBack")
        figures.right += right
        figures.wrong += not right
        rolled_back_at = recorder.first_seen(p.name, "RolledBack")
        route = recorder.route_changes(p.name)
        measured = None if rolled_back_at is None else route_back_after(route, rolled_back_at, killer.starts)
        if measured is not None:
            latencies.append((*measured, p.name))
        mine = [e for e in events if e.involved_object.name == p.name]
        found = judge_release(p, status, mine, route, rolled_back_at, images[p.name], killer.starts)
        problems += [f"{p.name} ({p.kind}): {problem}" for problem in found]
        if found:  # what happened to it, in seconds since the test began
            stories.append(f"{p.name}: release {[(round(t - began_at, 1), v) for t, v in recorder.release_changes(p.name)]}"
                           f"\n  route {[(round(t - began_at, 1), v) for t, v in route]}"
                           f"\n  events {[(round(e.first_timestamp.timestamp() - began_at, 1), e.reason, e.message) for e in mine]}")
    figures.seconds = time.monotonic() - began
    summary = figures.line()
    if latencies:
        slowest, restarted, name = max(latencies)
        summary += (f"; rollback status -> route at 0%, operator up: max {slowest:.2f}s ({name}"
                    + (", from the restart of an operator killed in between" if restarted else "") + ")")
        running = [seconds for seconds, restarted, _ in latencies if not restarted]
        if running:
            summary += f"; without a kill in between: max {max(running):.2f}s"
    say(capsys, summary + "\ncommand: CANARIST_CHAOS_SEED=%d make chaos" % seed)
    assert not problems, (f"{summary}\n{len(problems)} problem(s):\n" + "\n".join(problems[:40])
                          + f"\noperator killed at (s): {kills}\n" + "\n".join(stories[:8])
                          + f"\noperator log (tail):\n{operator_log}")


# -- one component out in the middle of a step ------------------------------------------------


def start_release(cluster, hostname: str, args: str = "", **analysis) -> None:
    cluster.apps.create_namespaced_deployment(cluster.namespace, deployment("web", "registry.test/web:v1",
                                                                            process=True, args=args))
    body = canary_release("web", "web", hostname=hostname, **analysis)
    body["spec"]["steps"] = STEPS
    cluster.custom.create_namespaced_custom_object("canarist.dev", "v1alpha1", cluster.namespace, "canaryreleases",
                                                   body)
    cluster.wait_phase("web", "Idle", 60)
    cluster.set_image("web", "registry.test/web:v2")
    wait_until(lambda: cluster.status("web").get("canaryWeight") == STEPS[0], 90, "the first step")


def step_events(cluster) -> list[str]:
    return [e.message for e in cluster.events("web") if e.reason == "StepStarted"]


def hold_while_out(cluster, gate: str, error: str) -> None:
    """With a provider out: the step holds on errors, and never advances or promotes."""
    held = wait_until(lambda: (s := cluster.status("web")).get("providerErrors", 0) >= 1 and s, 60,
                      f"a provider error from {gate}")
    steps_then = step_events(cluster)
    wait_until(lambda: cluster.status("web").get("providerErrors", 0) >= 3, 60, "three provider errors")
    status = cluster.status("web")
    assert status["phase"] == "Progressing" and status["stepIndex"] == held["stepIndex"], status
    assert step_events(cluster) == steps_then, "a step started while the evidence was missing"
    checks = {c["name"]: c for c in status["lastChecks"]}
    assert checks[gate]["result"] == "Error" and error in checks[gate]["message"], checks


def completes(cluster, operator, recorder: Recorder, pid: int) -> None:
    status = cluster.wait_phase("web", FINAL, 180)
    # The route follows the status write within the tick; the watch sees it a moment later.
    wait_until(lambda: recorder.route_changes("web")[-1][1] == (100, 0), 20, "all traffic on the primary")
    assert status["phase"] == "Succeeded", (status, operator.log())
    assert operator.proc.pid == pid and operator.proc.poll() is None, "the operator was restarted"
    began = recorder.release_changes("web")[0][0]
    story = ("release (s, (phase, step, weight)): "
             f"{[(round(t - began, 2), v) for t, v in recorder.release_changes('web')]}\n"
             f"route (s, (primary, canary)): {[(round(t - began, 2), v) for t, v in recorder.route_changes('web')]}\n"
             f"events: {[(e.first_timestamp, e.reason, e.message) for e in cluster.events('web')]}")
    try:  # a transition's events go out right after the status write that records it
        wait_until(lambda: step_events(cluster) == STEP_MESSAGES, 10, "every StepStarted event")
    except TimeoutError:
        pass
    assert step_events(cluster) == STEP_MESSAGES, story
    assert canary_weights(recorder.route_changes("web")) == [0, *STEPS, 0], story


def test_prometheus_down_mid_step_holds_then_completes(stack, kube_client, cluster, operator, hostname,
                                                       gateway_traffic):
    pid = operator.proc.pid
    with Recorder(kube_client, cluster.namespace) as recorder:
        start_release(cluster, hostname)
        stack.prometheus.halt()
        try:
            hold_while_out(cluster, "error-rate", "Prometheus error")
        finally:
            stack.prometheus.resume()  # the rest of the session needs it
        completes(cluster, operator, recorder, pid)


@pytest.fixture
def llm(tmp_path) -> Iterator[ScriptedLLM]:
    with ScriptedLLM.start(workdir=tmp_path / "llm") as running:
        yield running


def test_judge_down_mid_step_holds_then_completes(stack, cluster, namespace, operator, llm, kube_client, tmp_path,
                                                  pods, hostname):
    judge = JudgeServer.start(tmp_path / "judge", llm.base_url, sample_rate=1.0)
    port = judge.port
    try:
        with (GatewayTraffic(stack.gateway.url, hostname, rps=30, questions=arithmetic_questions(40)),
              Recorder(kube_client, namespace) as recorder):
            pid = operator.proc.pid
            start_release(cluster, hostname, f"--judge-url {judge.url} --release {namespace}/web",
                          judge={"url": judge.url, "minScore": 0.8, "maxRegression": 0.1,
                                 "minSamples": 8, "timeout": "2s"})
            judge.stop()
            try:
                hold_while_out(cluster, "judge-score", "unreachable")
            finally:
                judge = judge_back(tmp_path / "judge", llm.base_url, port)
            completes(cluster, operator, recorder, pid)
    finally:
        judge.stop()


def test_apiserver_restarted_mid_rollout_operator_recovers(stack, kube_client, cluster, operator, hostname,
                                                          gateway_traffic):
    pid = operator.proc.pid
    # Polled too: a watch from before the restart cannot be resumed, and a new one sees nothing
    # until the API server's cache is rebuilt, while the operator already reads and writes.
    with Recorder(kube_client, cluster.namespace, poll=0.1) as recorder:
        start_release(cluster, hostname)
        serving_since = time.time()
        stack.cluster.restart_apiserver(down_for=3)
        completes(cluster, operator, recorder, pid)
    # The data plane does not need the control plane: users saw nothing of the outage.
    assert gateway_traffic.failures(serving_since) == [], gateway_traffic.codes(serving_since)
