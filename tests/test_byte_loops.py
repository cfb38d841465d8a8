"""The compiled byte loops (gfwlab.proto._scan) against the Python they stand in for.

A ClientHello or a DNS query is read by the compiled scan when it is plain and by the Python
parser otherwise: on well-formed messages, on every one of them cut short, with a byte changed or
with bytes added, and on arbitrary bytes, the two give the same message or the same error. The
run of zero bytes a QUIC Initial's PADDING makes ends where stripping the zeros says it does.
"""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gfwlab.errors import MalformedPacket
from gfwlab.proto import _scan, dns
from gfwlab.proto.quic_build import quic_client_hello
from gfwlab.proto.tls import (
    EXT_ALPN,
    EXT_SERVER_NAME,
    ClientHello,
    _parse_body,
    build_client_hello,
    client_hello_in,
    parse_client_hello,
    parse_client_hello_body,
)

Outcome = ClientHello | tuple[str, int, str]


def _python(data: bytes, start: int, end: int, shift: int = 0) -> Outcome:
    try:
        return _parse_body(data, start, end, shift, 0, ())
    except MalformedPacket as exc:
        return (exc.kind, exc.offset, str(exc))


def _served(data: bytes, start: int, end: int) -> Outcome:
    try:
        return client_hello_in(data, start, end)
    except MalformedPacket as exc:
        return (exc.kind, exc.offset, str(exc))


def _body(hello: bytes) -> bytes:
    return hello[9:]  # record header (5) and handshake header (4)


def _hellos() -> list[bytes]:
    """Browser-like bodies, over TCP and QUIC: with and without each extension the scan reads
    itself."""
    out = []
    for sni in (None, "example.com", "WWW.Example.COM", "a" * 250, "\xe9t\xe9.example"):
        for alpn in ((), ("h2", "http/1.1"), ("x" * 255,)):
            for esni, ech in ((False, False), (True, False), (False, True)):
                out.append(_body(build_client_hello(sni, alpn=alpn, esni=esni, ech=ech)))
            out.append(quic_client_hello(sni, alpn=alpn or ("h3",), ech=True)[4:])
    return out


def test_the_scan_reads_plain_hellos_itself() -> None:
    """Browser-like hellos take the compiled path (else the tests below compare the Python
    parser with itself), and give what the Python parser gives."""
    for body in _hellos():
        assert _scan.client_hello(body, 0, len(body)) is not None
        assert client_hello_in(body, 0, len(body)) == _python(body, 0, len(body))


def test_hellos_the_scan_leaves_to_the_parser() -> None:
    """Each oddity the parser reports as an anomaly, and every error, is left to it."""
    plain = build_client_hello("example.com", alpn=("h2",))
    odd = [
        build_client_hello("example.com", extra_extensions=[(0x0017, b"")]),  # duplicate
        build_client_hello("a.example", extra_extensions=[(EXT_SERVER_NAME, b"")]),
        build_client_hello(None, extra_extensions=[(EXT_SERVER_NAME, b"")]),  # empty SNI
        build_client_hello(None, extra_extensions=[(EXT_SERVER_NAME, b"\x00\x00")]),
        build_client_hello(None, extra_extensions=[(EXT_SERVER_NAME, b"\x00\x04\x01\x00\x01a")]),
        build_client_hello(
            None, extra_extensions=[(EXT_SERVER_NAME, b"\x00\x08\x00\x00\x01a\x00\x00\x01b")]
        ),  # two host_names
        build_client_hello(None, extra_extensions=[(EXT_ALPN, b"\x00\x01\x00")]),  # empty name
        build_client_hello(None, extra_extensions=[(EXT_ALPN, b"")]),  # no list
        build_client_hello(None, extra_extensions=[(EXT_ALPN, b"\x00\x03\x02h2\x00")]),
    ]
    for hello in odd:
        body = _body(hello)
        assert _scan.client_hello(body, 0, len(body)) is None
        python = _python(body, 0, len(body))
        assert isinstance(python, tuple) or python.anomalies, python
        assert _served(body, 0, len(body)) == python
    body = _body(plain) + b"\x00"  # a byte after the extensions
    assert _scan.client_hello(body, 0, len(body)) is None
    assert parse_client_hello_body(body).anomalies == ("tls.trailing_data",)


def test_every_cut_change_and_insertion_of_a_hello() -> None:
    """Each prefix of a hello, each byte of it changed (three values each) and a byte put in at
    each place: the served result is the parser's, error for error."""
    rng = random.Random(5)
    for body in _hellos()[::7]:
        n = len(body)
        for cut in range(n + 1):
            assert _served(body, 0, cut) == _python(body, 0, cut)
        for at in range(n):
            for value in (0, 0xFF, rng.randrange(256)):
                changed = body[:at] + bytes([value]) + body[at + 1 :]
                assert _served(changed, 0, n) == _python(changed, 0, n), (at, value)
            grown = body[:at] + bytes([rng.randrange(256)]) + body[at:]
            assert _served(grown, 0, n + 1) == _python(grown, 0, n + 1), at


def test_a_hello_read_in_place_reports_the_buffers_offsets() -> None:
    """In a bigger buffer the scan reads only [start, end), and errors name the buffer's
    offsets, as parse_client_hello_body's ``offset`` does for a copy."""
    body = _body(build_client_hello("example.com", alpn=("h2",)))
    data = b"\x16" * 40 + body + b"\x00" * 9
    whole = client_hello_in(data, 40, 40 + len(body))
    assert whole == parse_client_hello_body(body)
    for cut in (0, 1, 35, 60, len(body) - 1):
        got = _served(data, 40, 40 + cut)
        try:
            parse_client_hello_body(body[:cut], offset=40)
        except MalformedPacket as exc:
            assert got == (exc.kind, exc.offset, str(exc))
        else:
            pytest.fail(f"a hello cut at {cut} was read")


def test_records_keep_their_own_anomalies() -> None:
    """The record's anomaly (bytes after the message in the record) goes with the scan's
    hello, and the record length is the record's."""
    hello = build_client_hello("example.com")
    body = hello[9:]
    record = b"\x16\x03\x01" + (len(body) + 4 + 3).to_bytes(2, "big") + hello[5:] + b"\x00" * 3
    got = parse_client_hello(record)
    assert got is not None
    assert got.anomalies == ("tls.record_trailing_data",)
    assert got.record_length == len(body) + 7
    assert got.sni == "example.com"


def test_the_scan_refuses_bounds_outside_the_data() -> None:
    body = _body(build_client_hello("example.com"))
    for start, end in ((-1, len(body)), (0, len(body) + 1), (5, 4)):
        assert _scan.client_hello(body, start, end) is None


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=300), st.integers(0, 320), st.integers(0, 320))
def test_arbitrary_bytes(data: bytes, start: int, end: int) -> None:
    start, end = min(start, len(data)), min(max(start, end), len(data))
    assert _served(data, start, end) == _python(data, start, end)


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_arbitrary_extension_blocks(draw: st.DataObject) -> None:
    """Hellos whose extensions are drawn: types from the ones the scan reads and a few others,
    contents arbitrary or well formed."""
    kinds = st.sampled_from([EXT_SERVER_NAME, EXT_ALPN, 0xFFCE, 0xFE0D, 0x0017, 0x002B])
    content = st.one_of(
        st.binary(max_size=12),
        st.builds(lambda n: b"\x00" + len(n).to_bytes(2, "big") + n, st.binary(max_size=8)).map(
            lambda e: len(e).to_bytes(2, "big") + e
        ),
        st.lists(st.binary(max_size=4), max_size=3)
        .map(lambda names: b"".join(len(n).to_bytes(1, "big") + n for n in names))
        .map(lambda e: len(e).to_bytes(2, "big") + e),
    )
    exts = draw.draw(st.lists(st.tuples(kinds, content), max_size=6))
    block = b"".join(t.to_bytes(2, "big") + len(c).to_bytes(2, "big") + c for t, c in exts)
    body = (
        b"\x03\x03" + bytes(32) + b"\x00" + b"\x00\x04\x13\x01\x13\x02" + b"\x01\x00"
        + len(block).to_bytes(2, "big") + block
    )  # fmt: skip
    assert _served(body, 0, len(body)) == _python(body, 0, len(body))


def _zero_run_reference(data: bytes, pos: int, end: int) -> int:
    return end - len(data[pos:end].lstrip(b"\x00"))


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.sampled_from([b"\x00" * 13, b"\x00", b"\x01", b"\x80", b"\x00" * 64]), max_size=20),
    st.integers(0, 1200),
    st.integers(0, 1200),
)
def test_zero_run_ends_where_stripping_says(parts: list[bytes], pos: int, end: int) -> None:
    data = b"".join(parts)
    end = min(end, len(data))
    pos = min(pos, end)
    assert _scan.zero_run(data, pos, end) == _zero_run_reference(data, pos, end)


def _dns_python(data: bytes, limit: int) -> object:
    try:
        return dns._parse(data, limit)
    except MalformedPacket as exc:
        return (exc.kind, exc.offset, str(exc))


def _dns_served(data: bytes, limit: int) -> object:
    try:
        return dns.parse_strict(data, name_limit=limit)
    except MalformedPacket as exc:
        return (exc.kind, exc.offset, str(exc))


def _queries() -> list[bytes]:
    names = ["example.com", "WWW.Example.COM", "a", "", "x" * 63 + ".y", "\xe9t\xe9.example"]
    names += [".".join(["abcdefghij"] * 11), "a" * 60 + "." + "b" * 60 + ".cn"]
    out = []
    for i, name in enumerate(names):
        for qtype in (1, 28, 255):
            out.append(dns.build_query(name, qtype=qtype, id=i))
    return out


def test_the_scan_reads_plain_queries_itself() -> None:
    for query in _queries():
        for limit in (125, 253, 255):
            plain = _scan.dns_query(query, limit)
            expected = dns._parse(query, limit)
            assert expected is not None
            if plain is None:  # a name the limit cuts: left to the parser
                assert "dns.name_truncated" in expected.anomalies, query
            assert dns.parse_strict(query, name_limit=limit) == expected


def test_every_cut_change_and_insertion_of_a_query() -> None:
    rng = random.Random(9)
    for query in _queries()[::2]:
        n = len(query)
        for limit in (1, 2, 11, 125):
            for cut in range(n + 1):
                assert _dns_served(query[:cut], limit) == _dns_python(query[:cut], limit)
        for at in range(n):
            for value in (0, 0x2E, 0x3F, 0x40, 0xC0, 0x80, ord("A"), rng.randrange(256)):
                changed = query[:at] + bytes([value]) + query[at + 1 :]
                assert _dns_served(changed, 125) == _dns_python(changed, 125), (at, value)
            grown = query[:at] + bytes([rng.randrange(256)]) + query[at:]
            assert _dns_served(grown, 125) == _dns_python(grown, 125), at


@settings(max_examples=400, deadline=None)
@given(
    st.binary(min_size=12, max_size=12),
    st.lists(st.binary(max_size=70), max_size=6),
    st.binary(max_size=6),
    st.integers(1, 300),
)
def test_arbitrary_questions(header: bytes, labels: list[bytes], tail: bytes, limit: int) -> None:
    """Headers and labels drawn (dots, NULs and upper case among the bytes), with QDCOUNT 1
    and QR clear half the time, and any name limit."""
    if header[0] & 1:
        header = header[:2] + bytes([header[2] & 0x7F, header[3]]) + b"\x00\x01" + header[6:]
    data = header + b"".join(bytes([len(x) & 0xFF]) + x for x in labels) + b"\x00" + tail
    assert _dns_served(data, limit) == _dns_python(data, limit)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=120), st.integers(1, 260))
def test_arbitrary_datagrams(data: bytes, limit: int) -> None:
    assert _dns_served(data, limit) == _dns_python(data, limit)
