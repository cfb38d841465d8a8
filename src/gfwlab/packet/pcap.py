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
from gfwlab.packet import pcapng
from gfwlab.packet.link import (
    ETH_IP_CODES,
    LINK_MODES,
    LINKTYPE_ETHERNET,
    LINKTYPE_LINUX_SLL,
    LINKTYPE_LINUX_SLL2,
    LINKTYPE_NULL,
    LINKTYPE_RAW,
    MODE_ETH,
    MODE_RAW,
    RELEASE,
    FrameBuffer,
    link_header_strip,
    strip,
    unsupported_link_type,
)

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

MAX_CAPLEN = 262_144
"""A record longer than this (256 KiB) is taken as corruption, unless the header's snaplen is
larger (up to :data:`_HARD_MAX_CAPLEN`)."""
_HARD_MAX_CAPLEN = 16 * 1024 * 1024

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

        return pcapng.iterate(self, self._buf)

    @property
    def mapping(self) -> FrameBuffer:
        """The whole file as mapped at open (read-only; valid until :meth:`close`)."""
        return self._buf

    @property
    def raw_records(self) -> bool:
        """A classic pcap of raw IP with 16-byte record headers: each IP packet is its whole
        record's body, right after the record header."""
        return self.format == "pcap" and self._mode == MODE_RAW and self._rec_len == 16

    @property
    def framing(self) -> tuple[int, str, float, int, int]:
        """A classic pcap's framing: record header length, byte order (``"<"`` or ``">"``),
        timestamp units per second, link mode (:data:`~gfwlab.packet.link.LINK_MODES`) and the
        longest record taken as sane."""
        return self._rec_len, self._endian, self._div, self._mode, self._limit

    @property
    def closed(self) -> bool:
        """True once :meth:`close` has been called."""
        return self._closed

    def release(self, start: int, end: int) -> None:
        """The mapping's bytes from ``start`` to ``end`` will not be read again soon: drop their
        pages from this process's resident memory, so that a walk through a capture larger than
        memory holds only what it is reading. Advice only: the kernel keeps the pages in its
        cache, and a later read maps them back."""
        buf = self._buf
        start -= start % mmap.PAGESIZE
        end -= end % mmap.PAGESIZE
        if end <= start or not isinstance(buf, mmap.mmap) or self._closed:
            return
        if hasattr(mmap, "MADV_DONTNEED"):
            with contextlib.suppress(OSError, ValueError):
                buf.madvise(mmap.MADV_DONTNEED, start, end - start)

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
        release_at = 24 + RELEASE
        self.bytes_read = off
        try:
            while True:
                if off >= release_at:
                    self.release(release_at - RELEASE, off)
                    release_at = off + RELEASE
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
        ip_codes = ETH_IP_CODES if e == ">" else frozenset({0x0008, 0xDD86})
        div = self._div
        limit = self._limit
        off = 24
        release_at = 24 + RELEASE
        self.bytes_read = off
        try:
            while True:
                if off >= release_at:
                    self.release(release_at - RELEASE, off)
                    release_at = off + RELEASE
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
            # Arrays or views over the mapping may still live (the frames of an exception on
            # its way out hold them): it is then unmapped when the last of them goes.
            with contextlib.suppress(BufferError):
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

    def write_records(self, records: bytes | memoryview, count: int) -> None:
        """Append ``count`` whole records already in this writer's format (header and frame
        each, as :meth:`write` would have written them): bulk copies of unchanged packets."""
        if self._out.done:
            raise ValueError("write to a committed or aborted PcapWriter")
        self._out.write(records)
        self.count += count

    @property
    def output(self) -> OutputFile:
        """The file underneath (:func:`gfwlab._outfile.commit_together`)."""
        return self._out

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
