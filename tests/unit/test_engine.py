"""The rollout engine, tick by tick."""

from __future__ import annotations

from datetime import timedelta

import pytest

from canarist.api.status import CheckResult, Phase
from canarist.engine import EnsurePrimary, ScaleCanary, SetRoute

from .engine_sim import ERROR, FAIL, NODATA, PASS, Sim, check, make_spec


def cond(sim: Sim, type_: str) -> str:
    return next(c.status for c in sim.status.conditions if c.type == type_)


def test_initialization_creates_primary_then_idles_with_all_traffic_on_it():
    sim = Sim()
    d = sim.tick()
    assert sim.status.phase == Phase.INITIALIZING
    assert EnsurePrimary("rev1") in d.actions
    assert not any(isinstance(a, SetRoute) for a in d.actions), "no traffic to a primary that is not Ready"
    assert cond(sim, "Ready") == "False"
    d = sim.tick()
    assert SetRoute(100, 0) in d.actions and ScaleCanary(up=False) not in d.actions, \
        "nothing is scaled down before the route is seen on the primary"
    assert sim.status.phase == Phase.INITIALIZING
    d = sim.tick()
    assert d.actions.index(SetRoute(100, 0)) < d.actions.index(ScaleCanary(up=False))
    assert sim.status.phase == Phase.IDLE
    assert sim.status.revisions.primary == "rev1"
    assert sim.canary_up is False and sim.route == (100, 0)
    assert cond(sim, "Ready") == "True" and cond(sim, "Promoted") == "True"
    assert "Initialized" in sim.events()


def test_idle_does_nothing_new_and_never_rewrites_primary():
    sim = Sim().initialized()
    for _ in range(5):
        d = sim.tick()
        assert not any(isinstance(a, EnsurePrimary) for a in d.actions)
    assert sim.status.phase == Phase.IDLE


def test_new_revision_walks_every_step_and_promotes():
    sim = Sim().initialized()
    sim.target = "rev2"
    sim.tick()
    assert sim.status.phase == Phase.PROGRESSING and sim.status.canary_weight == 0
    assert sim.canary_up and sim.route == (100, 0)
    assert sim.status.pinned_steps == [1, 5, 20, 50, 100]
    for _ in range(40):
        sim.tick(PASS)
        if sim.status.phase == Phase.SUCCEEDED:
            break
    assert sim.status.phase == Phase.SUCCEEDED
    assert sim.weights() == [0, 1, 5, 20, 50, 100, 0]
    assert sim.primary == "rev2" and sim.status.revisions.primary == "rev2"
    assert sim.canary_up is False and sim.route == (100, 0)
    assert cond(sim, "Promoted") == "True" and cond(sim, "Progressing") == "False"
    assert sim.events().count("StepStarted") == 5 and "Promoted" in sim.events()


def test_a_promotion_keeps_saying_so_on_the_ticks_after_it():
    """`kubectl get` after a release says which revision was promoted, not only what is served:
    the ticks after it (the canary's scale-down wakes one at once) keep the promotion's message."""
    sim = Sim().initialized()
    sim.target = "rev2"
    for _ in range(40):
        sim.tick(PASS)
        if sim.status.phase == Phase.SUCCEEDED:
            break
    said = sim.status.message
    assert said.startswith("revision rev2") and "promoted" in said
    for _ in range(3):
        sim.tick()
    assert sim.status.phase == Phase.SUCCEEDED and sim.status.message == said
    promoted = next(c for c in sim.status.conditions if c.type == "Promoted")
    assert promoted.status == "True" and promoted.message == said


def test_primary_is_written_only_when_promoting():
    sim = Sim().initialized()
    sim.target = "rev2"
    writes = []
    for _ in range(40):
        d = sim.tick(PASS)
        writes += [(sim.status.phase, a) for a in d.actions if isinstance(a, EnsurePrimary)]
        if sim.status.phase == Phase.SUCCEEDED:
            break
    assert writes and all(a.revision == "rev2" for _, a in writes)
    assert all(phase in (Phase.PROMOTING, Phase.SUCCEEDED) for phase, _ in writes)


def walk_to(sim: Sim, weight: int) -> None:
    sim.target = "rev2"
    for _ in range(40):
        if sim.status.canary_weight == weight:
            return
        sim.tick(PASS)
    raise AssertionError(f"never reached {weight}%")


def test_rollback_happens_in_the_tick_of_the_check_that_exceeds_failure_limit():
    sim = Sim(spec=make_spec(failureLimit=1)).initialized()
    walk_to(sim, 5)
    d = sim.tick(FAIL)  # first failure: tolerated
    assert sim.status.phase == Phase.PROGRESSING and sim.status.checks_failed == 1
    assert "CheckFailed" in [e.reason for e in d.events]
    d = sim.tick(FAIL)  # second failure: rollback now
    assert sim.status.phase == Phase.ROLLED_BACK
    route_index = d.actions.index(SetRoute(100, 0))
    scale_index = d.actions.index(ScaleCanary(up=False))
    assert route_index < scale_index, "users leave the canary before it is scaled down"
    assert sim.primary == "rev1", "the primary never saw the bad revision"
    rolled = [e for e in d.events if e.reason == "RolledBack"]
    assert rolled and rolled[0].type == "Warning"
    assert "error-rate=0.5" in rolled[0].message and "<= 0.01" in rolled[0].message
    assert sim.status.last_checks[0].value == 0.5
    assert cond(sim, "RolledBack") == "True" and cond(sim, "Promoted") == "False"


def test_failure_limit_zero_rolls_back_on_first_failure():
    sim = Sim(spec=make_spec(failureLimit=0)).initialized()
    walk_to(sim, 1)
    sim.tick(FAIL)
    assert sim.status.phase == Phase.ROLLED_BACK


def test_failures_count_per_step():
    sim = Sim(spec=make_spec(failureLimit=1)).initialized()
    walk_to(sim, 1)
    sim.tick(FAIL)
    sim.tick(PASS)  # advances to 5%, counters reset
    assert sim.status.canary_weight == 5 and sim.status.checks_failed == 0
    sim.tick(FAIL)
    assert sim.status.phase == Phase.PROGRESSING


def test_no_data_holds_the_step_forever_and_never_promotes():
    sim = Sim().initialized()
    walk_to(sim, 1)
    for _ in range(100):
        sim.tick(NODATA)
    assert sim.status.phase == Phase.PROGRESSING and sim.status.canary_weight == 1
    assert sim.status.checks_inconclusive == 100 and sim.status.checks_passed == 0
    assert "holds" in sim.status.message and "no value" in sim.status.message


def test_no_data_with_fail_policy_counts_as_failure():
    sim = Sim(spec=make_spec(onNoData="Fail", failureLimit=0)).initialized()
    walk_to(sim, 1)
    sim.tick(NODATA)
    assert sim.status.phase == Phase.ROLLED_BACK


def test_provider_errors_hold_by_default_and_are_counted_separately():
    sim = Sim().initialized()
    walk_to(sim, 1)
    for _ in range(3):
        sim.tick(ERROR)
    assert sim.status.phase == Phase.PROGRESSING
    assert sim.status.provider_errors == 3 and sim.status.checks_failed == 0


def test_provider_errors_with_fail_policy_roll_back():
    sim = Sim(spec=make_spec(onError="Fail", failureLimit=1)).initialized()
    walk_to(sim, 1)
    sim.tick(ERROR)
    sim.tick(ERROR)
    assert sim.status.phase == Phase.ROLLED_BACK


def test_mixed_pass_and_no_data_is_not_a_pass():
    sim = Sim().initialized()
    walk_to(sim, 1)
    sim.tick((check(CheckResult.PASSED, 0.0), check(CheckResult.NO_DATA, name="latency")))
    assert sim.status.canary_weight == 1 and sim.status.checks_passed == 0


def test_hold_timeout_rolls_back_a_step_without_evidence():
    sim = Sim(spec=make_spec(holdTimeout="1m")).initialized()
    walk_to(sim, 1)
    for _ in range(5):
        sim.tick(NODATA)
    assert sim.status.phase == Phase.PROGRESSING
    sim.tick(NODATA, advance=60)
    assert sim.status.phase == Phase.ROLLED_BACK and "holdTimeout" in sim.status.message


def test_checks_per_step_needs_that_many_passes():
    sim = Sim(spec=make_spec(checksPerStep=3)).initialized()
    walk_to(sim, 1)
    sim.tick(PASS)
    sim.tick(PASS)
    assert sim.status.canary_weight == 1
    sim.tick(PASS)
    assert sim.status.canary_weight == 5


def test_analysis_waits_one_interval_after_each_step_starts():
    sim = Sim().initialized()
    walk_to(sim, 1)
    started = sim.status.step_started_at
    d = sim.tick(PASS, advance=5)  # interval is 10s: not due yet
    assert sim.status.canary_weight == 1 and sim.status.last_check_at is None
    sim.tick(PASS, advance=5)
    assert sim.status.canary_weight == 5 and sim.status.step_started_at == started + timedelta(seconds=10)


def test_canary_that_stops_being_ready_mid_step_fails_its_checks():
    sim = Sim(spec=make_spec(failureLimit=1)).initialized()
    walk_to(sim, 20)
    sim.canary_broken = True
    sim.tick(NODATA)  # its metrics vanish with its pods: no data, but unready is a failure
    assert sim.status.checks_failed == 1 and sim.status.last_checks[-1].name == "canary-ready"
    sim.tick(NODATA)
    assert sim.status.phase == Phase.ROLLED_BACK and sim.route == (100, 0)
    assert "canary-ready" in sim.status.message


def test_hold_timeout_also_covers_a_canary_that_never_gets_ready():
    sim = Sim(spec=make_spec(holdTimeout="1m")).initialized()
    sim.canary_broken = True
    sim.target = "rev2"
    for _ in range(5):
        sim.tick()
    assert sim.status.phase == Phase.PROGRESSING and sim.status.canary_weight == 0
    sim.tick(advance=60)
    assert sim.status.phase == Phase.ROLLED_BACK and "holdTimeout" in sim.status.message


def test_a_pause_does_not_count_against_hold_timeout():
    sim = Sim(spec=make_spec(holdTimeout="1m")).initialized()
    walk_to(sim, 5)
    sim.request(paused=True)
    sim.tick()
    sim.tick(advance=3600)
    sim.request(paused=False)
    sim.tick(NODATA)
    assert sim.status.phase == Phase.PROGRESSING and sim.status.canary_weight == 5


def test_a_release_without_any_gate_does_not_start():
    spec = make_spec(metrics=[])
    sim = Sim(spec=spec).initialized()
    sim.target = "rev2"
    sim.tick()
    assert sim.status.phase == Phase.IDLE and not sim.canary_up
    assert "spec.analysis: declares no gate" in sim.status.message


def test_deleted_primary_is_recreated_from_the_unchanged_target():
    sim = Sim().initialized()
    sim.primary = None
    d = sim.tick()
    assert d.actions[0] == EnsurePrimary("rev1") and sim.primary == "rev1"
    assert "recreating the primary" in sim.status.message


def test_canary_must_be_ready_before_the_first_step():
    sim = Sim().initialized()
    sim.target = "rev2"
    sim.tick()
    sim.canary_up = False  # pods not Ready yet; the simulator would report them up
    original = Sim.tick

    def not_ready_tick(self, checks=None, advance=10):
        self.canary_up = False
        return original(self, checks, advance)

    for _ in range(3):
        not_ready_tick(sim, PASS)
    assert sim.status.canary_weight == 0 and "waiting for the canary" in sim.status.message


def test_new_revision_mid_rollout_restarts_with_freshly_pinned_analysis():
    sim = Sim().initialized()
    walk_to(sim, 20)
    sim.spec = make_spec(failureLimit=5)
    sim.target = "rev3"
    d = sim.tick(PASS)
    assert "NewRevision" in [e.reason for e in d.events]
    assert sim.status.revisions.canary == "rev3"
    assert sim.status.canary_weight == 0 and sim.route == (100, 0)
    assert sim.status.pinned_analysis.failure_limit == 5
    assert sim.status.step_index == 0


def test_spec_edit_mid_rollout_keeps_pinned_thresholds():
    sim = Sim(spec=make_spec(failureLimit=0)).initialized()
    walk_to(sim, 5)
    sim.spec = make_spec(failureLimit=10)  # an attempt to weaken the gate mid-rollout
    sim.tick(FAIL)
    assert sim.status.phase == Phase.ROLLED_BACK


def test_spec_steps_edit_mid_rollout_keeps_pinned_steps():
    sim = Sim().initialized()
    walk_to(sim, 5)
    sim.spec = make_spec().model_copy(update={"steps": [50, 100]})
    for _ in range(20):
        sim.tick(PASS)
        if sim.status.phase == Phase.SUCCEEDED:
            break
    assert sim.weights() == [0, 1, 5, 20, 50, 100, 0]


def test_rolled_back_revision_is_not_retried_without_a_request():
    sim = Sim(spec=make_spec(failureLimit=0)).initialized()
    walk_to(sim, 1)
    sim.tick(FAIL)
    for _ in range(5):
        sim.tick(PASS)
    assert sim.status.phase == Phase.ROLLED_BACK and not sim.canary_up
    assert "request a retry" in sim.status.message


def test_retry_releases_the_rolled_back_revision_again_once():
    sim = Sim(spec=make_spec(failureLimit=0)).initialized()
    walk_to(sim, 1)
    sim.tick(FAIL)
    sim.request(retry="t1")
    sim.tick()
    assert sim.status.phase == Phase.PROGRESSING and sim.status.revisions.canary == "rev2"
    assert "Retry" in sim.events()
    sim.tick(PASS)
    sim.tick(FAIL)  # rolled back again; the same token must not retry a second time
    sim.tick()
    sim.tick()
    assert sim.status.phase == Phase.ROLLED_BACK


def test_retry_requested_while_paused_acts_on_resume():
    sim = Sim(spec=make_spec(failureLimit=0)).initialized()
    walk_to(sim, 1)
    sim.tick(FAIL)
    sim.request(retry="t1", paused=True)
    sim.tick()
    assert sim.status.phase == Phase.ROLLED_BACK and "waits" in sim.status.message
    sim.request(paused=False)
    sim.tick()
    assert sim.status.phase == Phase.PROGRESSING


def test_abort_rolls_back_now():
    sim = Sim().initialized()
    walk_to(sim, 20)
    sim.request(abort="a1")
    d = sim.tick()
    assert sim.status.phase == Phase.ROLLED_BACK and sim.route == (100, 0)
    assert "aborted by request" in sim.status.message
    assert d.actions.index(SetRoute(100, 0)) < d.actions.index(ScaleCanary(up=False))


def test_abort_when_idle_is_ignored_with_an_event_and_not_replayed_later():
    sim = Sim().initialized()
    sim.request(abort="a1")
    sim.tick()
    assert "RequestIgnored" in sim.events()
    walk_to(sim, 5)  # the stale token must not abort this rollout
    assert sim.status.phase == Phase.PROGRESSING


def test_promote_skips_remaining_steps():
    sim = Sim().initialized()
    walk_to(sim, 5)
    sim.request(promote="p1")
    sim.tick()
    assert sim.status.phase == Phase.PROMOTING
    assert sim.primary == "rev2"
    sim.tick()
    assert sim.status.phase == Phase.SUCCEEDED and sim.route == (100, 0) and not sim.canary_up


def test_pause_holds_and_resume_continues_from_the_same_step():
    sim = Sim().initialized()
    walk_to(sim, 5)
    sim.request(paused=True)
    sim.tick(FAIL)
    assert sim.status.phase == Phase.PAUSED
    for _ in range(5):
        sim.tick(FAIL)  # no analysis runs while paused
    assert sim.status.checks_failed == 0 and sim.status.canary_weight == 5
    sim.request(paused=False)
    sim.tick(PASS)
    assert sim.status.phase == Phase.PROGRESSING and sim.status.canary_weight == 5
    sim.tick(PASS)
    assert sim.status.canary_weight == 20
    assert "Paused" in sim.events() and "Resumed" in sim.events()


def test_suspend_keeps_a_new_revision_waiting():
    sim = Sim(spec=make_spec().model_copy(update={"suspend": True})).initialized()
    sim.target = "rev2"
    for _ in range(3):
        sim.tick()
    assert sim.status.phase == Phase.IDLE and not sim.canary_up and "spec.suspend" in sim.status.message
    sim.spec = make_spec()
    sim.tick()
    assert sim.status.phase == Phase.PROGRESSING


def test_reverting_the_target_to_stable_cancels_the_rollout():
    sim = Sim().initialized()
    walk_to(sim, 5)
    sim.target = "rev1"
    sim.tick()
    assert sim.status.phase == Phase.IDLE and sim.route == (100, 0) and not sim.canary_up


def test_unknown_template_variable_blocks_new_rollouts_with_the_field_named():
    spec = make_spec(metrics=[{"name": "errors", "prometheus": {"query": 'x{app="{{ app }}"}'}, "max": 1}])
    sim = Sim(spec=spec).initialized()
    sim.target = "rev2"
    sim.tick()
    assert sim.status.phase == Phase.IDLE and not sim.canary_up and sim.primary == "rev1"
    assert "spec.analysis.metrics[0].prometheus.query" in sim.status.message
    assert "{{ app }}" in sim.status.message
    ready = next(c for c in sim.status.conditions if c.type == "Ready")
    assert ready.status == "False" and ready.reason == "InvalidSpec"


def test_missing_target_blocks_without_touching_anything():
    sim = Sim()
    sim.target = None
    d = sim.tick()
    assert d.actions == [] and "targetRef" in sim.status.message
    assert cond(sim, "Ready") == "False"


def test_environment_problem_mid_rollout_sends_users_back_to_primary():
    sim = Sim().initialized()
    walk_to(sim, 20)
    sim.target = None
    d = sim.tick()
    assert d.actions == [SetRoute(100, 0)]


def test_restart_replaying_a_tick_from_the_same_status_gives_the_same_decision():
    sim = Sim().initialized()
    walk_to(sim, 5)
    status_before, now, route = sim.status.model_copy(deep=True), sim.now, sim.route
    first = sim.tick(PASS)
    # The operator died before the status write landed (so before acting: status is written first).
    sim.status, sim.now, sim.route = status_before, now, route
    second = sim.tick(PASS)
    assert first.actions == second.actions and first.status == second.status


def test_transition_time_only_moves_when_condition_changes():
    sim = Sim().initialized()
    ready = next(c for c in sim.status.conditions if c.type == "Ready")
    sim.tick()
    sim.tick()
    again = next(c for c in sim.status.conditions if c.type == "Ready")
    assert again.last_transition_time == ready.last_transition_time


@pytest.mark.parametrize("steps", [[100], [10, 100], [1, 2, 3, 100]])
def test_custom_steps(steps):
    sim = Sim(spec=make_spec().model_copy(update={"steps": steps})).initialized()
    sim.target = "rev2"
    for _ in range(40):
        sim.tick(PASS)
        if sim.status.phase == Phase.SUCCEEDED:
            break
    assert sim.weights() == [0, *steps, 0]


def test_a_rolled_back_release_keeps_saying_why_on_later_ticks():
    """The rollback's message (what failed, at which step) is not replaced by the steady tick after it."""
    sim = Sim(spec=make_spec(failureLimit=0)).initialized()
    walk_to(sim, 5)
    sim.tick(FAIL)
    rolled = sim.status.message
    assert sim.status.phase == Phase.ROLLED_BACK and rolled.startswith("rolled back revision"), rolled
    assert "error-rate=0.5" in rolled
    for _ in range(3):
        sim.tick(PASS)
    assert sim.status.message.startswith(rolled)
    assert sim.status.message.endswith("change the Deployment for a new revision, or request a retry to "
                                       "release it again")
