"""gfwlab.rules.quantiles: the inverse CDF and the CDF find their segment as ``bisect`` does over
the table's shares and values (they search the table in place), on any table and any point."""

from __future__ import annotations

import bisect
import itertools
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gfwlab.mechanisms._forge import RST_DELAY_MS, TTL_RECEIVED
from gfwlab.rules import quantiles
from gfwlab.rules.quantiles import Quantiles


def _value_at(table: Quantiles, u: float) -> float:
    shares = [s for s, _ in table]
    i = min(max(1, bisect.bisect_left(shares, u)), len(table) - 1)
    (s0, v0), (s1, v1) = table[i - 1], table[i]
    f = (u - s0) / (s1 - s0)
    return (
        math.exp(math.log(v0) + f * math.log(v1 / v0)) if v0 > 0 and v1 > 0 else v0 + f * (v1 - v0)
    )


def _segment_right(table: Quantiles, x: float) -> int:
    return bisect.bisect_right([v for _, v in table], x)


@st.composite
def tables(draw: st.DrawFn) -> Quantiles:
    inner = sorted(set(draw(st.lists(st.floats(0.0, 1.0, exclude_min=True, exclude_max=True)))))
    # Values as measured tables hold them (milliseconds, TTLs): zero, or at least 1e-6 across.
    # Near the smallest floats the curve's ratios overflow, in the bisect and in the reference
    # alike; that is not what these tests are about.
    value = st.one_of(st.just(0.0), st.floats(1e-6, 1e6), st.floats(-1e6, -1e-6))
    n = len(inner) + 2
    values = sorted(draw(st.lists(value, min_size=n, max_size=n)))
    # Repeated values (flat stretches) on purpose, as measured tables have them.
    if draw(st.booleans()) and len(values) > 2:
        values[1] = values[0]
    table = tuple(zip([0.0, *inner, 1.0], values, strict=True))
    quantiles.check(table, "drawn")
    return table


@given(tables(), st.floats(0.0, 1.0))
def test_value_at_is_the_inverse_cdf_bisect_gives(table: Quantiles, u: float) -> None:
    expected = _value_at(table, u)
    got = quantiles.value_at(table, u)
    assert got == expected or (math.isnan(got) and math.isnan(expected))


@given(tables(), st.floats(-2e6, 2e6))
def test_cdf_reads_the_segment_bisect_finds(table: Quantiles, x: float) -> None:
    share = quantiles.cdf(table, x)
    assert 0.0 <= share <= 1.0
    if table[0][1] < x < table[-1][1]:
        i = _segment_right(table, x)
        (s0, _v0), (s1, _v1) = table[i - 1], table[i]
        assert s0 <= share <= s1


@pytest.mark.parametrize(
    "table", [*RST_DELAY_MS.values(), *TTL_RECEIVED.values()], ids=lambda t: f"{len(t)} points"
)
def test_measured_tables_on_every_point_and_between(table: Quantiles) -> None:
    points = [s for s, _ in table]
    mids = [(a + b) / 2 for a, b in itertools.pairwise(points)]
    for u in [*points, *mids]:
        assert quantiles.value_at(table, u) == _value_at(table, u)
    for (s, v), (s1, v1) in itertools.pairwise(table):
        if v1 > v:  # the value's own share, from the curve
            assert quantiles.cdf(table, v) == pytest.approx(s, abs=1e-12)
        assert quantiles.cdf(table, v1) >= s1 - 1e-12  # at or below v1: s1 at least
