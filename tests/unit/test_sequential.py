"""The anytime-valid evidence: false rollbacks stay within alpha when it is read every interval and
the split changes, a naive re-checked test in the same simulation does not, and real effects are
found."""

from __future__ import annotations

import math
import random

from canarist.analysis.sequential import RATIO_GRID, Counts, MeanEvidence, RatioEvidence, threshold

ALPHA = 0.05
STEPS = (1, 5, 20, 50)  # canary percentages; each step lasts INTERVALS_PER_STEP intervals
INTERVALS_PER_STEP = 12


def poisson(rng: random.Random, mean: float) -> int:
    if mean > 50:  # normal approximation, plenty for counts this large
        return max(0, round(rng.gauss(mean, math.sqrt(mean))))
    limit, k, p = math.exp(-mean), 0, 1.0
    while True:
        p *= rng.random()
        if p <= limit:
            return k
        k += 1


def intervals(rng: random.Random, ratio: float, requests: float = 400):
    """One rollout's intervals: Poisson requests split by the step, a baseline error rate drawn
    in 0.5..2 % and drifting +-30 %, the canary's rate `ratio` times the primary's."""
    base = rng.uniform(0.005, 0.02)
    for step in STEPS:
        w = step / 100
        for _ in range(INTERVALS_PER_STEP):
            rate = base * rng.uniform(0.7, 1.3)
            canary, primary = poisson(rng, requests * w), poisson(rng, requests * (1 - w))
            yield Counts(canary_bad=poisson(rng, canary * rate * ratio), canary_total=canary,
                         primary_bad=poisson(rng, primary * rate), primary_total=primary)


def naive_rejects(c_bad: float, c_total: float, p_bad: float, p_total: float, tolerance: float) -> bool:
    """A fixed-sample one-sided z-test of the rate ratio, the way a dashboard re-checks it."""
    if c_total == 0 or p_total == 0 or c_bad + p_bad == 0:
        return False
    w = c_total / (c_total + p_total)
    q0 = tolerance * w / (tolerance * w + 1 - w)
    n = c_bad + p_bad
    z = (c_bad - n * q0) / math.sqrt(n * q0 * (1 - q0))
    return z > 1.645  # 5 % one-sided


def test_false_rollbacks_stay_within_alpha_when_peeking_every_interval_and_the_split_changes():
    rng = random.Random(20261202)
    runs, tolerance = 600, 1.2
    limit = math.log(threshold(ALPHA, 1))
    ours = naive = 0
    for _ in range(runs):
        evidence = RatioEvidence(tolerance)
        totals = [0.0, 0.0, 0.0, 0.0]
        caught = naive_caught = False
        for counts in intervals(rng, ratio=tolerance):  # the worst case of the null: exactly at tolerance
            evidence.update(counts)
            totals = [a + b for a, b in zip(totals, (counts.canary_bad, counts.canary_total,
                                                     counts.primary_bad, counts.primary_total))]
            caught = caught or evidence.log_rollback() >= limit
            naive_caught = naive_caught or naive_rejects(*totals, tolerance)
        ours += caught
        naive += naive_caught
    margin = 2.5 * math.sqrt(ALPHA * (1 - ALPHA) / runs)
    assert ours / runs <= ALPHA + margin, f"{ours}/{runs} false rollbacks"
    # The simulation can tell: the re-checked fixed-sample test rolls back far more often than alpha.
    assert naive / runs > ALPHA + margin, f"naive: {naive}/{runs}"


def test_a_canary_three_times_worse_is_caught_and_an_equal_one_can_promote():
    rng = random.Random(7)
    limit = math.log(threshold(ALPHA, 1))
    caught = promoted = 0
    for _ in range(100):
        bad, good = RatioEvidence(1.5), RatioEvidence(1.5)
        for counts in intervals(rng, ratio=3.0, requests=2000):
            bad.update(counts)
        for counts in intervals(rng, ratio=1.0, requests=5000):
            good.update(counts)
        caught += bad.log_rollback() >= limit
        promoted += good.log_promote() >= limit
    assert caught >= 95 and promoted >= 90, (caught, promoted)


def test_the_interval_covers_the_true_ratio_and_the_estimate_is_close():
    rng = random.Random(11)
    evidence = RatioEvidence(1.2)
    for counts in intervals(rng, ratio=2.0, requests=5000):
        evidence.update(counts)
    low, high = evidence.interval(ALPHA)
    assert low < 2.0 < high and high / low < 2
    assert abs(math.log(evidence.estimate() / 2.0)) < 0.2


def test_evidence_survives_a_round_trip_through_status():
    evidence = RatioEvidence(1.2, guard=2.0)
    evidence.update(Counts(3, 100, 10, 900))
    again = RatioEvidence.from_dict(evidence.to_dict(), 1.2, 2.0)
    assert abs(again.log_rollback() - evidence.log_rollback()) < 1e-5 and again.canary_bad == 3
    assert abs(again.log_guard() - evidence.log_guard()) < 1e-5
    assert RatioEvidence.from_dict(evidence.to_dict(), 1.5, 2.0).canary_bad == 0, "another tolerance starts over"
    assert RatioEvidence.from_dict(evidence.to_dict(), 1.2, 3.0).canary_bad == 0, "another guard starts over"
    assert len(RATIO_GRID) == len(evidence.to_dict()["logLik"])


def test_mean_evidence_is_valid_at_the_boundary_and_finds_a_real_drop():
    rng = random.Random(3)
    limit = math.log(threshold(ALPHA, 1))
    runs, false_alarms = 600, 0
    for _ in range(runs):
        evidence = MeanEvidence(0.5, alpha=ALPHA)
        alarmed = False
        for _ in range(300):
            evidence.update(1.0 if rng.random() < 0.5 else 0.0)  # exactly at the boundary
            alarmed = alarmed or evidence.log_rollback() >= limit
        false_alarms += alarmed
    assert false_alarms / runs <= ALPHA + 2.5 * math.sqrt(ALPHA * (1 - ALPHA) / runs)

    worse = MeanEvidence(0.515, alpha=ALPHA)  # tolerance: the canary may trail by 0.03 (x = (d + 1) / 2)
    for _ in range(400):
        primary, canary = rng.uniform(0.6, 1.0), rng.uniform(0.3, 0.7)
        worse.update((primary - canary + 1) / 2)
    assert worse.log_rollback() >= limit
    low, high = worse.interval()
    assert low <= worse.mean() <= high and low > 0.515


def test_mean_evidence_lets_an_equal_canary_promote():
    rng = random.Random(5)
    evidence = MeanEvidence(0.515, alpha=ALPHA)
    for _ in range(3000):
        evidence.update((rng.uniform(0.6, 1.0) - rng.uniform(0.6, 1.0) + 1) / 2)
    assert evidence.log_promote() >= math.log(threshold(ALPHA, 1))
    assert evidence.log_rollback() < 0


def test_the_step_guard_lets_an_equal_canary_widen_and_holds_a_bad_one():
    """At a 5 % share and 2,000 requests a minute, a canary as good as the primary shows it is below
    2.5x within minutes; one at 3x almost never does, so it stays at 5 % until its rollback."""
    rng = random.Random(5)
    limit = math.log(10)
    widened = {1.0: 0, 3.0: 0}
    for ratio in widened:
        for _ in range(200):
            evidence = RatioEvidence(1.5, guard=2.5)
            base = rng.uniform(0.005, 0.02)
            for _ in range(10):  # ten one-minute intervals at 5 %
                canary, primary = poisson(rng, 100), poisson(rng, 1900)
                evidence.update(Counts(poisson(rng, canary * base * ratio), canary, poisson(rng, primary * base),
                                       primary))
            widened[ratio] += evidence.log_guard() >= limit
    assert widened[1.0] >= 150 and widened[3.0] <= 10, widened
