"""Where each IP packet of a capture is, in bulk: the record walk of the capture index.

:func:`scan` gives the same packets, timestamps, counters and truncation point as iterating a
:class:`~gfwlab.packet.pcap.CaptureReader` (``tests/test_scan.py`` checks it on arbitrary and
truncated bytes), as three arrays, without copying a packet:

* classic pcap: a record's place depends on every record before it, so the record chain is
  walked by a compiled loop (:func:`gfwlab._native.walk`) that reads each record's length and
  timestamp and nothing else; then another (:func:`gfwlab._native.links`) finds where each
  frame's IP packet begins, by the rules of :func:`~gfwlab.packet.link.ip_offset` (raw IP is
  each record's body).
* pcapng: the blocks' own walk (:func:`~gfwlab.packet.pcapng.runs`), which yields runs of
  offsets.

:func:`windows` gives the same a run of records at a time, for a capture too large to index whole
(``gfwlab.offline.analyze``); a pcapng's windows are cut from one walk of its blocks.

The walks are compiled because they are loops over every record that NumPy cannot do: in
Python the classic pcap's took 0.3 µs a record, a tenth of a realistic capture's analysis, and
a pcapng's 1.35 µs (``benchmarks/README.md``).
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from gfwlab import _native
from gfwlab.packet import pcapng
from gfwlab.packet.link import MODE_RAW, RELEASE, FrameBuffer
from gfwlab.packet.pcap import CaptureReader

I64 = npt.NDArray[np.int64]
U8 = npt.NDArray[np.uint8]
F64 = npt.NDArray[np.float64]


@dataclass(slots=True)
class Records:
    """The IP packets of a capture: packet ``i`` is ``mapping[start[i] : start[i] + length[i]]``."""

    ts: F64
    start: I64
    length: I64
    record_heads: bool
    """Each packet is its whole record's body, right after a 16-byte record header."""

    def part(self, lo: int, hi: int) -> Records:
        """Packets ``lo`` to ``hi`` (views, not copies)."""
        return Records(
            ts=self.ts[lo:hi],
            start=self.start[lo:hi],
            length=self.length[lo:hi],
            record_heads=self.record_heads,
        )


def scan(reader: CaptureReader, limit: int | None = None) -> Records | None:
    """Every IP packet of ``reader``'s capture, with its counters (``packets``, ``skipped``,
    ``truncated``, ``truncated_at``, ``bytes_read``) set as a full iteration sets them; None if
    there are more than ``limit`` IP packets, or in a classic pcap more than ``limit`` records
    (non-IP frames included: the walk stops there; the counters are then meaningless)."""
    if reader.closed:
        raise ValueError("I/O operation on a closed capture")
    reader.packets = reader.skipped = reader.bytes_read = 0
    reader.truncated = False
    reader.truncated_at = None
    if reader.format == "pcapng":
        return _scan_pcapng(reader, limit)
    return _scan_pcap(reader, limit)


def _scan_pcapng(reader: CaptureReader, limit: int | None) -> Records | None:
    # One window of up to ``limit + 1`` packets: the walk stops one packet past the limit.
    count = sys.maxsize if limit is None else limit + 1
    head = next(_pcapng_windows(reader, count, count))
    if limit is not None and head.records.ts.shape[0] > limit:
        return None
    return head.records


_STRETCH = 8 << 20
"""Bytes walked between two checks of the record count against the limit."""

HOLD = 1 << 30
"""Bytes from its start that a walk keeps mapped (a classic pcap's :func:`_walk` from where
it starts, a pcapng's :class:`_Runs` from the file's start). The index reads every record it
walked right after the walk (``offline/index.py``), so a page released by the walk is mapped
again at once: releasing as it went cost a quarter of a realistic capture's indexing (1.2 GB,
either format), for no lower peak. Past ``HOLD`` the walk releases as it goes, so that a walk
that finds a capture too large to index whole holds no more than a window of a windowed
analysis does."""


def _walk(
    buf: FrameBuffer,
    size: int,
    framing: tuple[int, str, float, int, int],
    limit: int | None,
    off: int = 24,
    release: Callable[[int, int], None] | None = None,
) -> tuple[I64, F64]:
    """Offsets of the whole records of a classic pcap from offset ``off``, in file order (more
    than ``limit`` of them: the walk stopped early), with the offset after the last one appended
    (the end of the file, or where the framing breaks); and each record's timestamp.

    The walk touches every page. It keeps the first :data:`HOLD` bytes mapped, for the index
    reads the same records right after it; past them, ``release`` is given each stretch walked
    (:meth:`~gfwlab.packet.pcap.CaptureReader.release`), and whoever reads those records next
    maps them back from the page cache."""
    hlen, endian, div, _mode, cap = framing
    parts: list[I64] = []
    stamps: list[F64] = []
    most = sys.maxsize if limit is None else limit + 1  # records to walk at most
    count = 0
    big = endian == ">"
    broken = False
    was = off + HOLD  # released up to here (nothing before it is)
    # One pair of arrays, room for a stretch of the smallest records, takes each stretch's walk;
    # the records found are copied out. A pair for each stretch would have most of its room
    # unused (a stretch of 800-byte packets holds 2% of it), but NumPy asks for huge pages for
    # arrays this large: where the kernel grants them, the first record written to each has
    # 2 MiB zeroed, up to 0.5 GB for a 1 GB capture (1.1 GiB allocated at the walk's peak).
    scratch = min(most, _STRETCH // hlen + 1)
    out_all = np.empty(scratch, dtype=np.int64)
    ts_all = np.empty(scratch, dtype=np.float64)
    while not broken and off + hlen <= size and count < most:
        if release is not None and off > was:
            release(was, off)
            was = off
        room = min(most - count, scratch)
        out, ts = out_all[:room], ts_all[:room]
        stop = min(size, off + _STRETCH) - hlen
        got, off, broken = _native.walk(buf, off, stop, size, hlen, big, cap, float(div), out, ts)
        parts.append(out[:got].copy())
        stamps.append(ts[:got].copy())
        count += got
    parts.append(np.array([off], dtype=np.int64))
    if release is not None and off > was:
        release(was, off)
    return np.concatenate(parts), np.concatenate(stamps) if stamps else np.zeros(0)


@dataclass(slots=True)
class Window:
    """The IP packets of a run of records of a capture analysed a window at a time
    (:func:`windows`)."""

    records: Records
    last: bool
    """No record follows: the file ends, or its framing breaks, after this window."""
    skipped: int
    """Records that hold no IP packet, counted in this window (summed over the windows: the
    capture's)."""
    truncated_at: int | None = None
    """Where the capture's framing breaks (last window only; None: it ends cleanly)."""


def windows(reader: CaptureReader, first: int, per: int) -> Iterator[Window]:
    """The IP packets of ``reader``'s capture, ``first`` then ``per`` at a time, for a capture
    analysed a window at a time; together they are :func:`scan`'s packets, skipped records and
    truncation point. A classic pcap's window holds that many records (non-IP frames included);
    a pcapng's that many IP packets. Once the caller asks for the next window, the previous
    one's pages are released (:meth:`~gfwlab.packet.pcap.CaptureReader.release`)."""
    if reader.closed:
        raise ValueError("I/O operation on a closed capture")
    if reader.format == "pcapng":
        yield from _pcapng_windows(reader, first, per)
        return
    begin, count = 24, first
    while True:
        offs, ts = _walk(reader.mapping, reader.size, reader.framing, count, begin, reader.release)
        last = offs.shape[0] <= count + 1
        if not last:
            offs, ts = offs[: count + 1], ts[:count]
        records, skipped = _records(reader, offs, ts)
        end = int(offs[-1])
        cut = end if last and end < reader.size else None
        yield Window(records=records, last=last, skipped=skipped, truncated_at=cut)
        if last:
            return
        reader.release(begin, end)  # the window is done with
        begin, count = end, per


def _pcapng_windows(reader: CaptureReader, first: int, per: int) -> Iterator[Window]:
    """One walk of a pcapng's blocks (:func:`~gfwlab.packet.pcapng.runs`), cut into windows:
    its section and interfaces carry from one window to the next. Each window looks one packet
    ahead, to know whether it is the last; the non-IP records walked before that packet count
    in the window (a run never spans one, so the walk stops right after that packet's run)."""
    reader.packets = reader.skipped = reader.bytes_read = 0
    reader.truncated = False
    reader.truncated_at = None
    found = _Runs(reader, pcapng.runs(reader, reader.mapping))
    count, counted, begin = first, 0, 0
    while True:
        records = found.take(count)
        ahead = found.next_start()
        last = ahead is None
        skipped, counted = reader.skipped - counted, reader.skipped
        cut = reader.truncated_at if last and reader.truncated else None
        yield Window(records=records, last=last, skipped=skipped, truncated_at=cut)
        if ahead is None:
            return
        reader.release(begin, ahead)  # the window is done with
        count, begin = per, ahead


class _Runs:
    """A pcapng's packets from its runs (:func:`~gfwlab.packet.pcapng.runs`), taken a number
    at a time; past the first :data:`HOLD` bytes, the pages behind the walk are released as it
    goes (see :func:`_walk`)."""

    def __init__(self, reader: CaptureReader, runs: Iterator[pcapng.Run]) -> None:
        self.reader = reader
        self.runs = runs
        self.held: pcapng.Run | None = None
        self.at = 0
        self.done = HOLD
        """Where the pages were last released (the walk starts at the file's start)."""

    def _fill(self) -> bool:
        """Whether a packet is held (the walk goes on to the next run if none is)."""
        while self.held is None or self.at >= self.held[0].shape[0]:
            run = next(self.runs, None)
            if run is None:
                self.held = None
                return False
            self.held, self.at = run, 0
            end = int(run[2][-1])
            if end - self.done >= RELEASE:
                self.reader.release(self.done, end)
                self.done = end
        return True

    def take(self, count: int) -> Records:
        """The next ``count`` packets (fewer at the end)."""
        parts: list[pcapng.Run] = []
        while count > 0 and self._fill():
            assert self.held is not None
            hi = min(self.at + count, self.held[0].shape[0])
            ts, start, end = self.held
            parts.append((ts[self.at : hi], start[self.at : hi], end[self.at : hi]))
            count -= hi - self.at
            self.at = hi
        if not parts:
            empty = np.zeros(0, dtype=np.int64)
            return Records(ts=np.zeros(0), start=empty, length=empty, record_heads=False)
        ts, start, end = (np.concatenate(arrays) for arrays in zip(*parts, strict=True))
        return Records(ts=ts, start=start, length=end - start, record_heads=False)

    def next_start(self) -> int | None:
        """Where the next packet starts (None: there is none)."""
        if not self._fill():
            return None
        assert self.held is not None
        return int(self.held[1][self.at])


def _scan_pcap(reader: CaptureReader, limit: int | None) -> Records | None:
    size = reader.size
    offs, ts = _walk(reader.mapping, size, reader.framing, limit, release=reader.release)
    if limit is not None and offs.shape[0] - 1 > limit:
        reader.release(24, int(offs[-1]))  # too many to index whole: analysed in windows
        return None
    end_off = int(offs[-1])
    reader.bytes_read = end_off
    if end_off < size:
        reader.truncated = True
        reader.truncated_at = end_off
    records, reader.skipped = _records(reader, offs, ts)
    reader.packets = int(records.ts.shape[0])
    return records


def _records(reader: CaptureReader, offs: I64, ts: F64) -> tuple[Records, int]:
    """The IP packets of the records at ``offs`` (the offset after the last one appended) whose
    timestamps are ``ts``, and how many records hold none."""
    buf = reader.mapping
    hlen, _endian, _div, mode, _cap = reader.framing
    rec = offs[:-1]
    n = rec.shape[0]
    start = rec + hlen
    length = offs[1:] - start
    keep: npt.NDArray[np.bool_] | None = None
    if mode != MODE_RAW:  # where each frame's IP packet begins (-1: it carries none)
        ip = np.empty(n, dtype=np.int64)
        _native.links(buf, mode, np.ascontiguousarray(start), offs[1:], ip)
        keep = ip >= 0
        start = ip
    skipped = 0
    if keep is not None:
        skipped = int(n - keep.sum())
        ts, start = ts[keep], start[keep]
        length = offs[1:][keep] - start
    heads16 = mode == MODE_RAW and hlen == 16
    return Records(ts=ts, start=start, length=length, record_heads=heads16), skipped
