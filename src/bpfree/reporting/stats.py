"""Small statistics for reports: mean, standard deviation, paired-difference confidence interval."""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass


def t_quantile(p: float, df: int) -> float:
    """Quantile of Student's t distribution (scipy ships with scikit-learn, a dependency)."""
    from scipy.stats import t

    return float(t.ppf(p, df))


@dataclass(frozen=True)
class PairedCI:
    mean: float
    low: float | None  # None when n < 2: no interval from one pair
    high: float | None
    n: int


def mean_std(values: list[float]) -> tuple[float | None, float | None]:
    if not values:
        return None, None
    if len(values) == 1:
        return values[0], None
    return statistics.fmean(values), statistics.stdev(values)


def paired_ci(a: list[float], b: list[float], level: float = 0.95) -> PairedCI:
    """CI of mean(a_i - b_i) over pairs (same seed), from the t distribution with n-1 df."""
    if len(a) != len(b) or not a:
        raise ValueError("paired_ci needs two equally long, non-empty lists")
    d = [x - y for x, y in zip(a, b, strict=True)]
    n = len(d)
    m = statistics.fmean(d)
    if n < 2:
        return PairedCI(m, None, None, n)
    half = t_quantile(0.5 + level / 2, n - 1) * statistics.stdev(d) / math.sqrt(n)
    return PairedCI(m, m - half, m + half, n)
