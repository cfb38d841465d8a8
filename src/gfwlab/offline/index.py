"""A NumPy index of a capture: where each IP packet is, when it was seen, and which flow it is.

:func:`build_index` finds every IP packet of the capture with
:func:`gfwlab.packet.scan.scan` (the same packets, truncation, skipped frames and link types as
the every-packet path's :class:`~gfwlab.packet.pcap.CaptureReader`, but in bulk), keeping for
each its timestamp and where its bytes are in the memory-mapped file; no packet is copied.
Then, read from that buffer by compiled loops (:mod:`gfwlab._native`): version, protocol,
addresses, ports, TCP flags, payload lengths, and which end of its flow each packet comes from
(a flow's key, the same in both directions, is worked out where it is needed, not kept for
every packet). :meth:`CaptureIndex.lives` groups packets into flow lives:
one 5-tuple's packets, cut wherever the gap between two of them reaches the engine's idle
timeout (the engine forgets a flow then and makes a new one). The engine also replaces a flow
before that: on a new connection on its 5-tuple (a client's SYN with a new initial sequence
number after the flow was judged, ``Flow.opened_anew_by``) and when a full table evicts it.
Whether a SYN opens a new connection depends on the flow's verdict, which only the engine
knows, so the fast path (:mod:`gfwlab.offline.fast`) feeds every bare SYN of a judged flow and
cuts its life where the engine made a new flow; :attr:`CaptureIndex.flags` says which
packets are bare SYNs.

A packet the vectorised reading cannot classify for certain (IPv6 extension headers) is
parsed with :func:`gfwlab.packet.ip.parse`, the engine's own parser; a packet that is not a
whole TCP or UDP packet (fragments, ICMP, malformed headers) belongs to no flow and is always
fed to the engine on its own.
"""

from __future__ import annotations

import dataclasses
import mmap
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from gfwlab import _native
from gfwlab.errors import AdapterError, MalformedPacket
from gfwlab.packet.ip import PROTO_TCP, PROTO_UDP, parse
from gfwlab.packet.pcap import CaptureReader
from gfwlab.packet.scan import Records, Window, scan, windows

U8 = npt.NDArray[np.uint8]
I64 = npt.NDArray[np.int64]
U64 = npt.NDArray[np.uint64]
F64 = npt.NDArray[np.float64]
Bools = npt.NDArray[np.bool_]

_V6_SIMPLE = (PROTO_TCP, PROTO_UDP)


@dataclass(slots=True)
class Lives:
    """Packets grouped into flow lives (see the module docstring)."""

    order: I64
    """Packet indices sorted by life, then by file order."""
    start: I64
    """Where each life begins in ``order``; life ids follow their first packet's file order."""
    count: I64
    """Packets in each life."""
    first: I64
    """File index of each life's first packet (increasing)."""
    final_ts: F64
    """Timestamp of each life's last packet."""
    life_of: I64
    """Each packet's life (every packet has one; a packet outside any flow is a life alone)."""
    pos: I64
    """Each packet's position in its life."""
    keyed: Bools
    """Whether each life is a flow (False: a packet the engine sees outside any flow)."""


@dataclass(slots=True)
class CaptureIndex:
    """Where each IP packet of a capture is, and what the engine's flow table will make of it."""

    path: str
    format: str
    size: int
    raw_records: bool
    """Classic little/big-endian pcap of raw IP with 16-byte record headers: each packet is its
    whole record's body, so runs of records can be copied from the file in bulk."""
    data: bytes | mmap.mmap
    ts: F64
    start: I64
    length: I64
    skipped: int
    truncated_at: int | None
    in_order: bool
    """Timestamps never go backwards in file order."""
    flow: Bools
    """A whole, unfragmented TCP or UDP packet: it belongs to a flow."""
    proto: U8
    flags: npt.NDArray[np.uint16]
    payload_len: I64
    """Bytes of transport payload, as :func:`gfwlab.packet.ip.parse` cuts it (0 outside flows)."""
    src: U64
    """Source endpoint as three words per packet (address high, low, port): shape (n, 3)."""
    dst: U64
    lower: Bools
    """The packet's source is the lower endpoint of its flow key (:meth:`keys`)."""
    reader: CaptureReader

    def __len__(self) -> int:
        return int(self.ts.shape[0])

    def packet(self, i: int) -> bytes:
        s = int(self.start[i])
        return bytes(self.data[s : s + int(self.length[i])])

    def keys(self, rows: I64) -> U64:
        """The direction-independent flow keys of packets ``rows``: (version and protocol,
        lower endpoint, higher endpoint), seven words each. Not kept for every packet (56 bytes
        a packet): the lives are grouped from the endpoints directly."""
        key, _lower = _flow_keys(self.proto[rows], self.src[rows], self.dst[rows])
        return key

    def close(self) -> None:
        self.reader.close()

    def detach(self) -> dict[str, Any]:
        """Everything but the open file and what the addresses give (``lower``): plain
        data another process can receive (:meth:`attach` opens the file again there)."""
        return {
            f.name: getattr(self, f.name)
            for f in dataclasses.fields(self)
            if f.name not in ("data", "reader", "lower")
        }

    @classmethod
    def attach(cls, fields: dict[str, Any]) -> CaptureIndex:
        """An index :meth:`detach` gave, over its file opened again; AdapterError if the file
        is not the one indexed (its size changed)."""
        reader = CaptureReader(fields["path"])
        if reader.size != fields["size"]:
            reader.close()
            raise AdapterError(fields["path"], "changed since it was indexed")
        lower = _lower_ends(fields["proto"], fields["src"], fields["dst"])
        return cls(**fields, lower=lower, data=reader.mapping, reader=reader)

    def subset(self, sel: I64) -> CaptureIndex:
        """The index of packets ``sel`` (increasing file indices) alone, over the same file."""
        return dataclasses.replace(
            self,
            ts=self.ts[sel],
            start=self.start[sel],
            length=self.length[sel],
            flow=self.flow[sel],
            proto=self.proto[sel],
            flags=self.flags[sel],
            payload_len=self.payload_len[sel],
            src=self.src[sel],
            dst=self.dst[sel],
            lower=self.lower[sel],
        )

    def lives(self, tcp_timeout: float, udp_timeout: float) -> Lives:
        """Group packets into flow lives (the engine's flows, given its idle timeouts; the fast
        path cuts a life further where the engine replaces its flow sooner)."""
        n = len(self)
        life_of = np.empty(n, dtype=np.int64)
        pos = np.empty(n, dtype=np.int64)
        first = np.empty(n, dtype=np.int64)
        count = np.empty(n, dtype=np.int64)
        final_ts = np.empty(n, dtype=np.float64)
        keyed = np.empty(n, dtype=np.bool_)
        c = np.ascontiguousarray
        m = _native.lives(
            c(self.proto), c(self.src), c(self.dst), c(self.flow), c(self.ts),
            float(tcp_timeout), float(udp_timeout), life_of, pos, first, count, final_ts, keyed,
        )  # fmt: skip
        count = count[:m]
        start = np.zeros(m, dtype=np.int64)
        if m:
            start[1:] = np.cumsum(count)[:-1]
        order = np.empty(n, dtype=np.int64)
        order[start[life_of] + pos] = np.arange(n, dtype=np.int64)
        return Lives(
            order=order,
            start=start,
            count=count,
            first=first[:m],
            final_ts=final_ts[:m],
            life_of=life_of,
            pos=pos,
            keyed=keyed[:m],
        )


MAX_PACKETS = 4_000_000
"""The index holds about 200 bytes per packet while the fast path runs: beyond this many
packets a capture is not indexed whole, so that memory stays bounded: it is then indexed and
analysed :data:`WINDOW` records (classic pcap) or IP packets (pcapng) at a time."""

WINDOW = 1_000_000
"""Records (classic pcap) or IP packets (pcapng) per window of a capture too large to index
whole."""


def build_index(path: str, max_packets: int = MAX_PACKETS) -> CaptureIndex | None:
    """Index ``path``, or None if it holds more than ``max_packets`` IP packets (in a classic
    pcap, more than ``max_packets`` records, non-IP frames included); raises
    AdapterError as :class:`CaptureReader` does."""
    reader = CaptureReader(path)
    try:
        index = _build(reader, max_packets)
    except BaseException:
        reader.close()
        raise
    if index is None:
        reader.close()
    return index


Indexes = Iterator[tuple[CaptureIndex, bool]]
"""A capture's indexes a window at a time, each with whether it is the last."""


@dataclass(slots=True)
class Windowed:
    """A capture too large to index whole (:func:`open_index`): its windows' indexes, over
    ``reader`` (which the caller closes, not the indexes)."""

    reader: CaptureReader
    indexes: Indexes


def open_index(path: str, max_packets: int, first: int, per: int) -> CaptureIndex | Windowed:
    """The whole index of ``path`` (as :func:`build_index` makes it), or, for a capture of more
    than ``max_packets`` records (classic pcap) or IP packets (pcapng), its indexes ``first``
    then ``per`` packets at a time. A pcapng's first windows are cut from the walk that found it
    too large (its block walk is a Python loop: 1 µs a packet); a classic pcap's walk reads one
    length a record, so its windows walk it again rather than read every record twice at once.
    Raises AdapterError as :class:`CaptureReader` does."""
    reader = CaptureReader(path)
    try:
        if reader.format != "pcapng":
            index = _build(reader, max_packets)
            return (
                index if index is not None else Windowed(reader, index_windows(reader, first, per))
            )
        walk = windows(reader, max_packets, per)
        head = next(walk)
        if head.last:
            return _indexed(reader, head)
        return Windowed(reader, _resumed(reader, head, walk, first, per))
    except BaseException:
        reader.close()
        raise


def _resumed(
    reader: CaptureReader, head: Window, walk: Iterator[Window], first: int, per: int
) -> Indexes:
    """The indexes of ``head`` (the first window, walked whole) cut ``first`` then ``per``
    packets at a time, each released once done with, then of the rest of ``walk``."""
    records = head.records
    n = records.ts.shape[0]
    lo, hi = 0, min(first, n)
    while lo < n:
        part = Window(
            records=records.part(lo, hi), last=False, skipped=head.skipped if not lo else 0
        )
        yield _indexed(reader, part), False
        reader.release(int(records.start[lo]), int(records.start[hi - 1] + records.length[hi - 1]))
        lo, hi = hi, min(hi + per, n)
    for window in walk:
        yield _indexed(reader, window), window.last


def index_windows(reader: CaptureReader, first: int, per: int) -> Indexes:
    """The indexes of ``reader``'s capture, ``first`` records then ``per`` at a time
    (:func:`~gfwlab.packet.scan.windows`), each with whether it is the last; over ``reader``,
    which the caller closes (not the indexes)."""
    for window in windows(reader, first, per):
        yield _indexed(reader, window), window.last


def _indexed(reader: CaptureReader, window: Window) -> CaptureIndex:
    index = _index(reader, window.records)
    index.skipped = window.skipped
    index.truncated_at = window.truncated_at
    return index


def _build(reader: CaptureReader, max_packets: int) -> CaptureIndex | None:
    records = scan(reader, max_packets)
    if records is None:
        return None
    return _index(reader, records)


def _index(reader: CaptureReader, records: Records) -> CaptureIndex:
    data = reader.mapping
    ts_arr, start, length = records.ts, records.start, records.length
    raw = records.record_heads
    buf = np.frombuffer(data, dtype=np.uint8) if len(data) else np.zeros(1, dtype=np.uint8)
    fields = _classify(buf, start, length)
    _parse_leftovers(data, start, length, fields)
    flow, proto, flags, payload_len, src, dst = fields
    lower = _lower_ends(proto, src, dst)
    in_order = bool(np.all(ts_arr[1:] >= ts_arr[:-1])) if ts_arr.shape[0] > 1 else True
    return CaptureIndex(
        path=reader.path,
        format=reader.format,
        size=reader.size,
        raw_records=raw,
        data=data,
        ts=ts_arr,
        start=start,
        length=length,
        skipped=reader.skipped,
        truncated_at=reader.truncated_at if reader.truncated else None,
        in_order=in_order,
        flow=flow,
        proto=proto,
        flags=flags,
        payload_len=payload_len,
        src=src,
        dst=dst,
        lower=lower,
        reader=reader,
    )


_Fields = tuple[Bools, U8, npt.NDArray[np.uint16], I64, U64, U64]


def _classify(buf: U8, start: I64, length: I64) -> _Fields:
    """Each packet's flow fields from its headers (:func:`gfwlab._native.classify`); ``flow``
    is False where the engine would not make a flow, and ``proto`` is 255 where the reading is
    not certain (IPv6 extension headers: :func:`_parse_leftovers` parses those one by one)."""
    n = start.shape[0]
    flow = np.empty(n, dtype=np.bool_)
    proto = np.empty(n, dtype=np.uint8)
    flags = np.empty(n, dtype=np.uint16)
    payload_len = np.empty(n, dtype=np.int64)
    src = np.empty((n, 3), dtype=np.uint64)
    dst = np.empty((n, 3), dtype=np.uint64)
    start, length = np.ascontiguousarray(start), np.ascontiguousarray(length)
    _native.classify(buf, start, length, flow, proto, flags, payload_len, src, dst)
    return flow, proto, flags, payload_len, src, dst


def _parse_leftovers(data: bytes | mmap.mmap, start: I64, length: I64, fields: _Fields) -> None:
    flow, proto, flags, payload_len, src, dst = fields
    for i in np.flatnonzero(proto == 255).tolist():
        s = int(start[i])
        try:
            pkt = parse(bytes(data[s : s + int(length[i])]))
        except MalformedPacket:
            proto[i] = 0
            continue
        proto[i] = pkt.proto
        if pkt.fragment or pkt.proto not in (PROTO_TCP, PROTO_UDP):
            continue
        flow[i] = True
        flags[i] = pkt.flags
        payload_len[i] = len(pkt.payload)
        for arr, addr, port in ((src, pkt.src, pkt.sport), (dst, pkt.dst, pkt.dport)):
            arr[i, 0] = int.from_bytes(addr[:8], "big")
            arr[i, 1] = int.from_bytes(addr[8:], "big")
            arr[i, 2] = port | (6 << 32)


def address(words: list[int], size: int) -> bytes:
    """The ``size``-byte address in an endpoint's first two words (:attr:`CaptureIndex.src`)."""
    if size == 4:
        return int(words[1]).to_bytes(4, "big")
    return int(words[0]).to_bytes(8, "big") + int(words[1]).to_bytes(8, "big")


def _flow_keys(proto: U8, src: U64, dst: U64) -> tuple[U64, Bools]:
    """(protocol, lower endpoint, higher endpoint), the same for both directions, and whether
    each packet's source is the lower endpoint (:func:`gfwlab._native.flow_keys`)."""
    return _ends(proto, src, dst, np.empty((proto.shape[0], 7), dtype=np.uint64))


def _lower_ends(proto: U8, src: U64, dst: U64) -> Bools:
    """Whether each packet's source is the lower endpoint of its flow key (no key made)."""
    return _ends(proto, src, dst, np.empty((0, 7), dtype=np.uint64))[1]


def _ends(proto: U8, src: U64, dst: U64, key: U64) -> tuple[U64, Bools]:
    lower = np.empty(proto.shape[0], dtype=np.bool_)
    c = np.ascontiguousarray
    _native.flow_keys(c(proto), c(src), c(dst), key, lower)
    return key, lower
