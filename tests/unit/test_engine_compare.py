"""The anytime-valid rule in the engine: regression evidence rolls back at once, promotion waits for
evidence of being within tolerance, holdTimeout rolls back or pauses for a person."""

from __future__ import annotations

from canarist.api.status import Check, CheckResult, Evidence, Phase

from .engine_sim import T0, Sim, make_spec
from .test_engine import walk_to

COMPARE = [{"name": "errors", "rates": {"bad": "b{{ variant }}", "total": "t{{ variant }}", "maxRatio": 1.5}}]


def compare_spec(**extra):
    return make_spec(metrics=[], compare=COMPARE, **extra)


def evidence(verdict: str, promote: float = 1.0, step: float = 25.0) -> Evidence:
    """`step`: the step guard's evidence (a step after the first widens at 10)."""
    return Evidence(name="errors", kind="rates", measure="ratio", tolerance=1.5, threshold=100, verdict=verdict,
                    promote=promote, needs="about 1,200 more canary requests at this weight",
                    step_max_ratio=2.5, step_evidence=step, step_threshold=10)


def check(result: CheckResult) -> tuple[Check, ...]:
    return (Check(name="errors", kind="compare", result=result, max=1.5, at=T0, message="m"),)


def test_evidence_of_a_regression_rolls_back_at_once_whatever_failure_limit_says():
    sim = Sim(spec=compare_spec(failureLimit=5)).initialized()
    sim.target = "rev2"
    sim.tick()
    sim.tick(check(CheckResult.PASSED), evidence=[evidence("Undecided")])
    assert sim.status.phase == Phase.PROGRESSING
    sim.tick(check(CheckResult.FAILED), evidence=[evidence("Regression")])
    assert sim.status.phase == Phase.ROLLED_BACK and "worse than tolerated" in sim.status.message
    assert sim.route == (100, 0)


def test_the_last_step_below_full_waits_for_evidence_of_being_within_tolerance():
    sim = Sim(spec=compare_spec()).initialized()
    sim.target = "rev2"
    for _ in range(20):
        sim.tick(check(CheckResult.PASSED), evidence=[evidence("Undecided")])
    assert sim.status.step_weight == 50, "intermediate steps advance while no rollback is due"
    assert "promotion needs evidence" in sim.status.message and "1,200 more canary requests" in sim.status.message
    assert sim.status.evidence[0].verdict == "Undecided"
    sim.tick(check(CheckResult.PASSED), evidence=[evidence("WithinTolerance", 150)])
    assert sim.status.step_weight == 100
    for _ in range(5):
        sim.tick(check(CheckResult.PASSED), evidence=[evidence("WithinTolerance", 150)])
    assert sim.status.phase == Phase.SUCCEEDED


def test_hold_timeout_can_pause_for_a_person_instead_of_rolling_back():
    sim = Sim(spec=compare_spec(holdTimeout="1m", onHoldTimeout="Pause")).initialized()
    walk_to(sim, 5)
    for _ in range(8):
        sim.tick(check(CheckResult.NO_DATA), evidence=[evidence("Undecided")])
    assert sim.status.phase == Phase.PAUSED and sim.status.awaiting_decision
    assert "HoldTimeout" in sim.events() and sim.route == (95, 5)
    sim.tick()
    assert sim.status.phase == Phase.PAUSED, "a person decides, not a missing annotation"
    sim.request(promote="p1")
    sim.tick()
    assert sim.status.phase == Phase.PROMOTING and not sim.status.awaiting_decision


def test_hold_timeout_rolls_back_by_default():
    sim = Sim(spec=compare_spec(holdTimeout="1m")).initialized()
    walk_to(sim, 5)
    for _ in range(8):
        sim.tick(check(CheckResult.NO_DATA), evidence=[evidence("Undecided")])
    assert sim.status.phase == Phase.ROLLED_BACK


def test_evidence_is_read_on_every_tick_not_only_every_interval():
    sim = Sim(spec=compare_spec(interval="1m")).initialized()
    sim.target = "rev2"
    sim.tick()
    sim.tick(advance=5, comparisons=check(CheckResult.PASSED), evidence=[evidence("Undecided")])
    assert sim.status.phase == Phase.PROGRESSING and sim.status.last_check_at is None, "no interval passed yet"
    sim.tick(advance=5, comparisons=check(CheckResult.FAILED), evidence=[evidence("Regression")])
    assert sim.status.phase == Phase.ROLLED_BACK, "a regression is acted on at the tick it shows"


def test_the_last_step_is_left_at_the_tick_the_evidence_arrives():
    sim = Sim(spec=compare_spec(interval="1m")).initialized()
    sim.target = "rev2"
    for _ in range(200):
        sim.tick(check(CheckResult.PASSED), advance=5, comparisons=check(CheckResult.PASSED),
                 evidence=[evidence("Undecided")])
    assert sim.status.step_weight == 50 and sim.status.checks_passed >= 1
    sim.tick(advance=5, comparisons=check(CheckResult.PASSED), evidence=[evidence("WithinTolerance", 150)])
    assert sim.status.step_weight == 100


def test_comparisons_stop_at_the_full_step_where_the_primary_serves_nobody():
    from canarist.engine import comparisons_due

    sim = Sim(spec=compare_spec()).initialized()
    sim.target = "rev2"
    for _ in range(30):
        sim.tick(check(CheckResult.PASSED), comparisons=check(CheckResult.PASSED),
                 evidence=[evidence("WithinTolerance", 150)])
        if sim.status.step_weight == 100:
            break
    assert sim.status.step_weight == 100 and not comparisons_due(sim.status)


def test_a_step_after_the_first_widens_only_once_the_step_guard_holds():
    sim = Sim(spec=compare_spec()).initialized()
    sim.target = "rev2"
    for _ in range(12):
        sim.tick(check(CheckResult.PASSED), evidence=[evidence("Undecided", step=3.0)])
    assert sim.status.step_weight == 5, "the first step is not guarded; the second holds"
    assert "below 2.5x the primary's" in sim.status.message and "evidence 3 of 10" in sim.status.message
    sim.tick(evidence=[evidence("Undecided", step=12.0)], comparisons=check(CheckResult.PASSED))
    assert sim.status.step_weight == 20, "a step whose checks have passed moves on the tick the evidence arrives"


def test_a_regression_during_a_guarded_hold_rolls_back():
    sim = Sim(spec=compare_spec()).initialized()
    sim.target = "rev2"
    for _ in range(8):
        sim.tick(check(CheckResult.PASSED), evidence=[evidence("Undecided", step=1.0)])
    assert sim.status.step_weight == 5
    sim.tick(comparisons=check(CheckResult.FAILED), evidence=[evidence("Regression", step=0.01)])
    assert sim.status.phase == Phase.ROLLED_BACK and sim.route == (100, 0)


def test_judge_gates_alone_do_not_guard_steps():
    gates = [{"name": "quality", "judge": {"url": "http://judge:8080", "maxLossShare": 0.6}}]
    sim = Sim(spec=make_spec(metrics=[], compare=gates)).initialized()
    sim.target = "rev2"
    quality = Evidence(name="quality", kind="judge", measure="lossShare", tolerance=0.6, threshold=100,
                       verdict="Undecided")
    for _ in range(20):
        sim.tick(check(CheckResult.PASSED), evidence=[quality])
    assert sim.status.step_weight == 50
