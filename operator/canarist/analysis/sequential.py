"""Anytime-valid comparisons of the canary with the primary: evidence that may be read every tick.

Re-checking a fixed-sample test every interval inflates false alarms (Netflix measured 66 in 100
A/A runs). The tests here are e-processes: non-negative processes whose expectation under the
null hypothesis is at most 1 at every stopping time, so by Ville's inequality the chance that one
*ever* reaches 1/alpha is at most alpha, however often it is looked at and whenever the rollout
stops (Ramdas et al., "Game-theoretic statistics and safe anytime-valid inference", 2023).

Each comparison gate keeps two of them, against its tolerance:
- toward rollback, null "the canary is within tolerance"; reaching G/alpha rolls back;
- toward promotion, null "the canary is worse than tolerance"; reaching G/alpha lets it promote.
G is the number of comparison gates of the rollout (Bonferroni), so the chance of any false
rollback over the whole rollout and all gates together stays below alpha, and so does the
chance of promoting a canary that is worse than a tolerance.

A rates gate keeps a third, the step guard: null "the canary's ratio is at least stepMaxRatio"
(looser than the tolerance). A step after the first widens the canary's share only once it
reaches 1/STEP_BETA. It decides no outcome, so it spends none of alpha; it keeps a bad canary at
a small share, where each of its requests says most about it (at a share w, a bad event tells
canary from primary by q(rho, w), and the evidence per canary request falls as w grows), until
the rollback evidence comes in.

Rates of bad events (RatioEvidence). Requests reach the canary and the primary at the same
time under the same conditions, so whatever drifts (load, time of day, the baseline error rate)
drifts for both. Given that a bad event happened in an interval where the canary had a share w
of the requests, it is the canary's with probability q(rho, w) = rho*w / (rho*w + 1 - w), where rho
is the ratio of the canary's bad-event rate to the primary's. "Within tolerance" (rho <= tau) is
q <= q(tau, w). The likelihood ratio of an alternative rho1 > tau against tau has expectation at
most 1 under every rho <= tau (it increases in q), so the product over bad events is a test
supermartingale whatever the split does from one interval to the next; a mixture over a grid of
alternatives adapts to the size of the effect. This is the conditional (multinomial) view of
count data of Lindon & Malek, "Anytime-valid inference for multinomial count data" (NeurIPS
2022), the method behind Netflix's canary testing, with a discrete mixture instead of a
Dirichlet so that the split may change at every step. The running log-likelihood on the grid
also gives the estimate (its maximum) and a confidence sequence (the ratios a two-sided mixture
does not reject at alpha).

Bounded means (MeanEvidence), for answer quality: the judge scores both variants' answers to the
same input, so each pair gives x in [0, 1] (the primary's score minus the canary's, rescaled; or
the head-to-head result: 1 a loss, 1/2 a tie, 0 a win). "Within tolerance" is E[x] <= m0. The
wealth of a bettor, prod(1 + lambda * (x_i - m0)) with 0 <= lambda < 1/m0, is a test
supermartingale under it; a mixture of bettors is too (testing by betting, Waudby-Smith & Ramdas,
"Estimating means of bounded random variables by betting", JRSS-B 2023). The interval shown is
their predictable-plug-in empirical-Bernstein confidence sequence (same paper, Theorem 2).

Pure and small on purpose: no I/O, state that serialises to a few numbers kept in the
CanaryRelease status (evidence survives an operator restart), and no dependency beyond the
standard library (the maintained packages judged: savvi fixes the split for the whole test and
needs cvxpy; confseq compiles C++ and has no test for changing splits).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from canarist.api.compare import STEP_GUARD_CONFIDENCE

# Rate ratios the evidence is kept for: 0.01x to 400x, 12 points per factor of e (about 8.7 % apart).
_RATIO_STEPS_PER_E = 12
RATIO_GRID: tuple[float, ...] = tuple(math.exp(i / _RATIO_STEPS_PER_E)
                                      for i in range(round(math.log(0.01) * _RATIO_STEPS_PER_E),
                                                     round(math.log(400) * _RATIO_STEPS_PER_E) + 1))
# The alternatives each mixture weighs, as a span from its boundary: toward rollback, ratios from
# the tolerance up to 4x it; toward promotion, from half of it up to it; for the step guard, from a
# quarter of stepMaxRatio up to it. Effects beyond a span still count (the likelihood ratio of the
# span's end keeps growing with them); a narrower mixture spends less of the evidence on
# alternatives far from where canaries are, which at alpha = 0.01 is about a third of the bad
# events a decision needs (bench/blast_radius.py).
ROLLBACK_SPAN = 4.0
PROMOTE_SPAN = 2.0
GUARD_SPAN = 4.0
# The step guard's level: 1/STEP_BETA of evidence that the ratio is below stepMaxRatio.
STEP_BETA = 1 - STEP_GUARD_CONFIDENCE
# Bettors' stakes as fractions of the largest bet that cannot lose everything.
_STAKES: tuple[float, ...] = (0.02, 0.05, 0.1, 0.2, 0.35, 0.5, 0.7, 0.9)
_SHARE_FLOOR = 1e-9


def threshold(alpha: float, gates: int) -> float:
    """The e-value one gate's evidence must reach: alpha shared by `gates` comparison gates."""
    return max(1, gates) / alpha


def _logsumexp(values: list[float]) -> float:
    top = max(values)
    if top == -math.inf:
        return -math.inf
    return top + math.log(sum(math.exp(v - top) for v in values))


def _share(rho: float, w: float) -> float:
    """q(rho, w): the chance that a bad event is the canary's."""
    return rho * w / (rho * w + 1.0 - w)


@dataclass
class Counts:
    """Bad events and all events of both variants over one interval (increments, not totals)."""

    canary_bad: float
    canary_total: float
    primary_bad: float
    primary_total: float


@dataclass
class RatioEvidence:
    """Sequential evidence about rho = (canary bad-event rate) / (primary bad-event rate)."""

    tolerance: float                      # tau: the canary may have at most tau times the primary's rate
    guard: float | None = None            # stepMaxRatio: the ratio a step must rule out before widening
    log_lik: list[float] = field(default_factory=lambda: [0.0] * len(RATIO_GRID))
    log_lik_tolerance: float = 0.0
    log_lik_guard: float = 0.0
    canary_bad: float = 0.0               # totals, for the status and the estimate of what is needed
    canary_total: float = 0.0
    primary_bad: float = 0.0
    primary_total: float = 0.0
    last_share: float | None = None       # the canary's share of requests in the last interval

    def update(self, counts: Counts, share: float | None = None) -> None:
        """Fold in one interval. Counts are rounded: the test is about whole events.

        `share`: the canary's share of requests to use for this interval, when the caller knows it
        better than this interval's own counts do. Counters of the two variants are scraped at
        different moments, so a short interval's counts can hold more of one variant's time than
        of the other's; the share over the whole step does not have that skew (and neither does
        the test, which does not care in which interval of a step an event landed)."""
        canary_bad, primary_bad = max(0, round(counts.canary_bad)), max(0, round(counts.primary_bad))
        canary_total, primary_total = max(0.0, counts.canary_total), max(0.0, counts.primary_total)
        self.canary_bad += canary_bad
        self.primary_bad += primary_bad
        self.canary_total += canary_total
        self.primary_total += primary_total
        requests = canary_total + primary_total
        if share is None:
            if requests <= 0:
                return
            share = canary_total / requests
        w = min(max(share, _SHARE_FLOOR), 1 - _SHARE_FLOOR)
        self.last_share = w
        bad = canary_bad + primary_bad
        if bad == 0:
            return

        def log_lik(rho: float) -> float:
            q = _share(rho, w)
            return canary_bad * math.log(q) + primary_bad * math.log(1 - q)

        self.log_lik = [total + log_lik(rho) for total, rho in zip(self.log_lik, RATIO_GRID)]
        self.log_lik_tolerance += log_lik(self.tolerance)
        if self.guard is not None:
            self.log_lik_guard += log_lik(self.guard)

    # -- evidence ----------------------------------------------------------------------------

    def _mixture(self, low: float, high: float, reference: float) -> float:
        """log of the mixture likelihood ratio against the boundary whose log-likelihood is
        `reference`, uniform (in log ratio) over the grid's ratios in [low, high], the boundary excluded."""
        chosen = [ll for ll, rho in zip(self.log_lik, RATIO_GRID) if low <= rho <= high]
        if not chosen:
            return 0.0
        return _logsumexp(chosen) - math.log(len(chosen)) - reference

    def log_rollback(self) -> float:
        """log e-value against "rho <= tolerance" (alternatives above it)."""
        return self._mixture(self.tolerance * 1.0001, self.tolerance * ROLLBACK_SPAN, self.log_lik_tolerance)

    def log_promote(self) -> float:
        """log e-value against "rho >= tolerance" (alternatives below it)."""
        return self._mixture(self.tolerance / PROMOTE_SPAN, self.tolerance / 1.0001, self.log_lik_tolerance)

    def log_guard(self) -> float | None:
        """log e-value against "rho >= stepMaxRatio" (alternatives below it); None without a guard."""
        if self.guard is None:
            return None
        return self._mixture(self.guard / GUARD_SPAN, self.guard / 1.0001, self.log_lik_guard)

    def estimate(self) -> float | None:
        """The ratio that fits best (maximum likelihood on the grid); None before any bad event."""
        if self.canary_bad + self.primary_bad == 0:
            return None
        best = max(range(len(RATIO_GRID)), key=self.log_lik.__getitem__)
        return RATIO_GRID[best]

    def interval(self, alpha: float) -> tuple[float, float]:
        """A (1 - alpha) confidence sequence for rho: the grid ratios a two-sided mixture of all
        the others does not reject. (0, inf) means no bound yet on that side."""
        norm = _logsumexp(self.log_lik) - math.log(len(self.log_lik))
        limit = math.log(1 / alpha)
        kept = [rho for ll, rho in zip(self.log_lik, RATIO_GRID) if norm - ll < limit]
        if not kept:
            best = self.estimate() or 1.0
            return best, best
        low = 0.0 if kept[0] == RATIO_GRID[0] else kept[0]
        high = math.inf if kept[-1] == RATIO_GRID[-1] else kept[-1]
        return low, high

    def needed_requests(self, target_log_e: float, guard: bool = False) -> float | None:
        """About how many more canary requests, at the last split and the rates seen so far, until
        one of the two e-values reaches `target_log_e` (with `guard`: until the step guard's does);
        None when it cannot be told yet."""
        rho, w = self.estimate(), self.last_share
        requests = self.canary_total + self.primary_total
        bad = self.canary_bad + self.primary_bad
        boundary = self.guard if guard else self.tolerance
        if rho is None or w is None or requests <= 0 or bad <= 0 or boundary is None:
            return None
        p, p0 = _share(rho, w), _share(boundary, w)
        drift = p * math.log(p / p0) + (1 - p) * math.log((1 - p) / (1 - p0))  # per bad event
        if guard:
            gap = target_log_e - (self.log_guard() or 0.0)
            if rho >= boundary:
                drift = 0.0  # the guard's evidence only grows for a canary below it
        else:
            gap = target_log_e - max(self.log_rollback(), self.log_promote())
        if gap <= 0:
            return 0.0
        if drift <= 1e-12:
            return math.inf
        bad_per_request = bad / requests
        return gap / drift / bad_per_request * w

    def to_dict(self) -> dict:
        return {"tolerance": self.tolerance, "guard": self.guard, "logLik": [round(v, 6) for v in self.log_lik],
                "logLikTolerance": round(self.log_lik_tolerance, 6), "logLikGuard": round(self.log_lik_guard, 6),
                "canaryBad": self.canary_bad, "canaryTotal": round(self.canary_total, 3),
                "primaryBad": self.primary_bad, "primaryTotal": round(self.primary_total, 3),
                "lastShare": self.last_share}

    @classmethod
    def from_dict(cls, data: dict, tolerance: float, guard: float | None = None) -> "RatioEvidence":
        log_lik = data.get("logLik")
        if (not isinstance(log_lik, list) or len(log_lik) != len(RATIO_GRID) or data.get("tolerance") != tolerance
                or data.get("guard") != guard):
            return cls(tolerance, guard)  # another grid, tolerance or guard: this operator cannot reuse it
        return cls(tolerance, guard, [float(v) for v in log_lik], float(data.get("logLikTolerance", 0.0)),
                   float(data.get("logLikGuard", 0.0)), float(data.get("canaryBad", 0)),
                   float(data.get("canaryTotal", 0)), float(data.get("primaryBad", 0)),
                   float(data.get("primaryTotal", 0)), data.get("lastShare"))


@dataclass
class MeanEvidence:
    """Sequential evidence about the mean of x in [0, 1] against the boundary m0 (the tolerance)."""

    boundary: float                        # m0: "within tolerance" is E[x] <= m0
    log_up: list[float] = field(default_factory=lambda: [0.0] * len(_STAKES))    # bettors on x > m0
    log_down: list[float] = field(default_factory=lambda: [0.0] * len(_STAKES))  # bettors on x < m0
    n: int = 0
    total: float = 0.0
    # Predictable plug-in empirical-Bernstein sums, for the interval shown.
    spread: float = 0.0                    # sum of (x_i - mean before i)^2
    weights: float = 0.0                   # sum of lambda_i
    weighted: float = 0.0                  # sum of lambda_i * x_i
    penalty: float = 0.0                   # sum of v_i * psi(lambda_i)
    alpha: float = 0.05                    # the level the plug-in stakes are tuned for

    def update(self, x: float) -> None:
        x = min(max(x, 0.0), 1.0)
        m0 = self.boundary
        self.log_up = [w + math.log(1 + (c / m0) * (x - m0)) for w, c in zip(self.log_up, _STAKES)]
        self.log_down = [w + math.log(1 - (c / (1 - m0)) * (x - m0)) for w, c in zip(self.log_down, _STAKES)]
        t = self.n + 1
        mean_before = (0.5 + self.total) / t
        variance_before = (0.25 + self.spread) / t
        stake = min(math.sqrt(2 * math.log(2 / self.alpha) / (variance_before * t * math.log(1 + t))), 0.75)
        self.weights += stake
        self.weighted += stake * x
        self.penalty += 4 * (x - mean_before) ** 2 * (-math.log(1 - stake) - stake)
        self.n, self.total = t, self.total + x
        self.spread += (x - (0.5 + self.total) / (t + 1)) ** 2

    def log_rollback(self) -> float:
        """log e-value against "mean <= boundary"."""
        return _logsumexp(self.log_up) - math.log(len(_STAKES)) if self.n else 0.0

    def log_promote(self) -> float:
        """log e-value against "mean >= boundary"."""
        return _logsumexp(self.log_down) - math.log(len(_STAKES)) if self.n else 0.0

    def mean(self) -> float | None:
        return self.total / self.n if self.n else None

    def interval(self) -> tuple[float, float]:
        """The (1 - alpha) empirical-Bernstein confidence sequence for the mean, within [0, 1]."""
        if not self.weights:
            return 0.0, 1.0
        center = self.weighted / self.weights
        width = (math.log(2 / self.alpha) + self.penalty) / self.weights
        return max(0.0, center - width), min(1.0, center + width)

    def needed_samples(self, target_log_e: float) -> float | None:
        mean = self.mean()
        if mean is None or self.n < 2:
            return None
        gap = target_log_e - max(self.log_rollback(), self.log_promote())
        if gap <= 0:
            return 0.0
        variance = max(self.spread / self.n, 1e-4)
        drift = (mean - self.boundary) ** 2 / (2 * variance)  # per sample, for a well-tuned bettor
        return math.inf if drift <= 1e-12 else gap / drift

    def to_dict(self) -> dict:
        return {"boundary": self.boundary, "logUp": [round(v, 6) for v in self.log_up],
                "logDown": [round(v, 6) for v in self.log_down], "n": self.n, "total": round(self.total, 6),
                "spread": round(self.spread, 6), "weights": round(self.weights, 6),
                "weighted": round(self.weighted, 6), "penalty": round(self.penalty, 6), "alpha": self.alpha}

    @classmethod
    def from_dict(cls, data: dict, boundary: float, alpha: float) -> "MeanEvidence":
        up, down = data.get("logUp"), data.get("logDown")
        if (data.get("boundary") != boundary or not isinstance(up, list) or len(up) != len(_STAKES)
                or not isinstance(down, list) or len(down) != len(_STAKES)):
            return cls(boundary, alpha=alpha)
        return cls(boundary, [float(v) for v in up], [float(v) for v in down], int(data.get("n", 0)),
                   float(data.get("total", 0)), float(data.get("spread", 0)), float(data.get("weights", 0)),
                   float(data.get("weighted", 0)), float(data.get("penalty", 0)), alpha)
