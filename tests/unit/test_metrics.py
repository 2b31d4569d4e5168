"""The operator's own metrics (canarist.metrics), fed by real engine decisions tick by tick."""

from __future__ import annotations

import socket
import urllib.request
from datetime import timedelta

import pytest

from canarist import metrics
from canarist.api.status import CanaryReleaseStatus, Check, CheckResult, Phase
from canarist.engine import Event, analysis_due

from .engine_sim import FAIL, PASS, T0, Sim, check, make_spec


def value(metric: str, /, **labels) -> float:
    got = metrics.REGISTRY.get_sample_value(metric, labels)
    return 0.0 if got is None else got


def counts() -> dict[str, float]:
    """Every counter the scripted stories touch, to compare before and after."""
    out = {}
    for reason in metrics.ROLLBACK_REASONS:
        out[f"rollback:{reason}"] = value("canarist_rollbacks_total", reason=reason)
    for reason in metrics.PROMOTION_REASONS:
        out[f"promotion:{reason}"] = value("canarist_promotions_total", reason=reason)
    for result in CheckResult:
        out[f"check:{result.value}"] = value("canarist_checks_total", gate="error-rate", kind="prometheus",
                                             result=result.value)
    out["ticks"] = value("canarist_tick_duration_seconds_count")
    out["lags"] = value("canarist_tick_lag_seconds_count")
    return out


def delta(before: dict[str, float]) -> dict[str, float]:
    after = counts()
    return {k: after[k] - before[k] for k in after if after[k] != before[k]}


@pytest.fixture(autouse=True)
def fresh():
    metrics.reset_for_tests()
    yield
    metrics.reset_for_tests()


class Recorded:
    """A Sim whose every tick is recorded the way the operator's tick records it."""

    def __init__(self, sim: Sim, name: str = "web", namespace: str = "apps") -> None:
        self.sim, self.name, self.namespace = sim, name, namespace

    def tick(self, checks=None, lag: float | None = 0.2):
        sim = self.sim
        due = analysis_due(sim.status, sim.now + timedelta(seconds=10))
        before = sim.status.phase.value if sim.status.phase else None
        d = sim.tick(checks)
        ran = (checks if checks is not None else ()) if due else None
        metrics.record_tick(namespace=self.namespace, name=self.name, phase_before=before, status_after=d.status,
                            checks=ran, events=d.events, duration=0.05, lag=lag)
        return d

    def until(self, phase: Phase, checks=PASS, limit: int = 60) -> int:
        for n in range(1, limit + 1):
            self.tick(checks)
            if self.sim.status.phase == phase:
                return n
        raise AssertionError(f"never reached {phase}")

    def initialized(self) -> "Recorded":
        for _ in range(3):
            self.tick()
        assert self.sim.status.phase == Phase.IDLE
        return self


def test_a_rollout_promoted_by_analysis_counts_one_promotion_and_its_checks():
    r = Recorded(Sim()).initialized()
    before = counts()
    r.sim.target = "rev2"
    r.until(Phase.SUCCEEDED)
    passed = sum(1 for d in r.sim.history for e in d.events if e.reason == "StepStarted")
    changed = delta(before)
    assert changed.pop("promotion:Analysis") == 1
    # Five steps, one passed check each (checksPerStep 1): exactly the analysis runs the engine saw.
    assert changed.pop("check:Passed") == passed == 5
    assert changed.pop("ticks") == changed.pop("lags") > 5
    assert changed == {}, "no rollback, no manual promotion, no other check result"
    assert value("canarist_releases", phase="Succeeded") == 1
    assert value("canarist_releases", phase="Progressing") == 0


def test_a_failed_check_beyond_failure_limit_counts_one_rollback_with_its_reason():
    r = Recorded(Sim(spec=make_spec(failureLimit=1))).initialized()
    r.sim.target = "rev2"
    r.until(Phase.PROGRESSING)
    while r.sim.status.step_weight != 5:
        r.tick(PASS)
    before = counts()
    r.tick(FAIL)  # tolerated
    r.tick(FAIL)  # rolls back
    assert r.sim.status.phase == Phase.ROLLED_BACK
    assert delta(before) == {"rollback:CheckFailed": 1, "check:Failed": 2, "ticks": 2, "lags": 2}
    assert value("canarist_releases", phase="RolledBack") == 1
    r.tick(FAIL)  # steady: no gate runs, nothing more is counted
    assert value("canarist_rollbacks_total", reason="CheckFailed") == before["rollback:CheckFailed"] + 1


def test_an_abort_is_a_rollback_with_reason_aborted():
    r = Recorded(Sim()).initialized()
    r.sim.target = "rev2"
    r.until(Phase.PROGRESSING)
    before = counts()
    r.sim.request(abort="a1")
    r.tick(PASS)
    assert r.sim.status.phase == Phase.ROLLED_BACK
    changed = delta(before)
    assert changed.get("rollback:Aborted") == 1
    assert "rollback:CheckFailed" not in changed


def test_a_manual_promotion_counts_once_as_manual_though_promoted_follows_it():
    r = Recorded(Sim()).initialized()
    r.sim.target = "rev2"
    while r.sim.status.step_weight != 5:
        r.tick(PASS)
    before = counts()
    r.sim.request(promote="p1")
    r.until(Phase.SUCCEEDED)
    reasons = [e.reason for d in r.sim.history for e in d.events]
    assert "ManualPromotion" in reasons and reasons[-1] == "Promoted", "the engine sends both events"
    changed = delta(before)
    assert changed.get("promotion:Manual") == 1
    assert "promotion:Analysis" not in changed
    # The next rollout, promoted by its analysis, is not taken for a manual one.
    before = counts()
    r.sim.target = "rev3"
    r.until(Phase.SUCCEEDED)
    changed = delta(before)
    assert changed.get("promotion:Analysis") == 1 and "promotion:Manual" not in changed


def test_a_manual_promotion_cancelled_by_a_new_revision_is_not_remembered():
    r = Recorded(Sim()).initialized()
    r.sim.target = "rev2"
    while r.sim.status.step_weight != 5:
        r.tick(PASS)
    r.sim.request(promote="p1")
    r.tick(PASS)
    assert r.sim.status.phase == Phase.PROMOTING
    r.sim.primary = None  # the primary is not Ready yet: the promotion waits ...
    r.sim.target = "rev3"  # ... and a new revision replaces the canary
    before = counts()
    r.sim.primary = "rev1"
    r.until(Phase.SUCCEEDED)
    assert r.sim.status.revisions.primary == "rev3"
    changed = delta(before)
    assert changed.get("promotion:Analysis") == 1 and "promotion:Manual" not in changed


def test_cohort_checks_count_under_their_gate_without_the_cohort():
    at = T0
    checks = [Check(name="judge-score", kind="judge", result=CheckResult.PASSED, at=at),
              Check(name="judge-score", kind="judge", result=CheckResult.PASSED, at=at).for_cohort("pro"),
              Check(name="judge-score", kind="judge", result=CheckResult.NO_DATA, at=at).for_cohort("free")]
    before_pass = value("canarist_checks_total", gate="judge-score", kind="judge", result="Passed")
    before_nodata = value("canarist_checks_total", gate="judge-score", kind="judge", result="NoData")
    metrics.record_tick(namespace="a", name="b", phase_before="Progressing",
                        status_after=CanaryReleaseStatus(phase=Phase.PROGRESSING), checks=checks, events=[],
                        duration=0.1, lag=None)
    assert value("canarist_checks_total", gate="judge-score", kind="judge", result="Passed") == before_pass + 2
    assert value("canarist_checks_total", gate="judge-score", kind="judge", result="NoData") == before_nodata + 1
    assert metrics.REGISTRY.get_sample_value(
        "canarist_checks_total", {"gate": "judge-score", "kind": "judge", "result": "Error"}) is not None, \
        "every result of a seen gate exists from zero, so increase() sees its first error"
    names = {s.labels.get("gate") for m in metrics.REGISTRY.collect() for s in m.samples}
    assert "judge-score[pro]" not in names and "judge-score[free]" not in names


def test_phases_of_several_releases_and_a_forgotten_one():
    def tick(name: str, phase: Phase) -> None:
        metrics.record_tick(namespace="ns", name=name, phase_before=None, status_after=CanaryReleaseStatus(phase=phase),
                            checks=None, events=[], duration=0.01, lag=0.0)

    tick("a", Phase.PROGRESSING)
    tick("b", Phase.PROGRESSING)
    tick("c", Phase.IDLE)
    assert value("canarist_releases", phase="Progressing") == 2 and value("canarist_releases", phase="Idle") == 1
    tick("a", Phase.SUCCEEDED)
    assert value("canarist_releases", phase="Progressing") == 1 and value("canarist_releases", phase="Succeeded") == 1
    metrics.forget_release("ns", "b")
    assert value("canarist_releases", phase="Progressing") == 0
    # Every phase is exported, at zero when no release is in it.
    assert {s.labels["phase"] for m in metrics.REGISTRY.collect() if m.name == "canarist_releases"
            for s in m.samples} == {p.value for p in Phase}


def test_the_step_clock_moves_with_the_step_and_leaves_with_the_rollout():
    r = Recorded(Sim()).initialized()
    assert value("canarist_release_step_started_timestamp_seconds", release_namespace="apps", release_name="web") == 0
    r.sim.target = "rev2"
    while r.sim.status.step_weight != 1:
        r.tick(PASS)
    first = value("canarist_release_step_started_timestamp_seconds", release_namespace="apps", release_name="web")
    assert first > 0
    r.tick(NODATA_CHECKS)  # holds: same step, same clock
    r.tick(NODATA_CHECKS)
    assert r.sim.status.step_weight == 1
    assert value("canarist_release_step_started_timestamp_seconds", release_namespace="apps", release_name="web") == first
    while r.sim.status.step_weight == 1:
        r.tick(PASS)
    assert value("canarist_release_step_started_timestamp_seconds", release_namespace="apps", release_name="web") >= first
    r.until(Phase.SUCCEEDED)
    assert metrics.REGISTRY.get_sample_value("canarist_release_step_started_timestamp_seconds",
                                             {"release_namespace": "apps", "release_name": "web"}) is None


NODATA_CHECKS = (check(CheckResult.NO_DATA),)


def test_rollback_reasons_and_promotion_reasons_exist_before_the_first_one():
    for reason in ("Aborted", "Regression", "CheckFailed", "HoldTimeout"):
        assert metrics.REGISTRY.get_sample_value("canarist_rollbacks_total", {"reason": reason}) is not None
    for reason in ("Analysis", "Manual"):
        assert metrics.REGISTRY.get_sample_value("canarist_promotions_total", {"reason": reason}) is not None


def test_rollback_reasons_come_from_the_event_message():
    before = counts()
    for reason in ("Regression", "HoldTimeout"):
        metrics.record_tick(namespace="n", name="x", phase_before="Progressing",
                            status_after=CanaryReleaseStatus(phase=Phase.ROLLED_BACK), checks=None,
                            events=[Event("RolledBack", f"{reason}: rolled back revision abc at step 2 (5%): why",
                                          "Warning")], duration=0.0, lag=None)
    changed = delta(before)
    assert changed == {"rollback:Regression": 1, "rollback:HoldTimeout": 1, "ticks": 2}


def test_gates_api_errors_caches_and_leader():
    ok_before = value("canarist_gate_duration_seconds_count", kind="prometheus", outcome="ok")
    err_before = value("canarist_gate_duration_seconds_count", kind="prometheus", outcome="error")
    metrics.observe_gate("prometheus", 0.02, True)
    metrics.observe_gate("prometheus", 0.03, True)
    metrics.observe_gate("prometheus", 1.5, False)
    assert value("canarist_gate_duration_seconds_count", kind="prometheus", outcome="ok") == ok_before + 2
    assert value("canarist_gate_duration_seconds_count", kind="prometheus", outcome="error") == err_before + 1
    metrics.observe_gate("judge", 0.1, True)
    assert metrics.REGISTRY.get_sample_value("canarist_gate_duration_seconds_count",
                                             {"kind": "judge", "outcome": "error"}) == 0
    before = value("canarist_api_errors_total", resource="deployments", verb="patch", code="409")
    metrics.record_api_error("deployments", "patch", 409)
    assert value("canarist_api_errors_total", resource="deployments", verb="patch", code="409") == before + 1

    sizes = {"ConfigMap": 3, "Deployment": 2}
    metrics.set_cache_sizes(lambda: sizes)
    assert value("canarist_cache_objects", kind="ConfigMap") == 3
    sizes["ConfigMap"] = 7  # read at scrape time
    assert value("canarist_cache_objects", kind="ConfigMap") == 7

    def broken() -> dict[str, int]:
        raise RuntimeError("cache gone")

    metrics.set_cache_sizes(broken)
    assert metrics.REGISTRY.get_sample_value("canarist_cache_objects", {"kind": "ConfigMap"}) is None

    backlog = [0]
    metrics.set_backlog(lambda: backlog[0])
    assert value("canarist_ticks_overdue") == 0
    backlog[0] = 12
    assert value("canarist_ticks_overdue") == 12

    metrics.set_leader(False)
    assert value("canarist_leader") == 0
    metrics.set_leader(True)
    assert value("canarist_leader") == 1


def test_the_server_serves_this_registry_only():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    metrics.start_server(port, addr="127.0.0.1")
    metrics.set_leader(True)
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    assert "canarist_leader 1.0" in body
    assert 'canarist_rollbacks_total{reason="CheckFailed"}' in body
    assert "python_gc_objects_collected_total" not in body, "not the global registry"
