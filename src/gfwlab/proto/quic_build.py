"""QUIC client Initials built, correctly protected (RFC 9000, RFC 9001, RFC 9369 for v2): for
tests, probes, the lab's clients and synthetic captures, including the odd Initials of spec §5
Table 3 that :func:`gfwlab.proto.quic.parse_initial` reads as the censor does.

The keys are derived here in Python, with ``hashlib`` and the ``cryptography`` package's
ciphers: the reference that the censor's compiled opener (:mod:`gfwlab.proto._initial`) is
tested against (``tests/test_proto_quic.py``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from functools import lru_cache
from typing import Final, NamedTuple

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from gfwlab.proto.quic import (
    EXT_QUIC_TRANSPORT_PARAMETERS,
    FRAME_CRYPTO,
    INITIAL_TYPE,
    LABELS,
    QUIC_V1,
    SALTS,
    SAMPLE_LEN,
    TAG_LEN,
    push_varint,
)
from gfwlab.proto.tls import build_client_hello


class InitialKeys(NamedTuple):
    """Client Initial packet protection keys (RFC 9001 §5.2)."""

    key: bytes
    """AEAD_AES_128_GCM key, 16 bytes."""
    iv: bytes
    """AEAD IV, 12 bytes."""
    hp: bytes
    """Header protection key (AES-128-ECB), 16 bytes."""


# --- key derivation ------------------------------------------------------------------------


_IPAD: Final = bytes(b ^ 0x36 for b in range(256))
_OPAD: Final = bytes(b ^ 0x5C for b in range(256))
_Keyed = tuple["hashlib._Hash", "hashlib._Hash"]


def _keyed(key: bytes) -> _Keyed:
    """HMAC-SHA256's inner and outer hash states for ``key`` (RFC 2104; ``key`` ≤ 64 bytes), to be
    copied for each message: several HMACs under one key pad it once. ``hmac.digest`` costs 3-6
    µs a call in OpenSSL's setup; this is the same function at a fraction of the cost."""
    block = key.ljust(64, b"\x00")
    return hashlib.sha256(block.translate(_IPAD)), hashlib.sha256(block.translate(_OPAD))


def _hmac(keyed: _Keyed, msg: bytes) -> bytes:
    inner, outer = keyed[0].copy(), keyed[1].copy()
    inner.update(msg)
    outer.update(inner.digest())
    return outer.digest()


def _expand_label(secret: _Keyed, label: bytes, length: int) -> bytes:
    """HKDF-Expand-Label with an empty context (RFC 8446 §7.1), SHA-256, ``length`` ≤ 32."""
    full = b"tls13 " + label
    info = length.to_bytes(2, "big") + bytes((len(full),)) + full + b"\x00"
    # HKDF-Expand (RFC 5869 §2.3): one block T(1) = HMAC(PRK, info | 0x01) covers ≤ 32 bytes.
    return _hmac(secret, info + b"\x01")[:length]


_SALT_KEYED: Final = {version: _keyed(salt) for version, salt in SALTS.items()}


@lru_cache(maxsize=4096)
def initial_keys(dcid: bytes, version: int = QUIC_V1) -> InitialKeys:
    """The client's Initial keys for ``dcid`` (RFC 9001 §5.2; RFC 9369 §3.3 for v2).

    Raises ValueError for a version other than QUIC_V1 and QUIC_V2.
    """
    salt = _SALT_KEYED.get(version)
    if salt is None:
        raise ValueError(f"no Initial salt for QUIC version {version:#010x}")
    initial_secret = _hmac(salt, dcid)  # HKDF-Extract
    client = _keyed(_expand_label(_keyed(initial_secret), b"client in", 32))
    key_label, iv_label, hp_label = LABELS[version]
    return InitialKeys(
        key=_expand_label(client, key_label, 16),
        iv=_expand_label(client, iv_label, 12),
        hp=_expand_label(client, hp_label, 16),
    )


_ECB: Final = modes.ECB()


def _mask(hp: bytes, sample: bytes) -> bytes:
    """The header protection mask (RFC 9001 §5.4.3, AES-based)."""
    enc = Cipher(algorithms.AES(hp), _ECB).encryptor()  # RFC 9001 §5.4.3: AES-ECB on one block
    return enc.update(sample) + enc.finalize()


def _nonce(iv: bytes, pn: int) -> bytes:
    """RFC 9001 §5.3: the IV XORed with the packet number, left-padded."""
    return (int.from_bytes(iv, "big") ^ pn).to_bytes(len(iv), "big")


# --- building --------------------------------------------------------------------------------


def crypto_frame(offset: int, data: bytes, *, length_zero: bool = False) -> bytes:
    """A CRYPTO frame; ``length_zero`` writes Length 0 before the data (Table 3 row 6)."""
    length = push_varint(0) if length_zero else push_varint(len(data))
    return bytes((FRAME_CRYPTO,)) + push_varint(offset) + length + data


def transport_parameters(scid: bytes) -> bytes:
    """A client's quic_transport_parameters (RFC 9000 §18.2), typical values."""
    params = (
        (0x01, push_varint(30_000)),  # max_idle_timeout, ms
        (0x03, push_varint(1_472)),  # max_udp_payload_size
        (0x04, push_varint(1_048_576)),  # initial_max_data
        (0x05, push_varint(262_144)),  # initial_max_stream_data_bidi_local
        (0x06, push_varint(262_144)),  # initial_max_stream_data_bidi_remote
        (0x07, push_varint(262_144)),  # initial_max_stream_data_uni
        (0x08, push_varint(100)),  # initial_max_streams_bidi
        (0x09, push_varint(100)),  # initial_max_streams_uni
        (0x0F, scid),  # initial_source_connection_id
    )
    return b"".join(push_varint(k) + push_varint(len(v)) + v for k, v in params)


def quic_client_hello(
    sni: str | None,
    *,
    alpn: tuple[str, ...] = ("h3",),
    ech: bool = False,
    scid: bytes = b"",
) -> bytes:
    """A TLS 1.3 ClientHello handshake message (4-byte header included) for QUIC."""
    record = build_client_hello(
        sni,
        alpn=alpn,
        ech=ech,
        extra_extensions=((EXT_QUIC_TRANSPORT_PARAMETERS, transport_parameters(scid)),),
    )
    return record[5:]  # strip the TLS record header: QUIC carries handshake messages bare


def _cid(label: bytes, sni: str | None, n: int) -> bytes:
    return hashlib.sha256(label + (sni or "").encode("latin-1")).digest()[:n]


def protect_initial(
    plaintext: bytes,
    *,
    dcid: bytes,
    scid: bytes = b"",
    version: int = QUIC_V1,
    key_version: int | None = None,
    pn: int = 0,
    pn_len: int = 4,
    token: bytes = b"",
    pad_to: int = 1200,
    fixed_bit: bool = True,
    reserved_bits: int = 0,
) -> bytes:
    """A client Initial packet around the frames in ``plaintext``, protected per RFC 9001 §5.

    PADDING is appended so that the packet is ``pad_to`` bytes long (if shorter) and the
    header-protection sample exists. ``version`` is written in the header; ``key_version``
    (default: ``version``) selects the salt and labels, so a v1-protected packet can claim
    another version (Table 3 row 3). Connection IDs may be up to 255 bytes, to build the
    Table 3 row 5 packet. ``fixed_bit`` and ``reserved_bits`` (0-3) set those header bits, which
    RFC 9000 §17.2 requires to be 1 and 0.
    """
    keys_for = version if key_version is None else key_version
    if not 1 <= pn_len <= 4:
        raise ValueError(f"pn_len must be 1-4, got {pn_len}")
    if not 0 <= reserved_bits <= 3:
        raise ValueError(f"reserved_bits must be 0-3, got {reserved_bits}")
    if len(dcid) > 255 or len(scid) > 255:
        raise ValueError("connection IDs are at most 255 bytes")
    initial_type = INITIAL_TYPE.get(keys_for, 0)
    keys = initial_keys(dcid, keys_for)
    head = (
        bytes((0x80 | fixed_bit << 6 | initial_type << 4 | reserved_bits << 2 | (pn_len - 1),))
        + version.to_bytes(4, "big")
        + bytes((len(dcid),))
        + dcid
        + bytes((len(scid),))
        + scid
        + push_varint(len(token))
        + token
    )
    # Length field: 2 bytes up to 16383, else 4 (RFC 9000 §16).
    body_len = pn_len + len(plaintext) + TAG_LEN
    len_size = 2 if body_len + pad_to < 1 << 14 else 4
    short = max(pad_to - (len(head) + len_size + body_len), 4 - pn_len - len(plaintext), 0)
    plaintext += bytes(short)  # PADDING frames
    body_len += short
    truncated_pn = pn & ((1 << (8 * pn_len)) - 1)
    pn_bytes = truncated_pn.to_bytes(pn_len, "big")
    header = head + push_varint(body_len, len_size) + pn_bytes
    ciphertext = AESGCM(keys.key).encrypt(_nonce(keys.iv, truncated_pn), plaintext, header)
    mask = _mask(keys.hp, ciphertext[4 - pn_len : 4 - pn_len + SAMPLE_LEN])
    pn_at = len(header) - pn_len
    protected = bytearray(header)
    protected[0] ^= mask[0] & 0x0F
    for i in range(pn_len):
        protected[pn_at + i] ^= mask[1 + i]
    return bytes(protected) + ciphertext


def build_initial(
    sni: str | None,
    *,
    dcid: bytes | None = None,
    scid: bytes | None = None,
    version: int = QUIC_V1,
    pn_len: int = 4,
    pn: int = 0,
    alpn: tuple[str, ...] = ("h3",),
    ech: bool = False,
    split_crypto: int | None = None,
    crypto_len_zero: bool = False,
    leading_frames: bytes = b"",
    trailing_frames: bytes = b"",
    client_hello: bytes | None = None,
    token: bytes = b"",
    pad_to: int = 1200,
) -> bytes:
    """A client Initial datagram carrying a ClientHello for ``sni``, correctly protected.

    Connection IDs default to 8 bytes derived from ``sni`` (deterministic output). The
    ClientHello (from :func:`quic_client_hello`, or ``client_hello`` verbatim, header included)
    goes in one CRYPTO frame at offset 0, or in two (``[0, split_crypto)`` then the rest, the
    Chrome-style split). ``crypto_len_zero`` writes that frame with Length 0 (Table 3 row 6).
    ``leading_frames`` and ``trailing_frames`` are raw frames put before and after the CRYPTO
    frames (``b"\\x01" + bytes(40)`` puts a PING and PADDING first: Table 3 row 8).
    """
    dcid = _cid(b"dcid", sni, 8) if dcid is None else dcid
    scid = _cid(b"scid", sni, 8) if scid is None else scid
    message = (
        quic_client_hello(sni, alpn=alpn, ech=ech, scid=scid)
        if client_hello is None
        else client_hello
    )
    if split_crypto is None:
        frames = crypto_frame(0, message, length_zero=crypto_len_zero)
    else:
        if not 0 < split_crypto < len(message):
            raise ValueError(f"split_crypto must be in 1..{len(message) - 1}, got {split_crypto}")
        frames = crypto_frame(0, message[:split_crypto]) + crypto_frame(
            split_crypto, message[split_crypto:]
        )
    return protect_initial(
        leading_frames + frames + trailing_frames,
        dcid=dcid,
        scid=scid,
        version=version,
        pn=pn,
        pn_len=pn_len,
        token=token,
        pad_to=pad_to,
    )


def split_initials(
    sni: str | None,
    at: int,
    *,
    dcid: bytes | None = None,
    scid: bytes | None = None,
    alpn: tuple[str, ...] = ("h3",),
    pad_to: int = 1200,
) -> tuple[bytes, bytes]:
    """Two Initial datagrams (packet numbers 0 and 1) that split the ClientHello at ``at``.

    The censor reads only the first datagram of a flow and does not reassemble (spec §5).
    """
    dcid = _cid(b"dcid", sni, 8) if dcid is None else dcid
    scid = _cid(b"scid", sni, 8) if scid is None else scid
    message = quic_client_hello(sni, alpn=alpn, scid=scid)
    if not 0 < at < len(message):
        raise ValueError(f"at must be in 1..{len(message) - 1}, got {at}")
    parts: Sequence[tuple[int, bytes]] = ((0, message[:at]), (at, message[at:]))
    first, second = (
        protect_initial(crypto_frame(offset, data), dcid=dcid, scid=scid, pn=pn, pad_to=pad_to)
        for pn, (offset, data) in enumerate(parts)
    )
    return first, second
