"""When a tick asks for the next one (issue 15): at the release's next check, never at once for a
check that cannot run yet, since that would spin a tick worker until the world changes."""

from __future__ import annotations

from datetime import timedelta

from canarist.api.status import Phase
from canarist.handlers.tick import next_tick_in

from .engine_sim import PASS, Sim


def at_first_step() -> Sim:
    sim = Sim().initialized()
    sim.target = "rev2"
    for _ in range(10):
        sim.tick(PASS, advance=1)
        if sim.status.phase == Phase.PROGRESSING and sim.status.step_weight > 0 and sim.status.step_started_at:
            return sim
    raise AssertionError(f"never reached the first step: {sim.status.message}")


def test_the_next_tick_is_asked_for_when_the_check_is_due():
    sim = at_first_step()
    assert next_tick_in(sim.status, sim.status.step_started_at + timedelta(seconds=4), gates_pending=False) == 6.0


def test_an_overdue_check_that_did_not_run_waits_for_a_watch_event_not_an_immediate_tick():
    # The tick's decision left the check due: its gates did not run (canary pods not ready, a
    # problem in the world). An immediate re-tick would find the same world, again and again.
    sim = at_first_step()
    overdue = sim.status.step_started_at + timedelta(seconds=25)
    assert next_tick_in(sim.status, overdue, gates_pending=False) is None


def test_a_gate_run_in_flight_wakes_the_release_itself():
    sim = at_first_step()
    assert next_tick_in(sim.status, sim.status.step_started_at, gates_pending=True) is None


def test_nothing_to_check_asks_for_nothing():
    assert next_tick_in(Sim().status, Sim().now, gates_pending=False) is None
