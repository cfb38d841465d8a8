"""The bulk record scan (gfwlab.packet.scan) against the capture reader it stands in for: on
arbitrary, truncated and hand-built captures it finds the same packets, timestamps, counters and
truncation point, or the reader refuses the file at open with the same error."""

from __future__ import annotations

import os
import struct
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from gfwlab.errors import AdapterError, MalformedPacket
from gfwlab.offline.index import CaptureIndex, address, build_index
from gfwlab.packet import ACK, SYN, addr_bytes, build_tcp, build_udp, pcapng
from gfwlab.packet.ip import PROTO_TCP, PROTO_UDP, parse
from gfwlab.packet.pcap import CaptureReader
from gfwlab.packet.scan import scan, windows
from testenv import SHARED_PCAPS, needs_shared, shared_pcaps

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
V4A, V4B = addr_bytes("192.0.2.1"), addr_bytes("198.51.100.7")
TCP4 = build_tcp(V4A, V4B, 40000, 443, flags=SYN, seq=1000)
UDP4 = build_udp(V4A, V4B, 5353, 53, b"\x12\x34" + b"\x00" * 10)
ETH_IP4 = b"\x02" * 12 + b"\x08\x00"
VLAN = b"\x02" * 12 + b"\x81\x00\x00\x05\x08\x00"
MAGICS = [0xA1B2C3D4, 0xA1B23C4D, 0xA1B2CD34]
LINKTYPES = [0, 1, 12, 101, 108, 113, 228, 276]


def _counters(r: CaptureReader) -> tuple[object, ...]:
    return (r.packets, r.skipped, r.truncated, r.truncated_at, r.bytes_read)


def same_walks(path: str) -> None:
    """A pcapng's block walk finds the same packets, with the same counters, with its compiled
    runs as with every block read in Python (the reference)."""
    seen = []
    for compiled in (True, False):
        with CaptureReader(path) as reader:
            try:
                got: object = list(pcapng.locate(reader, reader.mapping, compiled=compiled))
            except AdapterError as exc:
                got = str(exc)
            seen.append((got, _counters(reader), list(reader.linktypes)))
    assert seen[0] == seen[1]


def same_as_reader(path: str) -> None:
    """``scan`` and iteration agree on ``path`` (or both refuse it at open)."""
    try:
        reader = CaptureReader(path)
    except AdapterError:
        with pytest.raises(AdapterError):
            build_index(path)
        return
    if reader.format == "pcapng":
        same_walks(path)
    with reader:
        expected = list(reader)
        counters = _counters(reader)
        got = scan(reader)
        assert got is not None
        assert _counters(reader) == counters
        m = reader.mapping
        cols = (got.ts.tolist(), got.start.tolist(), got.length.tolist())
        found = [(t, bytes(m[s : s + n])) for t, s, n in zip(*cols, strict=True)]
        assert found == expected
        if expected:  # the limit counts IP packets, or (classic pcap) every record
            records = reader.packets + reader.skipped
            assert scan(reader, len(expected) - 1) is None
            assert scan(reader, records) is not None
        for first, per in ((1, 1), (1, 2), (3, 2)):  # windows: the same, a few at a time
            cut = list(windows(reader, first, per))
            assert [w.last for w in cut] == [False] * (len(cut) - 1) + [True]
            found = [
                (t, bytes(m[s : s + n]))
                for w in cut
                for t, s, n in zip(
                    w.records.ts.tolist(), w.records.start.tolist(), w.records.length.tolist(),
                    strict=True,
                )
            ]  # fmt: skip
            assert found == expected
            assert sum(w.skipped for w in cut) == counters[1]
            assert cut[-1].truncated_at == counters[3]


def pcap_header(linktype: int, endian: str, magic: int, snaplen: int = 65535) -> bytes:
    return struct.pack(endian + "IHHiIII", magic, 2, 4, 0, 0, snaplen, linktype)


def record(endian: str, magic: int, sec: int, frac: int, frame: bytes, lie: int | None) -> bytes:
    caplen = len(frame) if lie is None else lie
    head = struct.pack(endian + "IIII", sec, frac, caplen, len(frame))
    if magic == 0xA1B2CD34:
        head += b"\x00" * 8  # the modified format's extra fields
    return head + frame


@pytest.fixture(scope="module")
def fuzz_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("scan")


def put(directory: Path, data: bytes, name: str = "cap.pcap") -> str:
    path = directory / name
    path.write_bytes(data)
    return str(path)


FRAMES = st.one_of(
    st.binary(max_size=80),
    st.sampled_from([TCP4, UDP4, ETH_IP4 + TCP4, VLAN + UDP4, b"\x02\x00\x00\x00" + TCP4]),
)


@FUZZ
@given(data=st.binary(max_size=600))
def test_arbitrary_bytes(fuzz_dir: Path, data: bytes) -> None:
    same_as_reader(put(fuzz_dir, data))


@FUZZ
@given(
    linktype=st.sampled_from(LINKTYPES),
    endian=st.sampled_from(["<", ">"]),
    magic=st.sampled_from(MAGICS),
    snaplen=st.sampled_from([0, 65535, 2**32 - 1]),
    records=st.lists(
        st.tuples(
            st.integers(0, 2**32 - 1),
            st.integers(0, 2**32 - 1),
            FRAMES,
            st.sampled_from([None, None, None, 0, 1, 300_000, 2**32 - 1]),
        ),
        max_size=12,
    ),
    cut=st.integers(0, 40),
    tail=st.binary(max_size=30),
)
def test_records_truncated_and_corrupt(
    fuzz_dir: Path,
    linktype: int,
    endian: str,
    magic: int,
    snaplen: int,
    records: list[tuple[int, int, bytes, int | None]],
    cut: int,
    tail: bytes,
) -> None:
    data = pcap_header(linktype, endian, magic, snaplen)
    data += b"".join(record(endian, magic, *r) for r in records)
    same_as_reader(put(fuzz_dir, data + tail))
    same_as_reader(put(fuzz_dir, data[: max(24, len(data) - cut)]))


@FUZZ
@given(
    endian=st.sampled_from(["<", ">"]),
    linktype=st.sampled_from([1, 101, 113, 147]),
    blocks=st.lists(
        st.tuples(st.sampled_from([1, 2, 3, 6, 6, 6, 0x0A0D0D0A, 99]), st.binary(max_size=60)),
        max_size=8,
    ),
    tail=st.binary(max_size=40),
)
def test_pcapng_blocks(
    fuzz_dir: Path, endian: str, linktype: int, blocks: list[tuple[int, bytes]], tail: bytes
) -> None:
    def block(btype: int, body: bytes) -> bytes:
        body += b"\x00" * (-len(body) % 4)
        total = 12 + len(body)
        return struct.pack(endian + "II", btype, total) + body + struct.pack(endian + "I", total)

    shb = block(0x0A0D0D0A, struct.pack(endian + "IHHq", 0x1A2B3C4D, 1, 0, -1))
    idb = block(1, struct.pack(endian + "HHI", linktype, 0, 0))
    epb = block(6, struct.pack(endian + "IIIII", 0, 0, 1000, len(TCP4), len(TCP4)) + TCP4)
    data = shb + idb + epb + b"".join(block(t, b) for t, b in blocks) + tail
    path = put(fuzz_dir, data, "cap.pcapng")
    try:
        same_as_reader(path)
    except AdapterError as exc:
        # A later interface of a link type that cannot be stripped: both walks raise it.
        assert exc.reason.startswith("unsupported link type")
        with pytest.raises(AdapterError, match="unsupported link type"):
            build_index(path)


def _frames() -> st.SearchStrategy[bytes]:
    eth = st.sampled_from([b"\x08\x00", b"\x86\xdd", b"\x08\x06", b"\x81\x00"])
    return st.one_of(
        st.sampled_from([TCP4, UDP4, ETH_IP4 + TCP4, VLAN + UDP4]),
        st.binary(min_size=10, max_size=15),  # about an Ethernet header's length
        st.tuples(st.binary(min_size=12, max_size=12), eth, st.binary(max_size=30)).map(
            lambda t: t[0] + t[1] + t[2]
        ),
        st.binary(max_size=40),
    )


@FUZZ
@given(
    endian=st.sampled_from(["<", ">"]),
    ifaces=st.lists(
        st.tuples(
            st.sampled_from([1, 101, 113, 0]),  # Ethernet, raw, Linux cooked, BSD loopback
            st.one_of(st.none(), st.integers(0, 255)),  # if_tsresol
            st.one_of(st.none(), st.integers(-(2**40), 2**40)),  # if_tsoffset
        ),
        min_size=1,
        max_size=3,
    ),
    packets=st.lists(
        st.tuples(
            st.integers(0, 3),  # interface (one past the last: skipped)
            st.integers(0, 2**32 - 1),
            st.integers(0, 2**32 - 1),
            _frames(),
            st.sampled_from([None, 6, 3, 99]),  # None: an EPB; else another block before it
            # Options after the packet: bytes the frame does not hold.
            st.one_of(st.binary(max_size=8), st.sampled_from([b"\x08\x00\x45", b"\x86\xdd"])),
            st.booleans(),  # its trailing length disagrees with its length
            st.sampled_from([0, 0, 0, -1, 1, 3, 4, 5]),  # captured length minus the frame's
        ),
        max_size=12,
    ),
    cut=st.integers(0, 8),
)
# The compiled run's edges, every time: an Ethernet frame too short for its EtherType (the next
# bytes would say IPv4), a captured length past the block's data, a bad trailing length.
@example("<", [(1, None, None)], [(0, 0, 5, b"\x02" * 12, None, b"\x08\x00\x45", False, 0)], 0)
@example(">", [(101, 9, 7)], [(0, 1, 5, TCP4, None, b"", False, k) for k in (1, 3, 4)], 0)
@example("<", [(101, None, None)], [(0, 0, 5, TCP4, None, b"", bad, 0) for bad in (0, 1)], 0)
def test_pcapng_compiled_runs(
    fuzz_dir: Path,
    endian: str,
    ifaces: list[tuple[int, int | None, int | None]],
    packets: list[tuple[int, int, int, bytes, int | None, bytes, bool, int]],
    cut: int,
) -> None:
    """Timestamps of every resolution and offset, both byte orders, Ethernet frames of every
    kind, interfaces whose frames the compiled run leaves to Python, blocks between packets,
    bytes after a frame, bad framing, a cut end: the compiled runs find what the Python walk
    finds."""

    def block(btype: int, body: bytes, extra: bytes = b"", bad: bool = False) -> bytes:
        body += b"\x00" * (-len(body) % 4) + extra + b"\x00" * (-len(extra) % 4)
        total = 12 + len(body)
        tail = struct.pack(endian + "I", total + 4 * bad)
        return struct.pack(endian + "II", btype, total) + body + tail

    data = block(0x0A0D0D0A, struct.pack(endian + "IHHq", 0x1A2B3C4D, 1, 0, -1))
    for linktype, resol, offset in ifaces:
        options = b""
        if resol is not None:
            options += struct.pack(endian + "HH", 9, 1) + bytes((resol,)) + b"\x00" * 3
        if offset is not None:
            options += struct.pack(endian + "HHq", 14, 8, offset)
        data += block(1, struct.pack(endian + "HHI", linktype, 0, 0) + options)
    for iid, high, low, frame, before, extra, bad, more in packets:
        if before is not None:
            data += block(before, frame[:20])
        caplen = max(len(frame) + more, 0)
        head = struct.pack(endian + "IIIII", iid, high, low, caplen, len(frame))
        data += block(6, head + frame, extra, bad)
    same_as_reader(put(fuzz_dir, data[: len(data) - cut], "cap.pcapng"))


@needs_shared(SHARED_PCAPS)
@pytest.mark.parametrize("path", shared_pcaps("*.pcap*"), ids=os.path.basename)
def test_real_captures(path: str) -> None:
    same_as_reader(path)


def test_index_matches_reader_on_a_flow(tmp_path: Path) -> None:
    frames = [ETH_IP4 + TCP4, b"\x02" * 12 + b"\x08\x06" + b"\x00" * 28, VLAN + UDP4]
    frames.append(ETH_IP4 + build_tcp(V4B, V4A, 443, 40000, flags=SYN | ACK, seq=9))
    data = pcap_header(1, "<", 0xA1B2C3D4)
    data += b"".join(record("<", 0xA1B2C3D4, 10 + i, i, f, None) for i, f in enumerate(frames))
    index = build_index(put(tmp_path, data))
    assert index is not None
    try:
        assert len(index) == 3 and index.skipped == 1 and not index.raw_records
        assert [index.packet(i) for i in range(3)] == [TCP4, UDP4, frames[3][14:]]
        keys = index.keys(np.arange(len(index)))
        assert keys[0].tolist() == keys[2].tolist()  # both directions, one flow
    finally:
        index.close()


def _mutate(frame: bytes, edits: list[tuple[int, int]], cut: int) -> bytes:
    out = bytearray(frame)
    for at, value in edits:
        if out:
            out[at % len(out)] = value
    return bytes(out[: len(out) - cut] if cut < len(out) else out)


V6A, V6B = addr_bytes("2001:db8::1"), addr_bytes("2001:db8::2")


def _with_options(packet: bytes) -> bytes:
    """``packet`` (IPv4) with the longest header: 40 bytes of no-op options."""
    total = struct.unpack_from("!H", packet, 2)[0] + 40
    head = bytes([0x4F, packet[1]]) + struct.pack("!H", total) + packet[4:20] + b"\x01" * 40
    return head + packet[20:]


SEEDS = [
    TCP4,
    UDP4,
    build_tcp(V4B, V4A, 443, 40000, flags=SYN | ACK, seq=9, payload=b"x" * 30),
    build_tcp(V6A, V6B, 40000, 80, flags=ACK, seq=5, payload=b"GET / HTTP/1.1\r\n"),
    build_udp(V6B, V6A, 443, 50000, b"\xc0" + b"\x00" * 40),
    _with_options(build_tcp(V4A, V4B, 40000, 80, flags=SYN | ACK, seq=7, payload=b"GET /")),
]


def _endpoints(index: CaptureIndex, i: int) -> tuple[int, bytes, int, bytes, int]:
    """Packet ``i``'s protocol, source address and port, destination address and port, read
    from the index's words as :func:`gfwlab.packet.ip.parse` gives them."""
    src, dst = index.src[i].tolist(), index.dst[i].tolist()
    size = 16 if src[2] >> 32 == 6 else 4
    return (
        int(index.proto[i]),
        address(src, size),
        src[2] & 0xFFFF,
        address(dst, size),
        dst[2] & 0xFFFF,
    )


@FUZZ
@given(
    frames=st.lists(
        st.one_of(
            st.binary(max_size=120),
            st.tuples(
                st.sampled_from(SEEDS),
                st.lists(st.tuples(st.integers(0, 90), st.integers(0, 255)), max_size=4),
                st.integers(0, 60),
            ).map(lambda t: _mutate(*t)),
        ),
        min_size=1,
        max_size=12,
    )
)
def test_index_fields_are_the_parsers(fuzz_dir: Path, frames: list[bytes]) -> None:
    """Every packet the index puts in a flow parses as a whole TCP or UDP packet with the
    index's protocol, addresses, ports, flags and payload length, and every other packet does
    not (raw IP records, so the last packets end at the end of the file)."""
    data = pcap_header(101, "<", 0xA1B2C3D4)
    data += b"".join(record("<", 0xA1B2C3D4, 1, i, f, None) for i, f in enumerate(frames))
    index = build_index(put(fuzz_dir, data))
    assert index is not None
    try:
        for i in range(len(index)):
            raw = index.packet(i)
            try:
                pkt = parse(raw)
            except MalformedPacket:
                pkt = None
            whole = pkt is not None and not pkt.fragment and pkt.proto in (PROTO_TCP, PROTO_UDP)
            assert bool(index.flow[i]) == whole, raw.hex()
            if pkt is not None and whole:
                assert _endpoints(index, i) == (pkt.proto, pkt.src, pkt.sport, pkt.dst, pkt.dport)
                assert int(index.flags[i]) == pkt.flags, raw.hex()
                # As parse cuts it: a UDP length can end it before the IP packet ends.
                assert int(index.payload_len[i]) == len(pkt.payload), raw.hex()
    finally:
        index.close()


def _rss_file() -> int:
    """This process's resident pages of mapped files, in bytes."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("RssFile:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no RssFile in /proc/self/status")


@pytest.mark.parametrize("kind", ["pcap", "pcap-ethernet", "pcapng"])
def test_walks_let_go_of_what_they_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kind: str
) -> None:
    """A capture read in windows, or streamed, does not stay in the process's memory: the pages
    behind the walk are released (32 MiB of records; at most a few MiB held at a time)."""
    monkeypatch.setattr("gfwlab.packet.pcap.RELEASE", 1 << 20)
    monkeypatch.setattr("gfwlab.packet.pcapng.RELEASE", 1 << 20)
    monkeypatch.setattr("gfwlab.packet.scan.RELEASE", 1 << 20)
    monkeypatch.setattr("gfwlab.packet.scan.HOLD", 1 << 20)
    frame = build_udp(V4A, V4B, 5353, 443, b"\x5a" * 1400)
    count = (32 << 20) // (len(frame) + 32)
    if kind.startswith("pcap-"):
        head = record("<", 0xA1B2C3D4, 1, 0, ETH_IP4 + frame, None)
        data = pcap_header(1, "<", 0xA1B2C3D4) + head * count
    elif kind == "pcap":
        head = record("<", 0xA1B2C3D4, 1, 0, frame, None)
        data = pcap_header(101, "<", 0xA1B2C3D4) + head * count
    else:

        def block(btype: int, body: bytes) -> bytes:
            body += b"\x00" * (-len(body) % 4)
            n = 12 + len(body)
            return struct.pack("<II", btype, n) + body + struct.pack("<I", n)

        shb = block(0x0A0D0D0A, struct.pack("<IHHq", 0x1A2B3C4D, 1, 0, -1))
        idb = block(1, struct.pack("<HHI", 101, 0, 0))
        epb = block(6, struct.pack("<IIIII", 0, 0, 1000, len(frame), len(frame)) + frame)
        data = shb + idb + epb * count
    path = put(tmp_path, data, f"big.{kind[:6]}")
    original_release = CaptureReader.release
    for walk in ("windows", "stream", "scan"):
        with CaptureReader(path) as reader:
            base = _rss_file()
            most = 0
            if walk == "windows":
                for w in windows(reader, 2000, 2000):  # about 3 MiB each
                    assert w.records.ts.shape[0] > 0
                    most = max(most, _rss_file() - base)
            elif walk == "stream":
                for n, _ in enumerate(reader):
                    if n % 500 == 0:
                        most = max(most, _rss_file() - base)
            else:  # the whole index's walk, given up past its limit

                def measured(self: CaptureReader, start: int, end: int, base: int = base) -> None:
                    # What the walk holds each time it lets go (its peak), not only after it.
                    nonlocal most
                    most = max(most, _rss_file() - base)
                    original_release(self, start, end)

                monkeypatch.setattr(CaptureReader, "release", measured)
                assert scan(reader, count // 2) is None
                most = max(most, _rss_file() - base)
            assert reader.packets == count or walk != "stream"
        assert most < 12 << 20, (walk, most)
