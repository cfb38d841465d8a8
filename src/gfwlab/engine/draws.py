"""Integer, uniform and choice draws from a flow's keyed stream, compiled with the engine.

A mechanism draws from its flow's :class:`~gfwlab.engine.stream.Stream`
(:meth:`~gfwlab.engine.flows.Flow.draws`), several times for each packet it forges: a TTL, an
IP ID, a source port, a delay. A stream gives words, floats and bytes; these functions are
``random.Random``'s algorithms over them (CPython 3.11's ``random.py``:
``_randbelow_with_getrandbits``, the unit-step fast path of ``randrange``, ``uniform``'s
``a + (b - a) * random()`` and the weighted ``choices``' bisection), so each draws what the
same ``random.Random`` method draws from a generator of the same bits;
``tests/test_draws.py`` compares them over many keys and ranges. Only what the mechanisms use
is here.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Sequence
from typing import TypeVar

from gfwlab.engine.stream import Stream

T = TypeVar("T")


def below(rng: Stream, n: int) -> int:
    """A uniform integer in ``[0, n)``, ``n`` > 0 (``Random._randbelow``)."""
    k = n.bit_length()
    r = rng.getrandbits(k)
    while r >= n:
        r = rng.getrandbits(k)
    return r


def randint(rng: Stream, lo: int, hi: int) -> int:
    """``rng.randint(lo, hi)``: a uniform integer in ``[lo, hi]``."""
    if hi < lo:
        raise ValueError(f"empty range for randint({lo}, {hi})")
    return lo + below(rng, hi - lo + 1)


def randrange(rng: Stream, n: int) -> int:
    """``rng.randrange(n)``: a uniform integer in ``[0, n)``."""
    if n <= 0:
        raise ValueError("empty range for randrange()")
    return below(rng, n)


def uniform(rng: Stream, a: float, b: float) -> float:
    """``rng.uniform(a, b)``."""
    return a + (b - a) * rng.random()


def choice(rng: Stream, seq: Sequence[T]) -> T:
    """``rng.choice(seq)``."""
    if not len(seq):
        raise IndexError("Cannot choose from an empty sequence")
    return seq[below(rng, len(seq))]


def weighted(rng: Stream, population: Sequence[T], weights: Sequence[float]) -> T:
    """``rng.choices(population, weights=weights)[0]``: one pick, ``weights`` non-negative with a
    positive finite total, one per member."""
    if len(weights) != len(population):
        raise ValueError("The number of weights does not match the population")
    cum: list[float] = []
    total = 0.0
    for w in weights:
        total += w
        cum.append(total)
    if total <= 0.0:
        raise ValueError("Total of weights must be greater than zero")
    if not math.isfinite(total):
        raise ValueError("Total of weights must be finite")
    return population[bisect.bisect(cum, rng.random() * total, 0, len(population) - 1)]
