"""Blast radius: how many users a bad canary reaches before each kind of gate rolls it back, and how
long a good canary waits for promotion, on the same simulated traffic.

    .venv/bin/python bench/blast_radius.py [--runs 2000] [--workers 2] [--tolerances 1.5 2] [--rpm 2000]

Canarist's gates run through the operator's own code: `canarist.engine.decide` every 10 s tick,
`evaluate_metric` (min/max gate) when `analysis_due` says so and `evaluate_rates` (comparison
gate, anytime-valid) when `comparisons_due` does (every tick of a step), fed with simulated counts
instead of Prometheus answers. The Flagger- and Argo-style gates are small policies written here,
on the same step schedule.

Traffic: Poisson arrivals (`--rpm` requests a minute, 10 s ticks) split binomially by the routed
weight; a per-run baseline error rate drawn from U(0.5 %, 2 %) and multiplied by a drift that
walks within 0.7-1.3 (the same for both variants); the canary errs at k times the baseline.
Steps 1/5/20/50/100 %, one check a minute, one passed check advances a step, holdTimeout 1h.
The absolute thresholds of the Flagger-style, Argo-style and min/max gates are tuned on a
separate seed to at most 1 % false rollbacks at k = 1; the comparison gates use alpha = 0.01.

The comparison gates' evidence grows with the number of bad events, not of requests: their times
scale as 1 / (requests a minute x error rate) (try `--rpm`), and the canary requests a bad canary
serves before its rollback do not shrink with more traffic. Their step guard (stepMaxRatio, by
default 5/3 of the tolerance) holds the steps after the first until the evidence shows, at 80 %,
that the ratio is below it: a bad canary stays at 5 % while the rollback evidence comes in.

Flagger's mean requests are over the runs it catches, mostly those with a high base rate where
any gate is quick; a last table compares each method with it on the runs both caught.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from multiprocessing import get_context
from typing import Literal, Protocol

import numpy as np

from canarist.analysis.compare import RateTotals, evaluate_rates
from canarist.analysis.prometheus import evaluate_metric
from canarist.api.spec import CanaryReleaseSpec
from canarist.api.status import CanaryReleaseStatus, Check, Evidence, Phase
from canarist.engine import (Action, Decision, EnsurePrimary, ScaleCanary, SetRoute, World, analysis_due,
                             comparisons_due, decide)
from canarist.engine.plan import apply_in_order

T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)
STEPS = (1, 5, 20, 50, 100)
TICK = 10           # s between the operator's ticks
INTERVAL = 60       # s between checks (analysis.interval)
HOLD = 3600         # s: holdTimeout, per step
FIXED_STEPS_TIME = INTERVAL * len(STEPS)  # a canary that passes every check first time
MAX_TICKS = (HOLD * len(STEPS) + 600) // TICK  # every policy decides well before this
KS = (1.0, 1.5, 2.0, 3.0, 5.0)
ALPHA = 0.01
FALSE_ROLLBACKS = 0.01  # what the absolute thresholds are tuned to at k = 1
FLAGGER_FAILURES = 5

Outcome = Literal["promoted", "rolled_back", "hold_timeout", "undecided"]


@dataclass(frozen=True)
class Method:
    label: str
    kind: Literal["flagger", "argo", "minmax", "compare"]
    threshold: float | None = None  # absolute error-rate limit (flagger, argo, minmax)
    tolerance: float | None = None  # maxRatio (compare)
    failure_limit: int = 1          # minmax: the engine's failureLimit (default 1)


@dataclass(frozen=True)
class Result:
    outcome: Outcome
    seconds: float         # from the canary's first traffic to the decision
    canary_requests: int   # served by the canary until then


# -- traffic --------------------------------------------------------------------------------------

class Traffic:
    """One run's requests and errors, 10 s at a time."""

    def __init__(self, rng: np.random.Generator, k: float, rpm: float) -> None:
        self.rng, self.k, self.per_tick = rng, k, rpm * TICK / 60
        self.base = rng.uniform(0.005, 0.02)
        self.drift = 1.0

    def tick(self, weight: int) -> tuple[int, int, int, int]:
        """(canary_bad, canary_total, primary_bad, primary_total) over the next 10 s."""
        rng = self.rng
        # A reflected random walk: the baseline moves by minutes and hours, within +-30 %.
        drift = self.drift + rng.normal(0.0, 0.03)
        self.drift = 2.6 - drift if drift > 1.3 else 1.4 - drift if drift < 0.7 else drift
        rate = self.base * self.drift
        requests = int(rng.poisson(self.per_tick))
        canary = int(rng.binomial(requests, weight / 100))
        return (int(rng.binomial(canary, min(1.0, self.k * rate))), canary,
                int(rng.binomial(requests - canary, rate)), requests - canary)


# -- gates ----------------------------------------------------------------------------------------

class Gate(Protocol):
    weight: int  # the canary's routed weight for the next 10 s

    def tick(self, seconds: float, counts: tuple[int, int, int, int]) -> Outcome | None: ...


class FixedStepGate:
    """Flagger-style (failures counted over the whole analysis, rollback at the 5th) and Argo-style
    (the first failed measurement aborts): the canary's error rate over the last interval against an
    absolute limit; a failed check holds the step, a passed one advances it."""

    def __init__(self, threshold: float, rollback_at: int) -> None:
        self.threshold, self.rollback_at = threshold, rollback_at
        self.index, self.weight, self.failures = 0, STEPS[0], 0
        self.step_at = self.check_at = 0.0
        self.bad = self.total = 0

    def tick(self, seconds: float, counts: tuple[int, int, int, int]) -> Outcome | None:
        self.bad += counts[0]
        self.total += counts[1]
        if seconds - self.check_at < INTERVAL:
            return None
        rate = self.bad / self.total if self.total else None
        self.check_at, self.bad, self.total = seconds, 0, 0
        if rate is not None and rate > self.threshold:
            self.failures += 1
            return "rolled_back" if self.failures >= self.rollback_at else None
        if rate is not None:
            self.index += 1
            if self.index == len(STEPS):
                return "promoted"
            self.weight, self.step_at = STEPS[self.index], seconds
        return "hold_timeout" if seconds - self.step_at >= HOLD else None


def make_spec(method: Method) -> CanaryReleaseSpec:
    analysis: dict = {"interval": f"{INTERVAL}s", "holdTimeout": f"{HOLD}s", "alpha": ALPHA, "metrics": []}
    if method.kind == "minmax":
        analysis["metrics"] = [{"name": "error-rate", "prometheus": {"query": "q"}, "max": method.threshold}]
        analysis["failureLimit"] = method.failure_limit
    else:
        analysis["compare"] = [{"name": "errors", "rates": {"bad": "b{{ variant }}", "total": "t{{ variant }}",
                                                            "maxRatio": method.tolerance}}]
    return CanaryReleaseSpec.model_validate({
        "targetRef": {"name": "web"}, "service": {"port": 8080},
        "routing": {"gatewayAPI": {"parentRefs": [{"name": "gw"}]}},
        "steps": list(STEPS), "analysis": analysis})


class EngineGate:
    """canarist itself: decide() every tick on an in-memory world that applies its actions the way
    the handlers do, with the gates evaluated by the operator's pure functions when analysis is due."""

    def __init__(self, spec: CanaryReleaseSpec) -> None:
        self.spec, self.status, self.now = spec, CanaryReleaseStatus(), T0
        self.target, self.primary, self.canary_up, self.route = "rev1", None, False, None
        self.window = [0, 0]         # canary bad, total since the last check: the min/max gate's interval
        self.totals = [0, 0, 0, 0]   # since the rollout began: what the comparison gates query
        self.weight = 0
        for _ in range(3):           # create the primary, route to it, go Idle
            self._decide(None, None, None)
        self.target = "rev2"         # the new revision: rollout starts, then the canary gets its first step
        while self.weight == 0:
            self._decide(None, None, None)
            assert self.now < T0 + timedelta(minutes=5), self.status.message

    def tick(self, seconds: float, counts: tuple[int, int, int, int]) -> Outcome | None:
        self.window = [self.window[0] + counts[0], self.window[1] + counts[1]]
        self.totals = [a + b for a, b in zip(self.totals, counts)]
        checks: tuple[Check, ...] | None = None
        comparisons: tuple[Check, ...] | None = None
        evidence: tuple[Evidence, ...] | None = None
        now = self.now + timedelta(seconds=TICK)
        analysis = self.status.pinned_analysis  # what the operator runs: the analysis pinned at the start
        # As the operator's tick does: min/max gates when analysis is due, comparison gates every
        # tick of a step (their evidence may be read at any time).
        if analysis is not None and analysis_due(self.status, now):
            value = self.window[0] / self.window[1] if self.window[1] else None
            checks = tuple(evaluate_metric(g, value, now) for g in analysis.metrics)
            self.window = [0, 0]
        if analysis is not None and comparisons_due(self.status) and analysis.compare:
            previous = {e.name: e for e in self.status.evidence}
            pairs = [evaluate_rates(gate, previous.get(gate.name), RateTotals(*self.totals), analysis.alpha,
                                    len(analysis.compare), now, self.status.step_index) for gate in analysis.compare]
            comparisons, evidence = tuple(c for c, _ in pairs), tuple(e for _, e in pairs)
        decision = self._decide(checks, comparisons, evidence)
        phase = self.status.phase
        if phase == Phase.ROLLED_BACK:
            timeout = any(e.message.startswith("HoldTimeout") for e in decision.events if e.reason == "RolledBack")
            return "hold_timeout" if timeout else "rolled_back"
        return "promoted" if phase in (Phase.PROMOTING, Phase.SUCCEEDED) else None

    def _decide(self, checks: tuple[Check, ...] | None, comparisons: tuple[Check, ...] | None,
                evidence: tuple[Evidence, ...] | None) -> Decision:
        self.now += timedelta(seconds=TICK)
        world = World(target_revision=self.target, primary_revision=self.primary,
                      primary_ready=self.primary is not None, canary_ready=self.canary_up,
                      canary_available=self.canary_up,
                      routed_weight=self.route[1] if self.route else None, checks=checks, comparisons=comparisons,
                      evidence=evidence)
        decision = decide(self.spec, self.status, world, self.now, generation=1)
        apply_in_order(decision.actions, self._apply)
        self.status = decision.status
        if self.route is not None:
            self.status.canary_weight = self.route[1]  # the handler confirms the weight it routed
        self.weight = self.route[1] if self.route else 0
        return decision

    def _apply(self, action: Action) -> None:
        if isinstance(action, EnsurePrimary):
            self.primary = action.revision
        elif isinstance(action, SetRoute):
            self.route = (action.primary, action.canary)
        elif isinstance(action, ScaleCanary):
            self.canary_up = action.up


def make_gate(method: Method, spec: CanaryReleaseSpec | None) -> Gate:
    if method.kind in ("flagger", "argo"):
        assert method.threshold is not None
        return FixedStepGate(method.threshold, FLAGGER_FAILURES if method.kind == "flagger" else 1)
    assert spec is not None
    return EngineGate(spec)


# -- running --------------------------------------------------------------------------------------

def rollout(method: Method, spec: CanaryReleaseSpec | None, k: float, rng: np.random.Generator,
            rpm: float) -> Result:
    gate, traffic = make_gate(method, spec), Traffic(rng, k, rpm)
    served = 0
    for tick in range(1, MAX_TICKS + 1):
        counts = traffic.tick(gate.weight)
        served += counts[1]
        outcome = gate.tick(tick * TICK, counts)
        if outcome is not None:
            return Result(outcome, tick * TICK, served)
    return Result("undecided", MAX_TICKS * TICK, served)


@dataclass(frozen=True)
class Job:
    method: Method
    k: float
    seed: int
    first: int
    count: int
    rpm: float


def _run_job(job: Job) -> list[Result]:
    spec = make_spec(job.method) if job.method.kind in ("minmax", "compare") else None
    # One stream per (seed, k, run), whatever the method: every gate meets the same base rates and drifts.
    return [rollout(job.method, spec, job.k, np.random.default_rng([job.seed, round(job.k * 100), run]), job.rpm)
            for run in range(job.first, job.first + job.count)]


def run_many(jobs: list[Job], workers: int) -> list[list[Result]]:
    """Results per job, in order; the jobs are cut in pieces so both workers stay busy."""
    pieces: list[tuple[int, Job]] = []
    for index, job in enumerate(jobs):
        size = max(1, math.ceil(job.count / (4 * max(1, workers))))
        for first in range(job.first, job.first + job.count, size):
            pieces.append((index, Job(job.method, job.k, job.seed, first, min(size, job.first + job.count - first),
                                      job.rpm)))
    if workers <= 1:
        done = [_run_job(piece) for _, piece in pieces]
    else:
        with get_context("fork").Pool(workers) as pool:
            done = pool.map(_run_job, [piece for _, piece in pieces], chunksize=1)
    results: list[list[Result]] = [[] for _ in jobs]
    for (index, _), part in zip(pieces, done):
        results[index].extend(part)
    return results


@dataclass(frozen=True)
class Cell:
    """One method at one k."""

    runs: int
    rolled_back: float            # share rolled back (any reason): caught, or false rollbacks at k = 1
    hold_timeouts: float          # share of those by holdTimeout
    mean_requests: float | None   # canary requests served before the rollback, over rolled-back runs
    promoted: float               # share promoted
    median_seconds: float | None  # to the decision to promote, over promoted runs
    p99_seconds: float | None


def summarize(results: list[Result]) -> Cell:
    back = [r for r in results if r.outcome in ("rolled_back", "hold_timeout")]
    times = sorted(r.seconds for r in results if r.outcome == "promoted")
    n = len(results)
    return Cell(n, len(back) / n, sum(r.outcome == "hold_timeout" for r in back) / n,
                statistics.fmean(r.canary_requests for r in back) if back else None, len(times) / n,
                statistics.median(times) if times else None,
                times[min(len(times) - 1, math.ceil(0.99 * len(times)) - 1)] if times else None)


def run_cell(method: Method, k: float, runs: int, seed: int = 1, workers: int = 1, rpm: float = 2000) -> Cell:
    """One cell of the table; what the unit test drives."""
    return summarize(run_many([Job(method, k, seed, 0, runs, rpm)], workers)[0])


# -- tuning the absolute thresholds --------------------------------------------------------------

def calibrate(methods: list[Method], runs: int, seed: int, workers: int, rpm: float,
              steps: int = 11, high: float = 0.5) -> list[Method]:
    """The lowest threshold of each method with at most 1 % false rollbacks at k = 1 (bisection, every
    method at once, on `seed`'s runs: the same runs at every threshold, so the share falls as it rises)."""
    low = [0.0] * len(methods)
    top = [high] * len(methods)
    for _ in range(steps):
        middle = [(a + b) / 2 for a, b in zip(low, top)]
        jobs = [Job(_with(m, t), 1.0, seed, 0, runs, rpm) for m, t in zip(methods, middle)]
        for i, results in enumerate(run_many(jobs, workers)):
            if summarize(results).rolled_back <= FALSE_ROLLBACKS:
                top[i] = middle[i]
            else:
                low[i] = middle[i]
    return [_with(m, t) for m, t in zip(methods, top)]


def _with(method: Method, threshold: float) -> Method:
    return Method(method.label, method.kind, threshold, method.tolerance, method.failure_limit)


# -- report ---------------------------------------------------------------------------------------

def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def _caught(cell: Cell) -> str:
    """Share rolled back, with the part that only holdTimeout rolled back (no evidence either way)."""
    return _pct(cell.rolled_back) + (f" (ht {_pct(cell.hold_timeouts)})" if cell.hold_timeouts else "")


def _num(x: float | None) -> str:
    return "-" if x is None else f"{x:,.0f}"


def table(title: str, header: list[str], rows: Iterable[list[str]], first: int = 40) -> str:
    lines = [title, "".join(h.ljust(first) if i == 0 else h.rjust(20) for i, h in enumerate(header))]
    lines += ["".join(c.ljust(first) if i == 0 else c.rjust(20) for i, c in enumerate(row)) for row in rows]
    return "\n".join(lines)


@dataclass
class Target:
    text: str
    check: Callable[[dict[float, Cell], dict[float, Cell]], bool]  # (this method's cells, Flagger's)


def _ratio_at_most(k: float, part: float) -> Callable[[dict[float, Cell], dict[float, Cell]], bool]:
    def check(mine: dict[float, Cell], flagger: dict[float, Cell]) -> bool:
        a, b = mine[k].mean_requests, flagger[k].mean_requests
        return a is not None and b is not None and a <= part * b
    return check


TARGETS = [
    Target("k=3: >=95% caught", lambda c, f: c[3.0].rolled_back >= 0.95),
    Target("k=3: <=1,100 canary requests", lambda c, f: (c[3.0].mean_requests or math.inf) <= 1100),
    Target("k=3: <=1/5 of Flagger's requests", _ratio_at_most(3.0, 1 / 5)),
    Target("k=5: >=99% caught", lambda c, f: c[5.0].rolled_back >= 0.99),
    Target("k=5: <=1/10 of Flagger's requests", _ratio_at_most(5.0, 1 / 10)),
    Target("k=2: >=80% caught", lambda c, f: c[2.0].rolled_back >= 0.80),
    Target("k=1: <=1% rolled back", lambda c, f: c[1.0].rolled_back <= 0.01),
    Target("k=1: >=99% promoted in holdTimeout", lambda c, f: c[1.0].promoted >= 0.99),
    Target(f"k=1: median <= 3x{FIXED_STEPS_TIME}s", lambda c, f: (c[1.0].median_seconds or math.inf)
           <= 3 * FIXED_STEPS_TIME),
]


def paired_requests(mine: list[Result], flagger: list[Result]) -> tuple[float, float, int] | None:
    """Mean canary requests before the rollback over the runs both rolled back (the same base rate and
    drift in both: runs are paired by index), this method's and Flagger's; and how many such runs."""
    both = [(a.canary_requests, b.canary_requests) for a, b in zip(mine, flagger)
            if a.outcome in ("rolled_back", "hold_timeout") and b.outcome in ("rolled_back", "hold_timeout")]
    if not both:
        return None
    return statistics.fmean(a for a, _ in both), statistics.fmean(b for _, b in both), len(both)


def report(methods: list[Method], cells: dict[str, dict[float, Cell]],
           raw: dict[str, dict[float, list[Result]]] | None = None) -> str:
    label = [m.label for m in methods]
    ks = [f"k={k:g}" for k in KS]
    out = [table("share rolled back (k=1: false rollbacks; otherwise: bad canaries caught); ht: by holdTimeout",
                 ["method"] + ks, [[m] + [_caught(cells[m][k]) for k in KS] for m in label]),
           table("mean canary requests served before the rollback (rolled-back runs)", ["method"] + ks,
                 [[m] + [_num(cells[m][k].mean_requests) for k in KS] for m in label]),
           table(f"good canary (k=1): promotion; the fixed steps take {FIXED_STEPS_TIME}s",
                 ["method", "promoted", "median s", "p99 s", "hold timeouts"],
                 [[m, _pct(cells[m][1.0].promoted), _num(cells[m][1.0].median_seconds),
                   _num(cells[m][1.0].p99_seconds), _pct(cells[m][1.0].hold_timeouts)] for m in label])]
    flagger = next(m.label for m in methods if m.kind == "flagger")
    judged = [m.label for m in methods if m.kind != "flagger"]
    if raw is not None:
        # Flagger's mean is over the runs it catches, mostly those with a high base rate, where any
        # gate is quick; on the same runs the comparison is like for like.
        rows = []
        for m in judged:
            row = [m]
            for k in KS[1:]:
                pair = paired_requests(raw[m][k], raw[flagger][k])
                row.append("-" if pair is None else f"{pair[0]:,.0f} vs {pair[1]:,.0f}")
            rows.append(row)
        out.append(table("mean canary requests before the rollback on the runs both it and (a) rolled back "
                         "(it vs (a))", ["method"] + ks[1:], rows))
    out.append(table("targets", ["target"] + [m.split(" ")[0] for m in judged],
                     [[t.text] + ["PASS" if t.check(cells[m], cells[flagger]) else "MISS" for m in judged]
                      for t in TARGETS]))
    return "\n\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=2000, help="rollouts per cell")
    parser.add_argument("--calibration-runs", type=int, default=None,
                        help="k=1 rollouts per bisection step when tuning the absolute thresholds "
                             "(default: --runs, at least 1000)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--tolerances", type=float, nargs="+", default=[1.5, 2.0], help="maxRatio of (d)")
    parser.add_argument("--failure-limit", type=int, default=1, help="failureLimit of (c), the engine's default 1")
    parser.add_argument("--rpm", type=float, default=2000, help="requests a minute")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    started = time.monotonic()

    untuned = [Method("(a) Flagger-style", "flagger"), Method("(b) Argo-style", "argo"),
               Method(f"(c) canarist min/max fL={args.failure_limit}", "minmax", failure_limit=args.failure_limit)]
    calibration_runs = args.calibration_runs or max(1000, args.runs)  # 1 % of fewer runs is too coarse
    tuned = calibrate(untuned, calibration_runs, args.seed + 1000, args.workers, args.rpm)
    methods = [Method(f"{m.label} max={m.threshold:.4f}", m.kind, m.threshold, None, m.failure_limit) for m in tuned]
    methods += [Method(f"(d{i + 1}) compare tol={t:g} a={ALPHA:g}", "compare", tolerance=t)
                for i, t in enumerate(args.tolerances)]
    calibrated = time.monotonic() - started
    jobs = [Job(m, k, args.seed, 0, args.runs, args.rpm) for m in methods for k in KS]
    results = run_many(jobs, args.workers)
    cells: dict[str, dict[float, Cell]] = {m.label: {} for m in methods}
    raw: dict[str, dict[float, list[Result]]] = {m.label: {} for m in methods}
    for job, part in zip(jobs, results):
        cells[job.method.label][job.k] = summarize(part)
        raw[job.method.label][job.k] = part

    print(f"{args.runs} rollouts per cell, {args.rpm:g} requests/min, steps {'/'.join(map(str, STEPS))}, "
          f"interval {INTERVAL}s, holdTimeout {HOLD}s per step; thresholds of (a)-(c) tuned to <= "
          f"{FALSE_ROLLBACKS:.0%} false rollbacks on {calibration_runs} runs per step of a "
          f"separate seed; (d): alpha {ALPHA:g}, tolerance = maxRatio\n")
    print(report(methods, cells, raw))
    undecided = sum(r.outcome == "undecided" for part in results for r in part)
    print(f"\nundecided rollouts: {undecided}; elapsed {time.monotonic() - started:.0f}s "
          f"(calibration {calibrated:.0f}s) with {args.workers} worker(s), {os.cpu_count()} CPUs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
