"""The keyed random stream (``engine/stream.py``): its definition, its uniformity, and the
independence of neighbouring keys' streams (two flows one port apart)."""

from __future__ import annotations

import hashlib
import itertools
import math

import pytest

from gfwlab.engine.flows import Flow
from gfwlab.engine.stream import Stream
from gfwlab.offline.stats import chi_square, ks_distance
from gfwlab.packet.ip import PROTO_TCP, addr_bytes

KS_99 = 1.63  # sqrt(n) * D beyond which a sample is rejected as uniform at the 1% level


def _block(key: bytes, i: int) -> bytes:
    return hashlib.blake2b(key + i.to_bytes(8, "little"), digest_size=64).digest()


def test_a_stream_is_blake2b_in_counter_mode() -> None:
    """Block ``i`` is BLAKE2b-512 of the key and ``i`` (8 bytes, little-endian), read as eight
    little-endian words: the definition, independent of the code that draws from it."""
    key = b"1:tls_sni\x00example"
    raw = b"".join(_block(key, i) for i in range(3))
    words = [int.from_bytes(raw[j : j + 8], "little") for j in range(0, len(raw), 8)]
    s = Stream(key)
    assert [s.word() for _ in range(24)] == words
    s = Stream(key)
    assert s.random() == (words[0] >> 11) / 2**53
    assert s.getrandbits(7) == words[1] >> 57
    assert s.getrandbits(64) == words[2]
    assert s.getrandbits(100) == (words[3] | words[4] << 64) >> 28
    assert s.randbytes(13) == _block(key, 0)[40:53]
    assert s.word() == words[7]  # 13 bytes took two whole words
    assert s.randbytes(70) == (_block(key, 1) + _block(key, 2))[:70]
    assert s.getrandbits(0) == 0
    assert s.randbytes(0) == b""
    assert s.word() == words[17]


def test_the_same_key_draws_the_same_and_refuses_what_random_refuses() -> None:
    a, b = Stream(b"k"), Stream(b"k")
    assert [a.random() for _ in range(20)] == [b.random() for _ in range(20)]
    assert a.randbytes(300) == b.randbytes(300)
    assert Stream(b"k").random() != Stream(b"l").random()
    with pytest.raises(ValueError):
        Stream(b"k").getrandbits(-1)
    with pytest.raises(ValueError):
        Stream(b"k").randbytes(-1)


def test_floats_are_uniform_and_in_range() -> None:
    s = Stream(b"uniform")
    values = [s.random() for _ in range(20000)]
    assert all(0.0 <= v < 1.0 for v in values)
    d = ks_distance(values, lambda x: min(max(x, 0.0), 1.0))
    assert d * math.sqrt(len(values)) < KS_99


@pytest.mark.parametrize("k", [1, 3, 4, 8, 63, 64, 65, 130])
def test_bits_are_uniform(k: int) -> None:
    """The top four bits of ``getrandbits(k)`` (all of them under four) fall evenly."""
    s = Stream(f"bits:{k}".encode())
    top = min(k, 4)
    counts = [0] * (1 << top)
    for _ in range(8000):
        v = s.getrandbits(k)
        assert 0 <= v < 1 << k
        counts[v >> (k - top)] += 1
    _stat, p = chi_square(counts, [1.0] * len(counts))
    assert p > 0.001


def test_bytes_are_uniform() -> None:
    s = Stream(b"bytes")
    data = b"".join(s.randbytes(n) for n in (1, 7, 8, 9, 300, 1000) * 40)
    counts = [data.count(bytes((b,))) for b in range(256)]
    _stat, p = chi_square(counts, [1.0] * 256)
    assert p > 0.001


def _flow(
    cport: int, salt: int = 0, client: str = "198.18.0.2", server: str = "198.19.0.2"
) -> Flow:
    return Flow(PROTO_TCP, addr_bytes(client), cport, addr_bytes(server), 443,
                "inside-out", True, 0.0, 0.0, salt=salt)  # fmt: skip


def test_neighbouring_flows_draw_unrelated_streams() -> None:
    """Flows one port or one sequence number apart: their first draws are uniform, and one
    flow's says nothing of the next one's (correlation near zero)."""
    for vary in ("port", "salt"):
        first = [
            (_flow(40000 + i) if vary == "port" else _flow(40000, salt=i)).draws("1:fet").random()
            for i in range(20000)
        ]
        d = ks_distance(first, lambda x: min(max(x, 0.0), 1.0))
        assert d * math.sqrt(len(first)) < KS_99
        n = len(first) - 1
        mean = sum(first) / len(first)
        cov = sum((a - mean) * (b - mean) for a, b in itertools.pairwise(first)) / n
        var = sum((a - mean) ** 2 for a in first) / len(first)
        assert abs(cov / var) < 3 / math.sqrt(n)  # |r| within three standard errors of 0


def test_a_flows_identity_keys_its_stream_whole() -> None:
    """Every part of the identity, and the mechanism's key, changes the stream; v4 and v6
    identities cannot run into each other."""
    base = _flow(40000, salt=5).draws("1:fet").random()
    others = [
        _flow(40001, salt=5).draws("1:fet"),
        _flow(40000, salt=6).draws("1:fet"),
        _flow(40000, salt=5, client="198.18.0.3").draws("1:fet"),
        _flow(40000, salt=5).draws("2:fet"),
        _flow(40000, salt=5).draws("1:tls_sni"),
        _flow(40000, salt=5, client="2001:db8::2", server="2001:db8:5::2").draws("1:fet"),
    ]
    assert all(o.random() != base for o in others)
    assert _flow(40000, salt=5).draws("1:fet").random() == base
    assert _flow(40000, salt=2**40).draws("1:fet").random() != base  # a salt of any size


def test_bits_of_every_width_are_the_words_top_bits() -> None:
    """``getrandbits(k)`` for every ``k`` up to 130, in turn across block boundaries: the top
    ``k`` bits of the next word (beyond 64, the next words', the first the least significant),
    ``random`` the top 53, as the definition reads the blocks."""
    key = b"widths"
    raw = b"".join(_block(key, i) for i in range(60))
    words = iter([int.from_bytes(raw[j : j + 8], "little") for j in range(0, len(raw), 8)])
    s = Stream(key)
    for k in range(1, 131):
        if k <= 64:
            expected = next(words) >> (64 - k)
        else:
            n = (k + 63) // 64
            whole = sum(next(words) << (64 * j) for j in range(n))
            expected = whole >> (64 * n - k)
        assert s.getrandbits(k) == expected, k
        assert s.random() == (next(words) >> 11) / 2**53
