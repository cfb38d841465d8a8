"""``engine/actions.py``: the events' rounding."""

from __future__ import annotations

import math
import random
import struct
from dataclasses import dataclass

from hypothesis import example, given, settings
from hypothesis import strategies as st

from gfwlab.engine.actions import EventFields, rounded
from gfwlab.engine.actions import _plain_annotation as plain_annotation


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


@dataclass(frozen=True, kw_only=True)
class _Inner(EventFields):
    n: int


@dataclass(frozen=True, kw_only=True)
class _Outer(EventFields):
    name: str
    share: float | None = None
    when: str | None
    inner: _Inner
    inners: tuple[_Inner, ...] = ()
    kinds: tuple[str, ...] | None = None


def test_event_fields_put_plain_values_as_they_are_and_convert_the_rest() -> None:
    """Fields annotated str/int/float/bool (or None) go in as they are; tuples become lists and
    nested fields dicts; a None field whose default is None is left out, any other stays."""
    got = _Outer(name="x", when=None, inner=_Inner(n=1), inners=(_Inner(n=2),)).as_dict()
    assert got == {"name": "x", "when": None, "inner": {"n": 1}, "inners": [{"n": 2}]}
    assert list(got) == ["name", "when", "inner", "inners"]
    full = _Outer(name="y", share=0.5, when="now", inner=_Inner(n=3), kinds=("a",)).as_dict()
    assert full["share"] == 0.5 and full["kinds"] == ["a"] and type(full["kinds"]) is list


def test_plain_annotations_are_the_json_scalars_alone() -> None:
    for text in ("str", "int", "float", "bool", "str | None", "None | int", "int | float"):
        assert plain_annotation(text), text
    for text in ("None", "tuple[int, ...]", "list[str] | None", "Literal['a']", "_Inner", "Any"):
        assert not plain_annotation(text), text
    assert plain_annotation(str) and not plain_annotation(list)
