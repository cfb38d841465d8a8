"""``engine/actions.py``: the events' rounding."""

from __future__ import annotations

import math
import random
import struct

from hypothesis import example, given, settings
from hypothesis import strategies as st

from gfwlab.engine.actions import rounded


def _same(a: float, b: float) -> bool:
    """The same float, bit for bit (a zero's sign included), or both NaN."""
    return (math.isnan(a) and math.isnan(b)) or struct.pack("<d", a) == struct.pack("<d", b)


@settings(max_examples=3000)
@given(st.floats(), st.sampled_from([0, 1, 3, 4, 6, 9]))
@example(1717200000.0000005, 6)
@example(0.0000005, 6)
@example(-0.0000005, 6)
@example(-1e-300, 6)
@example(2.5, 0)
@example(4503599627.370497, 6)
@example(-0.5, 0)
def test_rounded_is_round(x: float, digits: int) -> None:
    assert _same(rounded(x, digits), round(x, digits))


def test_rounded_is_round_on_capture_times_and_draws() -> None:
    """What events round: times of a capture's clock (whole microseconds or nanoseconds),
    later times, uniform draws, and numbers near a half (rounded exactly)."""
    rng = random.Random(3)
    for _ in range(100_000):
        ts = 1_717_200_000 + rng.randrange(10**12) / 1e6
        ns = 1_717_200_000 + rng.randrange(10**15) / 1e9
        half = (rng.randrange(10**15) + 0.5) / 1e6
        for x in (ts, ns, ts + 180.0, ns + 180.0, rng.random(), -rng.random(), half, -half):
            assert _same(rounded(x, 6), round(x, 6))
            assert _same(rounded(x, 3), round(x, 3))
