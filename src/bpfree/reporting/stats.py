"""Small statistics for reports, stated with what they rest on.

* :func:`paired_ci`: the mean paired difference (same seed) with its two-sided t-interval, and
  the n, degrees of freedom and t quantile it used;
* :func:`tost`: two one-sided tests of equivalence within ``±margin`` at level ``alpha``
  (Schuirmann 1987): the difference is *equivalent* when the (1 - 2 alpha) interval lies inside
  the margin, *not equivalent* when it lies wholly outside it, and *inconclusive* otherwise.
  "Matches backprop" is only ever read from an equivalent verdict, never from a confidence
  interval that happens to contain zero.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass

from scipy.stats import t as student_t  # scipy ships with scikit-learn, a dependency

EQUIVALENT, NOT_EQUIVALENT, INCONCLUSIVE = "equivalent", "not equivalent", "inconclusive"
TOST_MARGIN_PP = 0.5  # default equivalence margin, percentage points of test accuracy
TOST_ALPHA = 0.05


def t_quantile(p: float, df: int) -> float:
    """Quantile ``p`` of Student's t distribution with ``df`` degrees of freedom."""
    return float(student_t.ppf(p, df))


@dataclass(frozen=True)
class PairedCI:
    mean: float
    low: float | None  # None when n < 2: no interval from one pair
    high: float | None
    n: int
    df: int | None = None
    t: float | None = None  # the t quantile used
    level: float = 0.95


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
        return PairedCI(m, None, None, n, level=level)
    q = t_quantile(0.5 + level / 2, n - 1)
    half = q * statistics.stdev(d) / math.sqrt(n)
    return PairedCI(m, m - half, m + half, n, n - 1, q, level)


def tost(
    a: list[float], b: list[float], margin: float = TOST_MARGIN_PP, alpha: float = TOST_ALPHA
) -> str:
    """Equivalence of paired a and b within ``±margin`` (see the module docstring)."""
    if len(a) < 2:
        return INCONCLUSIVE
    ci = paired_ci(a, b, level=1 - 2 * alpha)
    assert ci.low is not None and ci.high is not None
    if -margin < ci.low and ci.high < margin:
        return EQUIVALENT
    if ci.low > margin or ci.high < -margin:
        return NOT_EQUIVALENT
    return INCONCLUSIVE
