"""Mean, Student-t 95% interval and failures: checked against known values."""

from __future__ import annotations

import math
import statistics

import pytest

from canarist.judge.stats import Summary, mean_ci95, summarize, t_quantile_975


def _t_cdf_upper_half(t: float, df: int, steps: int = 4000) -> float:
    """P(0 < T < t) by Simpson's rule on the t density: an independent check of the table."""
    c = math.exp(math.lgamma((df + 1) / 2) - math.lgamma(df / 2)) / math.sqrt(df * math.pi)
    pdf = lambda x: c * (1 + x * x / df) ** (-(df + 1) / 2)  # noqa: E731
    h = t / steps
    total = pdf(0) + pdf(t) + sum((4 if i % 2 else 2) * pdf(i * h) for i in range(1, steps))
    return total * h / 3


@pytest.mark.parametrize("df, expected", [
    (1, 12.706), (2, 4.303), (3, 3.182), (4, 2.776), (5, 2.571), (9, 2.262), (10, 2.228),
    (19, 2.093), (29, 2.045), (30, 2.042), (31, 2.040), (40, 2.021), (60, 2.000), (120, 1.980),
    (1000, 1.962), (10**6, 1.960),
])
def test_t_quantile_matches_published_tables(df, expected):
    assert t_quantile_975(df) == pytest.approx(expected, abs=1e-3)


def test_t_quantile_closed_forms():
    assert t_quantile_975(1) == pytest.approx(math.tan(math.pi * 0.475), abs=1e-6)
    assert t_quantile_975(2) == pytest.approx(0.95 / math.sqrt(2 * 0.975 * 0.025), abs=1e-6)


@pytest.mark.parametrize("df", [1, 2, 3, 7, 15, 29, 30, 31, 32, 45, 80, 200, 500])
def test_t_quantile_inverts_the_t_distribution(df):
    assert _t_cdf_upper_half(t_quantile_975(df), df) == pytest.approx(0.475, abs=1e-6)


def test_t_quantile_decreases_towards_the_normal():
    values = [t_quantile_975(df) for df in range(1, 400)]
    assert all(a > b for a, b in zip(values, values[1:]))
    assert values[-1] > 1.959963984540054
    with pytest.raises(ValueError):
        t_quantile_975(0)


def test_nothing_judged_has_no_mean_and_no_interval():
    assert summarize([], 0.5) == Summary(judged=0, mean=None, ci95=None, failed=0)


def test_one_score_has_a_mean_but_no_interval():
    assert summarize([0.3], 0.5) == Summary(judged=1, mean=0.3, ci95=None, failed=1,
                                             sum_scores=0.3, sum_squares=pytest.approx(0.09))


def test_known_interval():
    # mean 0.5, sample sd sqrt(0.04 / 3) = 0.115470, n 4: half-width t(3) * sd / 2 = 0.183738
    mean, (lo, hi) = mean_ci95([0.4, 0.6, 0.4, 0.6])
    assert mean == pytest.approx(0.5)
    assert lo == pytest.approx(0.316262, abs=1e-6) and hi == pytest.approx(0.683738, abs=1e-6)


def test_interval_is_clipped_to_the_unit_interval():
    # mean 0.8, sd 0.1, n 3: 0.8 +- 4.302653 * 0.1 / sqrt(3) = [0.551586, 1.048414] -> hi clipped to 1
    s = summarize([0.9, 0.8, 0.7], 0.75)
    assert s.mean == pytest.approx(0.8) and s.failed == 1 and s.judged == 3
    assert s.ci95[0] == pytest.approx(0.551586, abs=1e-6) and s.ci95[1] == 1.0
    low = summarize([0.0, 0.1, 0.0], 0.5)
    assert low.ci95[0] == 0.0 and low.failed == 3


def test_identical_scores_have_a_zero_width_interval():
    assert summarize([0.95] * 10, 0.5) == Summary(judged=10, mean=pytest.approx(0.95), ci95=(0.95, 0.95), failed=0,
                                                  sum_scores=pytest.approx(9.5), sum_squares=pytest.approx(9.025))


def test_failed_counts_scores_strictly_below_the_pass_mark():
    assert summarize([0.49, 0.5, 0.51, 0.0, 1.0], 0.5).failed == 2


def test_large_sample_uses_the_expansion():
    scores = [0.1 * (i % 11) for i in range(1000)]
    s = summarize(scores, 0.5)
    mean = sum(scores) / len(scores)
    sd = math.sqrt(sum((x - mean) ** 2 for x in scores) / (len(scores) - 1))
    half = 1.962341 * sd / math.sqrt(len(scores))
    assert s.mean == pytest.approx(mean)
    assert s.ci95 == (pytest.approx(mean - half, abs=1e-5), pytest.approx(mean + half, abs=1e-5))


def test_sums_are_sufficient_for_the_mean_and_the_sample_variance():
    scores = [0.9, 0.8, 0.7, 0.2, 0.55]
    s = summarize(scores, 0.5)
    n = s.judged
    assert s.sum_scores / n == pytest.approx(s.mean)
    assert (s.sum_squares - s.sum_scores**2 / n) / (n - 1) == pytest.approx(statistics.variance(scores))
