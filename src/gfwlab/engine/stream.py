"""A keyed random stream: what a flow's draws come from, cheap to start, the same everywhere.

Every draw the engine makes is keyed (:meth:`gfwlab.engine.flows.Flow.draws`,
:meth:`gfwlab.engine.mechanism.Mechanism.keyed_rng`): the run's seed, the mechanism, and the
flow's identity or a name. So a stream is started for nearly every flow a mechanism acts on,
and used for a handful of draws (a TTL, an IP ID, a delay, a probability). ``random.Random``
is the wrong shape for that: seeding a Mersenne Twister fills 624 words twice, 3.8 µs in C plus
the string's hashing in ``random.py``, more than all the draws of a forged DNS answer together.

A :class:`Stream` is BLAKE2b (:mod:`hashlib`) in counter mode: block ``i`` is the 64-byte
digest of the key and ``i``, read as eight little-endian 64-bit words. Starting one costs
nothing; the first draw hashes once, and every eight words hash again. The output is a
cryptographic hash's, so streams of neighbouring keys (two flows one port apart) are as
unrelated as streams of distant ones, and the words are uniform; ``tests/test_stream.py``
checks both. Nothing here depends on the platform, on ``PYTHONHASHSEED`` or on whether the
module runs compiled (:mod:`gfwlab._build`): a key gives the same draws everywhere, live and
offline, on any worker.

The methods are the part of ``random.Random``'s interface the mechanisms use, with its
meanings: :meth:`random` a float in [0, 1) (53 bits, as ``random.Random``), :meth:`getrandbits`
and :meth:`randbytes`; the integer, uniform and choice draws built on them are
:mod:`gfwlab.engine.draws`, ``random.py``'s algorithms.
"""

from __future__ import annotations

from hashlib import blake2b
from typing import Final

_UNIT: Final = 1.0 / 9007199254740992.0  # 2**-53


def _half(raw: bytes, i: int) -> int:
    """Half ``i`` of a block: its ``i``-th little-endian 32-bit number. The draws below take
    a word's bits as its low and high halves: compiled, a byte read is a machine operation and a
    half fits a machine word, where a whole word (up to 2**64) is a Python object and each shift
    of it an allocation. Read this way as needed, a block's sixteen halves are not all made as
    objects when it is hashed (``struct`` took a third of a microsecond for that, and most
    streams draw from one or two words)."""
    j = 4 * i
    return raw[j] | raw[j + 1] << 8 | raw[j + 2] << 16 | raw[j + 3] << 24


class Stream:
    """The draws of one key (bytes): the same key, the same draws."""

    def __init__(self, key: bytes) -> None:
        self.key = key
        self._counter = 0
        self._raw = b""
        self._at = 8  # the next unread word of the current block (8: none left)

    def _refill(self) -> None:
        # 64 bytes is BLAKE2b's default digest: no keyword for the constructor to parse.
        self._raw = blake2b(self.key + self._counter.to_bytes(8, "little")).digest()
        self._counter += 1
        self._at = 0

    def _next(self) -> int:
        """Take the next word; the number of its low half (:func:`_half`; its high half
        follows)."""
        if self._at >= 8:
            self._refill()
        at = self._at
        self._at = at + 1
        return 2 * at

    def word(self) -> int:
        """The next 64-bit word."""
        i = self._next()
        raw = self._raw
        return _half(raw, i) | _half(raw, i + 1) << 32

    def random(self) -> float:
        """A float in [0, 1): the top 53 bits of the next word."""
        i = self._next()
        raw = self._raw
        return (_half(raw, i + 1) << 21 | _half(raw, i) >> 11) * _UNIT

    def getrandbits(self, k: int) -> int:
        """An integer of ``k`` random bits: the top ``k`` bits of the next word, or for ``k`` over
        64 as many words as it takes, the first the least significant."""
        if k <= 0:
            if k < 0:
                raise ValueError("number of bits must be non-negative")
            return 0
        if k <= 32:
            i = self._next()  # first: it may refill the block
            return _half(self._raw, i + 1) >> (32 - k)
        if k <= 62:  # the result still fits a machine word
            i = self._next()
            raw = self._raw
            return _half(raw, i + 1) << (k - 32) | _half(raw, i) >> (64 - k)
        if k <= 64:
            return self.word() >> (64 - k)
        bits = 0
        have = 0
        while have < k:
            bits |= self.word() << have
            have += 64
        return bits >> (have - k)

    def randbytes(self, n: int) -> bytes:
        """``n`` random bytes: the next ``ceil(n / 8)`` words' bytes, as the hash gave them."""
        if n < 0:
            raise ValueError("negative argument not allowed")
        out = b""
        while len(out) < n:
            if self._at >= 8:
                self._refill()
            take = min(8 - self._at, (n - len(out) + 7) // 8)
            out += self._raw[self._at * 8 : (self._at + take) * 8]
            self._at += take
        return out[:n]
