"""Empirical distributions as quantile tables: what the papers' artifacts measured, as data.

A :data:`Quantiles` table is a tuple of ``(share, value)`` points, shares rising from 0 to 1 and
values never falling: the value below which ``share`` of the measured samples lie. Mechanisms
keep one per measured distribution (spec §14j, §5) as a parameter, so a profile can replace it
(a TOML list of ``[share, value]`` pairs), and sample it with :func:`sample` from their seeded
per-flow stream: one uniform draw, inverted through the table. Between two points the value is
interpolated geometrically (linearly in log value) when both are positive, which follows the
heavy tails of delays better than a straight line; a zero or negative point is interpolated
linearly. :func:`cdf` is the same curve read the other way, for the fidelity statistics.
"""

from __future__ import annotations

import itertools
import math
from typing import Protocol

Quantiles = tuple[tuple[float, float], ...]
"""``(share, value)`` points of a cumulative distribution, from share 0 to share 1."""


class Uniform(Protocol):
    """What :func:`sample` draws from: a flow's keyed stream (``gfwlab.engine.stream``), or any
    ``random.Random``."""

    def random(self) -> float: ...


def check(table: Quantiles, what: str) -> None:
    """Raise ValueError unless ``table`` is a usable quantile table."""
    if len(table) < 2:
        raise ValueError(f"{what}: a quantile table needs at least two points")
    shares = [s for s, _ in table]
    values = [v for _, v in table]
    if shares[0] != 0.0 or shares[-1] != 1.0:
        raise ValueError(f"{what}: shares must run from 0 to 1, got {shares[0]} to {shares[-1]}")
    if any(b <= a for a, b in itertools.pairwise(shares)):
        raise ValueError(f"{what}: shares must rise strictly")
    if any(b < a for a, b in itertools.pairwise(values)):
        raise ValueError(f"{what}: values must not fall")


def _between(v0: float, v1: float, f: float) -> float:
    if v0 > 0 and v1 > 0:
        return math.exp(math.log(v0) + f * math.log(v1 / v0))
    return v0 + f * (v1 - v0)


def value_at(table: Quantiles, u: float) -> float:
    """The value at cumulative share ``u`` (0 <= u <= 1): the inverse CDF."""
    # bisect.bisect_left over the shares, on the table itself: a list of the shares made for
    # each draw cost more than the rest of the draw (a reset draws two or three), and bisect's
    # key= (an itemgetter call a step) took half as long again as this loop, compiled.
    lo, hi = 0, len(table)
    while lo < hi:
        mid = (lo + hi) // 2
        if table[mid][0] < u:
            lo = mid + 1
        else:
            hi = mid
    i = min(max(1, lo), len(table) - 1)
    (s0, v0), (s1, v1) = table[i - 1], table[i]
    return _between(v0, v1, (u - s0) / (s1 - s0))


def sample(table: Quantiles, rng: Uniform, *, upto: float = 1.0) -> float:
    """One draw from ``table`` (one ``rng.random()``), restricted to shares below ``upto``."""
    return value_at(table, rng.random() * upto)


def cdf(table: Quantiles, x: float) -> float:
    """The share of the distribution at or below ``x``."""
    if x <= table[0][1]:
        return 0.0
    if x >= table[-1][1]:
        return 1.0
    lo, hi = 0, len(table)  # bisect.bisect_right over the values, as in value_at
    while lo < hi:
        mid = (lo + hi) // 2
        if x < table[mid][1]:
            hi = mid
        else:
            lo = mid + 1
    i = lo
    (s0, v0), (s1, v1) = table[i - 1], table[i]
    if v1 == v0:
        return s1
    f = math.log(x / v0) / math.log(v1 / v0) if v0 > 0 and v1 > 0 else (x - v0) / (v1 - v0)
    return s0 + f * (s1 - s0)
