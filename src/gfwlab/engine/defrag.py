"""IP fragment reassembly, as the censor does it before it inspects a datagram.

Source: spec §3 "Reassembly (historical, Khattak'13)": the GFW reassembles IP fragments and,
where fragments overlap, prefers the **original** fragment's bytes, except when the later
fragment is both left-long and right-long of it (starts before it and ends after it), in which
case the later one wins (INTANG's comments citing Khattak et al., FOCI 2013; status V2). GFWeb
(USENIX Security 2024) reports reassembly failures fixed by 2022-23 without dating them; the
spec dates no change to IP reassembly, so it is on for every date. How long the censor keeps an
incomplete datagram is not published. Both are parameters (:class:`~gfwlab.rules.EngineParams`:
``ip_reassembly``, ``ip_overlap``, ``ip_fragment_timeout_s``).

IPv6 fragments are reassembled too when the Fragment header follows the fixed header directly
(the usual layout; the ID is the Fragment header's); others pass uninspected.

A datagram is keyed by (source, destination, protocol, IP ID). Its bytes are kept with, per
byte, the fragment that supplied it, so an overlap is settled byte by byte under the policy:
``first`` keeps what arrived first, ``last`` takes the newest, ``khattak2013`` keeps the older
bytes unless the newer fragment covers the older one on both sides. It is complete when the
last fragment (more-fragments clear) has fixed its length and every byte below it is held; the
whole datagram is then rebuilt with the first fragment's header (offset and flags cleared,
length and checksum recomputed) and inspected like any packet. The transport ports of the first
fragment are remembered, so that every fragment of a datagram whose flow is already blocked
gets that flow's verdict.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Final, Literal

from gfwlab.engine.flows import FlowKey, flow_key
from gfwlab.packet.ip import Packet, checksum

Overlap = Literal["first", "last", "khattak2013"]
Key = tuple[bytes, bytes, int, int]

MAX_DATAGRAM: Final = 65535
MAX_PENDING: Final = 4096
"""Incomplete datagrams held at once; the oldest is dropped beyond it."""


@dataclass
class _Pending:
    started: float
    header: bytes = b""
    """The first fragment's IP header (offset 0), once seen."""
    data: bytearray = field(default_factory=bytearray)
    owner: list[int] = field(default_factory=list)
    """Per byte of ``data``: the index of the fragment that supplied it, or -1 for a hole."""
    spans: list[tuple[int, int]] = field(default_factory=list)
    """Each fragment's (start, end), in arrival order."""
    length: int | None = None
    """The datagram's payload length, once the last fragment has been seen."""
    ports: tuple[int, int] | None = None
    """(source port, destination port) from the first fragment's transport header."""


class Defragmenter:
    """Incomplete IP datagrams, reassembled under an overlap policy."""

    def __init__(self, overlap: Overlap, timeout: float, enabled: bool = True) -> None:
        self.overlap = overlap
        self.timeout = timeout
        self.enabled = enabled
        """Off: fragments are neither held nor reassembled (they pass uninspected)."""
        self.pending: dict[Key, _Pending] = {}
        self.completed = 0
        self.expired = 0

    def add(self, pkt: Packet, now: float) -> bytes | None:
        """Take one fragment; the whole datagram as an IP packet once it is complete."""
        raw = pkt.raw
        frag_at = _fragment_field(pkt)
        if frag_at is None or not self.enabled:
            return None
        key = _key(pkt)
        entry = self.pending.get(key)
        if entry is not None and now - entry.started > self.timeout:
            del self.pending[key]
            self.expired += 1
            entry = None
        if entry is None:
            if len(self.pending) >= MAX_PENDING:
                del self.pending[next(iter(self.pending))]
            entry = self.pending[key] = _Pending(started=now)
        frag = struct.unpack_from("!H", raw, frag_at)[0]
        if pkt.version == 4:
            start, more, header = (frag & 0x1FFF) * 8, frag & 0x2000, raw[: pkt.l4]
        else:  # offset in the top 13 bits, M in the lowest; the header loses its Fragment header
            start, more = frag & 0xFFF8, frag & 1
            header = raw[:6] + bytes((pkt.proto,)) + raw[7:40]
        body = raw[pkt.l4 :]
        end = start + len(body)
        if end > MAX_DATAGRAM:
            return None
        if start == 0:
            entry.header = header
            if len(body) >= 4:
                entry.ports = struct.unpack_from("!HH", body)
        if not more:
            entry.length = end
        self._place(entry, start, body)
        done = entry.length is not None and all(o >= 0 for o in entry.owner[: entry.length])
        if not done or not entry.header or len(entry.owner) < (entry.length or 0):
            return None
        del self.pending[key]
        self.completed += 1
        return _rebuild(entry.header, bytes(entry.data[: entry.length]))

    def ports(self, pkt: Packet) -> tuple[int, int] | None:
        """The ports of the datagram ``pkt`` belongs to, if its first fragment was seen."""
        if _fragment_field(pkt) is None:
            return None
        entry = self.pending.get(_key(pkt))
        return entry.ports if entry is not None else None

    def flow_of(self, pkt: Packet) -> tuple[FlowKey | None, int]:
        """The flow key of the datagram ``pkt`` belongs to (None if its first fragment was not
        seen) and its source port."""
        ports = self.ports(pkt)
        if ports is None:
            return None, 0
        return flow_key(pkt.proto, pkt.src, ports[0], pkt.dst, ports[1]), ports[0]

    def expire(self, now: float) -> None:
        """Forget datagrams incomplete for longer than the timeout."""
        old = [k for k, e in self.pending.items() if now - e.started > self.timeout]
        for key in old:
            del self.pending[key]
        self.expired += len(old)

    def _place(self, entry: _Pending, start: int, body: bytes) -> None:
        end = start + len(body)
        if len(entry.data) < end:
            grow = end - len(entry.data)
            entry.data += bytes(grow)
            entry.owner += [-1] * grow
        index = len(entry.spans)
        entry.spans.append((start, end))
        for pos in range(start, end):
            old = entry.owner[pos]
            if old >= 0 and not self._newer_wins(entry.spans[old], (start, end)):
                continue
            entry.data[pos] = body[pos - start]
            entry.owner[pos] = index

    def _newer_wins(self, old: tuple[int, int], new: tuple[int, int]) -> bool:
        if self.overlap == "last":
            return True
        if self.overlap == "first":
            return False
        return new[0] < old[0] and new[1] > old[1]  # left-long and right-long (Khattak'13)


def _fragment_field(pkt: Packet) -> int | None:
    """Where the fragment offset field is: IPv4's header, or an IPv6 Fragment header right
    after the fixed header (None for any other layout)."""
    if pkt.version == 4:
        return 6
    if pkt.raw[6] == 44 and pkt.l4 == 48:
        return 42
    return None


def _key(pkt: Packet) -> Key:
    ident = pkt.ip_id if pkt.version == 4 else int.from_bytes(pkt.raw[44:48], "big")
    return (pkt.src, pkt.dst, pkt.proto, ident)


def _rebuild(header: bytes, payload: bytes) -> bytes:
    if header[0] >> 4 == 6:
        return header[:4] + struct.pack("!H", len(payload)) + header[6:40] + payload
    hdr = bytearray(header)
    struct.pack_into("!H", hdr, 2, len(hdr) + len(payload))
    struct.pack_into("!H", hdr, 6, struct.unpack_from("!H", hdr, 6)[0] & 0x4000)
    struct.pack_into("!H", hdr, 10, 0)
    struct.pack_into("!H", hdr, 10, checksum(bytes(hdr)))
    return bytes(hdr) + payload
