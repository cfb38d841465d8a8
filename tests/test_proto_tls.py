"""Tests for gfwlab.proto.tls: the ClientHello as the GFW's SNI/ESNI filters read it (spec §4)."""

from __future__ import annotations

import contextlib
import ssl
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gfwlab.errors import MalformedPacket
from gfwlab.proto.tls import (
    EXT_ECH,
    EXT_ESNI,
    ClientHello,
    build_client_hello,
    parse_client_hello,
    parse_client_hello_body,
)


def openssl_client_hello(server_hostname: str, alpn: list[str] | None = None) -> bytes:
    """The first flight of Python's own TLS client, captured from a memory BIO (no network)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    if alpn:
        ctx.set_alpn_protocols(alpn)
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    conn = ctx.wrap_bio(incoming, outgoing, server_hostname=server_hostname)
    with pytest.raises(ssl.SSLWantReadError):
        conn.do_handshake()
    return outgoing.read()


def body_of(record: bytes) -> bytes:
    return record[9:]


# --- vectors -------------------------------------------------------------------------------


def test_build_parse_roundtrip() -> None:
    data = build_client_hello("WWW.Example.COM", alpn=("h2", "http/1.1"))
    hello = parse_client_hello(data)
    assert hello is not None
    assert data[:3] == b"\x16\x03\x01"
    assert hello.sni == "www.example.com"
    assert hello.sni_names == ("www.example.com",)
    assert hello.alpn == ("h2", "http/1.1")
    assert not hello.has_esni and not hello.has_ech
    assert hello.legacy_version == 0x0303
    assert hello.cipher_suites[:3] == (0x1301, 0x1302, 0x1303)
    assert hello.extensions[0] == 0 and {0x2B, 0x33, 0x0D, 0x10} <= set(hello.extensions)
    assert hello.record_length == len(data) - 5
    assert hello.anomalies == ()


def test_build_is_deterministic() -> None:
    assert build_client_hello("a.example") == build_client_hello("a.example")
    assert build_client_hello("a.example") != build_client_hello("b.example")


def test_no_sni() -> None:
    hello = parse_client_hello(build_client_hello(None))
    assert hello is not None
    assert hello.sni is None and hello.sni_names == () and 0 not in hello.extensions


@pytest.mark.parametrize(("esni", "ech"), [(True, False), (False, True), (True, True)])
def test_esni_ech_flags(esni: bool, ech: bool) -> None:
    hello = parse_client_hello(build_client_hello("cloudflare-ech.com", esni=esni, ech=ech))
    assert hello is not None
    assert (hello.has_esni, hello.has_ech) == (esni, ech)
    assert (EXT_ESNI in hello.extensions, EXT_ECH in hello.extensions) == (esni, ech)
    assert hello.sni == "cloudflare-ech.com"


def test_real_openssl_client_hello() -> None:
    data = openssl_client_hello("example.com", ["h2", "http/1.1"])
    hello = parse_client_hello(data)
    assert hello is not None
    assert hello.sni == "example.com"
    assert hello.alpn == ("h2", "http/1.1")
    assert hello.record_length == len(data) - 5
    assert 0x002B in hello.extensions  # supported_versions: OpenSSL offers TLS 1.3
    assert not hello.has_esni and not hello.has_ech


def test_real_openssl_client_hello_without_alpn() -> None:
    hello = parse_client_hello(openssl_client_hello("Mixed.Case.example"))
    assert hello is not None
    assert hello.sni == "mixed.case.example" and hello.alpn == ()


def test_multiple_sni_and_duplicate_extension() -> None:
    names = b"".join(b"\x00" + struct.pack("!H", len(n)) + n for n in (b"a.example", b"b.example"))
    second_sni = struct.pack("!H", len(names)) + names
    hello = parse_client_hello(
        build_client_hello("first.example", extra_extensions=[(0, second_sni)])
    )
    assert hello is not None
    assert hello.sni == "first.example"
    assert hello.sni_names == ("first.example", "a.example", "b.example")
    assert set(hello.anomalies) == {"tls.multiple_sni", "tls.duplicate_extension"}


def test_unknown_extension_is_a_value() -> None:
    hello = parse_client_hello(build_client_hello("x.example", extra_extensions=[(0x7A7A, b"")]))
    assert hello is not None
    assert hello.extensions[-1] == 0x7A7A and hello.anomalies == ()


def test_parse_body_directly() -> None:
    data = build_client_hello("quic.example", alpn=("h3",))
    hello = parse_client_hello_body(body_of(data))
    assert isinstance(hello, ClientHello)
    assert hello.sni == "quic.example" and hello.alpn == ("h3",) and hello.record_length == 0


def test_minimal_hello_without_extensions() -> None:
    body = b"\x03\x01" + bytes(32) + b"\x00" + b"\x00\x02\x00\x2f" + b"\x01\x00"
    hello = parse_client_hello_body(body)
    assert hello.extensions == () and hello.sni is None and hello.cipher_suites == (0x002F,)


# --- the censor does not reassemble TLS records (spec §4a) ---------------------------------


def test_record_split_is_fragmented_at_every_split_point() -> None:
    whole = build_client_hello("blocked.example")
    message_len = len(whole) - 5
    for split in range(1, message_len):
        data = build_client_hello("blocked.example", record_split=split)
        assert len(data) == len(whole) + 5
        with pytest.raises(MalformedPacket) as exc:
            parse_client_hello(data)
        assert exc.value.kind == "tls.client_hello_fragmented", split


def test_record_split_bounds() -> None:
    with pytest.raises(ValueError):
        build_client_hello("x", record_split=0)
    with pytest.raises(ValueError):
        build_client_hello("x", record_split=10_000)


def test_record_holding_more_than_the_hello() -> None:
    data = bytearray(build_client_hello("x.example"))
    data += b"\x0f\x00\x00\x00"  # a second (bogus) handshake message in the same record
    struct.pack_into("!H", data, 3, len(data) - 5)
    hello = parse_client_hello(bytes(data))
    assert hello is not None
    assert hello.sni == "x.example" and "tls.record_trailing_data" in hello.anomalies


# --- malformed -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "kind"),
    [
        (b"GET / HTTP/1.1\r\n", "tls.not_handshake"),
        (b"\x17\x03\x03\x00\x10", "tls.not_handshake"),
        (b"\x16\x02\x00", "tls.not_handshake"),
        (b"\x16\x03\x03\x00\x30\x02", "tls.not_client_hello"),  # a ServerHello
        (b"\x16\x03\x01\x40\x01", "tls.record_overflow"),
        (b"\x16\x03\x01\x00\x00", "tls.client_hello_fragmented"),
        (b"\x16\x03\x01\x00\x02\x01\x00", "tls.client_hello_fragmented"),
        (b"\x16\x03\x01\x00\x08\x01\x00\x00\x04\x03\x03\x00\x00", "tls.truncated_field"),
    ],
)
def test_malformed(data: bytes, kind: str) -> None:
    with pytest.raises(MalformedPacket) as exc:
        parse_client_hello(data)
    assert exc.value.kind == kind


def test_truncated_extension_inside_complete_record() -> None:
    data = bytearray(build_client_hello("x.example"))
    sni_ext = data.index(b"\x00\x00\x00\x0e\x00\x0c\x00\x00\x09x.example")
    struct.pack_into("!H", data, sni_ext + 4, 0x30)  # server_name_list claims 48 bytes
    with pytest.raises(MalformedPacket) as exc:
        parse_client_hello(bytes(data))
    assert exc.value.kind == "tls.truncated_field"
    assert exc.value.offset == sni_ext + 4


# --- fed in pieces -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "data",
    [
        build_client_hello("pieces.example", alpn=("h2",), ech=True),
        openssl_client_hello("example.com", ["http/1.1"]),
    ],
    ids=["built", "openssl"],
)
def test_pieces(data: bytes) -> None:
    whole = parse_client_hello(data)
    assert whole is not None
    for n in range(len(data)):
        assert parse_client_hello(data[:n]) is None, n
    # Whatever follows the first record (the next flight, junk) is ignored.
    assert parse_client_hello(data + b"\x14\x03\x03\x00\x01\x01") == whole
    assert parse_client_hello(data + bytes(range(256))) == whole


# --- properties ----------------------------------------------------------------------------


@settings(max_examples=500)
@given(st.binary(max_size=300))
def test_arbitrary_bytes(data: bytes) -> None:
    with contextlib.suppress(MalformedPacket):
        parse_client_hello(data)


@settings(max_examples=500)
@given(st.binary(max_size=300))
def test_arbitrary_bodies(body: bytes) -> None:
    try:
        hello = parse_client_hello_body(body)
    except MalformedPacket:
        return
    assert hello.record_length == 0


_BASE = build_client_hello("mutate.example", alpn=("h2",), esni=True)


@settings(max_examples=500)
@given(st.lists(st.tuples(st.integers(0, len(_BASE) - 1), st.integers(0, 255)), max_size=4))
def test_mutated_hellos(edits: list[tuple[int, int]]) -> None:
    data = bytearray(_BASE)
    for index, value in edits:
        data[index] = value
    with contextlib.suppress(MalformedPacket):
        parse_client_hello(bytes(data))
