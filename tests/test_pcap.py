"""Capture reading and writing: hand-built pcap/pcapng files, real captures, tshark, bad input."""

from __future__ import annotations

import os
import shutil
import socket
import struct
import subprocess
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from gfwlab.errors import AdapterError
from gfwlab.packet import (
    ACK,
    PSH,
    RST,
    SYN,
    CaptureReader,
    PcapWriter,
    addr_bytes,
    build_tcp,
    build_udp,
    link_header_strip,
    parse,
)
from gfwlab.packet.ip import addr_text, checksum
from gfwlab.packet.pcap import MAX_CAPLEN, split_timestamp
from testenv import SHARED_PCAPS, needs_shared, shared_pcaps, unprivileged

REAL_PCAPS = shared_pcaps("*.pcap")
TSHARK = shutil.which("tshark")

V4A, V4B = addr_bytes("192.0.2.1"), addr_bytes("198.51.100.7")
V6A, V6B = addr_bytes("2001:db8::1"), addr_bytes("2001:db8::2")
TCP4 = build_tcp(V4A, V4B, 40000, 443, flags=SYN, seq=1000)
TCP6 = build_tcp(V6A, V6B, 40001, 80, flags=PSH | ACK, payload=b"GET / HTTP/1.1\r\n\r\n")
UDP4 = build_udp(V4A, V4B, 5353, 53, b"\x12\x34" + b"\x00" * 10)
ARP = bytes.fromhex("0001080006040001") + b"\x02" * 6 + V4A + b"\x00" * 6 + V4B

MAGIC_US = 0xA1B2C3D4
MAGIC_NS = 0xA1B23C4D


# --------------------------------------------------------------------------- builders


def pcap_header(linktype: int, *, endian: str = "<", magic: int = MAGIC_US, snaplen: int = 65535):
    return struct.pack(endian + "IHHiIII", magic, 2, 4, 0, 0, snaplen, linktype)


def pcap_record(data: bytes, sec: int = 1_700_000_000, frac: int = 0, *, endian: str = "<"):
    return struct.pack(endian + "IIII", sec, frac, len(data), len(data)) + data


def pcap_file(linktype: int, frames: list[bytes], *, endian: str = "<", magic: int = MAGIC_US):
    body = b"".join(
        pcap_record(f, 1_700_000_000 + i, i, endian=endian) for i, f in enumerate(frames)
    )
    return pcap_header(linktype, endian=endian, magic=magic) + body


def block(btype: int, body: bytes, endian: str = "<") -> bytes:
    body += b"\x00" * (-len(body) % 4)
    total = 12 + len(body)
    return struct.pack(endian + "II", btype, total) + body + struct.pack(endian + "I", total)


def shb(endian: str = "<", major: int = 1) -> bytes:
    return block(0x0A0D0D0A, struct.pack(endian + "IHHq", 0x1A2B3C4D, major, 0, -1), endian)


def option(code: int, value: bytes, endian: str = "<") -> bytes:
    return struct.pack(endian + "HH", code, len(value)) + value + b"\x00" * (-len(value) % 4)


def idb(
    linktype: int,
    endian: str = "<",
    *,
    snaplen: int = 0,
    tsresol: int | None = None,
    tsoffset: int | None = None,
) -> bytes:
    opts = b""
    if tsresol is not None:
        opts += option(9, bytes([tsresol]), endian)
    if tsoffset is not None:
        opts += option(14, struct.pack(endian + "q", tsoffset), endian)
    if opts:
        opts += option(0, b"", endian)
    return block(1, struct.pack(endian + "HHI", linktype, 0, snaplen) + opts, endian)


def epb(iid: int, units: int, data: bytes, endian: str = "<") -> bytes:
    hdr = struct.pack(endian + "IIIII", iid, units >> 32, units & 0xFFFFFFFF, len(data), len(data))
    return block(6, hdr + data, endian)


def spb(data: bytes, endian: str = "<", origlen: int | None = None) -> bytes:
    orig = len(data) if origlen is None else origlen
    return block(3, struct.pack(endian + "I", orig) + data, endian)


def old_pb(iid: int, units: int, data: bytes, endian: str = "<") -> bytes:
    hdr = struct.pack(
        endian + "HHIIII", iid, 0, units >> 32, units & 0xFFFFFFFF, len(data), len(data)
    )
    return block(2, hdr + data, endian)


def eth(payload: bytes, ethertype: int, vlans: tuple[int, ...] = ()) -> bytes:
    out = b"\x02\x00\x00\x00\x00\x01\x02\x00\x00\x00\x00\x02"
    for i, tpid in enumerate(vlans):
        out += struct.pack("!HH", tpid, 100 + i)
    return out + struct.pack("!H", ethertype) + payload


def sll(payload: bytes, proto: int) -> bytes:
    return struct.pack("!HHH8sH", 0, 1, 6, b"\x02" * 6 + b"\x00\x00", proto) + payload


def sll2(payload: bytes, proto: int) -> bytes:
    return struct.pack("!HHIHBB8s", proto, 0, 2, 1, 0, 6, b"\x02" * 6 + b"\x00\x00") + payload


def null(payload: bytes, family: int, endian: str = "<") -> bytes:
    return struct.pack(endian + "I", family) + payload


def put(tmp_path: Path, data: bytes, name: str = "cap.pcap") -> str:
    path = tmp_path / name
    path.write_bytes(data)
    return str(path)


def read_all(path: str) -> tuple[CaptureReader, list[tuple[float, bytes]]]:
    with CaptureReader(path) as reader:
        out = list(reader)
    return reader, out


# --------------------------------------------------------------------------- writer round trips


@pytest.mark.parametrize("nanosecond", [True, False])
def test_round_trip(tmp_path, nanosecond):
    stamps = [1_700_000_000.0, 1_700_000_000.123456, 1_700_000_001.5, 1_700_000_002.000001]
    packets = [TCP4, TCP6, UDP4, build_tcp(V4B, V4A, 443, 40000, flags=RST)]
    path = str(tmp_path / "out.pcap")
    with PcapWriter(path, nanosecond=nanosecond) as w:
        for ts, pkt in zip(stamps, packets, strict=True):
            w.write(ts, pkt)
    assert w.count == 4
    reader, got = read_all(path)
    assert reader.format == "pcap"
    assert reader.linktypes == [101]
    assert [p for _, p in got] == packets
    assert [t for t, _ in got] == pytest.approx(stamps, abs=1e-9 if nanosecond else 1e-6)
    assert reader.packets == 4 and reader.skipped == 0 and not reader.truncated
    assert reader.bytes_read == reader.size == os.path.getsize(path)
    magic = struct.unpack_from("<I", Path(path).read_bytes())[0]
    assert magic == (MAGIC_NS if nanosecond else MAGIC_US)


@settings(max_examples=200, deadline=None)
@given(st.floats(min_value=0, max_value=4_294_967_295.0, allow_nan=False))
def test_split_timestamp(ts):
    for scale in (1_000_000, 1_000_000_000):
        sec, frac = split_timestamp(ts, scale)
        assert 0 <= frac < scale
        assert 0 <= sec <= 0xFFFFFFFF
        assert abs((sec - ts) + frac / scale) <= 0.5 / scale + 1e-6


def test_nanosecond_timestamps_exact(tmp_path):
    stamps = [1_700_000_000.123456789, 1_234_567_890.000000001, 0.5, 1.9999999999]
    path = str(tmp_path / "ns.pcap")
    with PcapWriter(path) as w:
        for ts in stamps:
            w.write(ts, UDP4)
    raw = Path(path).read_bytes()
    # 1.9999999999 rounds to 2 s, 0 ns: the fraction never reaches 1e9.
    sec, frac = struct.unpack_from("<II", raw, 24 + 3 * (16 + len(UDP4)))
    assert (sec, frac) == (2, 0)
    _, got = read_all(path)
    assert [t for t, _ in got][:3] == stamps[:3]
    assert got[3][0] == 2.0


def test_writer_rejects_bad_timestamps(tmp_path):
    with PcapWriter(str(tmp_path / "x.pcap")) as w:
        for bad in (-1.0, float("nan"), float("inf"), 2.0**32):
            with pytest.raises(ValueError):
                w.write(bad, UDP4)


def test_writer_truncates_huge_frames(tmp_path):
    path = str(tmp_path / "big.pcap")
    big = TCP4 + b"\x00" * (MAX_CAPLEN + 100)
    with PcapWriter(path) as w:
        w.write(1.0, big)
    _, got = read_all(path)
    assert got[0][1] == big[:MAX_CAPLEN]


def test_writer_ethernet_linktype(tmp_path):
    path = str(tmp_path / "eth.pcap")
    with PcapWriter(path, linktype=1, nanosecond=False) as w:
        w.write(5.25, eth(TCP4, 0x0800))
        w.write(5.5, eth(ARP, 0x0806))
    reader, got = read_all(path)
    assert reader.linktypes == [1]
    assert got == [(5.25, TCP4)]
    assert reader.skipped == 1


# --------------------------------------------------------------------------- writer atomicity


def test_writer_publishes_only_on_commit(tmp_path):
    path = tmp_path / "out.pcap"
    path.write_bytes(b"old contents")
    w = PcapWriter(str(path))
    w.write(1.0, TCP4)
    assert path.read_bytes() == b"old contents"
    assert len(os.listdir(tmp_path)) == 2  # the target and the hidden temporary file
    w.commit()
    assert os.listdir(tmp_path) == ["out.pcap"]
    assert read_all(str(path))[1] == [(1.0, TCP4)]
    w.commit()  # idempotent
    with pytest.raises(ValueError):
        w.write(2.0, TCP4)


def test_writer_abort_leaves_nothing(tmp_path):
    w = PcapWriter(str(tmp_path / "out.pcap"))
    w.write(1.0, TCP4)
    w.abort()
    w.abort()
    assert os.listdir(tmp_path) == []
    with pytest.raises(ValueError):
        w.commit()


def test_writer_exception_in_with_leaves_nothing(tmp_path):
    with pytest.raises(RuntimeError), PcapWriter(str(tmp_path / "out.pcap")) as w:
        w.write(1.0, TCP4)
        raise RuntimeError("boom")
    assert os.listdir(tmp_path) == []


def test_writer_dropped_without_commit_leaves_nothing(tmp_path):
    w = PcapWriter(str(tmp_path / "out.pcap"))
    w.write(1.0, TCP4)
    del w
    assert os.listdir(tmp_path) == []


def test_writer_missing_directory(tmp_path):
    target = tmp_path / "no" / "such" / "dir" / "out.pcap"
    with pytest.raises(AdapterError, match="cannot write") as info:
        PcapWriter(str(target))
    assert info.value.path == str(target)
    assert not (tmp_path / "no").exists()


def test_writer_path_is_directory(tmp_path):
    (tmp_path / "d").mkdir()
    with pytest.raises(AdapterError, match="cannot write"):
        PcapWriter(str(tmp_path / "d"))
    assert os.listdir(tmp_path) == ["d"]
    assert os.listdir(tmp_path / "d") == []


@unprivileged
def test_writer_permission_denied(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        with pytest.raises(AdapterError, match="cannot write"):
            PcapWriter(str(ro / "out.pcap"))
        assert os.listdir(ro) == []
    finally:
        ro.chmod(0o700)


# --------------------------------------------------------------------------- hand-built pcap


@pytest.mark.parametrize("endian", ["<", ">"])
@pytest.mark.parametrize(("magic", "divisor"), [(MAGIC_US, 1e6), (MAGIC_NS, 1e9)])
def test_classic_byte_orders_and_resolutions(tmp_path, endian, magic, divisor):
    data = pcap_header(101, endian=endian, magic=magic)
    data += pcap_record(TCP4, 1_600_000_000, 250_000, endian=endian)
    data += pcap_record(TCP6, 1_600_000_001, 999_999, endian=endian)
    reader, got = read_all(put(tmp_path, data))
    assert got == [
        (1_600_000_000 + 250_000 / divisor, TCP4),
        (1_600_000_001 + 999_999 / divisor, TCP6),
    ]
    assert not reader.truncated


def test_modified_pcap_format(tmp_path):
    # Kuznetzov's variant: 8 more bytes (ifindex, protocol, pkt_type, pad) per record header.
    data = pcap_header(101, magic=0xA1B2CD34)
    for i, pkt in enumerate((TCP4, UDP4)):
        data += struct.pack("<IIIIIHBx", 10 + i, 5, len(pkt), len(pkt), 2, 0x0800, 0) + pkt
    _, got = read_all(put(tmp_path, data))
    assert got == [(10.000005, TCP4), (11.000005, UDP4)]


def test_ethernet_vlan_ipv6_and_arp(tmp_path):
    frames = [
        eth(TCP4, 0x0800),
        eth(ARP, 0x0806),
        eth(TCP6, 0x86DD, vlans=(0x8100,)),
        eth(TCP6, 0x86DD, vlans=(0x88A8, 0x8100)),
        eth(UDP4, 0x0800, vlans=(0x9100, 0x8100)),
        eth(b"\x00" * 30, 0x88CC),  # LLDP
        eth(b"", 0x8100)[:14],  # a VLAN tag cut off
        b"\x00" * 10,  # shorter than an Ethernet header
    ]
    reader, got = read_all(put(tmp_path, pcap_file(1, frames)))
    assert [p for _, p in got] == [TCP4, TCP6, TCP6, UDP4]
    assert [t for t, _ in got] == [
        1_700_000_000.0,
        1_700_000_002.000002,
        1_700_000_003.000003,
        1_700_000_004.000004,
    ]
    assert reader.packets == 4
    assert reader.skipped == 4
    assert parse(got[2][1]).dport == 80


def test_ethernet_big_endian_file(tmp_path):
    frames = [eth(TCP4, 0x0800), eth(ARP, 0x0806), eth(TCP6, 0x86DD)]
    reader, got = read_all(put(tmp_path, pcap_file(1, frames, endian=">", magic=MAGIC_NS)))
    assert [p for _, p in got] == [TCP4, TCP6]
    assert reader.skipped == 1


def test_ethernet_short_last_record(tmp_path):
    # The fast path reads the EtherType together with the record header; a last record too
    # short for that must still be handled (and is not IP).
    data = pcap_file(1, [eth(TCP4, 0x0800), b"\x01\x02\x03"])
    reader, got = read_all(put(tmp_path, data))
    assert [p for _, p in got] == [TCP4]
    assert reader.skipped == 1 and not reader.truncated


def test_linux_sll(tmp_path):
    frames = [sll(TCP4, 0x0800), sll(ARP, 0x0806), sll(TCP6, 0x86DD), b"\x00" * 15]
    reader, got = read_all(put(tmp_path, pcap_file(113, frames)))
    assert [p for _, p in got] == [TCP4, TCP6]
    assert reader.linktypes == [113] and reader.skipped == 2


def test_linux_sll2(tmp_path):
    frames = [sll2(UDP4, 0x0800), sll2(ARP, 0x0806), sll2(TCP6, 0x86DD), b"\x08\x00" + b"\x00" * 17]
    reader, got = read_all(put(tmp_path, pcap_file(276, frames)))
    assert [p for _, p in got] == [UDP4, TCP6]
    assert reader.linktypes == [276] and reader.skipped == 2


@pytest.mark.parametrize("frame_endian", ["<", ">"])
def test_null_loopback(tmp_path, frame_endian):
    frames = [null(TCP4, 2, frame_endian)]
    frames += [null(TCP6, fam, frame_endian) for fam in (24, 28, 30)]
    frames += [null(b"\x00" * 20, 7, frame_endian), b"\x02\x00"]
    reader, got = read_all(put(tmp_path, pcap_file(0, frames)))
    assert [p for _, p in got] == [TCP4, TCP6, TCP6, TCP6]
    assert reader.skipped == 2


def test_openbsd_loop(tmp_path):
    frames = [null(TCP4, 2, ">"), null(TCP6, 24, ">"), null(TCP4, 99, ">")]
    reader, got = read_all(put(tmp_path, pcap_file(108, frames)))
    assert [p for _, p in got] == [TCP4, TCP6]
    assert reader.skipped == 1


@pytest.mark.parametrize("linktype", [12, 14, 101, 228, 229])
def test_raw_ip_linktypes(tmp_path, linktype):
    reader, got = read_all(put(tmp_path, pcap_file(linktype, [TCP4, TCP6, UDP4])))
    assert [p for _, p in got] == [TCP4, TCP6, UDP4]
    assert reader.linktypes == [linktype]


def test_fcs_bits_in_linktype_field(tmp_path):
    # Upper bits of the link-type field say "4-byte FCS present"; the link type is still 1.
    reader, got = read_all(
        put(tmp_path, pcap_file(1 | 0x1000_0000 | 0x8000_0000, [eth(TCP4, 0x800)]))
    )
    assert reader.linktypes == [1]
    assert got[0][1][: len(TCP4)] == TCP4


def test_header_only_file(tmp_path):
    reader, got = read_all(put(tmp_path, pcap_header(1)))
    assert got == [] and not reader.truncated and reader.bytes_read == 24


def test_reiteration_resets_counters(tmp_path):
    path = put(tmp_path, pcap_file(1, [eth(TCP4, 0x800), eth(ARP, 0x806)]))
    with CaptureReader(path) as reader:
        assert len(list(reader)) == 1
        assert len(list(reader)) == 1
        assert (reader.packets, reader.skipped) == (1, 1)


def test_close_during_iteration(tmp_path):
    path = put(tmp_path, pcap_file(101, [TCP4, TCP6, UDP4]))
    reader = CaptureReader(path)
    it = iter(reader)
    assert next(it)[1] == TCP4
    reader.close()
    assert list(it) == []
    assert reader.closed
    with pytest.raises(ValueError):
        iter(reader)


def test_progress_counters_during_iteration(tmp_path):
    path = put(tmp_path, pcap_file(101, [TCP4, TCP6]))
    with CaptureReader(path) as reader:
        seen = [(reader.packets, reader.bytes_read) for _ in reader]
    assert seen == [(1, 24 + 16 + len(TCP4)), (2, reader.size)]


def test_link_header_strip():
    assert link_header_strip(1, eth(TCP4, 0x0800)) == TCP4
    assert link_header_strip(1, eth(ARP, 0x0806)) is None
    assert link_header_strip(276, sll2(TCP6, 0x86DD)) == TCP6
    with pytest.raises(ValueError, match="147"):
        link_header_strip(147, b"")


# --------------------------------------------------------------------------- hand-built pcapng


@pytest.mark.parametrize("endian", ["<", ">"])
def test_pcapng_basic(tmp_path, endian):
    t = 1_700_000_000_250_000
    data = shb(endian) + idb(1, endian, tsresol=6) + block(4, b"\x00" * 8, endian)  # an NRB
    data += epb(0, t, eth(TCP4, 0x800), endian) + epb(0, t + 1, eth(ARP, 0x806), endian)
    data += block(5, struct.pack(endian + "III", 0, 0, 0), endian)  # an ISB
    data += block(0x40000BAD, b"custom", endian) + epb(0, t + 2, eth(TCP6, 0x86DD), endian)
    reader, got = read_all(put(tmp_path, data, "cap.pcapng"))
    assert reader.format == "pcapng"
    assert reader.linktypes == [1]
    assert got == [(1_700_000_000.25, TCP4), (1_700_000_000.250002, TCP6)]
    assert (reader.packets, reader.skipped, reader.truncated) == (2, 1, False)
    assert reader.bytes_read == reader.size


@pytest.mark.parametrize(
    ("tsresol", "units", "expected"),
    [
        (None, 1_700_000_000_000_001, 1_700_000_000.000001),
        (6, 1_700_000_000_000_001, 1_700_000_000.000001),
        (9, 1_700_000_000_123_456_789, 1_700_000_000.123456789),
        (3, 1_700_000_000_500, 1_700_000_000.5),
        (0x80 | 10, 1_700_000_000 * 1024 + 256, 1_700_000_000.25),
        (0x80 | 20, 1_700_000_000 * 2**20 + 2**19, 1_700_000_000.5),
    ],
)
@pytest.mark.parametrize("endian", ["<", ">"])
def test_pcapng_tsresol(tmp_path, endian, tsresol, units, expected):
    data = shb(endian) + idb(101, endian, tsresol=tsresol) + epb(0, units, UDP4, endian)
    _, got = read_all(put(tmp_path, data, "cap.pcapng"))
    assert got == [(expected, UDP4)]


def test_pcapng_tsoffset(tmp_path):
    data = (
        shb() + idb(101, tsresol=9, tsoffset=1_000_000_000) + epb(0, 700_000_000_500_000_000, UDP4)
    )
    _, got = read_all(put(tmp_path, data, "cap.pcapng"))
    assert got == [(1_700_000_000.5, UDP4)]


def test_pcapng_two_interfaces(tmp_path):
    data = shb() + idb(1) + idb(101, tsresol=9)
    data += epb(0, 1_000_000, eth(TCP4, 0x800)) + epb(1, 2_000_000_000, TCP6)
    data += epb(1, 3_000_000_000, UDP4) + epb(0, 4_000_000, eth(ARP, 0x806))
    data += epb(7, 5_000_000, TCP4)  # no such interface: skipped
    lying = struct.pack("<IIIII", 1, 0, 600_000_000, 1000, 1000) + TCP4
    data += block(6, lying)  # captured length beyond its block: skipped
    reader, got = read_all(put(tmp_path, data, "cap.pcapng"))
    assert reader.linktypes == [1, 101]
    assert got == [(1.0, TCP4), (2.0, TCP6), (3.0, UDP4)]
    assert reader.skipped == 3 and not reader.truncated


def test_pcapng_simple_packet_blocks(tmp_path):
    data = shb() + idb(1, snaplen=80)
    data += spb(eth(TCP4, 0x800))  # before any timestamp: 0.0
    data += epb(0, 1_500_000, eth(UDP4, 0x800))
    data += spb(eth(TCP6, 0x86DD))  # cut to the interface's snaplen (80 bytes)
    data += spb(eth(ARP, 0x806))
    data += spb(eth(TCP4, 0x800), origlen=40)  # original length shorter than the data
    reader, got = read_all(put(tmp_path, data, "cap.pcapng"))
    assert got == [
        (0.0, TCP4),
        (1.5, UDP4),
        (1.5, eth(TCP6, 0x86DD)[14:80]),
        (1.5, eth(TCP4, 0x800)[14:40]),
    ]
    assert reader.skipped == 1


def test_pcapng_spb_without_interface_is_skipped(tmp_path):
    reader, got = read_all(put(tmp_path, shb() + spb(TCP4), "cap.pcapng"))
    assert got == [] and reader.skipped == 1


def test_pcapng_obsolete_packet_block(tmp_path):
    data = shb(">") + idb(113, ">") + old_pb(0, 2_000_000, sll(TCP4, 0x800), ">")
    _, got = read_all(put(tmp_path, data, "cap.pcapng"))
    assert got == [(2.0, TCP4)]


def test_pcapng_multiple_sections(tmp_path):
    data = shb("<") + idb(1, "<") + epb(0, 1_000_000, eth(TCP4, 0x800), "<")
    data += shb(">") + idb(101, ">", tsresol=9) + epb(0, 2_000_000_000, TCP6, ">")
    data += shb("<") + idb(276, "<") + idb(0, "<") + epb(1, 3_000_000, null(UDP4, 2), "<")
    data += epb(0, 4_000_000, sll2(TCP4, 0x800), "<")
    reader, got = read_all(put(tmp_path, data, "cap.pcapng"))
    assert reader.linktypes == [1, 101, 276, 0]
    assert got == [(1.0, TCP4), (2.0, TCP6), (3.0, UDP4), (4.0, TCP4)]


def test_pcapng_unknown_linktype_at_open(tmp_path):
    data = shb() + idb(1) + idb(147) + epb(0, 0, eth(TCP4, 0x800))
    with pytest.raises(AdapterError, match=r"unsupported link type 147 \(USER0\)") as info:
        CaptureReader(put(tmp_path, data, "cap.pcapng"))
    assert info.value.offset == len(shb()) + len(idb(1))


def test_pcapng_unknown_linktype_later(tmp_path):
    data = shb() + idb(101) + epb(0, 1_000_000, TCP4) + idb(105) + epb(1, 0, b"")
    with CaptureReader(put(tmp_path, data, "cap.pcapng")) as reader:
        assert reader.linktypes == [101]
        it = iter(reader)
        assert next(it) == (1.0, TCP4)
        with pytest.raises(AdapterError, match="unsupported link type 105"):
            next(it)


def test_pcapng_truncated_block(tmp_path):
    good = shb() + idb(101) + epb(0, 1_000_000, TCP4)
    data = good + epb(0, 2_000_000, TCP6)[:-9]
    reader, got = read_all(put(tmp_path, data, "cap.pcapng"))
    assert got == [(1.0, TCP4)]
    assert reader.truncated and reader.truncated_at == len(good)


def test_pcapng_corrupt_block_length(tmp_path):
    good = shb() + idb(101) + epb(0, 1_000_000, TCP4)
    bad = bytearray(epb(0, 2_000_000, TCP6))
    bad[-4:] = struct.pack("<I", 12)  # trailing length disagrees
    data = good + bytes(bad) + epb(0, 3_000_000, UDP4)
    reader, got = read_all(put(tmp_path, data, "cap.pcapng"))
    assert got == [(1.0, TCP4)]
    assert reader.truncated_at == len(good)


def test_pcapng_bad_byte_order_magic(tmp_path):
    data = bytearray(shb() + idb(101))
    data[8:12] = b"abcd"
    with pytest.raises(AdapterError, match="byte-order magic"):
        CaptureReader(put(tmp_path, bytes(data), "cap.pcapng"))


def test_pcapng_unsupported_version(tmp_path):
    with pytest.raises(AdapterError, match="version 2"):
        CaptureReader(put(tmp_path, shb(major=2) + idb(101), "cap.pcapng"))


# --------------------------------------------------------------------------- bad input


def test_text_file(tmp_path):
    path = put(tmp_path, b"this is not a capture\n", "notes.txt")
    with pytest.raises(AdapterError, match="not a pcap") as info:
        CaptureReader(path)
    assert info.value.offset == 0
    assert "0x74686973" in str(info.value)


@pytest.mark.parametrize("data", [b"", b"\xd4\xc3"])
def test_empty_and_tiny_files(tmp_path, data):
    with pytest.raises(AdapterError, match="not a pcap"):
        CaptureReader(put(tmp_path, data))


def test_truncated_file_header(tmp_path):
    with pytest.raises(AdapterError, match="truncated"):
        CaptureReader(put(tmp_path, pcap_header(1)[:20]))


def test_missing_file(tmp_path):
    with pytest.raises(AdapterError, match="cannot read"):
        CaptureReader(str(tmp_path / "missing.pcap"))


def test_directory_is_not_a_capture(tmp_path):
    with pytest.raises(AdapterError, match="cannot read"):
        CaptureReader(str(tmp_path))


def test_unknown_linktype(tmp_path):
    with pytest.raises(AdapterError, match=r"unsupported link type 147") as info:
        CaptureReader(put(tmp_path, pcap_file(147, [TCP4])))
    assert info.value.offset == 20
    with pytest.raises(AdapterError, match=r"unsupported link type 40000 \(unknown\)"):
        CaptureReader(put(tmp_path, pcap_file(40000, [TCP4])))


@pytest.mark.parametrize("cut", [1, 8, 15, 16, 17, 30])
def test_truncated_capture(tmp_path, cut):
    frames = [eth(TCP4, 0x800), eth(TCP6, 0x86DD), eth(UDP4, 0x800), eth(TCP4, 0x800)]
    full = pcap_file(1, frames)
    third = 24 + sum(16 + len(f) for f in frames[:2])
    reader, got = read_all(put(tmp_path, full[: third + cut]))
    assert [p for _, p in got] == [TCP4, TCP6]
    assert reader.truncated
    assert reader.truncated_at == third
    assert reader.bytes_read == third


def test_absurd_caplen_is_corruption(tmp_path):
    good = pcap_file(101, [TCP4])
    bad = struct.pack("<IIII", 1, 0, MAX_CAPLEN + 1, MAX_CAPLEN + 1) + b"\x00" * (MAX_CAPLEN + 1)
    reader, got = read_all(put(tmp_path, good + bad + pcap_record(TCP6)))
    assert [p for _, p in got] == [TCP4]
    assert reader.truncated and reader.truncated_at == len(good)


# --------------------------------------------------------------------------- real captures


def tshark_fields(path: str, *fields: str, check: bool = False):
    """Run ``tshark -n -r path -T fields -e ...`` (no name resolution: no network traffic)."""
    assert TSHARK is not None
    args = [TSHARK, "-n", "-r", path, "-T", "fields"]
    for field in fields:
        args += ["-e", field]
    return subprocess.run(args, capture_output=True, text=True, check=check)


def tshark_frames(path: str) -> list[tuple[float, bool]]:
    """(timestamp, carries IP) for every frame, as tshark sees it."""
    out = tshark_fields(path, "frame.time_epoch", "ip.version", "ipv6.version", check=True).stdout
    rows = []
    for line in out.splitlines():
        ts, v4, v6 = [*line.split("\t"), "", ""][:3]
        rows.append((float(ts), bool(v4 or v6)))
    return rows


@needs_shared(SHARED_PCAPS)
@pytest.mark.parametrize("path", REAL_PCAPS, ids=os.path.basename)
def test_real_capture(path):
    reader, got = read_all(path)
    assert reader.format == "pcap"
    assert not reader.truncated and reader.truncated_at is None
    assert reader.bytes_read == reader.size == os.path.getsize(path)
    assert reader.packets == len(got) > 0
    for _, pkt in got:
        assert pkt[0] >> 4 in (4, 6)
        parse(pkt)
    if TSHARK is None:
        pytest.skip("tshark is not installed")
    frames = tshark_frames(path)
    assert reader.packets + reader.skipped == len(frames)
    ip_stamps = [ts for ts, is_ip in frames if is_ip]
    assert reader.packets == len(ip_stamps)
    assert [ts for ts, _ in got] == pytest.approx(ip_stamps, abs=1e-6)


@needs_shared(SHARED_PCAPS)
def test_real_captures_include_sll2():
    linktypes = set()
    for path in REAL_PCAPS:
        with CaptureReader(path) as reader:
            linktypes.update(reader.linktypes)
    assert {1, 276} <= linktypes


# --------------------------------------------------------------------------- tshark reads ours


@pytest.mark.skipif(TSHARK is None, reason="tshark is not installed")
def test_tshark_reads_written_file(tmp_path):
    path = str(tmp_path / "flags.pcap")
    rst = build_tcp(V4B, V4A, 443, 40000, flags=RST, seq=77)
    with PcapWriter(path) as w:
        w.write(1_000_000.123456789, TCP4)  # a float this small holds every nanosecond
        w.write(1_000_000.2, rst)
        w.write(1_000_000.3, TCP6)
        w.write(1_000_000.4, UDP4)
    proc = tshark_fields(path, "frame.time_epoch", "tcp.flags", "tcp.flags.reset", "udp.dstport")
    assert proc.returncode == 0, proc.stderr
    rows = [line.split("\t") for line in proc.stdout.splitlines()]
    assert len(rows) == 4
    assert [r[0] for r in rows] == [
        "1000000.123456789",
        "1000000.200000000",
        "1000000.300000000",
        "1000000.400000000",
    ]
    assert rows[0][1] == "0x0002"
    assert rows[1][1:3] == ["0x0004", "1"]
    assert rows[2][1] == "0x0018"
    assert rows[3][3] == "53"


# --------------------------------------------------------------------------- properties

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def survives(path: str) -> None:
    """Open may refuse with AdapterError; once open, iteration never raises."""
    try:
        reader = CaptureReader(path)
    except AdapterError:
        return
    with reader:
        count = sum(1 for _ in reader)
        assert count == reader.packets
        assert 0 <= reader.bytes_read <= reader.size
        assert reader.truncated == (reader.truncated_at is not None)


@pytest.fixture(scope="module")
def fuzz_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("fuzz")


@FUZZ
@given(data=st.binary(max_size=600))
def test_random_bytes(fuzz_dir, data):
    survives(put(fuzz_dir, data))


@FUZZ
@given(
    linktype=st.sampled_from([0, 1, 12, 14, 101, 108, 113, 228, 229, 276]),
    endian=st.sampled_from(["<", ">"]),
    magic=st.sampled_from([MAGIC_US, MAGIC_NS, 0xA1B2CD34]),
    snaplen=st.integers(0, 2**32 - 1),
    tail=st.binary(max_size=800),
)
def test_valid_header_random_tail(fuzz_dir, linktype, endian, magic, snaplen, tail):
    path = put(fuzz_dir, pcap_header(linktype, endian=endian, magic=magic, snaplen=snaplen) + tail)
    with CaptureReader(path) as reader:  # a valid header always opens
        for _ts, pkt in reader:
            assert isinstance(pkt, bytes)


@FUZZ
@given(
    linktype=st.sampled_from([0, 1, 101, 108, 113, 276]),
    endian=st.sampled_from(["<", ">"]),
    records=st.lists(
        st.tuples(
            st.integers(0, 2**32 - 1),
            st.integers(0, 2**32 - 1),
            st.binary(max_size=120),
            st.sampled_from([None, 0, 1, 2**31, 2**32 - 1]),
        ),
        max_size=12,
    ),
)
def test_valid_header_random_records(fuzz_dir, linktype, endian, records):
    data = pcap_header(linktype, endian=endian)
    honest = True
    for sec, frac, frame, lie in records:
        caplen = len(frame) if lie is None else lie
        honest = honest and lie is None
        data += struct.pack(endian + "IIII", sec, frac, caplen, len(frame)) + frame
    with CaptureReader(put(fuzz_dir, data)) as reader:
        got = list(reader)
    if honest:
        assert not reader.truncated
        assert reader.packets + reader.skipped == len(records)
        if linktype == 101:
            assert [p for _, p in got] == [r[2] for r in records]


@FUZZ
@given(
    endian=st.sampled_from(["<", ">"]),
    blocks=st.lists(
        st.tuples(st.sampled_from([1, 2, 3, 4, 5, 6, 0x0A0D0D0A, 99]), st.binary(max_size=60)),
        max_size=8,
    ),
    tail=st.binary(max_size=40),
)
def test_pcapng_random_blocks(fuzz_dir, endian, blocks, tail):
    data = shb(endian) + idb(1, endian) + b"".join(block(t, b, endian) for t, b in blocks) + tail
    try:
        with CaptureReader(put(fuzz_dir, data, "fuzz.pcapng")) as reader:
            for _ts, pkt in reader:
                assert isinstance(pkt, bytes)
    except AdapterError as exc:
        # An interface description may name a link type that cannot be stripped: refused at
        # open if it comes before the first packet, else when iteration reaches it.
        assert exc.reason.startswith("unsupported link type")


def _rfc1071(data: bytes) -> int:
    """The Internet checksum word by word, with the end-around carry, as RFC 1071 gives it."""
    if len(data) % 2:
        data += b"\x00"
    total = 0
    for (word,) in struct.iter_unpack("!H", data):
        total += word
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


@given(
    data=st.binary(max_size=1600) | st.sampled_from([b"", b"\0\0", b"\xff\xff", b"\xff\xff" * 9])
)
@settings(max_examples=2000)
def test_the_checksum_is_rfc_1071s(data: bytes) -> None:
    assert checksum(data) == _rfc1071(data)
    with_it = data + b"\0" * (len(data) % 2) + struct.pack("!H", checksum(data))
    assert checksum(with_it) == 0  # a packet that carries its checksum sums to zero


def test_close_while_views_of_the_mapping_live(tmp_path):
    """Closing a reader while arrays over its mapping still live (the frames of an exception on
    its way out hold them, as on a Ctrl-C during indexing) raises nothing: the file is unmapped
    when the last view goes."""
    import numpy as np  # noqa: PLC0415

    path = tmp_path / "c.pcap"
    with PcapWriter(str(path)) as w:
        w.write(1.0, bytes(40))
    reader = CaptureReader(str(path))
    view = np.frombuffer(reader.mapping, dtype=np.uint8)
    reader.close()
    assert reader.closed
    assert view.size == path.stat().st_size and view[-40:].tobytes() == bytes(40)  # readable
    del view


def _reference_ip(
    src: bytes, dst: bytes, proto: int, body: bytes, ttl: int, ip_id: int, df: bool
) -> bytes:
    if len(src) == 16:
        return struct.pack("!IHBB", 6 << 28, len(body), proto, ttl) + src + dst + body
    hdr = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(body), ip_id & 0xFFFF,
                      0x4000 if df else 0, ttl, proto, 0, src, dst)  # fmt: skip
    return hdr[:10] + struct.pack("!H", _rfc1071(hdr)) + hdr[12:] + body


def _pseudo(src: bytes, dst: bytes, proto: int, length: int) -> bytes:
    if len(src) == 4:
        return src + dst + struct.pack("!BBH", 0, proto, length)
    return src + dst + struct.pack("!IxxxB", length, proto)


_ADDRS = st.one_of(
    st.tuples(st.binary(min_size=4, max_size=4), st.binary(min_size=4, max_size=4)),
    st.tuples(st.binary(min_size=16, max_size=16), st.binary(min_size=16, max_size=16)),
)
_PORT = st.integers(0, 0xFFFF)


@given(_ADDRS, _PORT, _PORT, st.binary(max_size=1500), st.integers(0, 255),
       st.integers(0, 0x1FFFF), st.booleans())  # fmt: skip
@settings(max_examples=1000)
@example((bytes(4), bytes(4)), 0, 0, b"", 0, 0, False)  # every word zero but the protocol's
@example((b"\xff" * 4, b"\xff" * 4), 0xFFFF, 0xFFFF, b"\xff", 255, 0xFFFF, True)
def test_built_udp_is_the_rfc_datagram(
    addrs: tuple[bytes, bytes], sport: int, dport: int, payload: bytes, ttl: int, ip_id: int,
    df: bool,
) -> None:  # fmt: skip
    """``build_udp`` sums its checksums from the fields; the datagram is the one joined first
    and checksummed word by word (RFC 768, RFC 791, RFC 8200 §8.1)."""
    src, dst = addrs
    dgram = struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload
    csum = _rfc1071(_pseudo(src, dst, 17, len(dgram)) + dgram) or 0xFFFF
    dgram = dgram[:6] + struct.pack("!H", csum) + dgram[8:]
    want = _reference_ip(src, dst, 17, dgram, ttl, ip_id, df)
    assert build_udp(src, dst, sport, dport, payload, ttl=ttl, ip_id=ip_id, df=df) == want


@given(_ADDRS, _PORT, _PORT, st.integers(0, 2**33), st.integers(0, 2**33), st.integers(0, 0x1FF),
       st.integers(0, 0xFFFF), st.binary(max_size=40), st.binary(max_size=1500),
       st.booleans(), st.sampled_from([None, 5, 15]))  # fmt: skip
@settings(max_examples=1000)
def test_built_tcp_is_the_rfc_segment(
    addrs: tuple[bytes, bytes], sport: int, dport: int, seq: int, ack: int, flags: int,
    window: int, options: bytes, payload: bytes, bad: bool, offset: int | None,
) -> None:  # fmt: skip
    """``build_tcp`` sums its checksums from the fields; the segment is the one joined first and
    checksummed word by word (RFC 9293 §3.1)."""
    src, dst = addrs
    padded = options + b"\x00" * (-len(options) % 4)
    off = offset if offset is not None else (20 + len(padded)) // 4
    hdr = struct.pack("!HHIIBBHHH", sport, dport, seq & 0xFFFFFFFF, ack & 0xFFFFFFFF,
                      (off << 4) | ((flags >> 8) & 1), flags & 0xFF, window, 0, 0)  # fmt: skip
    seg = hdr + padded + payload
    csum = _rfc1071(_pseudo(src, dst, 6, len(seg)) + seg) ^ (0xBEEF if bad else 0)
    seg = seg[:16] + struct.pack("!H", csum) + seg[18:]
    want = _reference_ip(src, dst, 6, seg, 64, 7, True)
    got = build_tcp(src, dst, sport, dport, seq=seq, ack=ack, flags=flags, window=window,
                    options=options, payload=payload, ip_id=7, bad_checksum=bad,
                    data_offset=offset)  # fmt: skip
    assert got == want


@given(st.binary(min_size=4, max_size=4) | st.binary(min_size=16, max_size=16))
@settings(max_examples=500)
def test_address_texts_are_inet_ntops(addr: bytes) -> None:
    family = socket.AF_INET if len(addr) == 4 else socket.AF_INET6
    assert addr_text(addr) == socket.inet_ntop(family, addr)
    assert addr_bytes(addr_text(addr)) == addr
