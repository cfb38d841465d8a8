"""Packet captures: reading classic pcap and pcapng, writing classic pcap atomically.

:class:`CaptureReader` maps the whole file and yields ``(timestamp, ip_packet)`` pairs with the
link-layer header already stripped; frames that carry something other than IPv4 or IPv6 (ARP,
LLDP, ...) are counted in :attr:`CaptureReader.skipped` and not yielded. A file that ends inside a
record, or whose framing is corrupt (an absurd record length), is not an error: iteration stops
after the last complete record and :attr:`CaptureReader.truncated` says so.

:class:`PcapWriter` writes a little-endian classic pcap to a temporary file beside the target
and publishes it with :func:`os.replace` on :meth:`PcapWriter.commit`, so a reader never sees a
half-written capture.

Supported link types: NULL/BSD loopback (0), Ethernet (1) with stacked 802.1Q/802.1ad tags,
raw IP (12, 14, 101, 228, 229), OpenBSD loopback (108), Linux cooked SLL (113) and SLL2 (276).
"""

from __future__ import annotations

import contextlib
import math
import mmap
import os
import struct
from collections.abc import Iterator
from types import TracebackType

from gfwlab._outfile import OutputFile
from gfwlab.errors import AdapterError

__all__ = [
    "LINKTYPE_ETHERNET",
    "LINKTYPE_LINUX_SLL",
    "LINKTYPE_LINUX_SLL2",
    "LINKTYPE_NULL",
    "LINKTYPE_RAW",
    "MAX_CAPLEN",
    "CaptureReader",
    "PcapWriter",
    "link_header_strip",
]

LINKTYPE_NULL = 0
LINKTYPE_ETHERNET = 1
LINKTYPE_RAW = 101
LINKTYPE_LINUX_SLL = 113
LINKTYPE_LINUX_SLL2 = 276

MAX_CAPLEN = 262_144
"""A record longer than this (256 KiB) is taken as corruption, unless the header's snaplen is
larger (up to :data:`_HARD_MAX_CAPLEN`)."""
_HARD_MAX_CAPLEN = 16 * 1024 * 1024

FrameBuffer = bytes | mmap.mmap

# How the link-layer header is removed: one small integer per family of link types.
MODE_ETH = 0
MODE_RAW = 1
MODE_SLL = 2
MODE_SLL2 = 3
MODE_NULL = 4
MODE_LOOP = 5

LINK_MODES: dict[int, int] = {
    0: MODE_NULL,
    1: MODE_ETH,
    12: MODE_RAW,
    14: MODE_RAW,
    101: MODE_RAW,
    108: MODE_LOOP,
    113: MODE_SLL,
    228: MODE_RAW,
    229: MODE_RAW,
    276: MODE_SLL2,
}

_LINK_NAMES: dict[int, str] = {
    0: "NULL",
    1: "ETHERNET",
    3: "AX25",
    6: "IEEE802_5",
    7: "ARCNET_BSD",
    8: "SLIP",
    9: "PPP",
    10: "FDDI",
    12: "RAW",
    14: "RAW",
    50: "PPP_HDLC",
    51: "PPP_ETHER",
    100: "ATM_RFC1483",
    101: "RAW",
    104: "C_HDLC",
    105: "IEEE802_11",
    107: "FRELAY",
    108: "LOOP",
    113: "LINUX_SLL",
    114: "LTALK",
    117: "PFLOG",
    119: "IEEE802_11_PRISM",
    122: "IP_OVER_FC",
    123: "SUNATM",
    127: "IEEE802_11_RADIOTAP",
    129: "ARCNET_LINUX",
    138: "APPLE_IP_OVER_IEEE1394",
    143: "DOCSIS",
    163: "IEEE802_11_AVS",
    189: "USB_LINUX",
    192: "PPI",
    220: "USB_LINUX_MMAPPED",
    226: "IPNET",
    227: "CAN_SOCKETCAN",
    228: "IPV4",
    229: "IPV6",
    239: "NFLOG",
    249: "USBPCAP",
    251: "BLUETOOTH_LE_LL",
    253: "NETLINK",
    254: "BLUETOOTH_LINUX_MONITOR",
    258: "PKTAP",
    272: "NORDIC_BLE",
    276: "LINUX_SLL2",
}
_LINK_NAMES.update({147 + i: f"USER{i}" for i in range(16)})

_ETHERTYPE_IPV4 = 0x0800
_ETHERTYPE_IPV6 = 0x86DD
_VLAN_TPIDS = frozenset({0x8100, 0x88A8, 0x9100})
_ETH_IP_CODES = frozenset({_ETHERTYPE_IPV4, _ETHERTYPE_IPV6})
_NULL_IPV4 = 2
_NULL_IPV6 = frozenset({24, 28, 30})

# Classic pcap magic numbers as they read little-endian from the first four bytes.
_PCAP_MAGICS: dict[int, tuple[str, float, int]] = {
    # magic (as read '<I') -> (byte order, divisor, record header length)
    0xA1B2C3D4: ("<", 1e6, 16),
    0xD4C3B2A1: (">", 1e6, 16),
    0xA1B23C4D: ("<", 1e9, 16),
    0x4D3CB2A1: (">", 1e9, 16),
    0xA1B2CD34: ("<", 1e6, 24),  # Kuznetzov's modified pcap (extra 8 bytes per record)
    0x34CDB2A1: (">", 1e6, 24),
}
_PCAPNG_SHB = 0x0A0D0D0A
_U32LE = struct.Struct("<I")


def link_type_name(linktype: int) -> str:
    """A short name for a link type, or ``"unknown"``."""
    return _LINK_NAMES.get(linktype, "unknown")


def unsupported_link_type(path: str, linktype: int, offset: int) -> AdapterError:
    """The error raised for a link type this reader cannot strip."""
    return AdapterError(
        path, f"unsupported link type {linktype} ({link_type_name(linktype)})", offset
    )


def strip(mode: int, buf: FrameBuffer, start: int, end: int) -> bytes | None:
    """The IP packet inside the frame ``buf[start:end]``, or None if it carries something else."""
    n = end - start
    if mode == MODE_ETH:
        if n < 14:
            return None
        etype = (buf[start + 12] << 8) | buf[start + 13]
        off = start + 14
        while etype in _VLAN_TPIDS:
            if off + 4 > end:
                return None
            etype = (buf[off + 2] << 8) | buf[off + 3]
            off += 4
    elif mode == MODE_RAW:
        return buf[start:end]
    elif mode == MODE_SLL:
        if n < 16:
            return None
        etype = (buf[start + 14] << 8) | buf[start + 15]
        off = start + 16
    elif mode == MODE_SLL2:
        if n < 20:
            return None
        etype = (buf[start] << 8) | buf[start + 1]
        off = start + 20
    else:  # MODE_NULL / MODE_LOOP: a 4-byte address family
        if n < 4:
            return None
        if mode == MODE_LOOP:
            family = (buf[start + 2] << 8) | buf[start + 3]
        else:
            # Host byte order of the capturing machine: the family is small, so whichever end
            # holds the non-zero bytes tells the order.
            family = buf[start] | (buf[start + 1] << 8)
            if family == 0:
                family = (buf[start + 2] << 8) | buf[start + 3]
        if family == _NULL_IPV4 or family in _NULL_IPV6:
            return buf[start + 4 : end]
        return None
    if etype in _ETH_IP_CODES:
        return buf[off:end]
    return None


def link_header_strip(linktype: int, frame: bytes) -> bytes | None:
    """The IP packet carried by ``frame`` of the given link type, or None if it is not IP.

    Raises ValueError for a link type this module does not support.
    """
    mode = LINK_MODES.get(linktype)
    if mode is None:
        raise ValueError(f"unsupported link type {linktype} ({link_type_name(linktype)})")
    return strip(mode, frame, 0, len(frame))


class CaptureReader:
    """Read a classic pcap or pcapng capture, yielding ``(timestamp, ip_packet)`` in file order.

    The file is memory-mapped at open. Opening raises :class:`AdapterError` for a missing or
    unreadable file, for a file that is not a capture, and for an unsupported link type. In
    pcapng, the interfaces described before the first packet are checked at open; an interface
    description met later is checked when iteration reaches it (and raises there).

    Each call to ``iter()`` starts again from the beginning and resets the counters.

    Attributes:
        path: the capture's path, as given.
        format: ``"pcap"`` or ``"pcapng"``.
        linktypes: the link type of each interface met so far (one for classic pcap).
        packets: IP packets yielded so far.
        skipped: frames skipped because they carry no IPv4/IPv6 (or, in pcapng, name no known
            interface).
        truncated: True if the file ended inside a record, or its framing broke.
        truncated_at: byte offset of the incomplete or corrupt record, else None.
        size: file size in bytes.
        bytes_read: offset reached so far, for progress reports.
    """

    __slots__ = (
        "_buf",
        "_closed",
        "_div",
        "_endian",
        "_limit",
        "_mode",
        "_rec_len",
        "bytes_read",
        "format",
        "linktypes",
        "packets",
        "path",
        "size",
        "skipped",
        "truncated",
        "truncated_at",
    )

    def __init__(self, path: str) -> None:
        self.path = path
        self.format = ""
        self.linktypes: list[int] = []
        self.packets = 0
        self.skipped = 0
        self.truncated = False
        self.truncated_at: int | None = None
        self.size = 0
        self.bytes_read = 0
        self._closed = False
        self._buf: FrameBuffer = b""
        self._div = 1e6
        self._endian = "<"
        self._limit = MAX_CAPLEN
        self._mode = MODE_RAW
        self._rec_len = 16
        self._buf = self._map(path)
        try:
            self._read_header()
        except BaseException:
            self.close()
            raise

    # ------------------------------------------------------------------ opening

    @staticmethod
    def _map(path: str) -> FrameBuffer:
        try:
            with open(path, "rb") as fh:
                size = os.fstat(fh.fileno()).st_size
                if size == 0:
                    return b""
                try:
                    mm = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
                except (OSError, ValueError):
                    return fh.read()  # not mappable (a pipe, an odd file system)
        except OSError as exc:
            raise AdapterError(path, f"cannot read: {exc.strerror or exc}") from None
        if hasattr(mmap, "MADV_SEQUENTIAL"):
            with contextlib.suppress(OSError):  # advisory only
                mm.madvise(mmap.MADV_SEQUENTIAL)
        return mm

    def _read_header(self) -> None:
        buf = self._buf
        self.size = size = len(buf)
        if size == 0:
            raise AdapterError(self.path, "not a pcap or pcapng capture (empty file)", 0)
        if size < 4:
            raise AdapterError(self.path, f"not a pcap or pcapng capture ({size}-byte file)", 0)
        magic = _U32LE.unpack_from(buf, 0)[0]
        if magic == _PCAPNG_SHB:
            from gfwlab.packet import pcapng  # noqa: PLC0415 - pcapng builds on this module

            self.format = "pcapng"
            self.linktypes = pcapng.scan_head(self.path, buf)
            return
        kind = _PCAP_MAGICS.get(magic)
        if kind is None:
            raise AdapterError(
                self.path,
                f"not a pcap or pcapng capture (magic 0x{int.from_bytes(buf[:4], 'big'):08x})",
                0,
            )
        self.format = "pcap"
        if size < 24:
            raise AdapterError(self.path, "truncated pcap file header", 0)
        self._endian, self._div, self._rec_len = kind
        snaplen, network = struct.unpack_from(self._endian + "II", buf, 16)
        # The upper bits of the link-type field carry FCS information, not the link type.
        linktype = network & 0xFFFF
        mode = LINK_MODES.get(linktype)
        if mode is None:
            raise unsupported_link_type(self.path, linktype, 20)
        self._mode = mode
        self.linktypes = [linktype]
        self._limit = max(MAX_CAPLEN, min(snaplen, _HARD_MAX_CAPLEN))

    # ------------------------------------------------------------------ iteration

    def __iter__(self) -> Iterator[tuple[float, bytes]]:
        if self._closed:
            raise ValueError("I/O operation on a closed capture")
        self.packets = 0
        self.skipped = 0
        self.truncated = False
        self.truncated_at = None
        self.bytes_read = 0
        if self.format == "pcap":
            return self._iter_pcap_eth() if self._mode == MODE_ETH else self._iter_pcap()
        from gfwlab.packet import pcapng  # noqa: PLC0415 - pcapng builds on this module

        return pcapng.iterate(self, self._buf)

    @property
    def closed(self) -> bool:
        """True once :meth:`close` has been called."""
        return self._closed

    def mark_truncated(self, offset: int) -> None:
        """Record that the capture ends (or its framing breaks) at ``offset``."""
        self.truncated = True
        self.truncated_at = offset
        self.bytes_read = offset

    def _iter_pcap(self) -> Iterator[tuple[float, bytes]]:
        """Classic pcap, any link type (Ethernet goes to :meth:`_iter_pcap_eth`)."""
        buf = self._buf
        size = self.size
        unpack = struct.Struct(self._endian + "IIII").unpack_from
        hlen = self._rec_len
        div = self._div
        mode = self._mode
        limit = self._limit
        raw = mode == MODE_RAW
        off = 24
        self.bytes_read = off
        try:
            while True:
                start = off + hlen
                if start > size:
                    if off < size:
                        self.mark_truncated(off)
                    return
                sec, frac, caplen, _orig = unpack(buf, off)
                end = start + caplen
                if caplen > limit or end > size:
                    self.mark_truncated(off)
                    return
                off = end
                self.bytes_read = end
                if raw:
                    pkt = buf[start:end]
                else:
                    stripped = strip(mode, buf, start, end)
                    if stripped is None:
                        self.skipped += 1
                        continue
                    pkt = stripped
                self.packets += 1
                yield sec + frac / div, pkt
        except ValueError:
            if self._closed:  # the mapping was closed under a suspended loop
                return
            raise

    def _iter_pcap_eth(self) -> Iterator[tuple[float, bytes]]:
        """Classic pcap over Ethernet: the record header and the EtherType in one unpack."""
        buf = self._buf
        size = self.size
        e = self._endian
        hlen = self._rec_len
        unpack = struct.Struct(e + "IIII").unpack_from
        unpack_eth = struct.Struct(f"{e}IIII{hlen - 16 + 12}xH").unpack_from
        # The EtherType is big-endian on the wire but unpacked in the file's byte order.
        ip_codes = _ETH_IP_CODES if e == ">" else frozenset({0x0008, 0xDD86})
        div = self._div
        limit = self._limit
        off = 24
        self.bytes_read = off
        try:
            while True:
                start = off + hlen
                if start + 14 <= size:
                    sec, frac, caplen, _orig, etype = unpack_eth(buf, off)
                elif start <= size:
                    sec, frac, caplen, _orig = unpack(buf, off)
                    etype = -1
                else:
                    if off < size:
                        self.mark_truncated(off)
                    return
                end = start + caplen
                if caplen > limit or end > size:
                    self.mark_truncated(off)
                    return
                off = end
                self.bytes_read = end
                if caplen >= 14 and etype in ip_codes:
                    pkt = buf[start + 14 : end]
                else:
                    stripped = strip(MODE_ETH, buf, start, end)  # VLAN tags, or not IP at all
                    if stripped is None:
                        self.skipped += 1
                        continue
                    pkt = stripped
                self.packets += 1
                yield sec + frac / div, pkt
        except ValueError:
            if self._closed:
                return
            raise

    # ------------------------------------------------------------------ closing

    def close(self) -> None:
        """Release the mapping. A loop suspended over this reader then ends quietly."""
        if self._closed:
            return
        self._closed = True
        buf = self._buf
        self._buf = b""
        if isinstance(buf, mmap.mmap):
            buf.close()

    def __enter__(self) -> CaptureReader:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"CaptureReader({self.path!r}, format={self.format!r}, linktypes={self.linktypes}, "
            f"packets={self.packets}, skipped={self.skipped}, truncated={self.truncated})"
        )


# --------------------------------------------------------------------------- writing


def split_timestamp(ts: float, scale: int) -> tuple[int, int]:
    """Split ``ts`` seconds into whole seconds and ``scale``-ths of a second (0 <= frac < scale).

    ``ts - floor(ts)`` is exact for any float, so the only rounding is the final one; a fraction
    that rounds up to a whole second carries into the seconds.
    """
    if not math.isfinite(ts) or ts < 0:
        raise ValueError(f"timestamp out of range for pcap: {ts!r}")
    sec = math.floor(ts)
    frac = round((ts - sec) * scale)
    if frac >= scale:
        sec += 1
        frac -= scale
    if sec > 0xFFFFFFFF:
        raise ValueError(f"timestamp out of range for pcap: {ts!r}")
    return sec, frac


class PcapWriter:
    """Write a little-endian classic pcap, published atomically on :meth:`commit`.

    ``packet`` given to :meth:`write` is the whole frame for ``linktype`` (for the default raw-IP
    link type 101, the IP packet itself). Frames longer than :data:`MAX_CAPLEN` are cut to it,
    with the original length kept in the record. Used as a context manager, the writer commits
    on normal exit and aborts (removing everything it wrote) on an exception.
    """

    __slots__ = ("_out", "_rec", "_scale", "count", "linktype", "path")

    def __init__(self, path: str, linktype: int = LINKTYPE_RAW, nanosecond: bool = True) -> None:
        self.path = path
        self.linktype = linktype
        self.count = 0
        self._scale = 1_000_000_000 if nanosecond else 1_000_000
        self._rec = struct.Struct("<IIII")
        self._out = OutputFile(path)
        magic = 0xA1B23C4D if nanosecond else 0xA1B2C3D4
        self._out.write(struct.pack("<IHHiIII", magic, 2, 4, 0, 0, MAX_CAPLEN, linktype))

    def write(self, ts: float, packet: bytes) -> None:
        """Append one record with timestamp ``ts`` (seconds since the epoch)."""
        if self._out.done:
            raise ValueError("write to a committed or aborted PcapWriter")
        sec, frac = split_timestamp(ts, self._scale)
        n = len(packet)
        cap = n if n <= MAX_CAPLEN else MAX_CAPLEN
        self._out.write(self._rec.pack(sec, frac, cap, n))
        self._out.write(packet if cap == n else packet[:cap])
        self.count += 1

    def commit(self) -> None:
        """Flush, sync and move the capture into place. Idempotent after success; after
        :meth:`abort` (or a failed write) it raises ValueError, as there is nothing to publish."""
        try:
            self._out.commit()
        except ValueError:
            raise ValueError("commit of an aborted PcapWriter") from None

    def abort(self) -> None:
        """Discard everything written; no file is left behind."""
        self._out.abort()

    def __enter__(self) -> PcapWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None:
            self.commit()
        else:
            self.abort()

    def __del__(self) -> None:
        # A writer dropped without commit() leaves nothing behind.
        out = getattr(self, "_out", None)
        if out is not None:
            out.abort()
