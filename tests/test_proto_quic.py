"""Tests for gfwlab.proto.quic: the QUIC Initial as the GFW's QUIC SNI filter reads it (spec §5).

Levels (STYLE.md habit 11): RFC vectors, round trips, a differential check against aioquic, the
censor's readings of Table 3, real captures from the paper's artifact, and properties.
"""

from __future__ import annotations

import os

import pytest
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gfwlab.errors import MalformedPacket
from gfwlab.packet.ip import PROTO_UDP, parse
from gfwlab.packet.pcap import CaptureReader
from gfwlab.proto._initial import open_initial
from gfwlab.proto.quic import (
    LABELS,
    QUIC_V1,
    QUIC_V2,
    SALTS,
    QuicInitial,
    parse_initial,
    pull_varint,
    push_varint,
)
from gfwlab.proto.quic_build import (
    _mask,
    _nonce,
    build_initial,
    crypto_frame,
    initial_keys,
    protect_initial,
    quic_client_hello,
    split_initials,
)
from testenv import SHARED_PCAPS, needs_shared, shared_pcaps

# --- vectors -------------------------------------------------------------------------------

# https://www.rfc-editor.org/rfc/rfc9001#appendix-A.1 (client) and
# https://www.rfc-editor.org/rfc/rfc9369#appendix-A.1 (v2 client).
RFC_DCID = bytes.fromhex("8394c8f03e515708")


@pytest.mark.parametrize(
    ("version", "key", "iv", "hp"),
    [
        (
            QUIC_V1,
            "1f369613dd76d5467730efcbe3b1a22d",
            "fa044b2f42a3fd3b46fb255c",
            "9f50449e04a0e810283a1e9933adedd2",
        ),
        (
            QUIC_V2,
            "8b1a0bc121284290a29e0971b5cd045d",
            "91f73e2351d8fa91660e909f",
            "45b95e15235d6f45a6b19cbcb0294ba9",
        ),
    ],
)
def test_initial_keys_rfc_vectors(version: int, key: str, iv: str, hp: str) -> None:
    keys = initial_keys(RFC_DCID, version)
    assert (keys.key.hex(), keys.iv.hex(), keys.hp.hex()) == (key, iv, hp)
    assert initial_keys(RFC_DCID, version) == (keys.key, keys.iv, keys.hp)  # a plain tuple too


def test_initial_keys_unknown_version() -> None:
    with pytest.raises(ValueError, match="no Initial salt"):
        initial_keys(RFC_DCID, 2)


# https://www.rfc-editor.org/rfc/rfc9001#appendix-A.2: the client Initial's CRYPTO frame (the
# ClientHello, SNI example.com), padded with 917 PADDING bytes, packet number 2 in 4 bytes.
RFC_A2_FRAMES = bytes.fromhex(
    "060040f1010000ed0303ebf8fa56f12939b9584a3896472ec40bb863cfd3e868"
    "04fe3a47f06a2b69484c00000413011302010000c000000010000e00000b6578"
    "616d706c652e636f6dff01000100000a00080006001d00170018001000070005"
    "04616c706e000500050100000000003300260024001d00209370b2c9caa47fba"
    "baf4559fedba753de171fa71f50f1ce15d43e994ec74d748002b000302030400"
    "0d0010000e0403050306030203080408050806002d00020101001c0002400100"
    "3900320408ffffffffffffffff05048000ffff07048000ffff08011001048000"
    "75300901100f088394c8f03e51570806048000ffff"
) + bytes(917)
RFC_A2_PACKET = bytes.fromhex(
    "c000000001088394c8f03e5157080000449e7b9aec34d1b1c98dd7689fb8ec11"
    "d242b123dc9bd8bab936b47d92ec356c0bab7df5976d27cd449f63300099f399"
    "1c260ec4c60d17b31f8429157bb35a1282a643a8d2262cad67500cadb8e7378c"
    "8eb7539ec4d4905fed1bee1fc8aafba17c750e2c7ace01e6005f80fcb7df6212"
    "30c83711b39343fa028cea7f7fb5ff89eac2308249a02252155e2347b63d58c5"
    "457afd84d05dfffdb20392844ae812154682e9cf012f9021a6f0be17ddd0c208"
    "4dce25ff9b06cde535d0f920a2db1bf362c23e596d11a4f5a6cf3948838a3aec"
    "4e15daf8500a6ef69ec4e3feb6b1d98e610ac8b7ec3faf6ad760b7bad1db4ba3"
    "485e8a94dc250ae3fdb41ed15fb6a8e5eba0fc3dd60bc8e30c5c4287e53805db"
    "059ae0648db2f64264ed5e39be2e20d82df566da8dd5998ccabdae053060ae6c"
    "7b4378e846d29f37ed7b4ea9ec5d82e7961b7f25a9323851f681d582363aa5f8"
    "9937f5a67258bf63ad6f1a0b1d96dbd4faddfcefc5266ba6611722395c906556"
    "be52afe3f565636ad1b17d508b73d8743eeb524be22b3dcbc2c7468d54119c74"
    "68449a13d8e3b95811a198f3491de3e7fe942b330407abf82a4ed7c1b311663a"
    "c69890f4157015853d91e923037c227a33cdd5ec281ca3f79c44546b9d90ca00"
    "f064c99e3dd97911d39fe9c5d0b23a229a234cb36186c4819e8b9c5927726632"
    "291d6a418211cc2962e20fe47feb3edf330f2c603a9d48c0fcb5699dbfe58964"
    "25c5bac4aee82e57a85aaf4e2513e4f05796b07ba2ee47d80506f8d2c25e50fd"
    "14de71e6c418559302f939b0e1abd576f279c4b2e0feb85c1f28ff18f58891ff"
    "ef132eef2fa09346aee33c28eb130ff28f5b766953334113211996d20011a198"
    "e3fc433f9f2541010ae17c1bf202580f6047472fb36857fe843b19f5984009dd"
    "c324044e847a4f4a0ab34f719595de37252d6235365e9b84392b061085349d73"
    "203a4a13e96f5432ec0fd4a1ee65accdd5e3904df54c1da510b0ff20dcc0c77f"
    "cb2c0e0eb605cb0504db87632cf3d8b4dae6e705769d1de354270123cb11450e"
    "fc60ac47683d7b8d0f811365565fd98c4c8eb936bcab8d069fc33bd801b03ade"
    "a2e1fbc5aa463d08ca19896d2bf59a071b851e6c239052172f296bfb5e724047"
    "90a2181014f3b94a4e97d117b438130368cc39dbb2d198065ae3986547926cd2"
    "162f40a29f0c3c8745c0f50fba3852e566d44575c29d39a03f0cda721984b6f4"
    "40591f355e12d439ff150aab7613499dbd49adabc8676eef023b15b65bfc5ca0"
    "6948109f23f350db82123535eb8a7433bdabcb909271a6ecbcb58b936a88cd4e"
    "8f2e6ff5800175f113253d8fa9ca8885c2f552e657dc603f252e1a8e308f76f0"
    "be79e2fb8f5d5fbbe2e30ecadd220723c8c0aea8078cdfcb3868263ff8f09400"
    "54da48781893a7e49ad5aff4af300cd804a6b6279ab3ff3afb64491c85194aab"
    "760d58a606654f9f4400e8b38591356fbf6425aca26dc85244259ff2b19c41b9"
    "f96f3ca9ec1dde434da7d2d392b905ddf3d1f9af93d1af5950bd493f5aa731b4"
    "056df31bd267b6b90a079831aaf579be0a39013137aac6d404f518cfd4684064"
    "7e78bfe706ca4cf5e9c5453e9f7cfd2b8b4c8d169a44e55c88d4a9a7f9474241"
    "e221af44860018ab0856972e194cd934"
)


def test_rfc9001_client_initial_is_decrypted() -> None:
    q = parse_initial(RFC_A2_PACKET)
    assert q is not None
    assert q.version == QUIC_V1
    assert (q.dcid, q.scid, q.token) == (RFC_DCID, b"", b"")
    assert (q.packet_number, q.pn_length) == (2, 4)
    assert q.frames == ("crypto", "padding")
    assert q.crypto_offsets == (0,)
    assert q.sni == "example.com"
    assert q.client_hello is not None and q.client_hello.alpn == ("alpn",)
    assert q.anomalies == ()
    assert q.coalesced_rest == 0


def test_rfc9001_client_initial_is_rebuilt_byte_for_byte() -> None:
    built = protect_initial(RFC_A2_FRAMES, dcid=RFC_DCID, pn=2, pn_len=4, pad_to=0)
    assert built == RFC_A2_PACKET


# The artifact's AE README, Experiment 1 ("a truncated QUIC packet with the SNI set to
# google.com"): 95 bytes, both connection IDs empty, a 1-byte packet number, no padding. The GFW
# blocked it, so neither the 1,200-byte minimum nor non-empty CIDs are required.
ARTIFACT_E1 = bytes.fromhex(
    "c1000000010000004055f5de2bedfa3f92b1b6c9566bb0fdd4cd655379bc549f9383046e110d3ec5af79f977950f"
    "7357c9af27587d2ca63da6f931afd48e211cbbb364d99a3363d60e23bbf8064b36e7294572c4a210e895c752cadc"
    "168441"
)


def test_artifact_e1_probe() -> None:
    q = parse_initial(ARTIFACT_E1)
    assert q is not None
    assert (q.dcid, q.scid, q.pn_length) == (b"", b"", 1)
    assert q.sni == "google.com"


# --- round trips ---------------------------------------------------------------------------


@pytest.mark.parametrize("version", [QUIC_V1, QUIC_V2])
@pytest.mark.parametrize("pn_len", [1, 2, 3, 4])
@pytest.mark.parametrize(("dcid_len", "scid_len"), [(0, 0), (1, 20), (8, 8), (20, 0), (20, 20)])
def test_round_trip(version: int, pn_len: int, dcid_len: int, scid_len: int) -> None:
    dcid, scid = bytes(range(1, dcid_len + 1)), bytes(range(100, 100 + scid_len))
    pn = 0x01020304 & ((1 << (8 * pn_len)) - 1)
    d = build_initial(
        "www.youtube.com", dcid=dcid, scid=scid, version=version, pn_len=pn_len, pn=pn
    )
    assert len(d) == 1200
    q = parse_initial(d)
    assert q is not None
    assert (q.version, q.dcid, q.scid) == (version, dcid, scid)
    assert (q.packet_number, q.pn_length) == (pn, pn_len)
    assert q.frames == ("crypto", "padding")
    assert q.sni == "www.youtube.com"
    assert q.client_hello is not None
    assert q.client_hello.alpn == ("h3",)
    assert 0x39 in q.client_hello.extensions  # quic_transport_parameters
    assert q.anomalies == ()


def test_round_trip_token_large_packet_and_no_sni() -> None:
    d = build_initial(None, token=b"t" * 70, pad_to=20_000)
    q = parse_initial(d)
    assert q is not None and q.token == b"t" * 70 and q.sni is None
    assert len(d) == 20_000


def test_varints() -> None:
    for value in (0, 63, 64, 16383, 16384, (1 << 30) - 1, 1 << 30, (1 << 62) - 1):
        enc = push_varint(value)
        assert pull_varint(enc, 0, len(enc)) == (value, len(enc))
        assert pull_varint(enc, 0, len(enc) - 1) is None or len(enc) == 1
    assert push_varint(5, 2) == b"\x40\x05"
    with pytest.raises(ValueError):
        push_varint(1 << 62)


def test_build_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError):
        build_initial("a.com", pn_len=5)
    with pytest.raises(ValueError):
        build_initial("a.com", split_crypto=0)
    with pytest.raises(ValueError):
        build_initial("a.com", dcid=bytes(256))
    with pytest.raises(ValueError):
        split_initials("a.com", 0)


# --- differential: aioquic -----------------------------------------------------------------


@pytest.mark.parametrize("version", [QUIC_V1, QUIC_V2])
def test_aioquic_decrypts_what_we_build(version: int) -> None:
    from aioquic.quic.crypto import CryptoPair  # noqa: PLC0415

    dcid = bytes.fromhex("0011223344556677")
    d = build_initial("twitter.com", dcid=dcid, scid=b"\x01" * 8, version=version, pn=9, pn_len=2)
    pair = CryptoPair()
    pair.setup_initial(cid=dcid, is_client=False, version=version)
    pn_offset = 1 + 4 + 1 + 8 + 1 + 8 + 1 + 2
    _header, payload, pn = pair.decrypt_packet(d, pn_offset, 0)
    assert pn == 9
    assert payload.startswith(crypto_frame(0, quic_client_hello("twitter.com", scid=b"\x01" * 8)))


@pytest.mark.parametrize("sni", ["www.google.com", "example.org"])
def test_we_read_aioquic_client_initials(sni: str) -> None:
    """aioquic's client (sans-I/O: no socket is opened) sends its first flight."""
    from aioquic.quic.configuration import QuicConfiguration  # noqa: PLC0415
    from aioquic.quic.connection import QuicConnection  # noqa: PLC0415

    conn = QuicConnection(
        configuration=QuicConfiguration(is_client=True, server_name=sni, alpn_protocols=["h3"])
    )
    conn.connect(("198.19.0.2", 443), now=0.0)
    datagrams = [data for data, _addr in conn.datagrams_to_send(now=0.0)]
    assert datagrams
    q = parse_initial(datagrams[0])
    assert q is not None
    assert q.sni == sni
    assert q.client_hello is not None and q.client_hello.alpn == ("h3",)


# --- differential: the compiled opener against `cryptography` -------------------------------


def reference_open(
    datagram: bytes, pn_at: int, end: int, dcid: bytes, version: int
) -> tuple[int, int, int, bytes | None]:
    """RFC 9001 §5 with the `cryptography` package (the builder's keys, mask and nonce): what
    proto/_initial.c must give."""
    keys = initial_keys(dcid, version)
    mask = _mask(keys.hp, datagram[pn_at + 4 : pn_at + 20])
    first = datagram[0] ^ (mask[0] & 0x0F)
    pn_len = (first & 0x03) + 1
    pn = int.from_bytes(datagram[pn_at : pn_at + pn_len], "big") ^ int.from_bytes(
        mask[1 : 1 + pn_len], "big"
    )
    header = bytes((first,)) + datagram[1:pn_at] + pn.to_bytes(pn_len, "big")
    try:
        payload = AESGCM(keys.key).decrypt(
            _nonce(keys.iv, pn), datagram[pn_at + pn_len : end], header
        )
    except InvalidTag:
        return first, pn, pn_len, None
    return first, pn, pn_len, payload


def opened(datagram: bytes, pn_at: int, end: int, dcid: bytes, version: int) -> object:
    return open_initial(datagram, pn_at, end, dcid, SALTS[version], *LABELS[version])


@settings(max_examples=300, deadline=None)
@given(
    dcid=st.binary(max_size=20),
    version=st.sampled_from([QUIC_V1, QUIC_V2]),
    pn_len=st.integers(1, 4),
    pn=st.integers(0, 2**32 - 1),
    pad_to=st.integers(60, 1500),
    flip=st.one_of(st.none(), st.integers(0, 10_000)),
)
def test_compiled_opener_equals_the_reference(
    dcid: bytes, version: int, pn_len: int, pn: int, pad_to: int, flip: int | None
) -> None:
    """Built by the `cryptography` path (protect_initial), opened by both; with one bit
    flipped anywhere from the packet number on, both agree too (a failed tag, or not)."""
    pn &= (1 << (8 * pn_len)) - 1
    d = bytearray(build_initial(None, dcid=dcid, version=version, pn_len=pn_len, pn=pn,
                                pad_to=pad_to))  # fmt: skip
    pos = 5 + 1 + d[5]  # past the version and the dcid
    pos += 1 + d[pos]  # the scid
    for _ in ("token length", "length"):
        got = pull_varint(bytes(d), pos, len(d))
        assert got is not None
        pos = got[1]
    pn_at = pos  # no token
    if flip is not None:
        at = pn_at + flip % (len(d) - pn_at)
        d[at] ^= 1 << (flip % 8)
    want = reference_open(bytes(d), pn_at, len(d), dcid, version)
    assert opened(bytes(d), pn_at, len(d), dcid, version) == want
    if flip is None:
        assert want[1:3] == (pn, pn_len) and want[3] is not None


def test_compiled_opener_rejects_a_sample_out_of_bounds() -> None:
    d = build_initial("google.com")
    with pytest.raises(ValueError, match="sample"):
        opened(d, len(d) - 10, len(d), b"", QUIC_V1)
    with pytest.raises(ValueError, match="sample"):
        opened(d, 30, len(d) + 1, b"", QUIC_V1)


# --- what is not an Initial, and what is malformed -----------------------------------------


@pytest.mark.parametrize(
    "datagram",
    [
        b"",
        b"\xc0\x00\x00",  # too short to name a version
        bytes(14),  # the artifact's exemption payload: short-header form bit clear
        b"\x40" + bytes(30),  # a short (1-RTT) header
        b"\xc0\x00\x00\x00\x00" + bytes(20),  # version negotiation
        b"\xc0\x00\x00\x00\x02" + bytes(40),  # unknown version (Table 3 row 3)
        b"\xe0\x00\x00\x00\x01" + bytes(40),  # v1 Handshake
        b"\xf0\x00\x00\x00\x01" + bytes(40),  # v1 Retry
        b"\xd0\x00\x00\x00\x01" + bytes(40),  # v1 0-RTT
        b"\xc0\x6b\x33\x43\xcf" + bytes(40),  # v2 type 0 is Retry (RFC 9369 §3.2)
    ],
)
def test_not_an_initial(datagram: bytes) -> None:
    assert parse_initial(datagram) is None


def test_bad_version_with_v1_protection_is_not_parsed() -> None:
    # Table 3 row 3: version 0x00000002 written over a v1-protected Initial.
    d = build_initial("google.com")
    assert parse_initial(d[:1] + b"\x00\x00\x00\x02" + d[5:]) is None
    assert parse_initial(protect_initial(b"\x01", dcid=b"x", version=2, key_version=1)) is None


def kind_of(datagram: bytes) -> str:
    with pytest.raises(MalformedPacket) as info:
        parse_initial(datagram)
    return info.value.kind


def test_every_prefix_is_malformed_or_not_an_initial() -> None:
    """A datagram is complete: a cut Initial is malformed (there is no 'need more data')."""
    d = build_initial("google.com", pad_to=300)
    for cut in range(len(d)):
        try:
            assert parse_initial(d[:cut]) is None
            assert cut < 5
        except MalformedPacket as exc:
            assert exc.kind == "quic.truncated", cut


def test_last_byte_removed() -> None:
    # Table 3 row 2.
    d = build_initial("google.com")
    assert kind_of(d[:-1]) == "quic.truncated"


@pytest.mark.parametrize("which", ["dcid", "scid"])
def test_connection_id_of_255_bytes(which: str) -> None:
    # Table 3 row 5 ("source connection ID has a length of 0x255"; the artifact's command sets
    # the destination CID to 255 bytes). Both are malformed in v1.
    cid = bytes(range(255))
    d = build_initial("google.com", **{which: cid})  # type: ignore[arg-type]
    assert kind_of(d) == "quic.cid_too_long"


def test_tampering_fails_decryption() -> None:
    d = bytearray(build_initial("google.com"))
    d[100] ^= 1
    assert kind_of(bytes(d)) == "quic.decrypt_failed"
    d = build_initial("google.com", dcid=b"12345678")
    assert kind_of(d[:6] + b"87654321" + d[14:]) == "quic.decrypt_failed"  # another DCID


def test_length_too_small_to_sample() -> None:
    d = bytes.fromhex("c000000001") + b"\x00\x00" + b"\x00" + push_varint(10) + bytes(10)
    assert kind_of(d) == "quic.truncated"


# --- the censor's readings (spec §5 Table 3) -----------------------------------------------


def minimal_hello(sni: str) -> bytes:
    """A ClientHello of the shape the artifact's Table 3 payloads 4-6 carry: legacy version, a
    zero random, no session ID, no cipher suites, null compression, one server_name."""
    name = sni.encode()
    ext = b"\x00\x00" + (len(name) + 5).to_bytes(2, "big") + (len(name) + 3).to_bytes(2, "big")
    ext += b"\x00" + len(name).to_bytes(2, "big") + name
    body = b"\x03\x03" + bytes(32) + b"\x00" + b"\x00\x00" + b"\x01\x00"
    body += len(ext).to_bytes(2, "big") + ext
    return b"\x01" + len(body).to_bytes(3, "big") + body


def test_one_byte_pn_empty_cids_unpadded_minimal_hello() -> None:
    # Table 3 rows 1 and 4.
    d = build_initial(
        None, client_hello=minimal_hello("google.com"), dcid=b"", scid=b"", pn_len=1, pad_to=0
    )
    assert len(d) < 100
    q = parse_initial(d)
    assert q is not None and q.sni == "google.com" and q.pn_length == 1


def test_crypto_length_zero_still_carries_the_hello() -> None:
    # Table 3 row 6.
    d = build_initial(None, client_hello=minimal_hello("google.com"), crypto_len_zero=True)
    q = parse_initial(d)
    assert q is not None and q.sni == "google.com"
    assert "quic.crypto_length_zero_with_data" in q.anomalies
    assert q.frames == ("crypto",)


def test_sni_only_in_alpn() -> None:
    # Table 3 row 7.
    q = parse_initial(build_initial(None, alpn=("google.com",)))
    assert q is not None and q.sni is None
    assert q.client_hello is not None and q.client_hello.alpn == ("google.com",)


def test_ping_and_padding_before_the_crypto_frame() -> None:
    # Table 3 row 8: PING, PADDING, the CRYPTO frame, PADDING, three PINGs.
    d = build_initial(
        "www.google.com",
        pn_len=1,
        leading_frames=b"\x01" + bytes(150),
        trailing_frames=bytes(100) + b"\x01\x01\x01",
        pad_to=0,
    )
    q = parse_initial(d)
    assert q is not None
    assert q.frames == ("ping", "padding", "crypto", "padding", "ping", "ping", "ping")
    assert q.client_hello is None and q.sni is None
    assert "quic.crypto_not_first" in q.anomalies


def test_leading_padding_is_skipped() -> None:
    # The GFW-blocked Initials in the artifact's captures start with PADDING.
    q = parse_initial(build_initial("google.com", leading_frames=bytes(30)))
    assert q is not None and q.frames[:2] == ("padding", "crypto") and q.sni == "google.com"


def test_ech_outer_sni() -> None:
    # Table 3 row 9.
    q = parse_initial(build_initial("cloudflare-ech.com", ech=True))
    assert q is not None and q.sni == "cloudflare-ech.com"
    assert q.client_hello is not None and q.client_hello.has_ech


def test_quic_v2_is_parsed_and_labelled() -> None:
    # Table 3 row 10: parsed, so that the policy can let it pass.
    q = parse_initial(build_initial("google.com", version=QUIC_V2))
    assert q is not None and q.version == QUIC_V2 and q.sni == "google.com"


@pytest.mark.parametrize("at", [1, 3, 4, 40, 100])
def test_client_hello_split_over_crypto_frames_is_not_reassembled(at: int) -> None:
    q = parse_initial(build_initial("google.com", split_crypto=at))
    assert q is not None
    assert q.frames == ("crypto", "crypto", "padding")
    assert q.crypto_offsets == (0, at)
    assert q.client_hello is None
    assert "quic.client_hello_split" in q.anomalies


def test_crypto_frames_out_of_order() -> None:
    message = quic_client_hello("google.com")
    frames = crypto_frame(50, message[50:]) + crypto_frame(0, message[:50])
    q = parse_initial(protect_initial(frames, dcid=b"abcdefgh"))
    assert q is not None and q.crypto_offsets == (50, 0) and q.client_hello is None
    assert "quic.crypto_offset_nonzero" in q.anomalies


def test_client_hello_split_across_initial_packets() -> None:
    first, second = split_initials("google.com", 200)
    q1, q2 = parse_initial(first), parse_initial(second)
    assert q1 is not None and q1.client_hello is None
    assert q2 is not None and q2.crypto_offsets == (200,) and q2.client_hello is None
    # Coalesced in one datagram: the censor reads the first packet only.
    both = parse_initial(split_initials("google.com", 200, pad_to=0)[0] + second)
    assert both is not None and both.client_hello is None and both.coalesced_rest == len(second)


def test_frames_ack_close_and_unexpected() -> None:
    ack = b"\x02" + push_varint(5) + b"\x00" + b"\x01" + b"\x00" + b"\x00\x00"  # one extra range
    ack_ecn = b"\x03" + b"\x00\x00\x00\x00" + b"\x00\x00\x00"
    close = b"\x1c" + push_varint(0x0A) + b"\x00" + b"\x03bye"
    hello = crypto_frame(0, quic_client_hello("google.com"))
    q = parse_initial(protect_initial(hello + ack + ack_ecn + close + b"\x08rest", dcid=b"d"))
    assert q is not None and q.sni == "google.com"
    assert q.frames == ("crypto", "ack", "ack", "connection_close", "0x08")
    assert "quic.unexpected_frame" in q.anomalies
    q = parse_initial(protect_initial(hello + b"\x06\x00\x40", dcid=b"d", pad_to=0))
    assert q is not None and "quic.frame_truncated" in q.anomalies and q.sni == "google.com"


def test_no_crypto_and_non_client_hello() -> None:
    q = parse_initial(protect_initial(b"\x01", dcid=b"d"))
    assert q is not None and q.frames == ("ping", "padding") and q.client_hello is None
    assert "quic.no_crypto" in q.anomalies
    with pytest.raises(MalformedPacket) as info:
        parse_initial(protect_initial(crypto_frame(0, b"\x02\x00\x00\x01\x00"), dcid=b"d"))
    assert info.value.kind == "tls.not_client_hello"


def test_reserved_and_fixed_bits_are_anomalies() -> None:
    hello = crypto_frame(0, quic_client_hello("google.com"))
    q = parse_initial(protect_initial(hello, dcid=b"d", fixed_bit=False, reserved_bits=2))
    assert q is not None and q.sni == "google.com"
    assert set(q.anomalies) == {"quic.fixed_bit_zero", "quic.reserved_bits"}


# --- real captures (gfw-report/usenixsecurity25-quic-sni, read from ../shared/data) ----------

PCAPS = shared_pcaps(
    "gfw-quic-sni-artifact--quic_*_anon.pcap", "gfw-quic-sni-artifact--flow-tracking-time.pcap"
)


@needs_shared(SHARED_PCAPS)
@pytest.mark.parametrize("path", PCAPS, ids=os.path.basename)
def test_real_initials_decrypt(path: str, capsys: pytest.CaptureFixture[str]) -> None:
    snis: dict[str, int] = {}
    initials = 0
    with CaptureReader(path) as reader:
        for _ts, raw in reader:
            pkt = parse(raw)
            if pkt.proto != PROTO_UDP or not pkt.payload or not pkt.payload[0] & 0x80:
                continue
            q = parse_initial(pkt.payload)
            assert isinstance(q, QuicInitial)
            initials += 1
            assert q.version == QUIC_V1 and q.anomalies == ()
            assert isinstance(q.sni, str) and q.sni
            snis[q.sni] = snis.get(q.sni, 0) + 1
    assert initials
    with capsys.disabled():
        print(f"\n{os.path.basename(path)}: {initials} Initials, SNIs {snis}")
    assert set(snis) <= {"google.com", "http3check.net"}


# --- properties ----------------------------------------------------------------------------

VALID = [
    build_initial("google.com"),
    build_initial("a.b", dcid=b"", scid=b"", pn_len=1, pad_to=0),
    build_initial("x.org", version=QUIC_V2, pn_len=2),
    build_initial(None, client_hello=minimal_hello("google.com"), crypto_len_zero=True),
    ARTIFACT_E1,
]


def outcome(datagram: bytes) -> QuicInitial | str | None:
    try:
        return parse_initial(datagram)
    except MalformedPacket as exc:
        assert exc.kind.startswith(("quic.", "tls."))
        assert 0 <= exc.offset <= max(len(datagram), 1) + 16
        return exc.kind


@settings(max_examples=1000, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=1400))
def test_arbitrary_bytes(data: bytes) -> None:
    outcome(data)


@settings(max_examples=500, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=600))
def test_arbitrary_bytes_behind_a_long_header(data: bytes) -> None:
    for head in (b"\xc0\x00\x00\x00\x01", b"\xc3\x00\x00\x00\x01\x08", b"\xd0\x6b\x33\x43\xcf"):
        outcome(head + data)


@settings(max_examples=500, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(VALID), st.data())
def test_mutated_initials(valid: bytes, data: st.DataObject) -> None:
    pos = data.draw(st.integers(0, len(valid) - 1))
    byte = data.draw(st.integers(0, 255))
    mutated = valid[:pos] + bytes((byte,)) + valid[pos + 1 :]
    outcome(mutated)
    outcome(valid[:pos])
    outcome(valid[:pos] + valid[pos + 1 :])


@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(VALID), st.binary(max_size=300))
def test_trailing_bytes_are_coalesced_rest(valid: bytes, junk: bytes) -> None:
    whole = parse_initial(valid)
    assert whole is not None and whole.coalesced_rest == 0
    with_junk = parse_initial(valid + junk)
    assert with_junk is not None
    assert with_junk.coalesced_rest == len(junk)
    assert with_junk.sni == whole.sni and with_junk.frames == whole.frames
