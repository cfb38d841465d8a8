"""The packets the censor forges, made in C (``gfwlab._craft``), against the Python that
builds them otherwise (``gfwlab.packet.ip._udp`` and ``_tcp``): the same bytes wherever the C
makes a packet, and the C makes one for every packet with usual fields."""

from __future__ import annotations

import struct

from hypothesis import given, settings
from hypothesis import strategies as st

from gfwlab import _craft
from gfwlab.packet import ip
from gfwlab.packet.ip import PROTO_TCP, PROTO_UDP, build_tcp, build_udp, checksum, parse

_ADDR = st.one_of(st.binary(min_size=4, max_size=4), st.binary(min_size=16, max_size=16))
_ODD_ADDR = st.one_of(_ADDR, st.binary(max_size=20))
_U16 = st.integers(0, 0xFFFF)
_U8 = st.integers(0, 0xFF)
_WIDE = st.one_of(st.integers(-3, 0x1_0002), st.integers(-(2**70), 2**70))
_PAYLOAD = st.binary(max_size=300)


def _python_or_error(build: object, *args: object) -> bytes | type[BaseException]:
    try:
        return build(*args)  # type: ignore[operator,no-any-return]
    except (struct.error, ValueError, OverflowError) as exc:
        return type(exc)


@settings(max_examples=500)
@given(_ADDR, _ADDR, _U16, _U16, _PAYLOAD, _U8, _U16, st.booleans())
def test_udp_of_usual_fields_is_made_in_c_as_in_python(
    src: bytes, dst: bytes, sport: int, dport: int, payload: bytes, ttl: int, ip_id: int, df: bool
) -> None:
    dst = dst[: len(src)] if len(dst) > len(src) else dst + src[len(dst) :]  # one family
    made = _craft.udp(src, dst, sport, dport, payload, ttl, ip_id, df)
    assert made is not None
    assert made == ip._udp(src, dst, sport, dport, payload, ttl, ip_id, df)
    pkt = parse(made)
    assert pkt.proto == PROTO_UDP and pkt.payload == payload
    assert (pkt.sport, pkt.dport) == (sport, dport)
    if len(src) == 4:
        assert checksum(made[:20]) == 0  # the IP header's checksum


@settings(max_examples=500)
@given(
    _ADDR, _ADDR, _U16, _U16, st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1),
    st.integers(5, 15), st.integers(0, 0x1FF), _U16,
    st.binary(max_size=40).map(lambda o: o + bytes(-len(o) % 4)), _PAYLOAD, _U8, _U16,
    st.booleans(), st.booleans(),
)  # fmt: skip
def test_tcp_of_usual_fields_is_made_in_c_as_in_python(
    src: bytes, dst: bytes, sport: int, dport: int, seq: int, ack: int, off: int, flags: int,
    window: int, options: bytes, payload: bytes, ttl: int, ip_id: int, df: bool, bad: bool,
) -> None:  # fmt: skip
    dst = dst[: len(src)] if len(dst) > len(src) else dst + src[len(dst) :]
    byte12 = (off << 4) | ((flags >> 8) & 1)
    args = (src, dst, sport, dport, seq, ack, byte12, flags & 0xFF, window, options, payload, ttl,
            ip_id, df, bad)  # fmt: skip
    made = _craft.tcp(*args)
    assert made is not None
    assert made == ip._tcp(*args)
    if off == 5 + len(options) // 4:  # else the header's length says more or less
        pkt = parse(made)
        assert pkt.proto == PROTO_TCP and (pkt.seq, pkt.ack) == (seq, ack)
        assert pkt.payload == payload and pkt.flags == flags


@settings(max_examples=1000)
@given(_ODD_ADDR, _ODD_ADDR, _WIDE, _WIDE, _PAYLOAD, _WIDE, _WIDE, st.booleans())
def test_udp_with_any_fields_is_the_pythons_or_its_error(
    src: bytes, dst: bytes, sport: int, dport: int, payload: bytes, ttl: int, ip_id: int, df: bool
) -> None:
    """Where the C declines (None), the Python builds the packet or raises; where it makes one,
    it is the Python's. ``build_udp`` gives the one that was made."""
    made = _craft.udp(src, dst, sport, dport, payload, ttl, ip_id, df)
    python = _python_or_error(ip._udp, src, dst, sport, dport, payload, ttl, ip_id, df)
    if made is not None:
        assert made == python
    assert _python_or_error(
        lambda: build_udp(src, dst, sport, dport, payload, ttl=ttl, ip_id=ip_id, df=df)
    ) == _python_or_error(ip._udp, src, dst, sport, dport, payload, ttl, ip_id & 0xFFFF, df)


@settings(max_examples=1000)
@given(
    _ODD_ADDR, _ODD_ADDR, _WIDE, _WIDE, _WIDE, _WIDE, _WIDE, _WIDE, _WIDE,
    st.binary(max_size=12), _PAYLOAD, _WIDE, _WIDE, st.booleans(), st.booleans(),
)  # fmt: skip
def test_tcp_with_any_fields_is_the_pythons_or_its_error(
    src: bytes, dst: bytes, sport: int, dport: int, seq: int, ack: int, byte12: int,
    flags: int, window: int, options: bytes, payload: bytes, ttl: int, ip_id: int, df: bool,
    bad: bool,
) -> None:  # fmt: skip
    args = (src, dst, sport, dport, seq, ack, byte12, flags, window, options, payload, ttl,
            ip_id, df, bad)  # fmt: skip
    made = _craft.tcp(*args)
    if made is not None:
        assert made == ip._tcp(*args)


def test_declined_arguments_reach_the_python_and_its_errors() -> None:
    v4, v6 = bytes([198, 18, 0, 1]), bytes(15) + b"\x01"
    assert _craft.udp(v4, v6, 1, 2, b"", 64, 0, False) is None  # two families
    assert _craft.udp(b"\x01\x02\x03", b"\x01\x02\x03", 1, 2, b"", 64, 0, False) is None
    assert _craft.udp(v4, v4, 70000, 2, b"", 64, 0, False) is None
    assert _craft.udp(v4, v4, 1, 2, bytearray(b"x"), 64, 0, False) is None  # not bytes
    assert _craft.udp(v4, v4, 1, 2, b"x", 2**80, 0, False) is None  # no overflow error
    assert _craft.udp(v4, v4, 1, 2, bytes(0xFFFF - 28 + 1), 64, 0, False) is None  # too long
    assert _craft.udp(v4, v4, 1, 2, bytes(0xFFFF - 28), 64, 0, False) is not None
    assert (
        _craft.tcp(v4, v4, 1, 2, 0, 0, 0x50, 0x10, 65535, b"\x01", b"", 64, 0, True, False) is None
    )
    for bad in (
        lambda: build_udp(v4, v6, 1, 2, b""),
        lambda: build_udp(v4, v4, 70000, 2, b""),
        lambda: build_tcp(v4, v4, 1, 2, window=70000),
        lambda: build_tcp(v4, v4, 1, 2, data_offset=16),
    ):
        try:
            bad()
        except (ValueError, struct.error):
            continue
        raise AssertionError("no error")
    # The IP ID is taken modulo 2**16 as before; an IPv6 packet has none.
    assert build_udp(v4, v4, 1, 2, b"x", ip_id=0x1_0005) == build_udp(v4, v4, 1, 2, b"x", ip_id=5)
    assert build_tcp(v4, v4, 1, 2, flags=0x1FF)[33] == 0xFF


def test_a_udp_checksum_of_zero_is_sent_as_all_ones() -> None:
    """Zero in a UDP checksum means none (RFC 768): a sum that comes to zero is sent as 0xFFFF."""
    src, dst = bytes([198, 18, 0, 1]), bytes([198, 19, 0, 53])
    base = (ip._words(src + dst) + PROTO_UDP + 2 * 10 + 40000 + 53) % 0xFFFF
    payload = ((0xFFFF - base) % 0xFFFF).to_bytes(2, "big")  # the words then sum to 0 mod 0xFFFF
    made = _craft.udp(src, dst, 40000, 53, payload, 64, 0, False)
    assert made is not None and made[26:28] == b"\xff\xff"
    assert made == ip._udp(src, dst, 40000, 53, payload, 64, 0, False)
