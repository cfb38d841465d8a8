"""IPv4, IPv6, TCP and UDP: parsing as the censor reads them, building with correct checksums.

Parsing is deliberately lenient where the GFW is lenient (spec §9): the TCP checksum is not
checked, the TTL is kept but not judged, and any TCP header length that fits is accepted. What
cannot be parsed at all raises :class:`~gfwlab.errors.MalformedPacket` with an ``ip.*``,
``tcp.*`` or ``udp.*`` kind; the engine turns it into an anomaly event.

Building: :func:`build_udp` and :func:`build_tcp` have the packet made in C
(``gfwlab/_craft.c``, a forged answer or reset for nearly every event) and build it here,
with the same bytes, only where that declines (an unusual address or a field out of range,
whose error comes from here).
"""

from __future__ import annotations

import socket
import struct
from dataclasses import dataclass
from typing import Final

from gfwlab import _craft
from gfwlab.errors import MalformedPacket

PROTO_TCP: Final = 6
PROTO_UDP: Final = 17

# TCP flag bits.
FIN: Final = 0x01
SYN: Final = 0x02
RST: Final = 0x04
PSH: Final = 0x08
ACK: Final = 0x10
URG: Final = 0x20
ECE: Final = 0x40
CWR: Final = 0x80

# IPv6 extension headers that are skipped to reach the transport header.
_IPV6_EXT: Final = frozenset({0, 43, 60, 135, 139, 140})
_IPV6_FRAGMENT: Final = 44

_V4: Final = struct.Struct("!BBHHHBBH4s4s")
_V6: Final = struct.Struct("!IHBB")
_TCP: Final = struct.Struct("!HHIIBBHHH")
_UDP: Final = struct.Struct("!HHHH")


@dataclass(init=False)
class Packet:
    """One parsed IP packet. Addresses are kept as packed bytes (4 or 16) for speed."""

    raw: bytes
    """The whole IP packet, as given."""
    version: int
    """4 or 6."""
    src: bytes
    """Source address, packed."""
    dst: bytes
    """Destination address, packed."""
    proto: int
    """Transport protocol number (after IPv6 extension headers)."""
    ttl: int
    """IPv4 TTL or IPv6 hop limit."""
    ip_id: int
    """IPv4 identification (0 for IPv6)."""
    df: bool
    """IPv4 don't-fragment bit (False for IPv6)."""
    fragment: bool
    """True if this is an IP fragment (offset > 0 or more-fragments set)."""
    l4: int
    """Offset of the transport header in ``raw``."""
    sport: int = 0
    dport: int = 0
    seq: int = 0
    ack: int = 0
    flags: int = 0
    """TCP flags (0 for UDP)."""
    window: int = 0
    tcp_hlen: int = 0
    """TCP header length in bytes, options included."""
    payload: bytes = b""
    """The transport payload (TCP segment data or UDP datagram body)."""

    # Written out: a dataclass's generated __init__ runs interpreted even where the class is
    # compiled (gfwlab._build); this one is compiled with it.
    def __init__(
        self,
        raw: bytes,
        version: int,
        src: bytes,
        dst: bytes,
        proto: int,
        ttl: int,
        ip_id: int,
        df: bool,
        fragment: bool,
        l4: int,
        sport: int = 0,
        dport: int = 0,
        seq: int = 0,
        ack: int = 0,
        flags: int = 0,
        window: int = 0,
        tcp_hlen: int = 0,
        payload: bytes = b"",
    ) -> None:
        self.raw = raw
        self.version = version
        self.src = src
        self.dst = dst
        self.proto = proto
        self.ttl = ttl
        self.ip_id = ip_id
        self.df = df
        self.fragment = fragment
        self.l4 = l4
        self.sport = sport
        self.dport = dport
        self.seq = seq
        self.ack = ack
        self.flags = flags
        self.window = window
        self.tcp_hlen = tcp_hlen
        self.payload = payload

    @property
    def src_text(self) -> str:
        return addr_text(self.src)

    @property
    def dst_text(self) -> str:
        return addr_text(self.dst)

    @property
    def tcp_options(self) -> bytes:
        if self.proto != PROTO_TCP:
            return b""
        return self.raw[self.l4 + 20 : self.l4 + self.tcp_hlen]


_TEXTS: Final[dict[bytes, str]] = {}
_TEXTS_MAX: Final = 1 << 16


def addr_text(addr: bytes) -> str:
    """Packed IPv4/IPv6 address to text.

    Every event names its flow's two addresses, and a capture's or a lab's addresses repeat: up
    to :data:`_TEXTS_MAX` texts are kept, forgotten all at once when full. A new IPv4 address is
    written out (four numbers: ``inet_ntop`` formats through printf, several times the cost), a
    new IPv6 one by ``inet_ntop`` (zeros compressed)."""
    text = _TEXTS.get(addr)
    if text is None:
        if len(addr) == 4:
            text = f"{addr[0]}.{addr[1]}.{addr[2]}.{addr[3]}"
        else:
            text = socket.inet_ntop(socket.AF_INET6, addr)
        if len(_TEXTS) >= _TEXTS_MAX:
            _TEXTS.clear()
        _TEXTS[addr] = text
    return text


def addr_bytes(text: str) -> bytes:
    """Text IPv4/IPv6 address to packed bytes; raises ValueError if it is neither."""
    try:
        return socket.inet_pton(socket.AF_INET, text)
    except OSError:
        pass
    try:
        return socket.inet_pton(socket.AF_INET6, text)
    except OSError:
        raise ValueError(f"not an IP address: {text!r}") from None


def parse(raw: bytes) -> Packet:
    """Parse an IP packet (IPv4 or IPv6) with its TCP or UDP header.

    Other transport protocols are returned with ``payload`` set to the transport bytes and no
    ports. Raises MalformedPacket if the IP or transport header does not fit.
    """
    # This runs once per packet, so the IPv4 header is read inline and the Packet is built
    # once, with every field, instead of being built and then patched by a transport parser.
    # Its arguments are positional (in field order): keywords make the call three times slower.
    if not raw:
        raise MalformedPacket("ip.empty", 0)
    first = raw[0]
    version = first >> 4
    if version == 4:
        if len(raw) < 20:
            raise MalformedPacket("ip.truncated", 0, f"{len(raw)} bytes")
        # Read a byte at a time: compiled, that is native code, where unpack_from is a call
        # that builds a tuple and an int object per field.
        total, ip_id = raw[2] << 8 | raw[3], raw[4] << 8 | raw[5]
        frag, ttl, proto, src, dst = raw[6] << 8 | raw[7], raw[8], raw[9], raw[12:16], raw[16:20]
        l4 = (first & 0x0F) * 4
        if l4 < 20 or l4 > len(raw):
            raise MalformedPacket("ip.bad_ihl", 0, f"header length {l4}")
        # A capture may be snapped short or padded; trust what is there, but a total length
        # shorter than the header is garbage.
        if total < l4:
            raise MalformedPacket("ip.bad_total_length", 2, f"total length {total}")
        if total < len(raw):
            raw = raw[:total]
        df = bool(frag & 0x4000)
        fragment = (frag & 0x3FFF) != 0
    elif version == 6:
        raw, proto, fragment, l4 = _parse_v6(raw)
        src, dst, ttl, ip_id, df = raw[8:24], raw[24:40], raw[7], 0, False
    else:
        raise MalformedPacket("ip.bad_version", 0, f"version {version}")

    if not fragment:
        if proto == PROTO_TCP:
            if len(raw) - l4 < 20:
                raise MalformedPacket("tcp.truncated", l4, f"{len(raw) - l4} bytes")
            sport, dport = raw[l4] << 8 | raw[l4 + 1], raw[l4 + 2] << 8 | raw[l4 + 3]
            seq = raw[l4 + 4] << 24 | raw[l4 + 5] << 16 | raw[l4 + 6] << 8 | raw[l4 + 7]
            ack = raw[l4 + 8] << 24 | raw[l4 + 9] << 16 | raw[l4 + 10] << 8 | raw[l4 + 11]
            off, flags, window = raw[l4 + 12], raw[l4 + 13], raw[l4 + 14] << 8 | raw[l4 + 15]
            hlen = (off >> 4) * 4
            if hlen < 20 or l4 + hlen > len(raw):
                # The GFW parses any header length that fits (S&P'25); one that does not fit
                # is garbage.
                raise MalformedPacket("tcp.bad_data_offset", l4 + 12, f"header length {hlen}")
            flags |= (off & 0x01) << 8
            return Packet(
                raw, version, src, dst, proto, ttl, ip_id, df, fragment, l4,
                sport, dport, seq, ack, flags, window, hlen, raw[l4 + hlen :],
            )  # fmt: skip
        if proto == PROTO_UDP:
            if len(raw) - l4 < 8:
                raise MalformedPacket("udp.truncated", l4, f"{len(raw) - l4} bytes")
            sport, dport = raw[l4] << 8 | raw[l4 + 1], raw[l4 + 2] << 8 | raw[l4 + 3]
            length = raw[l4 + 4] << 8 | raw[l4 + 5]
            end = l4 + length if 8 <= length <= len(raw) - l4 else len(raw)
            return Packet(
                raw, version, src, dst, proto, ttl, ip_id, df, fragment, l4,
                sport, dport, 0, 0, 0, 0, 0, raw[l4 + 8 : end],
            )  # fmt: skip
    return Packet(raw, version, src, dst, proto, ttl, ip_id, df, fragment, l4, payload=raw[l4:])


def _parse_v6(raw: bytes) -> tuple[bytes, int, bool, int]:
    """The IPv6 packet cut to its payload length, the transport protocol, whether it is a
    fragment, and the offset of the transport header (extension headers skipped)."""
    if len(raw) < 40:
        raise MalformedPacket("ip.truncated", 0, f"{len(raw)} bytes")
    plen = (raw[4] << 8) | raw[5]
    end = min(len(raw), 40 + plen) if plen else len(raw)
    nxt = raw[6]
    off = 40
    ext_at = 6  # where the header that named the next one is (its length field is read)
    fragment = False
    while nxt in _IPV6_EXT or nxt == _IPV6_FRAGMENT:
        if off + 8 > end:
            # An offset inside the packet: the extension header that does not fit, or the one
            # whose length ran past the end.
            raise MalformedPacket("ip.v6_ext_truncated", off if off <= end else ext_at)
        ext_at = off
        if nxt == _IPV6_FRAGMENT:
            frag = (raw[off + 2] << 8) | raw[off + 3]
            fragment = fragment or (frag & 0xFFF9) != 0
            nxt, off = raw[off], off + 8
        elif nxt == 51:  # pragma: no cover - AH is not in _IPV6_EXT; kept for clarity
            nxt, off = raw[off], off + (raw[off + 1] + 2) * 4
        else:
            nxt, off = raw[off], off + (raw[off + 1] + 1) * 8
    if off > end:
        raise MalformedPacket("ip.v6_ext_truncated", ext_at, f"extension header runs to {off}")
    return raw[:end], nxt, fragment, off


# --------------------------------------------------------------------------- building


def peek_tcp_flags(packet: bytes) -> int:
    """The TCP flags of an IP packet read straight from its bytes, without :func:`parse`; -1 if
    it is not an unfragmented TCP segment (IPv6: only with TCP as the first next header). For
    adapters that look at every packet for one bit."""
    if len(packet) < 40:
        return -1
    if packet[0] >> 4 == 4:
        if packet[9] != PROTO_TCP or packet[6] & 0x3F or packet[7]:
            return -1
        off = (packet[0] & 15) * 4
    elif packet[6] == PROTO_TCP:
        off = 40
    else:
        return -1
    return packet[off + 13] if len(packet) > off + 13 else -1


def ipv4_transport(raw: bytes) -> tuple[int, int, int, int]:
    """Where an unfragmented IPv4 TCP or UDP packet's parts lie, read straight from its bytes
    after the checks :func:`parse` makes on the header lengths and the total length: its
    protocol, its transport header's offset, its data's offset (past the TCP header, or the UDP
    one) and its end (the total length, or the buffer's end if that comes first, as
    :func:`parse` trusts it). Where :func:`parse` would raise, or the packet is not that, the
    protocol is -1. For adapters that need a field or two of the packets they are given, most
    of which are IPv4 (:func:`is_tcp_data`, ``live/nflog.py`` ``connection``)."""
    n = len(raw)
    if n < 20 or raw[0] >> 4 != 4 or raw[6] & 0x3F or raw[7]:
        return -1, 0, 0, 0
    l4, proto = (raw[0] & 15) * 4, raw[9]
    end = min(raw[2] << 8 | raw[3], n)
    if l4 < 20 or end < l4:
        return -1, 0, 0, 0
    if proto == PROTO_TCP:
        if end - l4 < 20:
            return -1, 0, 0, 0
        data = l4 + (raw[l4 + 12] >> 4) * 4
        if data < l4 + 20 or data > end:
            return -1, 0, 0, 0
        return proto, l4, data, end
    if proto == PROTO_UDP and end - l4 >= 8:
        return proto, l4, l4 + 8, end
    return -1, 0, 0, 0


def is_tcp_data(packet: bytes) -> bool:
    """Whether an IPv4 packet is an unfragmented TCP segment with data and neither SYN nor RST
    (:func:`ipv4_transport`): where this says True, :func:`parse` either reads the same or
    raises. False says nothing (IPv6 included): the caller parses. The live censor asks it of
    most packets it is given (a connection's request, after the kernel let the handshake
    through)."""
    proto, l4, data, end = ipv4_transport(packet)
    return proto == PROTO_TCP and data < end and not packet[l4 + 13] & (SYN | RST)


def checksum(data: bytes) -> int:
    """The Internet checksum (RFC 1071) of ``data``.

    The one's complement sum of the 16-bit words is their sum modulo 0xFFFF (2**16 is 1 modulo
    0xFFFF, which is what the end-around carry does), and the words' sum modulo 0xFFFF is that of
    the whole of ``data`` read as one big number: one division in C instead of a word at a time.
    The sum is 0xFFFF, not 0, once any word is not zero."""
    whole = _words(data)
    return _folded(whole, whole != 0)


def _folded(total: int, nonzero: bool) -> int:
    """The checksum of data whose words sum to ``total`` (in any grouping: see
    :func:`checksum`), ``nonzero`` if any of its words is not zero."""
    total %= 0xFFFF
    if total == 0 and nonzero:
        total = 0xFFFF
    return ~total & 0xFFFF


def _words(data: bytes) -> int:
    """``data`` as one big number, padded to whole words: its share of a checksum's sum.

    Pieces of even length each add their own number to the sum (a number shifted by whole
    words is the same modulo 0xFFFF), so a packet's checksum is summed from its fields and its
    payload without joining them first."""
    if len(data) % 2:
        return int.from_bytes(data, "big") << 8
    return int.from_bytes(data, "big")


def build_tcp(
    src: bytes,
    dst: bytes,
    sport: int,
    dport: int,
    *,
    seq: int = 0,
    ack: int = 0,
    flags: int = ACK,
    window: int = 65535,
    options: bytes = b"",
    payload: bytes = b"",
    ttl: int = 64,
    ip_id: int = 0,
    df: bool = True,
    bad_checksum: bool = False,
    data_offset: int | None = None,
) -> bytes:
    """Build an IP packet carrying a TCP segment, with correct IP and TCP checksums.

    ``options`` is padded to a multiple of 4 bytes. ``data_offset`` (in 32-bit words) overrides
    the header-length field, and ``bad_checksum`` corrupts the TCP checksum: both are for
    insertion packets of evasion strategies (spec §9).
    """
    if len(options) % 4:
        options += b"\x00" * (4 - len(options) % 4)
    hlen = 20 + len(options)
    off = data_offset if data_offset is not None else hlen // 4
    seq &= 0xFFFFFFFF
    ack &= 0xFFFFFFFF
    byte12 = (off << 4) | ((flags >> 8) & 1)
    flags &= 0xFF
    made = _craft.tcp(src, dst, sport, dport, seq, ack, byte12, flags, window, options, payload,
                      ttl, ip_id & 0xFFFF, df, bad_checksum)  # fmt: skip
    if made is not None:
        return made
    return _tcp(src, dst, sport, dport, seq, ack, byte12, flags, window, options, payload, ttl,
                ip_id, df, bad_checksum)  # fmt: skip


def _tcp(
    src: bytes,
    dst: bytes,
    sport: int,
    dport: int,
    seq: int,
    ack: int,
    byte12: int,
    flags: int,
    window: int,
    options: bytes,
    payload: bytes,
    ttl: int,
    ip_id: int,
    df: bool,
    bad_checksum: bool,
) -> bytes:
    """:func:`build_tcp`'s packet, built here (``_craft.tcp`` takes the same arguments)."""
    length = 20 + len(options) + len(payload)
    addrs = _words(src + dst)
    total = addrs + PROTO_TCP + length + sport + dport + seq + ack + (byte12 << 8)
    total += flags + window + _words(payload)
    if options:
        total += _words(options)
    csum = _folded(total, True)  # the protocol number is never zero
    if bad_checksum:
        csum ^= 0xBEEF
    hdr = _TCP.pack(sport, dport, seq, ack, byte12, flags, window, csum, 0)
    return _ip_header(src, dst, PROTO_TCP, length, ttl, ip_id, df, addrs) + hdr + options + payload


def build_udp(
    src: bytes,
    dst: bytes,
    sport: int,
    dport: int,
    payload: bytes,
    *,
    ttl: int = 64,
    ip_id: int = 0,
    df: bool = False,
) -> bytes:
    """Build an IP packet carrying a UDP datagram, with correct checksums."""
    made = _craft.udp(src, dst, sport, dport, payload, ttl, ip_id & 0xFFFF, df)
    if made is not None:
        return made
    return _udp(src, dst, sport, dport, payload, ttl, ip_id, df)


def _udp(
    src: bytes, dst: bytes, sport: int, dport: int, payload: bytes, ttl: int, ip_id: int, df: bool
) -> bytes:
    """:func:`build_udp`'s packet, built here (``_craft.udp`` takes the same arguments)."""
    length = 8 + len(payload)
    addrs = _words(src + dst)
    total = addrs + PROTO_UDP + length + sport + dport + length + _words(payload)
    csum = _folded(total, True) or 0xFFFF
    hdr = _UDP.pack(sport, dport, length, csum)
    return _ip_header(src, dst, PROTO_UDP, length, ttl, ip_id, df, addrs) + hdr + payload


def _ip_header(
    src: bytes, dst: bytes, proto: int, length: int, ttl: int, ip_id: int, df: bool, addrs: int
) -> bytes:
    """The IPv4 or IPv6 header (chosen by the address length) of a ``length``-byte body;
    ``addrs`` is the addresses' share of a checksum (:func:`_words`)."""
    if len(src) != len(dst):
        raise ValueError("source and destination address families differ")
    if len(src) == 4:
        ip_id &= 0xFFFF
        frag = 0x4000 if df else 0
        total = 0x4500 + 20 + length + ip_id + frag + (ttl << 8) + proto + addrs
        return _V4.pack(0x45, 0, 20 + length, ip_id, frag, ttl, proto, _folded(total, True),
                        src, dst)  # fmt: skip
    return _V6.pack(6 << 28, length, proto, ttl) + src + dst


def build_ip(
    src: bytes,
    dst: bytes,
    proto: int,
    body: bytes,
    *,
    ttl: int = 64,
    ip_id: int = 0,
    df: bool = False,
) -> bytes:
    """Wrap ``body`` in an IPv4 or IPv6 header (chosen by the address length)."""
    addrs = _words(src + dst) if len(src) == 4 else 0
    return _ip_header(src, dst, proto, len(body), ttl, ip_id, df, addrs) + body


def build_fragment(packet: bytes, offset: int, data: bytes, *, more: bool, ident: int = 0) -> bytes:
    """A fragment of ``packet`` (a whole IP packet, used for its header): ``data`` at byte
    ``offset`` (a multiple of 8) of the original payload, with more-fragments ``more``. IPv4
    keeps the packet's IP ID; an IPv6 fragment gets a Fragment header with ID ``ident`` right
    after the fixed header (``packet`` must have no extension headers)."""
    if offset % 8:
        raise ValueError(f"fragment offsets are multiples of 8, got {offset}")
    if packet[0] >> 4 == 6:
        frag = struct.pack("!BBHI", packet[6], 0, offset | int(more), ident)
        head = packet[:4] + struct.pack("!H", 8 + len(data)) + bytes((_IPV6_FRAGMENT,))
        return head + packet[7:40] + frag + data
    ihl = (packet[0] & 0x0F) * 4
    hdr = bytearray(packet[:ihl])
    struct.pack_into("!H", hdr, 2, ihl + len(data))
    word: int = struct.unpack_from("!H", hdr, 6)[0]
    struct.pack_into("!H", hdr, 6, (word & 0x4000) | (0x2000 if more else 0) | offset // 8)
    struct.pack_into("!H", hdr, 10, 0)
    struct.pack_into("!H", hdr, 10, checksum(bytes(hdr)))
    return bytes(hdr) + data


def fragment(packet: bytes, size: int, *, ident: int = 0) -> list[bytes]:
    """``packet`` cut into fragments carrying ``size`` payload bytes each (a multiple of 8), in
    order. IPv4 keeps the IP ID (set a non-zero one when building ``packet``); IPv6 fragments
    carry ``ident``."""
    if size <= 0 or size % 8:
        raise ValueError(f"fragment size must be a positive multiple of 8, got {size}")
    head = 40 if packet[0] >> 4 == 6 else (packet[0] & 0x0F) * 4
    body = packet[head:]
    return [
        build_fragment(
            packet, off, body[off : off + size], more=off + size < len(body), ident=ident
        )
        for off in range(0, len(body), size)
    ]
