"""TLS ClientHellos as the GFW's SNI, ESNI and ECH filters read them (spec §4).

The input is the censor's reassembled TCP byte stream from the client: the GFW reassembles TCP
segments but does **not** reassemble TLS records (spec §4a, S&P'25, confirmed 2024-04-04;
Niere et al. CCS'23). A ClientHello whose handshake message does not fit inside the first TLS
record is therefore unreadable to it, and :func:`parse_client_hello` raises
``tls.client_hello_fragmented``, which the engine treats as "cannot parse, pass". A correct TLS
stack would join the records; the censor does not, which is why record splitting evades it.

Everything else follows the protocol: ``None`` while the first record is incomplete,
``tls.not_handshake`` / ``tls.not_client_hello`` as soon as the first bytes say it is not a
ClientHello, ``tls.truncated_field`` for a vector that overruns its enclosing block inside a
complete record. Oddities that a lenient middlebox reads past (several SNI names, duplicate
extensions, bytes after the extensions) are reported in ``anomalies``; for the SNI the first
``host_name`` of the first server_name extension is used. Which one the GFW uses is not
documented.

:func:`parse_client_hello_body` reads just the handshake body, for the QUIC dissector's CRYPTO
frames. :func:`build_client_hello` makes realistic, deterministic ClientHellos for tests and
probes, including the record-split evasion.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from gfwlab._frozen import Frozen
from gfwlab.errors import MalformedPacket
from gfwlab.proto._scan import client_hello as _plain_hello

CONTENT_HANDSHAKE: Final = 0x16
HANDSHAKE_CLIENT_HELLO: Final = 1
RECORD_HEADER_LEN: Final = 5
HANDSHAKE_HEADER_LEN: Final = 4
MAX_RECORD: Final = 1 << 14
"""TLSPlaintext.length limit (RFC 8446 §5.1)."""

EXT_SERVER_NAME: Final = 0x0000
EXT_ALPN: Final = 0x0010
EXT_ESNI: Final = 0xFFCE
"""encrypted_server_name (draft-ietf-tls-esni up to -06); its presence triggered the 2020 ESNI
block (spec §4b)."""
EXT_ECH: Final = 0xFE0D
"""encrypted_client_hello (RFC 9849 / draft-13 onwards)."""

_TRUNCATED: Final = "tls.truncated_field"
_TYPE_LENGTH: Final = struct.Struct("!HH")  # an extension's type and length


@dataclass(frozen=True, init=False)
class ClientHello(Frozen):
    """What the censor extracts from a ClientHello."""

    sni: str | None
    """The first ``host_name`` of the server_name extension, ASCII-lower-cased, latin-1
    decoded; ``None`` if there is none."""
    sni_names: tuple[str, ...]
    """Every ``host_name`` in every server_name extension, in order."""
    alpn: tuple[str, ...]
    """ALPN protocol names in order, latin-1 decoded."""
    has_esni: bool
    """Extension 0xffce (ESNI) is present."""
    has_ech: bool
    """Extension 0xfe0d (ECH) is present."""
    extensions: tuple[int, ...]
    """Extension types in the order sent, duplicates included."""
    legacy_version: int
    """ClientHello.legacy_version (0x0303 for TLS 1.2 and 1.3)."""
    cipher_suites: tuple[int, ...]
    """Offered cipher suites, GREASE values included."""
    anomalies: tuple[str, ...]
    """Oddities seen, e.g. ``tls.multiple_sni``, ``tls.duplicate_extension``."""
    record_length: int
    """Length of the first TLS record; 0 when parsed from a bare handshake body (QUIC)."""

    # Written out: a dataclass's generated __init__ runs interpreted even where the class is
    # compiled (gfwlab._build); this one is compiled with it.
    def __init__(
        self,
        sni: str | None,
        sni_names: tuple[str, ...],
        alpn: tuple[str, ...],
        has_esni: bool,
        has_ech: bool,
        extensions: tuple[int, ...],
        legacy_version: int,
        cipher_suites: tuple[int, ...],
        anomalies: tuple[str, ...],
        record_length: int,
    ) -> None:
        object.__setattr__(self, "sni", sni)
        object.__setattr__(self, "sni_names", sni_names)
        object.__setattr__(self, "alpn", alpn)
        object.__setattr__(self, "has_esni", has_esni)
        object.__setattr__(self, "has_ech", has_ech)
        object.__setattr__(self, "extensions", extensions)
        object.__setattr__(self, "legacy_version", legacy_version)
        object.__setattr__(self, "cipher_suites", cipher_suites)
        object.__setattr__(self, "anomalies", anomalies)
        object.__setattr__(self, "record_length", record_length)


def parse_client_hello(data: bytes) -> ClientHello | None:
    """Parse the ClientHello at the start of the client's reassembled TCP stream.

    Returns ``None`` until the first TLS record is complete. Raises :class:`MalformedPacket`
    with kind ``tls.not_handshake``, ``tls.not_client_hello``, ``tls.record_overflow``,
    ``tls.client_hello_fragmented`` (the handshake message does not fit in the first record:
    the censor does not reassemble records) or ``tls.truncated_field``. Bytes after the first
    record are ignored.
    """
    if not data:
        return None
    if data[0] != CONTENT_HANDSHAKE:
        raise MalformedPacket("tls.not_handshake", 0, f"content type {data[0]:#04x}")
    if len(data) >= 2 and data[1] != 3:
        raise MalformedPacket("tls.not_handshake", 1, f"record version major {data[1]}")
    if len(data) < RECORD_HEADER_LEN:
        return None
    record_length = (data[3] << 8) | data[4]
    if record_length > MAX_RECORD:
        raise MalformedPacket("tls.record_overflow", 3, f"record length {record_length}")
    if record_length >= 1 and len(data) > RECORD_HEADER_LEN:
        hs_type = data[RECORD_HEADER_LEN]
        if hs_type != HANDSHAKE_CLIENT_HELLO:
            raise MalformedPacket("tls.not_client_hello", RECORD_HEADER_LEN, f"type {hs_type}")
    if record_length < HANDSHAKE_HEADER_LEN:
        if record_length and len(data) == RECORD_HEADER_LEN:
            return None  # wait for the handshake type before naming the problem
        raise MalformedPacket(
            "tls.client_hello_fragmented", 3, f"{record_length}-byte record splits the header"
        )
    body_start = RECORD_HEADER_LEN + HANDSHAKE_HEADER_LEN
    if len(data) < body_start:
        return None
    hs_length = (data[6] << 16) | (data[7] << 8) | data[8]
    if HANDSHAKE_HEADER_LEN + hs_length > record_length:
        raise MalformedPacket(
            "tls.client_hello_fragmented",
            6,
            f"handshake message of {hs_length} bytes, first record holds "
            f"{record_length - HANDSHAKE_HEADER_LEN}",
        )
    if len(data) < RECORD_HEADER_LEN + record_length:
        return None
    extra = (
        ("tls.record_trailing_data",) if HANDSHAKE_HEADER_LEN + hs_length < record_length else ()
    )
    # The body is read in place (no copy); offsets in ``data`` are already the ones to report.
    return _read(data, body_start, body_start + hs_length, 0, record_length, extra)


def join_records(data: bytes) -> bytes | None:
    """The handshake records at the start of ``data`` joined into one record, for a censor that
    reassembles TLS records (CERNET and China Mobile from December 2025, spec §14d).

    Consecutive handshake records are read until their fragments hold the whole first handshake
    message; the result is one record carrying it (then :func:`parse_client_hello` reads it as
    usual). Returns ``None`` while more records are needed, and ``data`` unchanged if it does
    not start with a handshake record or the first record already holds the message.
    """
    pos, body = 0, bytearray()
    while True:
        if len(data) < pos + RECORD_HEADER_LEN:
            return None
        if data[pos] != CONTENT_HANDSHAKE or data[pos + 1] != 3:
            return data if pos == 0 else _one_record(data, bytes(body))
        length = (data[pos + 3] << 8) | data[pos + 4]
        end = pos + RECORD_HEADER_LEN + length
        if pos == 0 and length >= HANDSHAKE_HEADER_LEN:
            if len(data) < RECORD_HEADER_LEN + HANDSHAKE_HEADER_LEN:
                return None
            hs_length = (data[6] << 16) | (data[7] << 8) | data[8]
            if HANDSHAKE_HEADER_LEN + hs_length <= length:
                return data  # not split: nothing to join
        if len(data) < end:
            return None
        body += data[pos + RECORD_HEADER_LEN : end]
        pos = end
        if len(body) >= HANDSHAKE_HEADER_LEN:
            need = HANDSHAKE_HEADER_LEN + ((body[1] << 16) | (body[2] << 8) | body[3])
            if len(body) >= need or len(body) > MAX_RECORD:
                return _one_record(data, bytes(body))


def _one_record(data: bytes, body: bytes) -> bytes:
    body = body[:MAX_RECORD]
    return data[:3] + len(body).to_bytes(2, "big") + body


def parse_client_hello_body(body: bytes, *, offset: int = 0) -> ClientHello:
    """Parse a ClientHello handshake body (after the 4-byte handshake header).

    ``body`` must be complete; a field that runs past its end raises ``tls.truncated_field``.
    ``offset`` is added to reported offsets (where ``body`` starts in the caller's buffer).
    ``record_length`` in the result is 0.
    """
    return _read(body, 0, len(body), offset, 0, ())


def client_hello_in(data: bytes, start: int, end: int) -> ClientHello:
    """:func:`parse_client_hello_body` of ``data[start:end]``, read where it is (no copy);
    reported offsets are ``data``'s."""
    return _read(data, start, end, 0, 0, ())


def _read(
    data: bytes, start: int, end: int, shift: int, record_length: int, extra: tuple[str, ...]
) -> ClientHello:
    """The hello body ``data[start:end]``: a plain one (no anomaly of its own, nothing that
    overruns) read by the compiled scan (``proto/_scan.c``), anything else by :func:`_parse_body`
    with its errors and anomalies. The two give the same hello (tests/test_byte_loops.py)."""
    got = _plain_hello(data, start, end)
    if got is None:
        return _parse_body(data, start, end, shift, record_length, extra)
    version, suites, extensions, names, alpn, esni, ech = got
    return ClientHello(
        sni=names[0] if names else None,
        sni_names=names,
        alpn=alpn,
        has_esni=esni,
        has_ech=ech,
        extensions=extensions,
        legacy_version=version,
        cipher_suites=suites,
        anomalies=extra,
        record_length=record_length,
    )


# The parser walks ``data[start:end]`` in place with plain integer positions, because it runs
# for every ClientHello the censor sees. Each ``> end`` test guards one field and never lets a
# short read through; the errors are built by _need and _overrun, which report ``shift + pos``
# (an offset in the caller's buffer).


def _parse_body(
    data: bytes, start: int, end: int, shift: int, record_length: int, extra: tuple[str, ...]
) -> ClientHello:
    anomalies: list[str] = []
    pos = start
    if pos + 34 > end:  # legacy_version, random
        if pos + 2 > end:
            raise _need(shift, pos, end, 2, "legacy_version")
        raise _need(shift, pos + 2, end, 32, "random")
    legacy_version = (data[pos] << 8) | data[pos + 1]
    pos += 34
    pos = _skip_vector(data, pos, end, shift, 1, "legacy_session_id")
    suites_at = pos + 2
    pos = _skip_vector(data, pos, end, shift, 2, "cipher_suites")
    if (pos - suites_at) % 2:
        _note(anomalies, "tls.odd_cipher_suites_length")
    suites: tuple[int, ...] = struct.unpack_from(f"!{(pos - suites_at) // 2}H", data, suites_at)
    pos = _skip_vector(data, pos, end, shift, 1, "legacy_compression_methods")

    extensions: list[int] = []
    seen: set[int] = set()
    sni_names: list[str] = []
    alpn: list[str] = []
    if pos < end:
        block = pos + 2
        pos = _skip_vector(data, pos, end, shift, 2, "extensions")
        if pos < end:
            _note(anomalies, "tls.trailing_data")
        block_end = pos
        while block < block_end:
            if block + 4 > block_end:
                if block + 2 > block_end:
                    raise _need(shift, block, block_end, 2, "extension_type")
                ext_type = (data[block] << 8) | data[block + 1]
                raise _need(shift, block + 2, block_end, 2, f"extension {ext_type:#06x}")
            ext_type, length = _TYPE_LENGTH.unpack_from(data, block)
            ext = block + 4
            block = ext + length
            if block > block_end:
                raise _overrun(
                    shift, ext - 2, block_end - ext, length, f"extension {ext_type:#06x}"
                )
            if ext_type in seen:
                _note(anomalies, "tls.duplicate_extension")
            else:
                seen.add(ext_type)
            extensions.append(ext_type)
            if ext_type == EXT_SERVER_NAME:
                sni_names += _server_names(data, ext, block, shift, anomalies)
            elif ext_type == EXT_ALPN:
                alpn += _alpn(data, ext, block, shift, anomalies)
    if len(sni_names) > 1:
        _note(anomalies, "tls.multiple_sni")
    return ClientHello(
        sni=sni_names[0] if sni_names else None,
        sni_names=tuple(sni_names),
        alpn=tuple(alpn),
        has_esni=EXT_ESNI in seen,
        has_ech=EXT_ECH in seen,
        extensions=tuple(extensions),
        legacy_version=legacy_version,
        cipher_suites=suites,
        anomalies=tuple(anomalies) + extra,
        record_length=record_length,
    )


def _server_names(data: bytes, pos: int, end: int, shift: int, anomalies: list[str]) -> list[str]:
    names: list[str] = []
    if pos >= end:
        # An empty server_name extension is what a *server* sends back; from a client it is odd.
        _note(anomalies, "tls.empty_sni")
        return names
    list_end = _skip_vector(data, pos, end, shift, 2, "server_name_list")
    if list_end < end:
        _note(anomalies, "tls.extension_trailing_data")
    pos += 2
    while pos < list_end:
        name_type = data[pos]
        name = pos + 3
        pos = _skip_vector(data, pos + 1, list_end, shift, 2, "host_name")
        if name_type == 0:
            names.append(data[name:pos].lower().decode("latin-1"))
        else:
            _note(anomalies, "tls.unknown_sni_type")
    if not names:
        _note(anomalies, "tls.empty_sni")
    return names


def _alpn(data: bytes, pos: int, end: int, shift: int, anomalies: list[str]) -> list[str]:
    protocols: list[str] = []
    list_end = _skip_vector(data, pos, end, shift, 2, "protocol_name_list")
    if list_end < end:
        _note(anomalies, "tls.extension_trailing_data")
    pos += 2
    while pos < list_end:
        name = pos + 1
        pos = name + data[pos]
        if pos > list_end:
            raise _overrun(shift, name - 1, list_end - name, data[name - 1], "protocol_name")
        if pos == name:
            _note(anomalies, "tls.empty_alpn")
        protocols.append(data[name:pos].decode("latin-1"))
    return protocols


def _skip_vector(data: bytes, pos: int, end: int, shift: int, size: int, what: str) -> int:
    """The end of the ``size``-byte-length-prefixed vector at ``pos`` (TLS ``<..>``)."""
    if pos + size > end:
        raise _need(shift, pos, end, size, what)
    n = data[pos] if size == 1 else (data[pos] << 8) | data[pos + 1]
    vector_end = pos + size + n
    if vector_end > end:
        raise _overrun(shift, pos, end - pos - size, n, what)
    return vector_end


def _need(shift: int, pos: int, end: int, n: int, what: str) -> MalformedPacket:
    """A fixed-size field at ``pos`` runs past ``end``."""
    return MalformedPacket(
        _TRUNCATED, shift + pos, f"{what}: need {n} bytes, {max(end - pos, 0)} left"
    )


def _overrun(shift: int, prefix: int, left: int, n: int, what: str) -> MalformedPacket:
    """The vector whose length prefix is at ``prefix`` claims ``n`` bytes; ``left`` follow it."""
    return MalformedPacket(_TRUNCATED, shift + prefix, f"{what}: length {n}, {left} bytes left")


def _note(anomalies: list[str], kind: str) -> None:
    if kind not in anomalies:
        anomalies.append(kind)


# --- building -----------------------------------------------------------------------------

# Firefox/Chrome-like offer: TLS 1.3 suites, then ECDHE-GCM/ChaCha, then legacy RSA suites.
_CIPHER_SUITES: Final = (
    0x1301, 0x1302, 0x1303, 0xC02B, 0xC02F, 0xC02C, 0xC030, 0xCCA9, 0xCCA8,
    0xC013, 0xC014, 0x009C, 0x009D, 0x002F, 0x0035,
)  # fmt: skip
_GROUPS: Final = (0x001D, 0x0017, 0x0018)  # x25519, secp256r1, secp384r1
_SIG_ALGS: Final = (0x0403, 0x0804, 0x0401, 0x0503, 0x0805, 0x0501, 0x0806, 0x0601)


def _u8(n: int) -> bytes:
    return struct.pack("!B", n)


def _u16(n: int) -> bytes:
    return struct.pack("!H", n)


def _vec16(data: bytes) -> bytes:
    return _u16(len(data)) + data


def _filler(label: bytes, seed: bytes, n: int) -> bytes:
    """``n`` random-looking but deterministic bytes."""
    out = bytearray()
    counter = 0
    while len(out) < n:
        out += hashlib.sha256(label + b"\x00" + seed + counter.to_bytes(4, "big")).digest()
        counter += 1
    return bytes(out[:n])


def _record(fragment: bytes) -> bytes:
    return bytes((CONTENT_HANDSHAKE, 3, 1)) + _u16(len(fragment)) + fragment


def build_client_hello(
    sni: str | None,
    *,
    alpn: tuple[str, ...] = (),
    esni: bool = False,
    ech: bool = False,
    record_split: int | None = None,
    extra_extensions: Sequence[tuple[int, bytes]] = (),
) -> bytes:
    """A realistic ClientHello in TLS records (record header ``16 03 01``).

    The extensions are those of a TLS 1.3 browser: server_name (if ``sni``), extended master
    secret, renegotiation_info, supported_groups, ec_point_formats, session_ticket, ALPN (if
    given), status_request, signature_algorithms, key_share (x25519), psk_key_exchange_modes and
    supported_versions; then ESNI (0xffce) and/or ECH (0xfe0d) with plausible contents, then
    ``extra_extensions`` as ``(type, data)`` pairs, verbatim. Random values are derived from
    ``sni``, so the output is deterministic.

    ``record_split=N`` puts the first ``N`` bytes of the handshake message (header included) in
    one record and the rest in a second, both in the returned bytes: the spec §4a evasion.
    """
    seed = (sni or "").encode("latin-1")
    exts: list[tuple[int, bytes]] = []
    if sni is not None:
        name = sni.encode("latin-1")
        exts.append((EXT_SERVER_NAME, _vec16(b"\x00" + _vec16(name))))
    exts += [
        (0x0017, b""),
        (0xFF01, b"\x00"),
        (0x000A, _vec16(b"".join(_u16(g) for g in _GROUPS))),
        (0x000B, b"\x01\x00"),
        (0x0023, b""),
    ]
    if alpn:
        names = b"".join(_u8(len(p.encode("latin-1"))) + p.encode("latin-1") for p in alpn)
        exts.append((EXT_ALPN, _vec16(names)))
    key = _filler(b"key_share", seed, 32)
    exts += [
        (0x0005, b"\x01\x00\x00\x00\x00"),
        (0x000D, _vec16(b"".join(_u16(s) for s in _SIG_ALGS))),
        (0x0033, _vec16(_u16(0x001D) + _vec16(key))),
        (0x002D, b"\x01\x01"),
        (0x002B, b"\x04\x03\x04\x03\x03"),
    ]
    if esni:
        # CipherSuite, KeyShareEntry, record_digest, encrypted_sni (draft-ietf-tls-esni-06 §5).
        esni_body = (
            _u16(0x1301)
            + _u16(0x001D)
            + _vec16(_filler(b"esni key", seed, 32))
            + _vec16(_filler(b"esni digest", seed, 32))
            + _vec16(_filler(b"esni sni", seed, 276))
        )
        exts.append((EXT_ESNI, esni_body))
    if ech:
        # ECHClientHello outer: type 0, HPKE KDF/AEAD, config_id, enc, payload.
        ech_body = (
            b"\x00"
            + _u16(0x0001)
            + _u16(0x0001)
            + _filler(b"ech config", seed, 1)
            + _vec16(_filler(b"ech enc", seed, 32))
            + _vec16(_filler(b"ech payload", seed, 208))
        )
        exts.append((EXT_ECH, ech_body))
    exts += [(t, bytes(d)) for t, d in extra_extensions]

    ext_bytes = b"".join(_u16(t) + _vec16(d) for t, d in exts)
    body = (
        _u16(0x0303)
        + _filler(b"random", seed, 32)
        + _u8(32)
        + _filler(b"session id", seed, 32)
        + _vec16(b"".join(_u16(s) for s in _CIPHER_SUITES))
        + b"\x01\x00"
        + _vec16(ext_bytes)
    )
    message = _u8(HANDSHAKE_CLIENT_HELLO) + len(body).to_bytes(3, "big") + body
    if record_split is None:
        return _record(message)
    if not 0 < record_split < len(message):
        raise ValueError(f"record_split must be in 1..{len(message) - 1}, got {record_split}")
    return _record(message[:record_split]) + _record(message[record_split:])
