"""The numbers of a verdict: mean score, its Student-t 95% interval, failures. Pure, standard library.

The t quantile comes from a table of exact values for 1..30 degrees of freedom and the
Cornish-Fisher expansion beyond (error < 1e-6 from 30 degrees of freedom on), so no scipy.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["Summary", "summarize", "t_quantile_975", "mean_ci95"]

# Two-sided 95%: the 0.975 quantile of Student's t with df = 1..30 degrees of freedom.
_T975 = (
    12.706205, 4.302653, 3.182446, 2.776445, 2.570582, 2.446912, 2.364624, 2.306004, 2.262157,
    2.228139, 2.200985, 2.178813, 2.160369, 2.144787, 2.131450, 2.119905, 2.109816, 2.100922,
    2.093024, 2.085963, 2.079614, 2.073873, 2.068658, 2.063899, 2.059539, 2.055529, 2.051831,
    2.048407, 2.045230, 2.042272,
)
_Z975 = 1.959963984540054  # the standard normal's 0.975 quantile


def t_quantile_975(df: int) -> float:
    """The 0.975 quantile of Student's t distribution with `df` >= 1 degrees of freedom."""
    if df < 1:
        raise ValueError(f"degrees of freedom must be >= 1, got {df}")
    if df <= len(_T975):
        return _T975[df - 1]
    z, v = _Z975, float(df)
    return (z
            + (z**3 + z) / (4 * v)
            + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * v**2)
            + (3 * z**7 + 19 * z**5 + 17 * z**3 - 15 * z) / (384 * v**3)
            + (79 * z**9 + 776 * z**7 + 1482 * z**5 - 1920 * z**3 - 945 * z) / (92160 * v**4))


def mean_ci95(scores: Sequence[float]) -> tuple[float | None, tuple[float, float] | None]:
    """(mean, Student-t 95% interval of the mean clipped to [0, 1]); None where too few scores."""
    n = len(scores)
    if n == 0:
        return None, None
    mean = math.fsum(scores) / n
    if n < 2:
        return mean, None
    half = t_quantile_975(n - 1) * statistics.stdev(scores, mean) / math.sqrt(n)
    return mean, (min(1.0, max(0.0, mean - half)), min(1.0, max(0.0, mean + half)))


@dataclass(frozen=True)
class Summary:
    judged: int
    mean: float | None
    ci95: tuple[float, float] | None
    failed: int  # judged scores below the pass mark
    # Sufficient statistics (with `judged`) for callers that build their own mean/variance tests.
    sum_scores: float = 0.0
    sum_squares: float = 0.0


def summarize(scores: Sequence[float], pass_mark: float) -> Summary:
    mean, ci = mean_ci95(scores)
    return Summary(judged=len(scores), mean=mean, ci95=ci, failed=sum(1 for s in scores if s < pass_mark),
                   sum_scores=math.fsum(scores), sum_squares=math.fsum(s * s for s in scores))
