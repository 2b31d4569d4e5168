"""A standby operator (leader election on a Lease, canarist.kube.leadership) on the local stack: two
operator processes with the chart's identity, one leads and acts, the other waits; SIGKILL the
leader mid-rollout and the standby takes over within 15 s and finishes the rollout, without any
step, transition or event happening twice or from both."""

from __future__ import annotations

import re
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime

import kubernetes
import pytest

from canarist.devstack.chart import install_chart, operator_kubeconfig, uninstall_chart
from canarist.devstack.procs import wait_until

from .harness import OperatorProcess, RouteWatcher
from .test_rollout import STEPS, setup_release, step_messages

pytestmark = [pytest.mark.cluster, pytest.mark.prometheus]

LEASE = "canarist-operator"
LEASE_DURATION = 10.0
TAKEOVER_LIMIT = 15.0
STEP_MESSAGES = [f"step {i + 1}/{len(STEPS)}: canary weight {w}%" for i, w in enumerate(STEPS)]
LOG_LINE = re.compile(r"^\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3})\] (\S+)\s+\[(\w+)\s*\] (.*)$")


@dataclass
class LeaseHistory:
    """Each new record of the Lease (holder, transitions, times), as polled every 50 ms."""

    records: list[tuple[float, str | None, int, datetime | None, datetime | None]] = field(default_factory=list)

    def poll(self, api: kubernetes.client.ApiClient, namespace: str, stop: threading.Event) -> None:
        leases = kubernetes.client.CoordinationV1Api(api)
        deadline, last_rv = time.monotonic() + 900, None
        while not stop.is_set() and time.monotonic() < deadline:
            try:
                lease = leases.read_namespaced_lease(LEASE, namespace)
            except Exception:  # noqa: BLE001 - not there yet
                lease = None
            if lease is not None and lease.metadata.resource_version != last_rv:
                last_rv, spec = lease.metadata.resource_version, lease.spec
                self.records.append((time.time(), spec.holder_identity, spec.lease_transitions or 0,
                                     spec.acquire_time, spec.renew_time))
            stop.wait(0.05)

    def holder(self) -> str | None:
        return self.records[-1][1] if self.records else None

    def holders(self) -> list[str | None]:
        """Holders in order, each once per tenure."""
        out: list[str | None] = []
        for _, holder, *_ in self.records:
            if not out or out[-1] != holder:
                out.append(holder)
        return out

    def first_held_by(self, prefix: str) -> tuple[float, str | None, int, datetime | None, datetime | None]:
        return next(r for r in self.records if (r[1] or "").startswith(prefix))


@contextmanager
def lease_history(api: kubernetes.client.ApiClient, namespace: str) -> Iterator[LeaseHistory]:
    history, stop = LeaseHistory(), threading.Event()
    poller = threading.Thread(target=history.poll, args=(api, namespace, stop), daemon=True)
    poller.start()
    try:
        yield history
    finally:
        stop.set()
        poller.join(5)


def log_lines(proc: OperatorProcess) -> list[tuple[float, str, str]]:
    """(time, logger, message) of every line of the operator's log that has a timestamp."""
    lines = []
    for line in proc.log_path.read_text(errors="replace").splitlines():
        m = LOG_LINE.match(line)
        if m:
            at = datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()  # local time, as kopf logs it
            lines.append((at, m.group(2), m.group(4)))
    return lines


def actions(proc: OperatorProcess) -> list[tuple[float, str]]:
    """What the operator did to resources: kopf's per-object lines (ticks, handlers) and canarist's own."""
    return [(at, msg) for at, logger, msg in log_lines(proc)
            if logger.startswith("kopf.objects") or (logger.startswith("canarist.") and "leader" not in logger)]


def acquired_at(proc: OperatorProcess) -> float | None:
    return next((at for at, _, msg in log_lines(proc) if "acquired lease" in msg), None)


def has_line(proc: OperatorProcess, text: str) -> bool:
    return text in proc.log_path.read_text(errors="replace")


@pytest.fixture
def operators(stack, namespace, canarist_crd, tmp_path) -> Iterator[tuple[OperatorProcess, OperatorProcess]]:
    """Two operator processes with the chart's ServiceAccount and leader election on (the Lease in
    the test's namespace, where the chart's Role allows it): `a` leads, `b` stands by."""
    install_chart(stack, namespace, "canarist", "--set", f"watchNamespaces={{{namespace}}}",
                  "--set", "judge.enabled=false")
    kubeconfig = operator_kubeconfig(stack, namespace, "canarist")
    env = {"CANARIST_LEADER_ELECTION": "true", "CANARIST_LEASE_NAMESPACE": namespace}
    a = OperatorProcess(kubeconfig, namespace, stack.prometheus.url, tmp_path / "operator-a.log",
                        env={**env, "POD_NAME": "operator-a"})
    b = OperatorProcess(kubeconfig, namespace, stack.prometheus.url, tmp_path / "operator-b.log",
                        env={**env, "POD_NAME": "operator-b"})
    try:
        a.start()
        wait_until(lambda: acquired_at(a), 30, f"operator-a to acquire the lease:\n{a.log()}")
        b.start()
        wait_until(lambda: has_line(b, "is held by operator-a_"), 30, f"operator-b to stand by:\n{b.log()}")
        yield a, b
    finally:
        for proc in (a, b):
            proc.stop()
        uninstall_chart(stack, namespace, "canarist")


def assert_each_event_once(cluster) -> Counter:
    # A transition's events go out after the status write that records it (by the next tick if the
    # writer died in between): the phase can be read a moment before its events are there.
    wanted = ("Initialized", "RolloutStarted", "AnalysisPassed", "Promoted")
    cluster.wait_events("web", set(wanted), 15)
    events = cluster.events("web")
    pairs = Counter((e.reason, e.message) for e in events)
    twice = {k: n for k, n in pairs.items() if n > 1}
    assert not twice, f"events posted more than once: {twice}"
    # An Event object may also have been bumped (count) by a second poster.
    assert all((e.count or 1) == 1 for e in events), [(e.reason, e.message, e.count) for e in events]
    reasons = Counter(e.reason for e in events)
    for reason in wanted:
        assert reasons[reason] == 1, f"{reason}: {reasons[reason]} events ({dict(reasons)})"
    return reasons


def test_standby_takes_over_a_rollout_within_15s_of_a_sigkill_and_nothing_happens_twice(
        kube_client, cluster, operators, hostname, gateway_traffic):
    a, b = operators
    with lease_history(kube_client, cluster.namespace) as lease:
        setup_release(cluster, hostname, gateway_traffic)
        assert not actions(b), f"the standby acted: {actions(b)[:5]}"
        serving_since = time.time()
        with RouteWatcher(cluster, "web") as route:
            cluster.set_image("web", "registry.test/web:v2")
            wait_until(lambda: cluster.status("web").get("canaryWeight") == 20, 90, "the 20% step")
            a.kill()
            killed_at = time.time()
            wait_until(lambda: (lease.holder() or "").startswith("operator-b_"), TAKEOVER_LIMIT + 5,
                       f"operator-b to take the lease:\n{b.log()}")
            took_over = lease.first_held_by("operator-b_")[0] - killed_at
            b_acquired = acquired_at(b)
            assert b_acquired is not None
            print(f"\nSIGKILL of the leader -> standby holds the lease: {took_over:.2f}s "
                  f"(standby's own log: {b_acquired - killed_at:.2f}s)")
            assert took_over <= TAKEOVER_LIMIT, f"the standby took over {took_over:.1f}s after the kill"
            status = cluster.wait_phase("web", {"Succeeded", "RolledBack"}, 150)
            wait_until(lambda: cluster.route_weights("web") == (100, 0), 10, "all traffic on the primary")
        assert status["phase"] == "Succeeded", (status, b.log())
    first_b_action = min((at for at, _ in actions(b)), default=None)
    print(f"standby's first action {first_b_action - killed_at:.2f}s after the kill" if first_b_action else "")

    # The rollout went on where it stood: every step once, in order, and the route followed.
    assert route.canary_weights() == [0, *STEPS, 0], route.changes
    assert step_messages(cluster) == STEP_MESSAGES
    cluster.wait_events("web", {"Promoted"})
    assert_each_event_once(cluster)
    assert gateway_traffic.failures(serving_since) == [], gateway_traffic.codes(serving_since)

    # One holder at a time: a, then b, one transition, and b's tenure began only after a's lease ran out.
    holders = lease.holders()
    assert len(holders) == 2 and holders[0].startswith("operator-a_") and holders[1].startswith("operator-b_"), holders
    last_a = [r for r in lease.records if r[1] == holders[0]][-1]
    first_b = lease.first_held_by("operator-b_")
    assert first_b[2] == last_a[2] + 1, (last_a, first_b)
    gap = (first_b[3] - last_a[4]).total_seconds()  # b's acquireTime - a's last renewTime (one machine's clock)
    print(f"a's last renewal -> b's acquisition: {gap:.2f}s (lease duration {LEASE_DURATION:g}s)")
    assert gap >= LEASE_DURATION - 0.1, gap

    # Who acted when: a nothing after its death, b nothing before its acquisition.
    a_actions, b_actions = actions(a), actions(b)
    assert a_actions and b_actions
    assert max(at for at, _ in a_actions) <= killed_at + 0.01, a_actions[-3:]
    assert min(at for at, _ in b_actions) >= b_acquired - 0.01, (b_acquired, b_actions[:3])
    assert not has_line(b, "released lease")


def test_a_standby_never_acts_while_the_leader_lives(kube_client, cluster, operators, hostname, gateway_traffic):
    a, b = operators
    with lease_history(kube_client, cluster.namespace) as lease:
        setup_release(cluster, hostname, gateway_traffic)
        cluster.set_image("web", "registry.test/web:v2")
        status = cluster.wait_phase("web", {"Succeeded", "RolledBack"}, 150)
        assert status["phase"] == "Succeeded", (status, a.log())
        assert_each_event_once(cluster)
        acted = [msg for _, msg in actions(a) if "HTTPRoute" in msg]
        print(f"\nleader's route writes: {len(acted)}; standby's action lines: {len(actions(b))}")
        assert acted, a.log()
        assert actions(b) == [], actions(b)[:5]
        assert b.proc is not None and b.proc.poll() is None, "the standby is still there, waiting"
        assert [h.split("_")[0] for h in lease.holders()] == ["operator-a"], lease.holders()

        # A clean stop (SIGTERM) hands the lease over at once instead of letting it expire.
        stopped = time.time()
        a.stop()
        wait_until(lambda: (lease.holder() or "").startswith("operator-b_"), LEASE_DURATION,
                   f"operator-b to take the released lease:\n{a.log()}\n{b.log()}")
        handover = lease.first_held_by("operator-b_")[0] - stopped
        print(f"SIGTERM of the leader -> standby holds the lease: {handover:.2f}s")
    assert has_line(a, "released lease"), a.log()
    # The released record (no holder) can last less than one 50 ms poll: the standby's next attempt
    # comes at once. A take-over long before the lease could expire is the release's doing.
    assert [h.split("_")[0] for h in lease.holders() if h] == ["operator-a", "operator-b"], lease.holders()
    assert handover < LEASE_DURATION / 2, handover
