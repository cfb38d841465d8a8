"""``packet.ip.parse`` reads an IPv4 header and its TCP or UDP header a byte at a time (native
code, compiled): held here to a ``struct`` reading of the same fields, on any bytes."""

from __future__ import annotations

import struct

from hypothesis import given, settings
from hypothesis import strategies as st

from gfwlab.errors import MalformedPacket
from gfwlab.packet.ip import PROTO_TCP, PROTO_UDP, addr_bytes, build_tcp, build_udp, parse

_V4 = struct.Struct("!2xHHHBB2x4s4s")  # total length, id, flags+offset, TTL, proto, addrs
_TCP = struct.Struct("!HHIIBBH")  # ports, seq, ack, data offset, flags, window
_UDP = struct.Struct("!HHH")  # ports, length
C, S = addr_bytes("198.18.0.2"), addr_bytes("198.19.0.2")


def _fields(raw: bytes) -> tuple[object, ...] | str:
    """What parse must give for an IPv4 packet, read with struct (a kind: it must raise)."""
    if len(raw) < 20:
        return "ip.truncated"
    total, ip_id, frag, ttl, proto, src, dst = _V4.unpack_from(raw)
    l4 = (raw[0] & 0x0F) * 4
    if l4 < 20 or l4 > len(raw):
        return "ip.bad_ihl"
    if total < l4:
        return "ip.bad_total_length"
    raw = raw[:total]
    head = (ip_id, bool(frag & 0x4000), frag & 0x3FFF != 0, ttl, proto, src, dst, l4)
    if frag & 0x3FFF or proto not in (PROTO_TCP, PROTO_UDP):
        return (*head, raw[l4:])
    if proto == PROTO_TCP:
        if len(raw) - l4 < 20:
            return "tcp.truncated"
        sport, dport, seq, ack, off, flags, window = _TCP.unpack_from(raw, l4)
        hlen = (off >> 4) * 4
        if hlen < 20 or l4 + hlen > len(raw):
            return "tcp.bad_data_offset"
        flags |= (off & 1) << 8
        return (*head, sport, dport, seq, ack, flags, window, hlen, raw[l4 + hlen :])
    if len(raw) - l4 < 8:
        return "udp.truncated"
    sport, dport, length = _UDP.unpack_from(raw, l4)
    end = l4 + length if 8 <= length <= len(raw) - l4 else len(raw)
    return (*head, sport, dport, raw[l4 + 8 : end])


def _parsed(raw: bytes) -> tuple[object, ...] | str:
    try:
        p = parse(raw)
    except MalformedPacket as exc:
        return exc.kind
    head = (p.ip_id, p.df, p.fragment, p.ttl, p.proto, p.src, p.dst, p.l4)
    if p.fragment or p.proto not in (PROTO_TCP, PROTO_UDP):
        return (*head, p.payload)
    if p.proto == PROTO_TCP:
        tcp = (p.seq, p.ack, p.flags, p.window, p.tcp_hlen)
        return (*head, p.sport, p.dport, *tcp, p.payload)
    return (*head, p.sport, p.dport, p.payload)


def _with_bytes(raw: bytes, changes: list[tuple[int, int]]) -> bytes:
    out = bytearray(raw)
    for at, value in changes:
        if at < len(out):
            out[at] = value
    out[0] = 0x40 | out[0] & 15  # IPv4, whatever the header length
    return bytes(out)


def _built(proto: str, payload: bytes, seq: int, flags: int) -> bytes:
    if proto == "tcp":
        return build_tcp(C, S, 40000, 80, seq=seq, ack=seq ^ 0xFFFF, flags=flags, payload=payload)
    return build_udp(C, S, 5353, 53, payload)


@settings(max_examples=3000)
@given(
    raw=st.one_of(
        st.binary(max_size=80).map(lambda b: bytes([0x40 | (b[0] & 15 if b else 5)]) + b[1:]),
        # a real TCP or UDP packet, some of its bytes changed and its end cut
        st.tuples(
            st.sampled_from(["tcp", "udp"]),
            st.binary(max_size=30),
            st.integers(0, 0xFFFFFFFF),
            st.integers(0, 0x1FF),
            st.lists(st.tuples(st.integers(0, 40), st.integers(0, 0xFF)), max_size=4),
            st.integers(0, 8),
        ).map(lambda t: _with_bytes(_built(t[0], t[1], t[2], t[3]), t[4])[: 80 - t[5]]),
    )
)
def test_ipv4_read_as_struct_reads_it(raw: bytes) -> None:
    assert _parsed(raw) == _fields(raw)
