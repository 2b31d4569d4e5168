"""The judge gate: asks the judge service for verdicts and compares them to the thresholds.

The judge only counts and scores; every threshold is applied here, by the operator, so the
rollback rule is the one pinned in the CanaryRelease status (DESIGN.md §4).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import requests

from canarist.api.durations import parse_duration
from canarist.api.spec import Cohort, JudgeGate
from canarist.api.status import Check, CheckResult

from .judge_http import get_json


class VerdictError(Exception):
    pass


@dataclass(frozen=True)
class Verdict:
    judged: int
    mean_score: float | None
    wins: int
    losses: int
    ties: int
    budget_exhausted: bool
    budget_exhausted_by: str | None = None  # "release" or "global" (every release's tokens of a day)

    @classmethod
    def parse(cls, body: object) -> "Verdict":
        try:
            assert isinstance(body, dict)
            pairwise = body["pairwise"]
            mean = body["meanScore"]
            budget = body.get("budget") or {}
            verdict = cls(judged=int(body["judged"]), mean_score=None if mean is None else float(mean),
                          wins=int(pairwise["wins"]), losses=int(pairwise["losses"]), ties=int(pairwise["ties"]),
                          budget_exhausted=bool(budget.get("exhausted", False)),
                          budget_exhausted_by=str(budget["exhaustedBy"]) if budget.get("exhaustedBy") else None)
        except (AssertionError, KeyError, TypeError, ValueError) as exc:
            raise VerdictError(f"malformed verdict from the judge: {type(exc).__name__} {exc}") from exc
        if verdict.mean_score is not None and not 0 <= verdict.mean_score <= 1:
            raise VerdictError(f"malformed verdict from the judge: meanScore {verdict.mean_score} outside [0, 1]")
        return verdict


def fetch_verdict(session: requests.Session, judge: tuple[str, str], release: str, variant: str, since: datetime,
                  until: datetime, segment: str | None = None) -> Verdict:
    """The judge's verdict; `judge` is its (URL, timeout); `segment`: on that cohort's samples alone."""
    url, timeout = judge
    params = {"release": release, "variant": variant, "since": _rfc3339(since), "until": _rfc3339(until)}
    if segment is not None:
        params["segment"] = segment
    body = get_json(session, url, "/v1/verdict", params, parse_duration(timeout).total_seconds(), VerdictError)
    return Verdict.parse(body)


def check_judge(gate: JudgeGate, session: requests.Session, release: str, since: datetime,
                now: datetime, baseline_since: datetime | None = None, cohort: Cohort | None = None) -> list[Check]:
    """One Check per threshold set. Too few judged samples is NoData, never a pass.

    The canary is judged on this step's samples. The primary's baseline covers the whole rollout
    (`baseline_since`): at the late steps the primary serves little or no traffic of its own.
    With `cohort`: on that cohort's samples alone (the judge's segment), each check named
    `<check>[<cohort>]`, after a `judge-samples[<cohort>]` check of its coverage; the cohort's
    minSamples, if set, replaces the gate's.
    """
    wanted = [name for name, value in (("judge-score", gate.min_score), ("judge-regression", gate.max_regression),
                                       ("judge-loss-rate", gate.max_loss_rate)) if value is not None]
    segment = None if cohort is None else cohort.name
    if cohort is not None:
        wanted.insert(0, "judge-samples")
        if cohort.min_samples is not None:
            gate = gate.model_copy(update={"min_samples": cohort.min_samples})
    try:
        canary = fetch_verdict(session, (gate.url, gate.timeout), release, "canary", since, now, segment)
        primary = (fetch_verdict(session, (gate.url, gate.timeout), release, "primary", baseline_since or since, now,
                                 segment) if gate.max_regression is not None else None)
    except VerdictError as exc:
        checks = [Check(name=name, kind="judge", result=CheckResult.ERROR, message=str(exc), at=now)
                  for name in wanted]
        return checks if segment is None else [c.for_cohort(segment) for c in checks]

    checks = []
    for name in wanted:
        if name == "judge-samples":
            checks.append(_coverage_check(gate, canary, segment or "", now))
        elif name == "judge-score":
            checks.append(_score_check(gate, canary, now))
        elif name == "judge-regression":
            checks.append(_regression_check(gate, canary, primary, now))
        else:
            checks.append(_loss_check(gate, canary, now))
    return checks if segment is None else [c.for_cohort(segment) for c in checks]


def _coverage_check(gate: JudgeGate, canary: Verdict, cohort: str, now: datetime) -> Check:
    enough = canary.judged >= gate.min_samples
    return Check(name="judge-samples", kind="judge", value=canary.judged, min=gate.min_samples, at=now,
                 result=CheckResult.PASSED if enough else CheckResult.NO_DATA,
                 message=f"{canary.judged} judged canary samples of cohort {cohort} this step"
                         + ("" if enough else f", {gate.min_samples} needed"))


def _too_few(name: str, gate: JudgeGate, verdict: Verdict, variant: str, now: datetime, **bounds) -> Check | None:
    if verdict.judged >= gate.min_samples and verdict.mean_score is not None:
        return None
    why = f"{verdict.judged} judged {variant} samples this step, {gate.min_samples} needed"
    if verdict.budget_exhausted_by == "global":
        why += (" (the judge's token budget for all releases together, --global-token-budget, is spent for"
                " the last 24 hours: raise it, or wait for the spend to age out)")
    elif verdict.budget_exhausted:
        why += " (the judge's token budget for this release is exhausted)"
    return Check(name=name, kind="judge", result=CheckResult.NO_DATA, message=why, at=now, **bounds)


def _score_check(gate: JudgeGate, canary: Verdict, now: datetime) -> Check:
    bounds = {"min": gate.min_score}
    held = _too_few("judge-score", gate, canary, "canary", now, **bounds)
    if held:
        return held
    assert canary.mean_score is not None and gate.min_score is not None
    passed = canary.mean_score >= gate.min_score
    return Check(name="judge-score", kind="judge", value=round(canary.mean_score, 4), at=now,
                 result=CheckResult.PASSED if passed else CheckResult.FAILED,
                 message=f"canary mean score over {canary.judged} judged samples"
                         + ("" if passed else f", below min {gate.min_score:g}"), **bounds)


def _regression_check(gate: JudgeGate, canary: Verdict, primary: Verdict | None, now: datetime) -> Check:
    bounds = {"max": gate.max_regression}
    assert primary is not None and gate.max_regression is not None
    held = (_too_few("judge-regression", gate, canary, "canary", now, **bounds)
            or _too_few("judge-regression", gate, primary, "primary", now, **bounds))
    if held:
        return held
    assert canary.mean_score is not None and primary.mean_score is not None
    regression = primary.mean_score - canary.mean_score
    passed = regression <= gate.max_regression
    return Check(name="judge-regression", kind="judge", value=round(regression, 4), at=now,
                 result=CheckResult.PASSED if passed else CheckResult.FAILED,
                 message=f"primary {primary.mean_score:.3f} - canary {canary.mean_score:.3f}"
                         + ("" if passed else f", above max {gate.max_regression:g}"), **bounds)


def _loss_check(gate: JudgeGate, canary: Verdict, now: datetime) -> Check:
    bounds = {"max": gate.max_loss_rate}
    assert gate.max_loss_rate is not None
    held = _too_few("judge-loss-rate", gate, canary, "canary", now, **bounds)
    if held:
        return held
    pairs = canary.wins + canary.losses + canary.ties
    if pairs < gate.min_samples:
        # A rate over a handful of pairs is noise: it needs as much evidence as the score.
        return Check(name="judge-loss-rate", kind="judge", result=CheckResult.NO_DATA, at=now,
                     message=f"{pairs} pairwise comparisons this step, {gate.min_samples} needed "
                             "(inputs answered by both variants)", **bounds)
    rate = canary.losses / pairs
    passed = rate <= gate.max_loss_rate
    return Check(name="judge-loss-rate", kind="judge", value=round(rate, 4), at=now,
                 result=CheckResult.PASSED if passed else CheckResult.FAILED,
                 message=f"canary lost {canary.losses} of {pairs} comparisons"
                         + ("" if passed else f", above max {gate.max_loss_rate:g}"), **bounds)


def _rfc3339(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")
