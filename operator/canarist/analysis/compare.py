"""Comparison gates: fetch what the canary and the primary did over the same period, fold it into the
sequential evidence kept in status, and turn that into a Check and an Evidence for the engine.

Fetching (Prometheus counters, the judge's ordered pairs) is kept apart from evaluating, which is
pure: the benchmark and the tests drive `evaluate_rates` / `evaluate_quality` with simulated
observations through the very code the operator runs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime

import requests

from canarist.api.compare import Comparison
from canarist.api.durations import parse_duration
from canarist.api.status import Check, CheckResult, Evidence

from .prometheus import PrometheusClientCache, query_value
from .sequential import Counts, MeanEvidence, RatioEvidence, threshold
from .templating import QueryVariables, render


@dataclass(frozen=True)
class RateTotals:
    """Cumulative bad and total events of both variants since the rollout began."""

    canary_bad: float
    canary_total: float
    primary_bad: float
    primary_total: float


@dataclass(frozen=True)
class Pairs:
    """Judged pairs new since the last check, in the order the judge completed them."""

    values: tuple[float, ...]  # x in [0, 1]: how much worse the canary's answer was
    cursor: str | None


class SourceError(Exception):
    """A provider could not answer; the check is an error and the evidence is left as it was."""


class CursorLost(SourceError):
    """The judge no longer knows the cursor (its database was replaced): the test starts over."""


# -- evaluating (pure) ------------------------------------------------------------------------------

def evaluate_rates(gate: Comparison, previous: Evidence | None, totals: RateTotals, alpha: float, gates: int,
                   now: datetime, step: int = 0) -> tuple[Check, Evidence]:
    """`step` names the current step: within one, the canary's share of requests is measured over
    the whole step so far, never over one short interval (see RatioEvidence.update)."""
    assert gate.rates is not None
    tolerance = gate.rates.max_ratio
    state = dict(previous.state) if previous is not None else {}
    evidence = RatioEvidence.from_dict(state.get("ratio") or {}, tolerance)
    last = state.get("totals") or [0.0, 0.0, 0.0, 0.0]
    current = [totals.canary_bad, totals.canary_total, totals.primary_bad, totals.primary_total]
    # Whole bad events between two readings of the cumulative counters: rounding the totals (not
    # the increments) keeps increase()'s fractional extrapolation from adding up over many ticks.
    increments = Counts(canary_bad=max(0, round(current[0]) - round(last[0])),
                        canary_total=max(0.0, current[1] - last[1]),
                        primary_bad=max(0, round(current[2]) - round(last[2])),
                        primary_total=max(0.0, current[3] - last[3]))
    in_step = state.get("stepRequests") if state.get("step") == step else None
    in_step = [a + b for a, b in zip(in_step or [0.0, 0.0], (increments.canary_total, increments.primary_total))]
    share = in_step[0] / sum(in_step) if sum(in_step) > 0 else None
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
    result = _record(gate.name, "rates", "ratio", tolerance, evidence.estimate(), low,
                     None if math.isinf(high) else high, evidence.log_rollback(), evidence.log_promote(), limit,
                     evidence.canary_total, needs, state, now, has_data=increments.canary_total > 0,
                     describe=lambda e: (f"canary's rate of bad events is {_fmt(e.estimate)}x the primary's "
                                         f"(CI {_fmt(e.low)}-{_fmt(e.high)}x) over {evidence.canary_bad:g} canary "
                                         f"and {evidence.primary_bad:g} primary bad events; tolerance "
                                         f"{tolerance:g}x"))
    return result


def pair_value(gate: Comparison, primary_score: float | None, canary_score: float | None,
               outcome: str | None) -> float | None:
    """How much worse the canary's answer was, in [0, 1]; None when the pair says nothing."""
    assert gate.judge is not None
    if gate.judge.max_score_drop is not None:
        if primary_score is None or canary_score is None:
            return None
        return (primary_score - canary_score + 1) / 2
    return {"loss": 1.0, "tie": 0.5, "win": 0.0}.get(outcome or "")


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


# -- fetching ---------------------------------------------------------------------------------------

def fetch_rate_totals(gate: Comparison, variables: QueryVariables, clients: PrometheusClientCache,
                      default_address: str, rollout_started_at: datetime, now: datetime) -> RateTotals:
    assert gate.rates is not None
    window = f"{max(1, math.ceil((now - rollout_started_at).total_seconds()))}s"
    client = clients.get(gate.rates.address or default_address)
    values = []
    for variant in (variables.canary, variables.primary):
        for template in (gate.rates.bad, gate.rates.total):
            try:
                value = query_value(client, render(template, variables, {"variant": variant, "window": window}),
                                    clients.timeout)
            except Exception as exc:  # every provider failure is an error check, never a crash or a pass
                raise SourceError(f"Prometheus error: {type(exc).__name__}: {str(exc)[:200]}") from exc
            values.append(value or 0.0)  # no series yet: no events yet
    return RateTotals(*values)


def fetch_pairs(gate: Comparison, session: requests.Session, release: str, since: datetime,
                cursor: str | None, page: int = 2000, pages: int = 5) -> Pairs:
    """New judged pairs after `cursor`, in the judge's completion order (docs/judge-protocol.md):
    up to `pages` pages a check, so a long backlog is caught up over a few checks, never skipped."""
    assert gate.judge is not None
    values: list[float] = []
    for _ in range(pages):
        body = _pairs_page(gate, session, release, since, cursor, page)
        try:
            values += [v for v in (pair_value(gate, _score(p.get("primaryScore")), _score(p.get("canaryScore")),
                                              p.get("outcome")) for p in body["pairs"]) if v is not None]
            next_cursor, more = body.get("cursor"), bool(body.get("more"))
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise SourceError(f"malformed pairs from the judge: {type(exc).__name__}") from exc
        if next_cursor is not None and not isinstance(next_cursor, str):
            raise SourceError("malformed pairs from the judge: cursor is not a string")
        cursor = next_cursor or cursor
        if not more:
            break
    return Pairs(tuple(values), cursor)


def _pairs_page(gate: Comparison, session: requests.Session, release: str, since: datetime, cursor: str | None,
                limit: int) -> dict:
    assert gate.judge is not None
    params = {"release": release, "since": since.isoformat().replace("+00:00", "Z"), "limit": str(limit)}
    if cursor:
        params["after"] = cursor
    try:
        response = session.get(f"{gate.judge.url.rstrip('/')}/v1/pairs", params=params,
                               timeout=parse_duration(gate.judge.timeout).total_seconds())
    except requests.RequestException as exc:
        raise SourceError(f"judge unreachable at {gate.judge.url}: {type(exc).__name__}") from exc
    if response.status_code == 410:
        raise CursorLost("the judge's database was replaced; the quality comparison starts over")
    if response.status_code != 200:
        raise SourceError(f"judge answered HTTP {response.status_code} {response.reason}")
    try:
        body = response.json()
    except ValueError as exc:
        raise SourceError("judge answered something that is not JSON") from exc
    if not isinstance(body, dict):
        raise SourceError("malformed pairs from the judge: not an object")
    return body


def _score(value) -> float | None:
    if value is None:
        return None
    score = float(value)
    if not 0 <= score <= 1:
        raise ValueError(f"score {score} outside [0, 1]")
    return score


def run_comparisons(gates: list[Comparison], previous: list[Evidence], alpha: float, variables: QueryVariables,
                    prometheus: PrometheusClientCache, default_prometheus: str, session: requests.Session,
                    release: str, rollout_started_at: datetime, now: datetime,
                    step: int = 0) -> tuple[list[Check], list[Evidence]]:
    """One analysis run of every comparison gate: a Check each, and the evidence to keep."""
    by_name = {e.name: e for e in previous}
    checks, evidence = [], []
    for gate in gates:
        before = by_name.get(gate.name)
        try:
            if gate.rates is not None:
                totals = fetch_rate_totals(gate, variables, prometheus, default_prometheus, rollout_started_at, now)
                check, kept = evaluate_rates(gate, before, totals, alpha, len(gates), now, step)
            else:
                cursor = (before.state.get("cursor") if before is not None else None)
                try:
                    pairs = fetch_pairs(gate, session, release, rollout_started_at, cursor)
                except CursorLost:
                    before, pairs = None, fetch_pairs(gate, session, release, rollout_started_at, None)
                check, kept = evaluate_quality(gate, before, pairs, alpha, len(gates), now)
        except SourceError as exc:
            checks.append(Check(name=gate.name, kind="compare", result=CheckResult.ERROR, message=str(exc), at=now))
            if before is not None:
                evidence.append(before)
            continue
        checks.append(check)
        evidence.append(kept)
    return checks, evidence
