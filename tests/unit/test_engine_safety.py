"""Failure paths of the engine: no path may hurt the stable version or lie about the route."""

from __future__ import annotations

from datetime import timedelta

from canarist.api.status import CanaryReleaseStatus, CheckResult, Phase
from canarist.engine import EnsureApex, ScaleCanary, SetRoute

from .engine_sim import FAIL, NODATA, PASS, Sim, make_spec
from .test_engine import cond, walk_to


def test_failed_route_write_on_rollback_keeps_the_canary_up_until_users_have_left_it():
    sim = Sim().initialized()
    walk_to(sim, 5)
    sim.route_fails = True
    sim.request(abort="t1")
    sim.tick()
    assert sim.status.phase == Phase.ROLLED_BACK
    assert sim.route == (95, 5), "the route write failed"
    assert sim.canary_up, "scaled to zero while the route still sends it 5% of users"
    assert sim.outcome.failed == SetRoute(100, 0) and ScaleCanary(up=False) in sim.outcome.skipped
    assert sim.status.canary_weight == 5, "status must say the weight users actually get"
    sim.route_fails = False
    sim.tick()
    assert sim.route == (100, 0) and not sim.canary_up and sim.status.canary_weight == 0


def test_apex_points_at_primary_before_the_target_is_scaled_down():
    sim = Sim()
    sim.tick()
    sim.tick()
    d = sim.tick()
    assert d.actions.index(SetRoute(100, 0)) < d.actions.index(EnsureApex()) < d.actions.index(ScaleCanary(up=False))


def test_blocked_mid_rollout_routes_to_primary_and_says_so_in_status():
    sim = Sim().initialized()
    walk_to(sim, 20)
    sim.problems = ("spec.routing.gatewayAPI: something is wrong",)
    sim.tick()
    assert sim.route == (100, 0)
    assert sim.status.canary_weight == 0 and sim.status.step_weight == 0
    assert "back on the primary" in sim.status.message and cond(sim, "Ready") == "False"
    sim.problems = ()
    sim.tick()
    assert sim.status.phase == Phase.PROGRESSING and sim.status.step_index == 0, "steps restart from the first"
    assert sim.status.canary_weight == 1


def test_time_blocked_does_not_count_against_hold_timeout():
    sim = Sim(spec=make_spec(holdTimeout="1m")).initialized()
    walk_to(sim, 5)
    sim.tick(NODATA, advance=30)
    sim.problems = ("spec.targetRef.name: Deployment 'web' not found",)
    sim.tick()
    sim.tick(advance=3600)
    sim.problems = ()
    sim.tick(advance=1)
    assert sim.status.phase == Phase.PROGRESSING, sim.status.message


def test_blocked_time_is_not_forgiven_twice():
    sim = Sim(spec=make_spec(holdTimeout="1m")).initialized()
    sim.target = "rev2"
    sim.canary_broken = True
    sim.tick()
    sim.tick(advance=40)
    sim.problems = ("x",)
    sim.tick(advance=1)
    sim.tick(advance=100)
    sim.problems = ()
    sim.tick(advance=1)
    assert sim.status.phase == Phase.PROGRESSING
    sim.tick(advance=25)
    assert sim.status.phase == Phase.ROLLED_BACK and "holdTimeout" in sim.status.message


def test_one_unready_canary_pod_does_not_fail_a_check():
    sim = Sim().initialized()
    walk_to(sim, 5)
    sim.canary_degraded = True
    sim.tick(PASS)
    assert sim.status.checks_failed == 0 and sim.status.phase == Phase.PROGRESSING
    sim.canary_broken = True
    sim.tick(PASS)
    assert sim.status.checks_failed == 1
    assert any(c.name == "canary-ready" and c.result == CheckResult.FAILED for c in sim.status.last_checks)


def test_status_from_a_newer_operator_with_unknown_pinned_fields_still_parses():
    raw = {"phase": "Progressing", "canaryWeight": 5, "stepIndex": 1, "futureField": {"a": 1},
           "pinnedAnalysis": {"interval": "10s", "failureLimit": 2, "sequential": {"alpha": 0.01},
                              "metrics": [{"name": "e", "prometheus": {"query": "q", "shard": 3}, "max": 0.1,
                                           "tolerance": 1.2}],
                              "judge": {"url": "http://j", "minScore": 0.5, "newThing": True}}}
    status = CanaryReleaseStatus.model_validate(raw)
    assert status.pinned_analysis is not None and status.pinned_analysis.failure_limit == 2
    assert status.pinned_analysis.metrics[0].max == 0.1
    assert status.step_weight == 5, "an older status kept the step's weight in canaryWeight"


def test_failed_checks_still_roll_back_after_a_block():
    sim = Sim().initialized()
    walk_to(sim, 5)
    sim.tick(FAIL)
    sim.tick(FAIL)
    assert sim.status.phase == Phase.ROLLED_BACK


def test_a_ready_primary_left_by_an_earlier_release_is_adopted_not_overwritten():
    sim = Sim()
    sim.primary, sim.target = "good", "rejected"
    sim.tick()
    d = sim.tick()
    assert sim.primary == "good", "the primary must keep the revision it serves"
    assert sim.status.revisions.primary == "good" and sim.status.phase == Phase.IDLE
    assert SetRoute(100, 0) in d.actions
    sim.tick()
    assert sim.status.phase == Phase.PROGRESSING and sim.status.revisions.canary == "rejected"


def test_other_selectors_of_the_target_are_named_in_a_warning_before_scaling():
    from canarist.engine import World, decide

    sim = Sim()
    sim.tick()
    world = World(target_revision="rev1", primary_revision="rev1", primary_ready=True,
                  warnings=("Service 'legacy' selects the target's pods",))
    d = decide(sim.spec, sim.status, world, sim.now + timedelta(seconds=5), 1)
    warning = next(c for c in d.status.conditions if c.type == "Warning")
    assert warning.status == "True" and "legacy" in warning.message
    assert [e.reason for e in d.events].count("TargetPodsSelectedElsewhere") == 1


def test_a_step_counts_no_evidence_until_its_weight_is_in_the_route():
    """The operator killed between writing step 2 to status and moving the route: its successor
    must not pass step 2 on checks taken while users still got step 1's weight."""
    sim = Sim().initialized()
    walk_to(sim, 1)
    sim.route_fails = True
    sim.tick(PASS)  # decides step 2 (5 %); the route stays at 1 %
    assert sim.status.step_weight == 5 and sim.route == (99, 1)
    for _ in range(3):
        sim.tick(PASS)
    assert sim.status.step_weight == 5 and sim.status.checks_passed == 0, "passed a step users never saw"
    assert "moving the route to 5%" in sim.status.message
    sim.route_fails = False
    sim.tick(PASS)
    assert sim.route == (95, 5) and sim.status.step_weight == 5
    sim.tick(PASS)
    assert sim.status.step_weight == 20
