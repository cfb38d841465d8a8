"""Seed corpora for the fuzz targets, built from the project's own traffic and real captures.

Sources: the offline demo's conversations (:func:`gfwlab.offline.synth.demo_traffic`), a small
synthetic capture (:func:`gfwlab.offline.synth.generate`), the protocol builders (ClientHellos
split across records, QUIC Initials of v1 and v2, DNS queries with odd labels) and the real
captures in the shared data folder (``$GFWLAB_SHARED/data/pcaps``, read in place, never copied
into the repository). Seeds are written to a directory the caller names (a temporary one).
"""

from __future__ import annotations

import hashlib
import os
import struct
import tempfile
from collections.abc import Iterator
from pathlib import Path

from harness import join_packets

from gfwlab.errors import AdapterError, MalformedPacket
from gfwlab.offline.synth import demo_traffic, generate
from gfwlab.packet.ip import PROTO_TCP, PROTO_UDP, parse
from gfwlab.packet.pcap import CaptureReader, PcapWriter
from gfwlab.proto.dns import build_query
from gfwlab.proto.quic import QUIC_V2
from gfwlab.proto.quic_build import build_initial
from gfwlab.proto.tls import build_client_hello

REPO = Path(__file__).resolve().parents[1]


def shared_pcaps() -> list[Path]:
    """The shared folder's captures (``$GFWLAB_SHARED`` or ``<repo>/../shared``)."""
    env = os.environ.get("GFWLAB_SHARED")
    shared = Path(env) if env else REPO.parent / "shared"
    folder = shared / "data" / "pcaps"
    return sorted(p for p in folder.glob("*") if p.suffix in (".pcap", ".pcapng", ".cap"))


def _packets(path: Path) -> list[tuple[float, bytes]]:
    try:
        with CaptureReader(str(path)) as reader:
            return list(reader)
    except AdapterError:
        return []


def _conversations() -> Iterator[list[tuple[float, bytes]]]:
    for _what, packets in demo_traffic():
        yield packets
    for path in shared_pcaps():
        yield _packets(path)


def _payloads() -> dict[str, list[bytes]]:
    """Application payloads by dissector, from the conversations above."""
    out: dict[str, list[bytes]] = {"tls": [], "http": [], "dns": [], "quic": []}
    for packets in _conversations():
        for _ts, raw in packets:
            try:
                pkt = parse(raw)
            except MalformedPacket:
                continue
            data = pkt.payload
            if not data:
                continue
            if pkt.proto == PROTO_TCP and data[0] == 0x16:
                out["tls"].append(data)
            elif pkt.proto == PROTO_TCP and data[:1].isupper():
                out["http"].append(data)
            elif pkt.proto == PROTO_UDP and 53 in (pkt.sport, pkt.dport):
                out["dns"].append(data)
            elif pkt.proto == PROTO_UDP and 443 in (pkt.sport, pkt.dport):
                out["quic"].append(data)
    return out


def _built() -> dict[str, list[bytes]]:
    tls = [
        build_client_hello("www.facebook.com"),
        build_client_hello("example.org", alpn=("h2", "http/1.1"), ech=True),
        build_client_hello(None, esni=True),
        build_client_hello("www.google.com", record_split=40),
    ]
    dns = [
        build_query("www.google.com"),
        build_query("example.org", 28, rd=False),
        build_query([b"a\x00b", b"com"]),
        build_query([b"x" * 63] * 3),
    ]
    quic = [
        build_initial("www.google.com"),
        build_initial("example.org", version=QUIC_V2, pn_len=1),
        build_initial("www.youtube.com", split_crypto=30),
        build_initial(None),
    ]
    http = [
        b"GET /search?q=ultrasurf HTTP/1.1\r\nHost: example.org\r\n\r\n",
        b"POST / HTTP/1.0\r\nHOST: www.facebook.com:80\r\nContent-Length: 0\r\n\r\n",
        b"GET / HTTP/1.1\r\n",
    ]
    return {"tls": tls, "dns": dns, "quic": quic, "http": http}


def _pcapng(packets: list[tuple[float, bytes]], linktype: int = 101) -> bytes:
    """``packets`` as a little-endian pcapng with one interface (nanosecond stamps)."""

    def block(btype: int, body: bytes) -> bytes:
        body += b"\0" * (-len(body) % 4)
        n = len(body) + 12
        return struct.pack("<II", btype, n) + body + struct.pack("<I", n)

    opts = struct.pack("<HHB3x", 9, 1, 9) + struct.pack("<HH", 0, 0)
    out = [block(0x0A0D0D0A, struct.pack("<IHHq", 0x1A2B3C4D, 1, 0, -1))]
    out.append(block(1, struct.pack("<HHI", linktype, 0, 0) + opts))
    for ts, pkt in packets:
        units = round(ts * 1e9)
        head = struct.pack("<IIIII", 0, units >> 32, units & 0xFFFFFFFF, len(pkt), len(pkt))
        out.append(block(6, head + pkt))
    return b"".join(out)


def _captures(scratch: Path) -> list[bytes]:
    caps = [p.read_bytes() for p in shared_pcaps()]
    demo = [p for _what, packets in demo_traffic() for p in packets]
    path = scratch / "demo.pcap"
    with PcapWriter(str(path)) as writer:
        for ts, pkt in demo:
            writer.write(ts, pkt)
    caps.append(path.read_bytes())
    caps.append(_pcapng(demo[:12]))
    ether = [(ts, b"\x02" * 12 + b"\x08\x00" + pkt) for ts, pkt in demo[:8]]
    caps.append(_pcapng(ether, linktype=1))
    synth = scratch / "synth.pcap"
    generate(str(synth), flows=8, seed=3, mix="realistic")
    caps.append(synth.read_bytes())
    return caps


def seeds(target: str, scratch: Path | None = None) -> list[bytes]:
    """The seed inputs of ``target`` (see :data:`harness.TARGETS`)."""
    if target in ("tls", "http", "dns", "quic"):
        found = _payloads()[target] + _built()[target]
        modes = {"tls": (0, 4), "http": (0,), "dns": (0, 8, 1), "quic": (0, 0x10, 0x20)}[target]
        unique = list(dict.fromkeys(found))
        return [bytes((m,)) + data for data in unique for m in modes]
    if target == "capture":
        with tempfile.TemporaryDirectory() as tmp:
            return _captures(scratch or Path(tmp))
    if target == "feed":
        return [join_packets(packets) for packets in _conversations() if packets]
    raise KeyError(target)


def write_corpus(target: str, directory: Path) -> int:
    """Write ``target``'s seeds to ``directory`` (one file each, named by hash); return count."""
    directory.mkdir(parents=True, exist_ok=True)
    items = seeds(target)
    for data in items:
        name = hashlib.sha1(data).hexdigest()
        (directory / name).write_bytes(data)
    return len(items)
