"""Tests for gfwlab.proto.dns: the DNS injector's view of a query, and its forged answer.

Quirk tests cite gfw-report/ndss25-wallbleed ``blackbox/blackbox.c`` (the reverse-engineered
Injector 3); real forged answers come from the hexdumps in ``blackbox/blackbox-tests.inc`` of the
same repository (commit 68d968f93d3e8203bd6fab77c43353dc36217e5e).
"""

from __future__ import annotations

import hashlib
import ipaddress
import struct

import dns.flags
import dns.message
import dns.name
import dns.rdataclass
import dns.rdatatype
import dns.rrset
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from gfwlab.errors import MalformedPacket
from gfwlab.proto.dns import (
    DnsQuery,
    answer_type,
    build_answer,
    build_query,
    forged_flags,
    is_forged_answer,
    parse_query,
)

HEADER_0120 = bytes.fromhex("3333 0120 0001 0000 0000 0000")  # ID 0x3333, RD+AD, QDCOUNT=1

# blackbox-tests.inc, "Subdomain of facebook.com should be matched": a well-formed query for
# aaaaaaaaaaaaaaaa.facebook.com and the injector's real answer (TTL 0x9a, 108.160.169.178).
FB16_QUERY = HEADER_0120 + b"\x10" + b"a" * 16 + b"\x08facebook\x03com\x00" + b"\x00\x01\x00\x01"
FB16_ANSWER = bytes.fromhex(
    """
    33 33 81 80 00 01 00 01 00 00 00 00 10 61 61 61
    61 61 61 61 61 61 61 61 61 61 61 61 61 08 66 61
    63 65 62 6F 6F 6B 03 63 6F 6D 00 00 01 00 01 C0
    0C 00 01 00 01 00 00 00 9A 00 04 6C A0 A9 B2
    """
)

# blackbox-tests.inc, "Non-matching name that, when truncated to 125 bytes, ends in
# .facebook.com": the name is cut at 125 characters, QTYPE is read from "ex" and the copy stops
# after "extr" (TTL 0x87, 23.234.30.58).
LONG_QUERY = (
    HEADER_0120
    + b"\x10"
    + b"a" * 16
    + (b"\x0f" + b"a" * 15) * 6
    + b"\x08facebook\x03com\x05extra\x00"
    + b"\x00\x01\x00\x01"
)
LONG_ANSWER = bytes.fromhex(
    """
    33 33 81 80 00 01 00 01 00 00 00 00 10 61 61 61
    61 61 61 61 61 61 61 61 61 61 61 61 61 0F 61 61
    61 61 61 61 61 61 61 61 61 61 61 61 61 0F 61 61
    61 61 61 61 61 61 61 61 61 61 61 61 61 0F 61 61
    61 61 61 61 61 61 61 61 61 61 61 61 61 0F 61 61
    61 61 61 61 61 61 61 61 61 61 61 61 61 0F 61 61
    61 61 61 61 61 61 61 61 61 61 61 61 61 0F 61 61
    61 61 61 61 61 61 61 61 61 61 61 61 61 08 66 61
    63 65 62 6F 6F 6B 03 63 6F 6D 05 65 78 74 72 C0
    0C 00 01 00 01 00 00 00 87 00 04 17 EA 1E 3A
    """
)

# blackbox-tests.inc, "Combine ending exactly after the end of the message with an embedded dot
# in the label": query "\x07rsf.org" with no terminator; the answer carries 5 leaked bytes.
RSF_DOT_QUERY = HEADER_0120 + b"\x07rsf.org"
RSF_DOT_ANSWER = bytes.fromhex(
    """
    33 33 81 80 00 01 00 01 00 00 00 00 07 72 73 66
    2e 6f 72 67 1f 95 76 f2 dd c0 0c 00 01 00 01 00
    00 00 77 00 04 68 f4 2e 5d
    """
)

# blackbox-tests.inc, "Increasing \x77 to \x78 causes the QTYPE=AAAA to be interpreted": a
# Wallbleed AAAA answer with leaked SSDP text; the forged address is Teredo 2001::d155:9f89.
MUX_AAAA_QUERY = bytes.fromhex("0000 0120 0001 0000 0000 0000") + b"\x0269\x02mu\x78\x00\x1c"
MUX_AAAA_ANSWER = bytes.fromhex(
    """
    00 00 81 80 00 01 00 01 00 00 00 00 02 36 39 02
    6D 75 78 00 1C F9 40 BE 9C 3A 20 32 33 39 2E 32
    35 35 2E 32 35 35 2E 32 35 30 3A 31 39 30 30 0D
    0A 4D 41 4E 3A 20 22 73 73 64 70 3A 64 69 73 63
    6F 76 65 72 22 0D 0A 4D 58 3A 20 32 0D 0A 53 54
    3A 20 73 73 64 70 3A 61 6C 6C 0D 0A 0D 0A 82 15
    DB 00 32 1F 3D B4 FE F8 60 6A E1 CE 1C CC CD FA
    0B 6A 67 9F 13 D5 FA DA 89 9A 20 8E 80 D7 EF E5
    94 56 9E 00 B7 7B E4 0D 6A 59 34 C0 8A D0 C0 0C
    00 1C 00 01 00 00 00 97 00 10 20 01 00 00 00 00
    00 00 00 00 00 00 D1 55 9F 89
    """
)


# --- vectors -------------------------------------------------------------------------------


def test_build_query_parses_back() -> None:
    wire = build_query("WWW.Example.com.", 28, id=0xBEEF, rd=False)
    q = parse_query(wire)
    assert q == DnsQuery(
        id=0xBEEF,
        flags=0,
        rd=False,
        opcode=0,
        qname="www.example.com",
        qname_wire=b"\x03WWW\x07Example\x03com\x00",
        qtype=28,
        qclass=1,
        question_end=len(wire),
    )


def test_response_is_not_a_query() -> None:
    assert parse_query(FB16_ANSWER) is None


def test_real_well_formed_answer_rebuilt_byte_for_byte() -> None:
    q = parse_query(FB16_QUERY)
    assert q is not None
    assert q.qname == "a" * 16 + ".facebook.com"
    assert q.rd and q.question_end == len(FB16_QUERY)
    ans = build_answer(FB16_QUERY, q, bytes([0x6C, 0xA0, 0xA9, 0xB2]), 0x9A, forged_flags(q.rd))
    assert ans == FB16_ANSWER


def test_real_truncated_name_answer_rebuilt_byte_for_byte() -> None:
    # blackbox.c: a name that is already 125 characters long takes no more labels; QTYPE is read
    # right after the next length byte ("ex" = 0x6578, not AAAA, so an A answer) and the query is
    # copied to query_i + 4.
    q = parse_query(LONG_QUERY)
    assert q is not None
    assert q.qname == "a" * 16 + ("." + "a" * 15) * 6 + ".facebook.com"
    assert len(q.qname) == 125
    assert q.qtype == 0x6578
    assert answer_type(q) == 1
    assert "dns.name_truncated" in q.anomalies
    ans = build_answer(LONG_QUERY, q, bytes([0x17, 0xEA, 0x1E, 0x3A]), 0x87, forged_flags(q.rd))
    assert ans == LONG_ANSWER


@pytest.mark.parametrize(
    "answer",
    [FB16_ANSWER, LONG_ANSWER, RSF_DOT_ANSWER, MUX_AAAA_ANSWER],
    ids=["fb16", "long", "rsf-dot", "mux-aaaa"],
)
def test_real_forged_answers_recognised(answer: bytes) -> None:
    assert is_forged_answer(answer)


def test_wallbleed_overreading_queries_raise() -> None:
    # These got answers from the leaky injector, built from memory past the datagram; we do not
    # invent that memory, so they are malformed (module docstring).
    with pytest.raises(MalformedPacket) as exc:
        parse_query(RSF_DOT_QUERY)
    assert exc.value.kind == "dns.no_question"
    # A 0x78 length byte: the injector reads a 120-byte label from 2 bytes of data. Length
    # bytes of 0x40 and above are refused outright (module docstring).
    with pytest.raises(MalformedPacket) as exc:
        parse_query(MUX_AAAA_QUERY)
    assert exc.value.kind == "dns.bad_label_type"
    assert exc.value.offset == 18


def test_build_answer_aaaa_and_flags() -> None:
    wire = build_query("facebook.com", 28, rd=False)
    q = parse_query(wire)
    assert q is not None
    addr = ipaddress.IPv6Address("2001::1").packed
    ans = build_answer(wire, q, addr, 200, forged_flags(q.rd))
    assert ans[2:4] == b"\x84\x00"
    assert ans[-28:] == b"\xc0\x0c\x00\x1c\x00\x01" + struct.pack("!IH", 200, 16) + addr
    assert is_forged_answer(ans)
    with pytest.raises(ValueError):
        build_answer(wire, q, b"\x01\x02\x03", 200, 0x8180)


def test_build_answer_drops_edns_and_counts() -> None:
    query = dns.message.make_query("google.com", "A", use_edns=0)
    query.id = 7
    wire = query.to_wire()
    q = parse_query(wire)
    assert q is not None
    assert q.question_end < len(wire)  # the OPT record follows the question
    ans = build_answer(wire, q, bytes([1, 2, 3, 4]), 120, 0x8580)
    assert struct.unpack("!HHHHH", ans[2:12]) == (0x8580, 1, 1, 0, 0)


@pytest.mark.parametrize(
    ("qtype", "addr"),
    [(1, bytes([93, 46, 8, 90])), (28, ipaddress.IPv6Address("2001::4136:e378").packed)],
)
def test_dnspython_accepts_build_answer(qtype: int, addr: bytes) -> None:
    query = dns.message.make_query("www.facebook.com", dns.rdatatype.RdataType.make(qtype))
    query.id = 0xABCD
    wire = query.to_wire()
    q = parse_query(wire)
    assert q is not None
    ans_wire = build_answer(wire, q, addr, 177, forged_flags(q.rd))
    resp = dns.message.from_wire(ans_wire)
    assert query.is_response(resp)
    assert resp.flags & dns.flags.QR and resp.flags & dns.flags.RA
    (rrset,) = resp.answer
    assert rrset.name == dns.name.from_text("www.facebook.com")
    assert rrset.ttl == 177
    assert rrset.rdtype == qtype
    (rdata,) = rrset
    assert ipaddress.ip_address(rdata.address).packed == addr


def test_normal_responses_are_not_forged_layout() -> None:
    query = dns.message.make_query("example.com", "A")
    two = dns.message.make_response(query)
    two.answer.append(dns.rrset.from_text("example.com.", 300, "IN", "A", "1.1.1.1", "1.0.0.1"))
    assert not is_forged_answer(two.to_wire())
    edns_query = dns.message.make_query("example.com", "A", use_edns=0)
    edns = dns.message.make_response(edns_query)
    edns.answer.append(dns.rrset.from_text("example.com.", 300, "IN", "A", "1.1.1.1"))
    assert not is_forged_answer(edns.to_wire())
    cname = dns.message.make_response(query)
    cname.answer.append(dns.rrset.from_text("example.com.", 300, "IN", "CNAME", "x.example."))
    assert not is_forged_answer(cname.to_wire())
    assert not is_forged_answer(query.to_wire())  # a query, not an answer
    # Documented limit: a minimal legitimate answer has the same layout.
    one = dns.message.make_response(query)
    one.answer.append(dns.rrset.from_text("example.com.", 300, "IN", "A", "1.1.1.1"))
    assert is_forged_answer(one.to_wire())


# --- the injector's quirks (blackbox.c) ----------------------------------------------------


def test_dot_inside_label_is_a_separator() -> None:
    # blackbox.c: "dot characters within labels are effectively treated as additional label
    # separators" because the regex runs on the flattened C string.
    q = parse_query(build_query([b"rsf.org"]))
    assert q is not None
    assert q.qname == "rsf.org"
    assert q.qname_wire == b"\x07rsf.org\x00"
    assert "dns.dot_in_label" in q.anomalies


def test_nul_inside_label_truncates() -> None:
    # blackbox.c: "a null byte within the label prematurely terminates the string".
    q = parse_query(build_query([b"facebook", b"com\x00evil", b"example"]))
    assert q is not None
    assert q.qname == "facebook.com"
    assert "dns.nul_in_label" in q.anomalies
    assert q.qtype == 1 and q.qclass == 1


def test_name_over_125_chars_is_cut_inside_a_label() -> None:
    # blackbox-tests.inc: 17 + 16*6 + len(".facebook.com") == 126 does not match facebook.com$:
    # the flattened name is cut to 125 characters, ending ".facebook.co". blackbox.c copies only
    # as much of "com" as fits, then stops; QTYPE is read at the start of "com"'s data.
    wire = HEADER_0120 + b"\x11" + b"a" * 17 + (b"\x0f" + b"a" * 15) * 6
    wire += b"\x08facebook\x03com\x00\x00\x01\x00\x01"
    q = parse_query(wire)
    assert q is not None
    assert q.qname.endswith(".facebook.co") and len(q.qname) == 125
    assert q.qtype == int.from_bytes(b"co", "big")
    com_data = wire.index(b"\x03com") + 1
    assert q.question_end == com_data + 2 + 4
    assert q.qname_wire == wire[12 : com_data + 2]


def test_name_of_124_chars_takes_no_more_labels() -> None:
    # blackbox-tests.inc: 15 + 16*6 + len(".facebook.com") == 124, then ".extra": no room for a
    # dot, a byte and the NUL, so the name stays at 124 characters and still matches.
    wire = HEADER_0120 + (b"\x0f" + b"a" * 15) * 7 + b"\x08facebook\x03com\x05extra\x00"
    wire += b"\x00\x01\x00\x01"
    q = parse_query(wire)
    assert q is not None
    assert len(q.qname) == 124 and q.qname.endswith(".facebook.com")
    assert q.question_end == wire.index(b"\x05extra") + 5  # "\x05extr"


def test_name_limit_parameter() -> None:
    q = parse_query(build_query("abcdef.example.com"), name_limit=10)
    assert q is not None
    assert q.qname == "abcdef.exa"
    assert parse_query(build_query("a.b"), name_limit=3) is not None


def test_qdcount_and_opcode_ignored() -> None:
    # blackbox.c: "Ignore QDCOUNT, ANCOUNT, NSCOUNT, ARCOUNT. Assume there is exactly one question."
    wire = bytearray(build_query("69.mu"))
    wire[2] |= 0x28  # opcode 5 (UPDATE)
    wire[4:12] = bytes(range(1, 9))
    q = parse_query(bytes(wire))
    assert q is not None
    assert q.qname == "69.mu" and q.opcode == 5
    assert "dns.qdcount_not_one" in q.anomalies


def test_case_folding_is_ascii_only() -> None:
    q = parse_query(build_query([b"FaceBook", b"\xc0\xc9", b"COM"]))
    assert q is not None
    assert q.qname == "facebook.\xc0\xc9.com"


def test_root_name() -> None:
    q = parse_query(build_query("."))
    assert q is not None
    assert q.qname == "" and q.qname_wire == b"\x00"


# --- malformed -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("wire", "kind"),
    [
        (b"\x12\x34\x01\x00\x00\x01", "dns.short_header"),
        (b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00", "dns.no_question"),
        (HEADER_0120 + b"\x03www\xc0\x0c\x00\x01\x00\x01", "dns.compression_in_query"),
        (HEADER_0120 + b"\x45" + b"a" * 80 + b"\x00\x00\x01\x00\x01", "dns.bad_label_type"),
        (HEADER_0120 + b"\x09facebook", "dns.label_overrun"),
        (HEADER_0120 + b"\x02mu\x00\x00\x01\x00", "dns.no_question"),
    ],
)
def test_malformed(wire: bytes, kind: str) -> None:
    with pytest.raises(MalformedPacket) as exc:
        parse_query(wire)
    assert exc.value.kind == kind


def test_quic_initial_on_port_53_is_malformed() -> None:
    # A QUIC v1 Initial: long header 0xc0, version 1, the DCID of RFC 9001 Appendix A
    # (8394c8f03e515708), empty SCID and token, then deterministic filler to 1294 bytes.
    head = bytes.fromhex("c000000001 08 8394c8f03e515708 00 00 44ce")
    filler = b"".join(hashlib.sha256(i.to_bytes(2, "big")).digest() for i in range(41))
    datagram = (head + filler)[:1294]
    assert len(datagram) == 1294
    with pytest.raises(MalformedPacket):
        parse_query(datagram)


# --- differential against dnspython --------------------------------------------------------

_QTYPES = st.sampled_from([1, 2, 5, 6, 12, 15, 16, 28, 33, 64, 65, 255, 0xFF00])


def _label_bytes(max_size: int) -> st.SearchStrategy[bytes]:
    return st.binary(min_size=1, max_size=max_size).filter(lambda b: b"." not in b and 0 not in b)


@st.composite
def _legal_labels(draw: st.DrawFn, max_labels: int = 6) -> list[bytes]:
    """The labels of a legal name (RFC 1035 §2.3.4): each 1..63 octets, and the whole name at
    most 255 octets on the wire, counting each label's length byte and the root's zero."""
    labels: list[bytes] = []
    room = 255 - 1  # the root label
    for _ in range(draw(st.integers(1, max_labels))):
        if room < 2:
            break
        label = draw(_label_bytes(min(63, room - 1)))
        labels.append(label)
        room -= 1 + len(label)
    return labels


def _wire_length(labels: list[bytes]) -> int:
    return sum(1 + len(label) for label in labels) + 1


@given(_legal_labels(max_labels=200))
def test_legal_labels_are_legal(labels: list[bytes]) -> None:
    assert labels and all(1 <= len(label) <= 63 for label in labels)
    assert _wire_length(labels) <= 255
    assert len(dns.name.Name([*labels, b""]).to_wire()) == _wire_length(labels)


LONGEST = [b"a" * 63, b"b" * 63, b"c" * 63, b"d" * 61]
"""A name of exactly 255 octets on the wire, the most a name may have."""


@settings(max_examples=300)
@example(labels=LONGEST, qtype=1, ident=0, edns=False)
@given(
    labels=_legal_labels(),
    qtype=_QTYPES,
    ident=st.integers(0, 0xFFFF),
    edns=st.booleans(),
)
def test_differential_dnspython(labels: list[bytes], qtype: int, ident: int, edns: bool) -> None:
    name = dns.name.Name([*labels, b""])
    query = dns.message.make_query(
        name, dns.rdatatype.RdataType.make(qtype), use_edns=0 if edns else None
    )
    query.id = ident
    wire = query.to_wire()
    parsed = dns.message.from_wire(wire)
    q = parse_query(wire)
    assert q is not None
    (question,) = parsed.question
    assert q.id == parsed.id
    assert q.rd == bool(parsed.flags & dns.flags.RD)
    flat = b".".join(question.name.labels[:-1]).lower().decode("latin-1")
    if len(flat) <= 125:
        assert q.qtype == question.rdtype
        assert q.qclass == question.rdclass == dns.rdataclass.IN
        assert q.anomalies == ()
        assert q.qname == flat
        assert q.qname_wire == question.name.to_wire()
        assert q.question_end == 12 + len(q.qname_wire) + 4
        assert (q.question_end == len(wire)) == (not edns)
    else:
        # Cut the injector's way; QTYPE/QCLASS then come from inside the name (blackbox.c).
        assert flat.startswith(q.qname) and len(q.qname) in (124, 125)
        assert "dns.name_truncated" in q.anomalies


@pytest.mark.parametrize(
    "name",
    ["google.com", "www.FACEBOOK.com", "a.b.c.d.e.f.g", "xn--fiqs8s.xn--fiqz9s", "_dmarc.x.org"],
)
@pytest.mark.parametrize("qtype", ["A", "AAAA", "TXT", "HTTPS", "ANY"])
def test_differential_dnspython_named(name: str, qtype: str) -> None:
    query = dns.message.make_query(name, qtype)
    q = parse_query(query.to_wire())
    assert q is not None
    assert q.qname == name.lower()
    assert q.qtype == dns.rdatatype.from_text(qtype)
    assert q.id == query.id
    assert parse_query(build_query(name, q.qtype, id=query.id)) == q


# --- fed in pieces -------------------------------------------------------------------------


@pytest.mark.parametrize("wire", [FB16_QUERY, LONG_QUERY, build_query("x.example.org", 28)])
def test_pieces(wire: bytes) -> None:
    whole = parse_query(wire)
    assert whole is not None
    # UDP is not a stream: a datagram cut short is malformed, never "need more data". The
    # injector reads nothing past question_end (for a truncated name that is before the real
    # end of the question), so any prefix that long already gives the final value.
    for n in range(len(wire)):
        if n >= whole.question_end:
            assert parse_query(wire[:n]) == whole
            continue
        with pytest.raises(MalformedPacket) as exc:
            parse_query(wire[:n])
        assert exc.value.kind in {"dns.short_header", "dns.no_question", "dns.label_overrun"}
    # Trailing junk after the question is ignored, as the injector ignores it.
    assert parse_query(wire + b"\xde\xad\xbe\xef" * 10) == whole


# --- properties ----------------------------------------------------------------------------


@settings(max_examples=500)
@given(st.binary(max_size=600))
def test_arbitrary_bytes(data: bytes) -> None:
    try:
        q = parse_query(data)
    except MalformedPacket:
        return
    if q is not None:
        assert q.question_end <= len(data)
        assert len(q.qname) <= 125
        assert data[12 : q.question_end - 4] == q.qname_wire


@settings(max_examples=500)
@given(
    st.binary(min_size=12, max_size=12).map(lambda h: h[:2] + bytes([h[2] & 0x7F]) + h[3:]),
    st.binary(max_size=300),
)
def test_arbitrary_queries_answerable(header: bytes, rest: bytes) -> None:
    data = header + rest
    try:
        q = parse_query(data)
    except MalformedPacket:
        return
    assert q is not None
    ans = build_answer(data, q, b"\x01\x02\x03\x04", 100, forged_flags(q.rd))
    assert is_forged_answer(ans)
    assert parse_query(ans) is None
