"""Comparison gates: fold what the canary and the primary did over the same period into the
sequential evidence kept in status, and turn that into a Check and an Evidence for the engine.

Fetching is the providers' (canarist.analysis.sources); evaluating is pure: the benchmark and the
tests drive `evaluate_rates` / `evaluate_quality` with simulated observations through the very
code the operator runs.
"""

from __future__ import annotations

import math
from datetime import datetime

from canarist.api.compare import Comparison
from canarist.api.status import Check, CheckResult, Evidence

from .sequential import STEP_BETA, Counts, MeanEvidence, RatioEvidence, threshold
from .sources import Pairs, RateTotals, SourceContext, SourceError, source_for
from .sources.judge_pairs import pair_value

__all__ = ["Pairs", "RateTotals", "evaluate_quality", "evaluate_rates", "pair_value", "run_comparisons"]


def evaluate_rates(gate: Comparison, previous: Evidence | None, totals: RateTotals, alpha: float, gates: int,
                   now: datetime, step: int = 0) -> tuple[Check, Evidence]:
    """`step` names the current step: within one, the canary's share of requests is measured over
    the whole step so far, never over one short interval (see RatioEvidence.update)."""
    assert gate.rates is not None
    tolerance, guard = gate.rates.max_ratio, gate.rates.step_guard
    state = dict(previous.state) if previous is not None else {}
    evidence = RatioEvidence.from_dict(state.get("ratio") or {}, tolerance, guard)
    current = [totals.canary_bad, totals.canary_total, totals.primary_bad, totals.primary_total]
    # The first reading of a rollout is only the baseline. The counters' window opens when the
    # rollout began, and until the first step's weight was in the route (the canary's pods getting
    # Ready: seconds to minutes with real pods) the primary served everyone; counted as part of the
    # step, that time shrinks the canary's measured share and inflates its ratio (a 3x canary read
    # as 20x in the e2e test through the real gateway, a good one as several times worse).
    baseline = "totals" not in state
    last = current if baseline else state["totals"]
    # Whole bad events between two readings of the cumulative counters: rounding the totals (not
    # the increments) keeps increase()'s fractional extrapolation from adding up over many ticks.
    increments = Counts(canary_bad=max(0, round(current[0]) - round(last[0])),
                        canary_total=max(0.0, current[1] - last[1]),
                        primary_bad=max(0, round(current[2]) - round(last[2])),
                        primary_total=max(0.0, current[3] - last[3]))
    in_step = state.get("stepRequests") if state.get("step") == step else None
    in_step = [a + b for a, b in zip(in_step or [0.0, 0.0], (increments.canary_total, increments.primary_total))]
    share = in_step[0] / sum(in_step) if sum(in_step) > 0 else None
    if not baseline:
        evidence.update(increments, share)
    # A counter that went backwards (a reset increase() missed, a Prometheus restart) is not
    # counted twice: the next increment starts from the higher reading.
    state = {"ratio": evidence.to_dict(), "totals": [max(a, b) for a, b in zip(current, last)], "step": step,
             "stepRequests": [round(v, 3) for v in in_step]}
    limit = threshold(alpha, gates)
    low, high = evidence.interval(alpha)
    needed = evidence.needed_requests(math.log(limit))
    needs = "" if needed is None else (
        "enough evidence" if needed == 0 else "no end in sight at this weight: the canary is about at the tolerance"
        if math.isinf(needed) else f"about {_round(needed)} more canary requests at this weight")
    step_limit = round(1 / STEP_BETA, 6)
    step_evidence = _e(evidence.log_guard() or 0.0)
    if step_evidence < step_limit:
        needed = evidence.needed_requests(math.log(step_limit), guard=True)
        if needed is not None and not math.isinf(needed) and needed > 0:
            needs += f"{'; ' if needs else ''}about {_round(needed)} more before the next step may widen"
    check, record = _record(gate.name, "rates", "ratio", tolerance, evidence.estimate(), low,
                     None if math.isinf(high) else high, evidence.log_rollback(), evidence.log_promote(), limit,
                     evidence.canary_total, needs, state, now, has_data=increments.canary_total > 0,
                     describe=lambda e: (f"canary's rate of bad events is {_fmt(e.estimate)}x the primary's "
                                         f"(CI {_fmt(e.low)}-{_fmt(e.high)}x) over {evidence.canary_bad:g} canary "
                                         f"and {evidence.primary_bad:g} primary bad events; tolerance "
                                         f"{tolerance:g}x"))
    record.step_max_ratio, record.step_evidence, record.step_threshold = guard, _r(step_evidence), step_limit
    return check, record


def evaluate_quality(gate: Comparison, previous: Evidence | None, pairs: Pairs, alpha: float, gates: int,
                     now: datetime) -> tuple[Check, Evidence]:
    assert gate.judge is not None
    by_score = gate.judge.max_score_drop is not None
    tolerance = gate.judge.max_score_drop if by_score else gate.judge.max_loss_share
    assert tolerance is not None
    boundary = (tolerance + 1) / 2 if by_score else tolerance
    state = dict(previous.state) if previous is not None else {}
    evidence = MeanEvidence.from_dict(state.get("mean") or {}, boundary, alpha)
    for value in pairs.values:
        evidence.update(value)
    state = {"mean": evidence.to_dict(), "cursor": pairs.cursor if pairs.cursor is not None else state.get("cursor")}
    limit = threshold(alpha, gates)
    low, high = evidence.interval()
    mean = evidence.mean()
    if by_score:  # back from x = (d + 1) / 2 to the score drop d
        mean, low, high = (None if mean is None else 2 * mean - 1), 2 * low - 1, 2 * high - 1
    needed = evidence.needed_samples(math.log(limit))
    needs = "" if needed is None else (
        "enough evidence" if needed == 0 else "no end in sight: the canary is about at the tolerance"
        if math.isinf(needed) else f"about {_round(needed)} more judged pairs")
    measure = "scoreDrop" if by_score else "lossShare"
    what = "trails the primary's mean score by" if by_score else "loses a share of head-to-head comparisons of"
    return _record(gate.name, "judge", measure, tolerance, mean, low, high, evidence.log_rollback(),
                   evidence.log_promote(), limit, evidence.n, needs, state, now, has_data=bool(pairs.values),
                   describe=lambda e: (f"canary {what} {_fmt(e.estimate)} (CI {_fmt(e.low)} to {_fmt(e.high)}) over "
                                       f"{evidence.n} judged pairs; tolerance {tolerance:g}"))


def _record(name: str, kind: str, measure: str, tolerance: float, estimate: float | None, low: float | None,
            high: float | None, log_rollback: float, log_promote: float, limit: float, events: float, needs: str,
            state: dict, now: datetime, has_data: bool, describe) -> tuple[Check, Evidence]:
    rollback, promote = _e(log_rollback), _e(log_promote)
    verdict = "Regression" if rollback >= limit else "WithinTolerance" if promote >= limit else "Undecided"
    evidence = Evidence(name=name, kind=kind, measure=measure, tolerance=tolerance, estimate=_r(estimate),
                        low=_r(low), high=_r(high), rollback=_r(rollback), promote=_r(promote), threshold=_r(limit),
                        verdict=verdict, canary_events=round(events, 1), needs=needs, at=now, state=state)
    text = describe(evidence) + f"; evidence of a regression {_fmt(rollback)}, of being within it {_fmt(promote)} " \
                                f"(a decision needs {_fmt(limit)})"
    if verdict == "Regression":
        result = CheckResult.FAILED
    elif has_data or verdict == "WithinTolerance":
        result = CheckResult.PASSED
    else:
        result = CheckResult.NO_DATA
        text = "no new canary data this interval; " + text
    check = Check(name=name, kind="compare", result=result, value=evidence.estimate, max=tolerance, message=text,
                  at=now)
    return check, evidence


def _e(log_e: float) -> float:
    return math.exp(min(log_e, 700.0))


def _r(value: float | None) -> float | None:
    if value is None or math.isinf(value) or math.isnan(value):
        return None
    return float(f"{value:.4g}")


def _fmt(value: float | None) -> str:
    if value is None:
        return "?"
    return f"{value:.3g}" if abs(value) < 1e4 else f"{value:.2e}"


def _round(value: float) -> str:
    return f"{value:,.0f}" if value < 1e7 else "more than 10,000,000"


def run_comparisons(gates: list[Comparison], previous: list[Evidence], alpha: float, context: SourceContext,
                    step: int = 0) -> tuple[list[Check], list[Evidence]]:
    """One analysis run of every comparison gate: a Check each, and the evidence to keep. Each gate's
    provider gives an observation; its shape, not its provider, picks the statistics."""
    by_name = {e.name: e for e in previous}
    checks, evidence = [], []
    for gate in gates:
        before = by_name.get(gate.name)
        try:
            observation = source_for(gate).observe(gate, context, dict(before.state) if before is not None else {})
        except SourceError as exc:
            checks.append(Check(name=gate.name, kind="compare", result=CheckResult.ERROR, message=str(exc),
                                at=context.now))
            if before is not None:
                evidence.append(before)
            continue
        if isinstance(observation, RateTotals):
            check, kept = evaluate_rates(gate, before, observation, alpha, len(gates), context.now, step)
        else:
            check, kept = evaluate_quality(gate, None if observation.restarted else before, observation, alpha,
                                           len(gates), context.now)
        checks.append(check)
        evidence.append(kept)
    return checks, evidence
