"""The operator's judge gate against a local HTTP server answering verdicts."""

from __future__ import annotations

import json
import threading
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

import pytest
import requests

from canarist.analysis.judge import check_judge
from canarist.api.spec import JudgeGate
from canarist.api.status import CheckResult

NOW = datetime(2026, 1, 1, 12, tzinfo=timezone.utc)
SINCE = datetime(2026, 1, 1, 11, 55, tzinfo=timezone.utc)


def verdict(judged=50, mean=0.9, wins=5, losses=1, ties=20, exhausted=False, by=None):
    return {"judged": judged, "meanScore": mean, "ci95": None, "failed": 0,
            "pairwise": {"wins": wins, "losses": losses, "ties": ties},
            "budget": {"tokensUsed": 0, "tokenBudget": None, "exhausted": exhausted,
                       "exhaustedBy": by or ("release" if exhausted else None)}}


@pytest.fixture
def judge():
    """A judge whose answers per variant the test sets; it records the queries it got."""
    state = {"canary": verdict(), "primary": verdict(mean=0.92), "queries": [], "status": 200}

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            query = {k: v[0] for k, v in parse_qs(urlparse(self.path).query).items()}
            state["queries"].append(query)
            body = state[query["variant"]]
            payload = body.encode() if isinstance(body, str) else json.dumps(body).encode()
            self.send_response(state["status"])
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    state["url"] = f"http://127.0.0.1:{server.server_address[1]}"
    yield state
    server.shutdown()
    server.server_close()


def run(judge, **gate) -> dict[str, object]:
    spec = JudgeGate.model_validate({"url": judge["url"], "minSamples": 20, **gate})
    return {c.name: c for c in check_judge(spec, requests.Session(), "prod/bot", SINCE, NOW)}


def test_good_canary_passes_every_threshold(judge):
    checks = run(judge, minScore=0.8, maxRegression=0.05, maxLossRate=0.2)
    assert {n: c.result for n, c in checks.items()} == {
        "judge-score": CheckResult.PASSED, "judge-regression": CheckResult.PASSED,
        "judge-loss-rate": CheckResult.PASSED}
    assert checks["judge-score"].value == 0.9 and checks["judge-score"].min == 0.8
    assert checks["judge-regression"].value == pytest.approx(0.02)
    assert checks["judge-loss-rate"].value == pytest.approx(1 / 26, abs=1e-4)
    assert judge["queries"][0] == {"release": "prod/bot", "variant": "canary", "since": "2026-01-01T11:55:00Z",
                                   "until": "2026-01-01T12:00:00Z"}


def test_primary_baseline_covers_the_whole_rollout(judge):
    spec = JudgeGate.model_validate({"url": judge["url"], "maxRegression": 0.05})
    rollout_start = datetime(2026, 1, 1, 11, 0, tzinfo=timezone.utc)
    check_judge(spec, requests.Session(), "prod/bot", SINCE, NOW, baseline_since=rollout_start)
    since = {q["variant"]: q["since"] for q in judge["queries"]}
    assert since == {"canary": "2026-01-01T11:55:00Z", "primary": "2026-01-01T11:00:00Z"}


def test_worse_answers_fail_score_and_regression(judge):
    judge["canary"] = verdict(mean=0.4, losses=16, wins=0, ties=8)
    checks = run(judge, minScore=0.8, maxRegression=0.05, maxLossRate=0.2)
    assert all(c.result == CheckResult.FAILED for c in checks.values())
    assert "below min 0.8" in checks["judge-score"].message
    assert checks["judge-regression"].value == pytest.approx(0.52)


def test_too_few_judged_samples_is_no_data_not_a_pass(judge):
    judge["canary"] = verdict(judged=3, mean=1.0)
    checks = run(judge, minScore=0.8, maxLossRate=0.5)
    assert all(c.result == CheckResult.NO_DATA for c in checks.values())
    assert "3 judged canary samples this step, 20 needed" in checks["judge-score"].message


def test_primary_without_samples_holds_the_regression_check(judge):
    judge["primary"] = verdict(judged=0, mean=None)
    assert run(judge, maxRegression=0.05)["judge-regression"].result == CheckResult.NO_DATA


def test_exhausted_budget_is_explained(judge):
    judge["canary"] = verdict(judged=5, exhausted=True)
    assert "token budget for this release is exhausted" in run(judge, minScore=0.5)["judge-score"].message
    judge["canary"] = verdict(judged=5, exhausted=True, by="global")
    message = run(judge, minScore=0.5)["judge-score"].message
    assert "all releases together, --global-token-budget, is spent for the last 24 hours" in message


def test_a_loss_rate_over_too_few_pairs_is_no_data(judge):
    judge["canary"] = verdict(wins=0, losses=1, ties=1)  # 50% lost, but over two comparisons
    check = run(judge, maxLossRate=0.1)["judge-loss-rate"]
    assert check.result == CheckResult.NO_DATA and "2 pairwise comparisons this step, 20 needed" in check.message


def test_no_pairs_is_no_data(judge):
    judge["canary"] = verdict(wins=0, losses=0, ties=0)
    assert run(judge, maxLossRate=0.1)["judge-loss-rate"].result == CheckResult.NO_DATA


@pytest.mark.parametrize("body, status", [("not json", 200), ({"judged": 1}, 200), (verdict(mean=1.5), 200),
                                          ({"error": "boom"}, 500)])
def test_malformed_or_failing_judge_is_a_provider_error(judge, body, status):
    judge["canary"], judge["status"] = body, status
    checks = run(judge, minScore=0.8)
    assert checks["judge-score"].result == CheckResult.ERROR


def test_unreachable_judge_is_a_provider_error():
    spec = JudgeGate.model_validate({"url": "http://127.0.0.1:9", "minScore": 0.8, "timeout": "1s"})
    checks = check_judge(spec, requests.Session(), "prod/bot", SINCE, NOW)
    assert [c.result for c in checks] == [CheckResult.ERROR] and "unreachable" in checks[0].message


def test_gate_needs_a_threshold():
    with pytest.raises(ValueError, match="without a threshold"):
        JudgeGate.model_validate({"url": "http://judge"})


def test_a_cohort_is_judged_on_its_own_samples_with_its_coverage(judge):
    from canarist.api.spec import Cohort
    cohort = Cohort.model_validate({"name": "de", "matches": [{"headers": [{"name": "Accept-Language", "value": "de"}]}],
                                    "factor": 5, "minSamples": 40})
    judge["canary"] = verdict(judged=30, mean=0.3)
    spec = JudgeGate.model_validate({"url": judge["url"], "minSamples": 20, "minScore": 0.8})
    checks = {c.name: c for c in check_judge(spec, requests.Session(), "prod/bot", SINCE, NOW, cohort=cohort)}
    assert set(checks) == {"judge-samples[de]", "judge-score[de]"}
    assert all(c.cohort == "de" for c in checks.values())
    coverage = checks["judge-samples[de]"]
    assert (coverage.result, coverage.value, coverage.min) == (CheckResult.NO_DATA, 30, 40)
    assert checks["judge-score[de]"].result == CheckResult.NO_DATA, "the cohort's minSamples replaces the gate's"
    assert judge["queries"][0]["segment"] == "de"
    judge["canary"] = verdict(judged=45, mean=0.3)
    checks = {c.name: c for c in check_judge(spec, requests.Session(), "prod/bot", SINCE, NOW, cohort=cohort)}
    assert checks["judge-samples[de]"].result == CheckResult.PASSED
    assert checks["judge-score[de]"].result == CheckResult.FAILED and checks["judge-score[de]"].value == 0.3
