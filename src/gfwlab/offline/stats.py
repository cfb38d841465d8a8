"""The statistics the fidelity report and tests compare emitted values with measurements by.

- :func:`ks_distance`: the Kolmogorov-Smirnov distance between samples and a reference CDF
  (continuous distributions; the report's bound is 0.05 with at least 2,000 samples);
- :func:`chi_square`: Pearson's statistic and its p-value for categorical counts against
  expected shares (the report's bound is p >= 0.01);
- :func:`wilson_interval`: the Wilson score interval of a binomial proportion (the report uses
  99%, z = 2.576), to check whether a measured rate is consistent with the emitted one.

Pure Python (no SciPy): the chi-square tail is the regularised upper incomplete gamma function,
by its series or continued fraction (Numerical Recipes, §6.2).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

Z99 = 2.5758293035489004
"""The two-sided 99% normal quantile."""


def ks_distance(samples: Sequence[float], cdf: Callable[[float], float]) -> float:
    """sup |F_n(x) - F(x)| for the empirical CDF of ``samples`` and the reference ``cdf``."""
    xs = sorted(samples)
    n = len(xs)
    if n == 0:
        raise ValueError("no samples")
    worst = 0.0
    for i, x in enumerate(xs):
        f = cdf(x)
        worst = max(worst, abs((i + 1) / n - f), abs(i / n - f))
    return worst


def _gamma_q(a: float, x: float) -> float:
    """The regularised upper incomplete gamma function Q(a, x)."""
    if x <= 0:
        return 1.0
    log_front = a * math.log(x) - x - math.lgamma(a)
    if x < a + 1:  # series for P, then Q = 1 - P
        term = total = 1.0 / a
        ap = a
        for _ in range(10_000):
            ap += 1
            term *= x / ap
            total += term
            if abs(term) < abs(total) * 1e-15:
                break
        return max(0.0, 1.0 - total * math.exp(log_front))
    # Continued fraction for Q (modified Lentz).
    tiny = 1e-300
    b = x + 1 - a
    c = 1 / tiny
    d = 1 / b
    h = d
    for i in range(1, 10_000):
        an = -i * (i - a)
        b += 2
        d = an * d + b
        d = tiny if abs(d) < tiny else d
        c = b + an / c
        c = tiny if abs(c) < tiny else c
        d = 1 / d
        step = d * c
        h *= step
        if abs(step - 1) < 1e-15:
            break
    return math.exp(log_front) * h


def chi_square(observed: Sequence[int], expected_shares: Sequence[float]) -> tuple[float, float]:
    """(statistic, p-value) of Pearson's test of ``observed`` counts against shares."""
    n = sum(observed)
    total = sum(expected_shares)
    stat = 0.0
    for o, share in zip(observed, expected_shares, strict=True):
        e = n * share / total
        if e > 0:
            stat += (o - e) ** 2 / e
    dof = len(observed) - 1
    return stat, _gamma_q(dof / 2, stat / 2)


def wilson_interval(successes: int, n: int, z: float = Z99) -> tuple[float, float]:
    """The Wilson score interval of the proportion ``successes / n``."""
    if n <= 0:
        raise ValueError("n must be positive")
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)
