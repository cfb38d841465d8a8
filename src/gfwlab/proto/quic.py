"""QUIC client Initials as the GFW's QUIC SNI filter reads them (spec §5).

Since 2024-04-07 the GFW decrypts the first UDP datagram of a flow as a QUIC **v1** Initial
(keys derived from the Destination Connection ID, RFC 9001 §5.2) and reads the SNI of the
ClientHello inside. :func:`parse_initial` is that dissector. It parses the long header, removes
header protection (RFC 9001 §5.4), decrypts the payload with AES-128-GCM (§5.3) and walks the
frames of the **first packet only** (coalesced packets after it are counted, not read). QUIC v2
(RFC 9369) is decrypted too, so that the policy can tell it apart: the GFW does not block v2.
The keys, the header protection and the AEAD are one call of a small C module on OpenSSL's
libcrypto (:mod:`gfwlab.proto._initial`), a tenth of the cost through the ``cryptography``
package's cipher objects, which :mod:`gfwlab.proto.quic_build` (building Initials) still uses.

The results of spec §5 Table 3 (artifact ``what-triggers-blocking``, README Table 3, payloads
generated per ``utils/quic-packet-builder/payload-gen-reference.md``) fix how the censor reads an
Initial where the RFC leaves it room or the client breaks the rules. Each reading is marked
"Table 3 row N" where the code implements it:

- no minimum datagram size is required: payloads 1, 4 and 6 are not padded to 1,200 bytes and
  were blocked;
- row 1 (1-byte packet number, blocked) and row 4 (both CIDs empty, blocked): nothing special,
  the RFC allows both;
- row 2 (last byte removed, not blocked): the Length field overruns the datagram
  (``quic.truncated``); a datagram cut inside the Length is never decrypted;
- row 3 (version 0x00000002, not blocked) and row 10 (QUIC v2, not blocked): an unknown version
  is not an Initial here (``None``); v2 is parsed and reported with its version;
- row 5 (a connection ID of length 255, not blocked): a CID longer than 20 bytes is malformed
  for v1 and v2 (RFC 9000 §17.2), ``quic.cid_too_long``;
- row 6 (CRYPTO frame of length 0 that still carries data, blocked): the published payload
  (``exp10.bin``, spec §14e) is ``06 00 00 00 01 00 00 3c ...``: CRYPTO, Offset 0, Length 0, one
  more zero byte, then the ClientHello. How the censor reads it is unknown (spec §12.8); the three
  readings consistent with rows 6 and 8 are :data:`CRYPTO_READINGS`, chosen with
  ``crypto_reading``: ``skip-zeros`` (the default: after a zero Length, zero bytes are skipped as
  PADDING and the data runs to the end of the packet), ``scan`` (after a zero Length, scan forward
  for a handshake header ``01`` + 3-byte length that fits) and ``two-byte-length`` (the Length is
  read as a fixed two-byte field, ``00 00`` meaning "to the end of the packet"). In each, the
  handshake message's own length bounds the ClientHello;
- row 7 (blocked name only in ALPN, not blocked): only the server_name extension is read;
- row 8 (one CRYPTO frame after a PING frame and PADDING, with PINGs after it, not blocked):
  the censor reads the ClientHello from the **first frame that is not PADDING** only. That frame
  must be a CRYPTO frame at offset 0 holding the whole ClientHello; CRYPTO frames are not
  reassembled, neither within a packet (the Chrome-style split) nor across packets (spec §5,
  "ClientHello split across Initial packets evades"). Leading PADDING is skipped because the
  Initials the GFW blocked in the artifact's captures (``availability-attack/pcap``,
  ``flow-tracking-time``) start with PADDING and then the CRYPTO frame;
- row 9 (ECH with an unlisted outer SNI, not blocked): the outer SNI is the SNI.

Whether it is the PING in payload 8 that stops the censor, or any frame other than PADDING
before the CRYPTO frame, was not tested separately; this reading takes the latter.

Contract (STYLE.md habit 5): ``None`` for a datagram that is not a client Initial of a known
version (short header, version negotiation, unknown version, Handshake/0-RTT/Retry);
:class:`MalformedPacket` with a ``quic.*`` kind for one that claims to be an Initial but cannot
be read (``quic.truncated``, ``quic.cid_too_long``, ``quic.decrypt_failed``); oddities past the
decryption are ``anomalies``. A ClientHello that is not whole in the first frame gives
``client_hello=None``, not an error. A malformed ClientHello raises ``tls.*`` from
:func:`gfwlab.proto.tls.client_hello_in`.

:func:`gfwlab.proto.quic_build.build_initial` makes correctly protected client Initials,
including the Table 3 variants, for tests, probes and synthetic traffic.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, Literal

from gfwlab._frozen import Frozen
from gfwlab.errors import MalformedPacket
from gfwlab.proto._initial import open_initial
from gfwlab.proto._scan import zero_run
from gfwlab.proto.tls import (
    HANDSHAKE_CLIENT_HELLO,
    HANDSHAKE_HEADER_LEN,
    ClientHello,
    client_hello_in,
)

QUIC_V1: Final = 0x00000001
"""RFC 9000."""
QUIC_V2: Final = 0x6B3343CF
"""RFC 9369."""
MAX_CID_LEN: Final = 20
"""RFC 9000 §17.2: v1 (and v2) connection IDs are at most 20 bytes."""
TAG_LEN: Final = 16
SAMPLE_LEN: Final = 16
EXT_QUIC_TRANSPORT_PARAMETERS: Final = 0x0039
"""RFC 9001 §8.2."""

FRAME_PADDING: Final = 0x00
FRAME_PING: Final = 0x01
FRAME_ACK: Final = 0x02
FRAME_ACK_ECN: Final = 0x03
FRAME_CRYPTO: Final = 0x06
CryptoReading = Literal["skip-zeros", "scan", "two-byte-length"]
CRYPTO_READINGS: Final[tuple[CryptoReading, ...]] = ("skip-zeros", "scan", "two-byte-length")
"""How the censor reads a CRYPTO frame whose Length is zero but which carries data (Table 3 row
6, spec §14e): the candidate readings, the default first."""
FRAME_CONNECTION_CLOSE: Final = 0x1C

# Per version: initial salt (RFC 9001 §5.2, RFC 9369 §3.3.1), key/iv/hp labels (RFC 9001 §5.1,
# RFC 9369 §3.3.2) and the long-header type code of Initial (RFC 9000 §17.2, RFC 9369 §3.2).
SALTS: Final = {
    QUIC_V1: bytes.fromhex("38762cf7f55934b34d179ae6a4c80cadccbb7f0a"),
    QUIC_V2: bytes.fromhex("0dede3def700a6db819381be6e269dcbf9bd2ed9"),
}
LABELS: Final = {
    QUIC_V1: (b"quic key", b"quic iv", b"quic hp"),
    QUIC_V2: (b"quicv2 key", b"quicv2 iv", b"quicv2 hp"),
}
INITIAL_TYPE: Final = {QUIC_V1: 0b00, QUIC_V2: 0b01}
_FRAME_NAMES: Final = {
    FRAME_PADDING: "padding",
    FRAME_PING: "ping",
    FRAME_ACK: "ack",
    FRAME_ACK_ECN: "ack",
    FRAME_CRYPTO: "crypto",
    FRAME_CONNECTION_CLOSE: "connection_close",
}


@dataclass(frozen=True, init=False)
class QuicInitial(Frozen):
    """What the censor reads from the first packet of a client Initial datagram."""

    version: int
    """QUIC_V1 or QUIC_V2."""
    dcid: bytes
    """Destination Connection ID: the key derivation input."""
    scid: bytes
    """Source Connection ID."""
    token: bytes
    """The Initial's token (empty for a first Initial)."""
    packet_number: int
    """The packet number, as sent (truncated to ``pn_length`` bytes)."""
    pn_length: int
    """Packet number length in bytes, 1-4."""
    frames: tuple[str, ...]
    """Frame kinds in order (``padding``, ``ping``, ``ack``, ``crypto``, ``connection_close``,
    or ``0xNN`` for a type not allowed in Initial packets, where the walk stops). A run of
    PADDING bytes is one ``padding``."""
    crypto_offsets: tuple[int, ...]
    """The Offset field of each CRYPTO frame, in order."""
    client_hello: ClientHello | None
    """The ClientHello as the censor reads it (first frame only), or None."""
    anomalies: tuple[str, ...]
    """Oddities, e.g. ``quic.crypto_not_first``, ``quic.client_hello_split``."""
    coalesced_rest: int
    """Bytes in the datagram after the first packet (coalesced packets or junk)."""

    # Written out: a dataclass's generated __init__ runs interpreted even where the class is
    # compiled (gfwlab._build); this one is compiled with it (one per client Initial).
    def __init__(
        self,
        version: int,
        dcid: bytes,
        scid: bytes,
        token: bytes,
        packet_number: int,
        pn_length: int,
        frames: tuple[str, ...],
        crypto_offsets: tuple[int, ...],
        client_hello: ClientHello | None,
        anomalies: tuple[str, ...],
        coalesced_rest: int,
    ) -> None:
        object.__setattr__(self, "version", version)
        object.__setattr__(self, "dcid", dcid)
        object.__setattr__(self, "scid", scid)
        object.__setattr__(self, "token", token)
        object.__setattr__(self, "packet_number", packet_number)
        object.__setattr__(self, "pn_length", pn_length)
        object.__setattr__(self, "frames", frames)
        object.__setattr__(self, "crypto_offsets", crypto_offsets)
        object.__setattr__(self, "client_hello", client_hello)
        object.__setattr__(self, "anomalies", anomalies)
        object.__setattr__(self, "coalesced_rest", coalesced_rest)

    @property
    def sni(self) -> str | None:
        """The ClientHello's SNI, or None."""
        return self.client_hello.sni if self.client_hello is not None else None


# --- wire helpers ----------------------------------------------------------------------------


def pull_varint(data: bytes, pos: int, end: int) -> tuple[int, int] | None:
    """The QUIC variable-length integer at ``pos`` (RFC 9000 §16) and the position after it,
    or None if it runs past ``end``."""
    if pos >= end:
        return None
    first = data[pos]
    size = 1 << (first >> 6)
    if pos + size > end:
        return None
    value = first & 0x3F
    for i in range(1, size):
        value = (value << 8) | data[pos + i]
    return value, pos + size


def push_varint(value: int, size: int | None = None) -> bytes:
    """Encode ``value`` as a QUIC varint, in the shortest form or in ``size`` bytes."""
    if size is None:
        size = 1 if value < 1 << 6 else 2 if value < 1 << 14 else 4 if value < 1 << 30 else 8
    if size not in (1, 2, 4, 8) or value >= 1 << (8 * size - 2):
        raise ValueError(f"{value} does not fit a {size}-byte varint")
    prefix = {1: 0, 2: 1, 4: 2, 8: 3}[size] << (8 * size - 2)
    return (prefix | value).to_bytes(size, "big")


def _need_varint(data: bytes, pos: int, end: int, what: str) -> tuple[int, int]:
    got = pull_varint(data, pos, end)
    if got is None:
        raise MalformedPacket("quic.truncated", pos, f"{what}: varint runs past the packet")
    return got


# --- dissecting ------------------------------------------------------------------------------


def parse_initial(
    datagram: bytes, *, crypto_reading: CryptoReading = "skip-zeros"
) -> QuicInitial | None:
    """Read the first packet of a UDP datagram as the GFW reads a client Initial.

    Returns None if the datagram is not a long-header Initial of QUIC v1 or v2; raises
    :class:`MalformedPacket` (``quic.*``) if it claims to be one and cannot be read. See the
    module docstring for the Table 3 readings; ``crypto_reading`` picks the row-6 one.
    """
    n = len(datagram)
    if n < 5 or not datagram[0] & 0x80:
        return None  # too short to name a version, or a short header
    first = datagram[0]
    version = int.from_bytes(datagram[1:5], "big")
    initial_type = INITIAL_TYPE.get(version)
    # Table 3 row 3: version 0x00000002 is no version the censor knows: not parsed. Version 0 is
    # version negotiation (RFC 9000 §17.2.1).
    if initial_type is None or (first >> 4) & 0b11 != initial_type:
        return None
    anomalies: list[str] = []
    if not first & 0x40:
        anomalies.append("quic.fixed_bit_zero")
    pos = 5
    cids: list[bytes] = []
    for what in ("dcid", "scid"):
        if pos >= n:
            raise MalformedPacket("quic.truncated", pos, f"{what} length missing")
        length = datagram[pos]
        if length > MAX_CID_LEN:
            # Table 3 row 5: a 255-byte connection ID is not blocked (the table says "source"; the
            # artifact's payload-gen command sets the destination CID to 255 bytes).
            raise MalformedPacket("quic.cid_too_long", pos, f"{what} length {length}")
        if pos + 1 + length > n:
            raise MalformedPacket("quic.truncated", pos, f"{what} of {length} bytes")
        cids.append(datagram[pos + 1 : pos + 1 + length])
        pos += 1 + length
    dcid, scid = cids
    token_len, pos = _need_varint(datagram, pos, n, "token length")
    if pos + token_len > n:
        raise MalformedPacket("quic.truncated", pos, f"token of {token_len} bytes")
    token = datagram[pos : pos + token_len]
    pos += token_len
    length_at = pos
    length, pn_at = _need_varint(datagram, pos, n, "length")
    end = pn_at + length
    if end > n:
        # Table 3 row 2: the last byte removed; the censor does not decrypt a short packet.
        raise MalformedPacket(
            "quic.truncated", length_at, f"length {length}, {n - pn_at} bytes follow"
        )
    if length < 4 + SAMPLE_LEN:
        raise MalformedPacket("quic.truncated", length_at, f"length {length} leaves no sample")

    key_label, iv_label, hp_label = LABELS[version]
    # Keys, header protection and AEAD in one compiled call (proto/_initial.c says why). Table
    # 3 row 1: any packet number length, 1-byte included. The sample starts 4 bytes after
    # pn_at and fits the packet (checked above): all pn_len bytes and the tag are there.
    first_plain, packet_number, pn_len, payload = open_initial(
        datagram, pn_at, end, dcid, SALTS[version], key_label, iv_label, hp_label
    )
    if payload is None:
        raise MalformedPacket(
            "quic.decrypt_failed", pn_at + pn_len, f"AEAD tag mismatch (dcid {dcid.hex()})"
        )
    if first_plain & 0x0C:
        anomalies.append("quic.reserved_bits")  # RFC 9000 §17.2: must be 0 after unprotection
    frames, crypto = _walk_frames(payload, anomalies, crypto_reading)
    hello = _censor_client_hello(payload, frames, crypto, anomalies)
    return QuicInitial(
        version=version,
        dcid=dcid,
        scid=scid,
        token=token,
        packet_number=packet_number,
        pn_length=pn_len,
        frames=tuple(frames),
        crypto_offsets=tuple(c[0] for c in crypto),
        client_hello=hello,
        anomalies=tuple(anomalies),
        coalesced_rest=n - end,
    )


def _walk_frames(
    payload: bytes, anomalies: list[str], reading: CryptoReading = "skip-zeros"
) -> tuple[list[str], list[tuple[int, int, int]]]:
    """Frame kinds in order and each CRYPTO frame as (offset, data start, data end).

    The walk is lenient: a frame that cannot be read ends it with an anomaly, because only the
    first frame matters to the censor.
    """
    frames: list[str] = []
    crypto: list[tuple[int, int, int]] = []
    n = len(payload)
    pos = 0
    while pos < n:
        got = pull_varint(payload, pos, n)
        if got is None:
            anomalies.append("quic.frame_truncated")
            break
        ftype, body = got
        name = _FRAME_NAMES.get(ftype)
        if name is None:
            # RFC 9000 §17.2.2: only these frame types may appear in Initial packets. The length
            # of any other is unknown to a censor that does not parse it, so the walk stops.
            frames.append(f"{ftype:#04x}")
            anomalies.append("quic.unexpected_frame")
            break
        if ftype == FRAME_PADDING:
            body = zero_run(payload, body, n)  # past the run of zero bytes
            if not frames or frames[-1] != name:
                frames.append(name)
            pos = body
            continue
        frames.append(name)
        try:
            pos = _skip_frame(payload, ftype, body, n, crypto, anomalies, reading)
        except MalformedPacket:
            anomalies.append("quic.frame_truncated")
            break
    return frames, crypto


def _skip_frame(
    payload: bytes,
    ftype: int,
    pos: int,
    n: int,
    crypto: list[tuple[int, int, int]],
    anomalies: list[str],
    reading: CryptoReading = "skip-zeros",
) -> int:
    """The position after the frame whose body starts at ``pos``."""
    if ftype == FRAME_PING:
        return pos
    if ftype == FRAME_CRYPTO:
        offset, pos = _need_varint(payload, pos, n, "CRYPTO offset")
        if reading == "two-byte-length":
            if pos + 2 > n:
                raise MalformedPacket("quic.truncated", pos, "CRYPTO length")
            length, pos = int.from_bytes(payload[pos : pos + 2], "big") & 0x3FFF, pos + 2
        else:
            length, pos = _need_varint(payload, pos, n, "CRYPTO length")
        if length == 0 and pos < n:
            # Table 3 row 6: a CRYPTO frame of Length 0 that still carries the ClientHello is
            # blocked. The data runs to the end of the packet (the handshake message's own length
            # then bounds the ClientHello); where it starts depends on the reading.
            anomalies.append("quic.crypto_length_zero_with_data")
            crypto.append((offset, _zero_length_data(payload, pos, n, reading), n))
            return n
        if pos + length > n:
            raise MalformedPacket("quic.truncated", pos, f"CRYPTO data of {length} bytes")
        crypto.append((offset, pos, pos + length))
        return pos + length
    if ftype in (FRAME_ACK, FRAME_ACK_ECN):
        # Largest Acknowledged, ACK Delay, ACK Range Count, First ACK Range (RFC 9000 §19.3).
        _, pos = _need_varint(payload, pos, n, "ACK")
        _, pos = _need_varint(payload, pos, n, "ACK")
        count, pos = _need_varint(payload, pos, n, "ACK")
        _, pos = _need_varint(payload, pos, n, "ACK")
        for _ in range(2 * count + (3 if ftype == FRAME_ACK_ECN else 0)):
            _, pos = _need_varint(payload, pos, n, "ACK")
        return pos
    # CONNECTION_CLOSE (0x1c): Error Code, Frame Type, Reason Phrase (RFC 9000 §19.19).
    _, pos = _need_varint(payload, pos, n, "CONNECTION_CLOSE")
    _, pos = _need_varint(payload, pos, n, "CONNECTION_CLOSE")
    reason, pos = _need_varint(payload, pos, n, "CONNECTION_CLOSE")
    if pos + reason > n:
        raise MalformedPacket("quic.truncated", pos, f"reason of {reason} bytes")
    return pos + reason


def _zero_length_data(payload: bytes, pos: int, n: int, reading: CryptoReading) -> int:
    """Where the data of a zero-Length CRYPTO frame starts under ``reading`` (spec §14e)."""
    if reading == "skip-zeros":
        while pos < n - 1 and payload[pos] == 0:
            pos += 1
    elif reading == "scan":
        for at in range(pos, n - HANDSHAKE_HEADER_LEN + 1):
            size = int.from_bytes(payload[at + 1 : at + HANDSHAKE_HEADER_LEN], "big")
            if payload[at] == HANDSHAKE_CLIENT_HELLO and at + HANDSHAKE_HEADER_LEN + size <= n:
                return at
    return pos


def _censor_client_hello(
    payload: bytes,
    frames: list[str],
    crypto: list[tuple[int, int, int]],
    anomalies: list[str],
) -> ClientHello | None:
    """The ClientHello in the packet's first frame, or None (Table 3 row 8)."""
    if not crypto:
        anomalies.append("quic.no_crypto")
        return None
    if next(f for f in frames if f != "padding") != "crypto":
        # Table 3 row 8: a CRYPTO frame after a PING (and PADDING) is not blocked. Leading
        # PADDING is skipped: the Initials the GFW blocked in the artifact's captures
        # (availability-attack, flow-tracking-time) start with PADDING, then CRYPTO.
        anomalies.append("quic.crypto_not_first")
        return None
    offset, start, end = crypto[0]
    if len(crypto) > 1:
        anomalies.append("quic.crypto_split")
    if offset != 0:
        anomalies.append("quic.crypto_offset_nonzero")
        return None
    if end - start < HANDSHAKE_HEADER_LEN:
        anomalies.append("quic.client_hello_split")
        return None
    if payload[start] != HANDSHAKE_CLIENT_HELLO:
        raise MalformedPacket("tls.not_client_hello", start, f"handshake type {payload[start]}")
    body_len = int.from_bytes(payload[start + 1 : start + 4], "big")
    body_at = start + HANDSHAKE_HEADER_LEN
    if body_at + body_len > end:
        # Spec §5: the censor does not reassemble a ClientHello split over CRYPTO frames or
        # Initial packets.
        anomalies.append("quic.client_hello_split")
        return None
    return client_hello_in(payload, body_at, body_at + body_len)
