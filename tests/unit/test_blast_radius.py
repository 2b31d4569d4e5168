"""bench/blast_radius.py runs the real engine and comparison gate and reports sane cells. Figures
and targets are the bench's business: here only that it runs and what it returns holds together."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

_PATH = Path(__file__).resolve().parents[2] / "bench" / "blast_radius.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("blast_radius", _PATH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["blast_radius"] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


def _sane(cell, runs: int) -> None:
    assert cell.runs == runs
    assert 0 <= cell.hold_timeouts <= cell.rolled_back <= 1 and 0 <= cell.promoted <= 1
    assert cell.rolled_back + cell.promoted <= 1 + 1e-9


def test_comparison_gate_cells_for_a_good_and_a_bad_canary(bench):
    gate = bench.Method("(d) compare", "compare", tolerance=2.0)
    good = bench.run_cell(gate, 1.0, runs=20)
    bad = bench.run_cell(gate, 5.0, runs=20)
    _sane(good, 20)
    _sane(bad, 20)
    assert good.promoted > 0 and good.median_seconds is not None
    assert bench.FIXED_STEPS_TIME <= good.median_seconds <= good.p99_seconds, "no gate beats the fixed steps"
    assert bad.rolled_back > 0 and bad.mean_requests is not None and bad.mean_requests > 0


def test_the_same_seed_gives_the_same_cell(bench):
    gate = bench.Method("(d) compare", "compare", tolerance=2.0)
    assert bench.run_cell(gate, 5.0, runs=3, seed=7) == bench.run_cell(gate, 5.0, runs=3, seed=7)


def test_flagger_style_rolls_back_at_the_fifth_failed_check_and_holds_the_step_before(bench):
    gate = bench.FixedStepGate(threshold=0.05, rollback_at=5)
    bad = (10, 100, 0, 0)  # 10 % errors on the canary: every check fails
    outcomes = [gate.tick(t * bench.TICK, bad) for t in range(1, 31)]
    assert outcomes.index("rolled_back") == 29 and gate.weight == bench.STEPS[0]
