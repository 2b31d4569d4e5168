"""Comparison gates' evaluation: cumulative counter readings become whole events once, a counter
going backwards is not counted twice, and the check says what the evidence says."""

from __future__ import annotations

from datetime import datetime, timezone

from canarist.analysis.compare import Pairs, RateTotals, evaluate_quality, evaluate_rates, pair_value
from canarist.api.compare import Comparison
from canarist.api.status import CheckResult

NOW = datetime(2026, 1, 1, tzinfo=timezone.utc)
RATES = Comparison.model_validate({"name": "errors", "rates": {"bad": "b{{ variant }}", "total": "t{{ variant }}",
                                                                "maxRatio": 1.5}})
SCORES = Comparison.model_validate({"name": "quality", "judge": {"url": "http://judge", "maxScoreDrop": 0.05}})
LOSSES = Comparison.model_validate({"name": "duel", "judge": {"url": "http://judge", "maxLossShare": 0.6}})


def from_zero(gate: Comparison, totals: RateTotals, alpha: float = 0.01, gates: int = 1):
    """Evaluate `totals` as the first counts after the rollout's baseline reading of zeros."""
    _, baseline = evaluate_rates(gate, None, RateTotals(0, 0, 0, 0), alpha, gates, NOW)
    return evaluate_rates(gate, baseline, totals, alpha, gates, NOW)


def test_cumulative_readings_are_differenced_into_whole_events_without_drift():
    evidence = None
    # increase() extrapolates: readings like 0.4, 1.3, 2.6 are 0, 1, 3 whole events, never 0.4 + 0.9 + 1.3.
    for canary_bad in (0.4, 1.3, 2.6):
        check, evidence = evaluate_rates(RATES, evidence, RateTotals(canary_bad, 100 * canary_bad, 10, 1000),
                                         0.01, 1, NOW)
    assert evidence.state["ratio"]["canaryBad"] == 3


def test_a_counter_going_backwards_is_not_counted_twice():
    _, evidence = from_zero(RATES, RateTotals(10, 1000, 10, 1000))
    _, evidence = evaluate_rates(RATES, evidence, RateTotals(4, 400, 10, 1000), 0.01, 1, NOW)  # a reset
    _, evidence = evaluate_rates(RATES, evidence, RateTotals(12, 1200, 12, 1200), 0.01, 1, NOW)
    assert evidence.state["ratio"]["canaryBad"] == 12
    assert evidence.state["totals"] == [12, 1200, 12, 1200]


def test_a_clear_regression_fails_the_check_and_names_the_ratio():
    check, evidence = from_zero(RATES, RateTotals(300, 1000, 100, 1000), gates=2)
    assert check.result == CheckResult.FAILED and evidence.verdict == "Regression"
    assert evidence.threshold == 200 and evidence.estimate > 2.5 and evidence.low > 1.5
    assert "x the primary's" in check.message


def test_no_canary_requests_is_no_data_never_a_pass():
    check, _ = evaluate_rates(RATES, None, RateTotals(0, 0, 5, 1000), 0.01, 1, NOW)
    assert check.result == CheckResult.NO_DATA


def test_pairs_become_values_in_the_gates_own_terms():
    assert abs(pair_value(SCORES, 0.9, 0.7, None) - 0.6) < 1e-9  # a drop of 0.2, rescaled to [0, 1]
    assert pair_value(SCORES, None, 0.7, "loss") is None
    assert [pair_value(LOSSES, None, None, o) for o in ("loss", "tie", "win", None)] == [1.0, 0.5, 0.0, None]


def test_quality_evidence_keeps_the_cursor_and_reports_the_score_drop():
    check, evidence = evaluate_quality(SCORES, None, Pairs(tuple([0.7] * 200), "c1"), 0.01, 1, NOW)
    assert evidence.state["cursor"] == "c1" and evidence.measure == "scoreDrop"
    assert abs(evidence.estimate - 0.4) < 1e-6 and check.result == CheckResult.FAILED
    check, evidence = evaluate_quality(SCORES, evidence, Pairs((), None), 0.01, 1, NOW)
    assert evidence.state["cursor"] == "c1", "no new pairs keeps the old cursor"


def test_counters_scraped_at_different_moments_do_not_skew_the_ratio():
    """Each tick sees the canary's and the primary's counters at different scrape moments: here
    one tick holds two scrapes of the canary and one of the primary, the next none of the canary.
    The estimate must stay right (the share of requests is taken over the step so far)."""
    canary_rate, primary_rate, requests = 0.6, 0.2, (20.0, 80.0)  # per scrape; true ratio 3, share 0.2
    totals = [0.0, 0.0, 0.0, 0.0]
    evidence = None
    for tick in range(400):
        scrapes = (2, 1) if tick % 2 == 0 else (0, 1)
        totals[0] += scrapes[0] * requests[0] * canary_rate
        totals[1] += scrapes[0] * requests[0]
        totals[2] += scrapes[1] * requests[1] * primary_rate
        totals[3] += scrapes[1] * requests[1]
        _, evidence = evaluate_rates(RATES, evidence, RateTotals(*totals), 0.01, 1, NOW, step=1)
    assert abs(evidence.estimate - 3.0) / 3.0 < 0.1, evidence.estimate


def test_the_step_guard_is_reported_with_what_it_waits_for():
    """Evidence that the canary is below stepMaxRatio (default 5/3 of maxRatio): high for an equal
    canary, none for a bad one, whose status says how many more requests the guard would need."""
    _, good = from_zero(RATES, RateTotals(50, 5000, 500, 50000))
    assert good.step_max_ratio == 2.5 and good.step_threshold == 5
    assert good.step_evidence is not None and good.step_evidence >= 5
    _, early = from_zero(RATES, RateTotals(3, 300, 30, 3000))
    assert early.step_evidence is not None and early.step_evidence < 5
    assert "before the next step may widen" in early.needs
    guarded = Comparison.model_validate({"name": "errors", "rates": {"bad": "b{{ variant }}", "total": "t{{ variant }}",
                                                                     "maxRatio": 1.5, "stepMaxRatio": 4}})
    _, loose = from_zero(guarded, RateTotals(3, 300, 30, 3000))
    assert loose.step_max_ratio == 4 and loose.step_evidence > early.step_evidence


def test_a_step_guard_not_above_the_tolerance_is_refused_naming_both_fields():
    import pytest
    from pydantic import ValidationError

    with pytest.raises(ValidationError) as raised:
        Comparison.model_validate({"name": "errors", "rates": {"bad": "b{{ variant }}", "total": "t{{ variant }}",
                                                               "maxRatio": 2, "stepMaxRatio": 1.5}})
    assert "stepMaxRatio (1.5) must be above maxRatio (2)" in str(raised.value)


def test_every_provider_feeds_the_statistics_through_one_seam(monkeypatch):
    """A gate's provider returns an observation; its shape picks the statistics, and a provider
    that cannot answer gives an error check that keeps the evidence as it was."""
    import requests

    from canarist.analysis import sources
    from canarist.analysis.compare import run_comparisons
    from canarist.analysis.prometheus import PrometheusClientCache
    from canarist.analysis.sources import SourceContext, SourceError
    from canarist.analysis.templating import QueryVariables

    class Counters:
        def __init__(self) -> None:
            self.answers: list[RateTotals | Exception] = [RateTotals(0, 0, 0, 0), RateTotals(30, 1000, 10, 1000),
                                                          SourceError("down")]

        def observe(self, gate, context, state):
            answer = self.answers.pop(0)
            if isinstance(answer, Exception):
                raise answer
            return answer

    monkeypatch.setitem(sources.SOURCES, "rates", Counters())
    context = SourceContext(variables=QueryVariables(namespace="ns", target="web", interval="1m"),
                            prometheus=PrometheusClientCache(), default_prometheus="http://unused",
                            http=requests.Session(), release="ns/web", rollout_started_at=NOW, now=NOW)
    checks, evidence = run_comparisons([RATES], [], 0.01, context)
    assert checks[0].result == CheckResult.NO_DATA, "the first reading is the baseline"
    checks, evidence = run_comparisons([RATES], evidence, 0.01, context)
    assert checks[0].result == CheckResult.PASSED and evidence[0].canary_events == 1000
    checks, kept = run_comparisons([RATES], evidence, 0.01, context)
    assert checks[0].result == CheckResult.ERROR and "down" in checks[0].message and kept == evidence


def test_the_primarys_requests_before_the_first_step_was_routed_do_not_shrink_the_canarys_share():
    # The rollout began; while the canary's pods got Ready the primary served everyone: the
    # counters' window (since the rollout began) holds 20,000 primary requests, 2 % bad, and none of
    # the canary's.
    _, evidence = evaluate_rates(RATES, None, RateTotals(0, 0, 400, 20_000), 0.01, 1, NOW)
    # Then the first step at 5 %, both variants 2 % bad.
    for i in range(1, 6):
        _, evidence = evaluate_rates(RATES, evidence, RateTotals(2 * i, 100 * i, 400 + 38 * i, 20_000 + 1_900 * i),
                                     0.01, 1, NOW)
    assert 0.7 < evidence.estimate < 1.4, evidence.estimate
    assert evidence.state["stepRequests"] == [500, 9_500]
