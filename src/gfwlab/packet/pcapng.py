"""The pcapng half of :class:`~gfwlab.packet.pcap.CaptureReader`.

Handles Section Header Blocks in either byte order (and several sections in one file),
Interface Description Blocks with their own link type, ``if_tsresol`` (powers of 10 and of 2)
and ``if_tsoffset``, Enhanced Packet Blocks, Simple Packet Blocks (interface 0, timestamped with
the last timestamp seen) and the obsolete Packet Block. Other block types are skipped.

Framing problems (a block length that is not a multiple of 4, runs past the end of the file or
disagrees with the trailing copy; a bad byte-order magic in a later section) stop iteration
with ``truncated`` set. A well-framed packet block whose content is wrong (an unknown interface,
a captured length beyond the block) is skipped and counted in ``skipped``.

The walk (:func:`runs`) reads runs of well-framed Enhanced Packet Blocks that carry IP with a
compiled loop (:func:`gfwlab._native.epbs`), and every other block here.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from gfwlab import _native
from gfwlab.errors import AdapterError
from gfwlab.packet.link import (
    LINK_MODES,
    MODE_ETH,
    RELEASE,
    FrameBuffer,
    ReaderState,
    ip_offset,
    unsupported_link_type,
)

__all__ = ["iterate", "locate", "runs", "scan_head"]

BLOCK_SHB = 0x0A0D0D0A
BLOCK_IDB = 1
BLOCK_PB = 2
BLOCK_SPB = 3
BLOCK_EPB = 6
_PACKET_BLOCKS = frozenset({BLOCK_PB, BLOCK_SPB, BLOCK_EPB})
_SHB_BYTES = b"\x0a\x0d\x0d\x0a"
_BOM_LE = b"\x4d\x3c\x2b\x1a"
_BOM_BE = b"\x1a\x2b\x3c\x4d"
_OPT_ENDOFOPT = 0
_OPT_TSRESOL = 9
_OPT_TSOFFSET = 14
_ETH_IP_CODES = frozenset({0x0800, 0x86DD})

# One interface: (strip mode, timestamp units per second, timestamp offset in s, snaplen).
_Iface = tuple[int, float, int, int]


@dataclass(frozen=True, slots=True)
class _Order:
    """The structs of one byte order."""

    hdr: struct.Struct
    u32: struct.Struct
    epb_head: struct.Struct
    shb: struct.Struct
    idb: struct.Struct
    epb: struct.Struct
    pb: struct.Struct
    opt: struct.Struct
    i64: struct.Struct

    @classmethod
    def make(cls, e: str) -> _Order:
        return cls(
            hdr=struct.Struct(e + "II"),
            u32=struct.Struct(e + "I"),
            epb_head=struct.Struct(e + "IIIIIII"),
            shb=struct.Struct(e + "IHH"),
            idb=struct.Struct(e + "HHI"),
            epb=struct.Struct(e + "IIIII"),
            pb=struct.Struct(e + "HHIIII"),
            opt=struct.Struct(e + "HH"),
            i64=struct.Struct(e + "q"),
        )


_LE = _Order.make("<")
_BE = _Order.make(">")


def _order_of(buf: FrameBuffer, off: int) -> _Order | None:
    """The byte order of the section whose header starts at ``off``, from its byte-order magic."""
    bom = buf[off + 8 : off + 12]
    if bom == _BOM_LE:
        return _LE
    if bom == _BOM_BE:
        return _BE
    return None


def _parse_idb(
    path: str, buf: FrameBuffer, off: int, blen: int, order: _Order
) -> tuple[int, _Iface]:
    """Link type and interface of the IDB at ``off``; raises AdapterError for a link type that
    cannot be stripped. The caller has checked that the body holds at least 8 bytes."""
    body, bend = off + 8, off + blen - 4
    linktype, _reserved, snaplen = order.idb.unpack_from(buf, body)
    mode = LINK_MODES.get(linktype)
    if mode is None:
        raise unsupported_link_type(path, linktype, off)
    units = 1e6
    tsoffset = 0
    p = body + 8
    while p + 4 <= bend:
        code, length = order.opt.unpack_from(buf, p)
        if code == _OPT_ENDOFOPT:
            break
        value = p + 4
        if value + length > bend:
            break
        if code == _OPT_TSRESOL and length >= 1:
            r = buf[value]
            units = float(2 ** (r & 0x7F)) if r & 0x80 else float(10**r)
        elif code == _OPT_TSOFFSET and length >= 8:
            tsoffset = order.i64.unpack_from(buf, value)[0]
        p = value + ((length + 3) & ~3)
    return linktype, (mode, units, tsoffset, snaplen)


def scan_head(path: str, buf: FrameBuffer) -> list[int]:
    """Check the first section header and the interfaces described before the first packet.

    Returns their link types; raises AdapterError for a corrupt first section header or an
    unsupported link type.
    """
    size = len(buf)
    if size < 28:
        raise AdapterError(path, "truncated pcapng section header", 0)
    order = _order_of(buf, 0)
    if order is None:
        bom = int.from_bytes(buf[8:12], "big")
        raise AdapterError(path, f"corrupt pcapng section header (byte-order magic 0x{bom:08x})", 8)
    _btype, blen = order.hdr.unpack_from(buf, 0)
    _bom, major, minor = order.shb.unpack_from(buf, 8)
    if major != 1:
        raise AdapterError(path, f"unsupported pcapng version {major}.{minor}", 12)
    if blen < 28 or blen & 3 or blen > size:
        raise AdapterError(path, f"corrupt pcapng section header (length {blen})", 4)
    linktypes: list[int] = []
    off = blen
    while off + 12 <= size:
        btype, blen = order.hdr.unpack_from(buf, off)
        if btype in _PACKET_BLOCKS or btype == BLOCK_SHB:
            break
        if blen < 12 or blen & 3 or blen > size - off:
            break  # iteration reports the truncation
        if btype == BLOCK_IDB:
            if blen < 20:
                break
            linktype, _iface = _parse_idb(path, buf, off, blen, order)
            linktypes.append(linktype)
        off += blen
    return linktypes


def iterate(reader: ReaderState, buf: FrameBuffer) -> Iterator[tuple[float, bytes]]:
    """Yield ``(timestamp, ip_packet)`` for every IP packet of the pcapng capture in ``buf``,
    updating ``reader``'s counters as it goes."""
    done = 0
    for ts, start, end in locate(reader, buf):
        yield ts, buf[start:end]
        if end - done >= RELEASE:
            reader.release(done, end)
            done = end


def locate(
    reader: ReaderState, buf: FrameBuffer, *, compiled: bool = True
) -> Iterator[tuple[float, int, int]]:
    """Yield ``(timestamp, start, end)`` for every IP packet of the pcapng capture in ``buf``
    (the packet is ``buf[start:end]``), updating ``reader``'s counters as it goes: the record
    walk behind :func:`iterate` (no packet is copied). The counters run up to a run ahead of
    the packets yielded (:func:`runs`)."""
    for ts, start, end in runs(reader, buf, compiled=compiled):
        yield from zip(ts.tolist(), start.tolist(), end.tolist(), strict=True)


RUN = 1 << 16
"""Packets a run holds at most (:func:`runs`)."""

Run = tuple[npt.NDArray[np.float64], npt.NDArray[np.int64], npt.NDArray[np.int64]]
"""Timestamps, starts and ends of consecutive IP packets."""


class _Compiled:
    """The interfaces of a section as the compiled run of packet blocks reads them
    (:func:`gfwlab._native.epbs`), and the arrays it fills."""

    def __init__(self, ifaces: list[_Iface]) -> None:
        self.modes = np.array([i[0] for i in ifaces], dtype=np.uint8)
        self.units = np.array([i[1] for i in ifaces], dtype=np.float64)
        self.offsets = np.array([i[2] for i in ifaces], dtype=np.int64)
        self.ts = np.empty(RUN, dtype=np.float64)
        self.start = np.empty(RUN, dtype=np.int64)
        self.end = np.empty(RUN, dtype=np.int64)

    def run(self, buf: FrameBuffer, off: int, size: int, big: bool) -> tuple[Run | None, int]:
        """The run of packet blocks at ``off`` (None: the block there is not one), and
        the offset after it. A run stops after :data:`RELEASE` bytes, so that whoever walks
        can let go of what it has read."""
        got, off = _native.epbs(
            buf, off, off + RELEASE, size, big, self.modes, self.units, self.offsets,
            self.ts, self.start, self.end,
        )  # fmt: skip
        if not got:
            return None, off
        return (self.ts[:got].copy(), self.start[:got].copy(), self.end[:got].copy()), off


class _Pending:
    """Packets the Python walk found, not yet yielded as a run."""

    def __init__(self) -> None:
        self.ts: list[float] = []
        self.start: list[int] = []
        self.end: list[int] = []

    def add(self, ts: float, start: int, end: int) -> None:
        self.ts.append(ts)
        self.start.append(start)
        self.end.append(end)

    def flush(self) -> list[Run]:
        """The run they make (none if there are none); they are then forgotten."""
        if not self.ts:
            return []
        run = (
            np.array(self.ts, dtype=np.float64),
            np.array(self.start, dtype=np.int64),
            np.array(self.end, dtype=np.int64),
        )
        self.ts, self.start, self.end = [], [], []
        return [run]


def runs(reader: ReaderState, buf: FrameBuffer, *, compiled: bool = True) -> Iterator[Run]:
    """:func:`locate`'s packets a run at a time, with ``reader``'s counters updated as the
    walk goes. No run spans a skipped record: a run is yielded before the walk counts the next
    one, so that a caller that stops between two runs sees the counters of the records walked
    so far. Runs of well-framed Enhanced Packet Blocks that carry IP (most of any capture) are
    read by a compiled loop; every other block, and every framing check, here (``compiled``
    off: every block here, the reference the compiled loop is tested against).
    """
    size = len(buf)
    order = _LE
    head = order.epb_head.unpack_from
    u32 = order.u32.unpack_from
    ifaces: list[_Iface] = []
    fast: _Compiled | None = None
    n_ifaces = 0
    n_idb = 0
    last_ts = 0.0
    off = 0
    pending = _Pending()
    try:
        while off < size:
            if compiled and ifaces and off + 28 <= size:
                if fast is None:
                    fast = _Compiled(ifaces)
                run, after = fast.run(buf, off, size, order is _BE)
                if run is not None:
                    yield from pending.flush()
                    off = reader.bytes_read = after
                    reader.packets += run[0].shape[0]
                    last_ts = float(run[0][-1])
                    yield run
                    continue
            if len(pending.ts) >= RUN:
                yield from pending.flush()
            # A well-formed Enhanced Packet Block, headers read in one unpack.
            if off + 28 <= size:
                btype, blen, iid, tsh, tsl, caplen, _orig = head(buf, off)
                if (
                    btype == BLOCK_EPB
                    and iid < n_ifaces
                    and caplen + 32 <= blen <= size - off
                    and not blen & 3
                    and u32(buf, off + blen - 4)[0] == blen
                ):
                    mode, units, tsoffset, _snap = ifaces[iid]
                    last_ts = ((tsh << 32) | tsl) / units + tsoffset
                    start = off + 28
                    end = start + caplen
                    off += blen
                    reader.bytes_read = off
                    if (
                        mode == MODE_ETH
                        and caplen >= 14
                        and (buf[start + 12] << 8 | buf[start + 13]) in _ETH_IP_CODES
                    ):
                        ip = start + 14
                    else:
                        got = ip_offset(mode, buf, start, end)
                        if got is None:
                            yield from pending.flush()
                            reader.skipped += 1
                            continue
                        ip = got
                    reader.packets += 1
                    pending.add(last_ts, ip, end)
                    continue
            # Everything else, and every framing check.
            if off + 12 > size:
                reader.mark_truncated(off)
                break
            if buf[off : off + 4] == _SHB_BYTES:
                section = _order_of(buf, off)
                if section is None:
                    reader.mark_truncated(off)
                    break
                order = section
                head = order.epb_head.unpack_from
                u32 = order.u32.unpack_from
                ifaces = []
                fast = None
                n_ifaces = 0
            btype, blen = order.hdr.unpack_from(buf, off)
            if blen < 12 or blen & 3 or blen > size - off or u32(buf, off + blen - 4)[0] != blen:
                reader.mark_truncated(off)
                break
            body = off + 8
            bend = off + blen - 4
            found: int | None = None
            found_end = 0
            if btype in (BLOCK_EPB, BLOCK_PB):
                iid = tsh = tsl = caplen = -1
                if bend - body < 20:
                    pass
                elif btype == BLOCK_EPB:
                    iid, tsh, tsl, caplen, _orig = order.epb.unpack_from(buf, body)
                else:
                    iid, _drops, tsh, tsl, caplen, _orig = order.pb.unpack_from(buf, body)
                start = body + 20
                if 0 <= iid < n_ifaces and start + caplen <= bend:
                    mode, units, tsoffset, _snap = ifaces[iid]
                    last_ts = ((tsh << 32) | tsl) / units + tsoffset
                    found_end = start + caplen
                    found = ip_offset(mode, buf, start, found_end)
            elif btype == BLOCK_SPB:
                if ifaces and bend - body >= 4:
                    mode, _units, _tsoffset, snaplen = ifaces[0]
                    caplen = min(u32(buf, body)[0], bend - body - 4)
                    if snaplen:
                        caplen = min(caplen, snaplen)
                    found_end = body + 4 + caplen
                    found = ip_offset(mode, buf, body + 4, found_end)
            elif btype == BLOCK_IDB:
                if blen < 20:
                    reader.mark_truncated(off)
                    break
                # The packets before it, should it name a link type that cannot be read.
                yield from pending.flush()
                linktype, iface = _parse_idb(reader.path, buf, off, blen, order)
                ifaces.append(iface)
                fast = None
                n_ifaces += 1
                if n_idb >= len(reader.linktypes):
                    reader.linktypes.append(linktype)
                n_idb += 1
            elif btype == BLOCK_SHB and (blen < 28 or order.shb.unpack_from(buf, body)[1] != 1):
                reader.mark_truncated(off)
                break
            if btype in _PACKET_BLOCKS and found is None:
                yield from pending.flush()
                reader.skipped += 1
            off += blen
            reader.bytes_read = off
            if found is not None:
                reader.packets += 1
                pending.add(last_ts, found, found_end)
        yield from pending.flush()
    except ValueError:
        if reader.closed:  # the mapping was closed under a suspended loop
            return
        raise
