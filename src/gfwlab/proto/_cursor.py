"""A bounds-checked reader shared by the dissectors.

Every ``pull_*`` either returns a value and advances, or raises
:class:`~gfwlab.errors.MalformedPacket` with the caller's chosen ``kind`` and the absolute offset
where the missing bytes were wanted. The cursor never returns short data silently (STYLE.md
habit 5). It is for input that is already complete (a whole TLS record, a whole datagram); the
"need more data" decision is made by the caller before a cursor is built.
"""

from __future__ import annotations

from gfwlab.errors import MalformedPacket


class Cursor:
    """Reads big-endian integers and length-prefixed vectors from ``data[start:end]``.

    ``base`` is added to every reported offset, so that a cursor over a slice (for example a
    handshake body taken out of a record) still reports offsets into the caller's buffer.
    """

    __slots__ = ("_base", "_data", "_end", "_kind", "pos")

    def __init__(
        self,
        data: bytes,
        *,
        kind: str,
        start: int = 0,
        end: int | None = None,
        base: int = 0,
    ) -> None:
        self._data = data
        self._end = len(data) if end is None else min(end, len(data))
        self._kind = kind
        self._base = base
        self.pos = start

    @property
    def offset(self) -> int:
        """The current position, as an offset into the caller's buffer."""
        return self._base + self.pos

    def remaining(self) -> int:
        """How many bytes are left before the end of this cursor's window."""
        return self._end - self.pos

    def eof(self) -> bool:
        return self.pos >= self._end

    def _need(self, n: int, what: str) -> None:
        if n < 0 or self.pos + n > self._end:
            raise MalformedPacket(
                self._kind,
                self._base + self.pos,
                f"{what}: need {n} bytes, {max(self._end - self.pos, 0)} left",
            )

    def pull_u8(self, what: str = "u8") -> int:
        self._need(1, what)
        value = self._data[self.pos]
        self.pos += 1
        return value

    def pull_u16(self, what: str = "u16") -> int:
        self._need(2, what)
        value = int.from_bytes(self._data[self.pos : self.pos + 2], "big")
        self.pos += 2
        return value

    def pull_u24(self, what: str = "u24") -> int:
        self._need(3, what)
        value = int.from_bytes(self._data[self.pos : self.pos + 3], "big")
        self.pos += 3
        return value

    def pull_bytes(self, n: int, what: str = "bytes") -> bytes:
        self._need(n, what)
        value = self._data[self.pos : self.pos + n]
        self.pos += n
        return value

    def pull_vector(self, length_size: int, what: str = "vector") -> bytes:
        """A vector whose length is a ``length_size``-byte big-endian prefix (TLS ``<..>``).

        If the vector overruns, the reported offset is that of its length prefix.
        """
        start = self.pos
        if length_size == 1:
            n = self.pull_u8(what)
        elif length_size == 2:
            n = self.pull_u16(what)
        elif length_size == 3:
            n = self.pull_u24(what)
        else:
            raise ValueError(f"unsupported length prefix size {length_size}")
        if self.pos + n > self._end:
            raise MalformedPacket(
                self._kind,
                self._base + start,
                f"{what}: length {n}, {self._end - self.pos} bytes left",
            )
        return self.pull_bytes(n, what)

    def sub(self, n: int, what: str = "block") -> Cursor:
        """A cursor over the next ``n`` bytes, which this cursor skips past."""
        self._need(n, what)
        child = Cursor(
            self._data, kind=self._kind, start=self.pos, end=self.pos + n, base=self._base
        )
        self.pos += n
        return child

    def sub_vector(self, length_size: int, what: str = "vector") -> Cursor:
        """Like :meth:`pull_vector`, but returns a cursor over the vector's contents."""
        start_offset = self.pos
        body = self.pull_vector(length_size, what)
        return Cursor(
            self._data,
            kind=self._kind,
            start=start_offset + length_size,
            end=start_offset + length_size + len(body),
            base=self._base,
        )
