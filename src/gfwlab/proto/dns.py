"""DNS queries as the GFW's DNS injector reads them, and the answers it forges (spec §2).

The reference is the reverse-engineered injector in the Wallbleed artifact,
``gfw-report/ndss25-wallbleed`` ``blackbox/blackbox.c`` ("Injector 3"). What it does, and so what
:func:`parse_query` does:

* It needs the 12-byte header and answers only messages with QR=0. It ignores QDCOUNT, ANCOUNT,
  NSCOUNT and ARCOUNT and reads exactly one question starting at offset 12. The opcode is not
  looked at.
* It flattens QNAME into a NUL-terminated C string in a 126-byte buffer, so at most 125
  characters: labels are joined with ``.``, label bytes are copied verbatim (a ``.`` inside a
  label is indistinguishable from a separator), and because the blocklist regex runs on a C
  string, a NUL byte inside a label ends the name. Matching is case-insensitive.
* Truncation: before each label it checks that there is room for a dot, one byte and the NUL
  (``len + 3 > 126`` stops, i.e. a name already 124 or 125 characters long takes no more
  labels); otherwise it copies as much of the label as fits. When a label does not fit, parsing
  stops in the middle of the name. QTYPE and QCLASS are then read from the two 16-bit words just
  after the *length byte* of the label that did not fit, and the answer copies the query up to
  the bytes the name loop consumed, plus 4. :func:`parse_query` reproduces both offsets, so that
  :func:`build_answer` rebuilds the real injector's packet byte for byte (tested against a
  hexdump from ``blackbox-tests.inc``).
* It follows no compression pointers and checks no label-type bits: a length byte of 0xC0 is
  taken as a 192-byte label. It also has no bounds checks: a label or a QTYPE that runs past the
  end of the datagram is read from adjacent memory (the Wallbleed leak).

Where a correct parser and the injector part ways, this module follows the injector, except for
reads past the end of the datagram. Those cannot be emulated (the bytes would be the injector's
memory), so they raise :class:`~gfwlab.errors.MalformedPacket` and the engine passes the query.
A real Wallbleed-era injector would still have answered some of them (e.g. a name whose last
label ends exactly at the end of the datagram, with no terminating zero and no QTYPE). Length
bytes with the top bits set (0x40-0xFF) also raise (``dns.compression_in_query`` for a pointer,
``dns.bad_label_type`` otherwise) even when the long "label" would fit in the datagram: the
injector would flatten whatever bytes follow into the name, which no blocklist entry of a real
name matches, and refusing them keeps non-DNS UDP on port 53 (e.g. QUIC) out of the matcher.
The name loop is the unpatched ("Wallbleed v1") one; the partly patched v2 skips a label that
does not fit whole and requires QCLASS=1 (the engine can check ``qclass``).

:func:`is_forged_answer` recognises the Injector-3 answer layout, the same shape that the
artifact's ``util/is-forged-response`` tool looks for.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from gfwlab._frozen import Frozen
from gfwlab.errors import MalformedPacket
from gfwlab.proto._scan import dns_query as _plain_query

TYPE_A: Final = 1
TYPE_AAAA: Final = 28
CLASS_IN: Final = 1

HEADER_LEN: Final = 12
DEFAULT_MAX_NAME: Final = 125
"""The injector's name buffer is 126 bytes including the C string's NUL (blackbox.c)."""

_QR: Final = 0x8000
_RD: Final = 0x0100
_HEADER: Final = struct.Struct("!HHHHHH")
_RR_FIXED: Final = struct.Struct("!HHIH")  # TYPE, CLASS, TTL, RDLENGTH after the name
_QTYPE_QCLASS: Final = struct.Struct("!HH")
_POINTER_TO_QNAME: Final = b"\xc0\x0c"
# The shortest thing the injector copies before its answer: header, one length byte, QTYPE, QCLASS.
_MIN_COPIED: Final = HEADER_LEN + 1 + 4


@dataclass(frozen=True, init=False)
class DnsQuery(Frozen):
    """One DNS query, read the way the injector reads it."""

    id: int
    """Transaction ID."""
    flags: int
    """The 16-bit flags word as sent."""
    rd: bool
    """Recursion desired. The injector's answer flags depend on it (:func:`forged_flags`)."""
    opcode: int
    """The 4-bit opcode. The injector does not look at it."""
    qname: str
    """The flattened name the blocklist regexes see: labels joined with ``.``, a ``.`` inside a
    label kept as ``.``, cut at the first NUL, ASCII-lower-cased, latin-1 decoded, at most
    ``name_limit`` characters."""
    qname_wire: bytes
    """The name bytes the injector consumed: for an ordinary name, its labels and the
    terminating zero; for a truncated name, up to where the injector stopped."""
    qtype: int
    """The 16-bit word the injector takes as QTYPE (inside the name if the name was truncated)."""
    qclass: int
    """The 16-bit word the injector takes as QCLASS."""
    question_end: int
    """The injector copies ``data[:question_end]`` into its answer: just after QCLASS for an
    ordinary name."""
    anomalies: tuple[str, ...] = ()
    """Oddities seen: ``dns.name_truncated``, ``dns.dot_in_label``, ``dns.nul_in_label``,
    ``dns.qdcount_not_one``."""
    overrun: str | None = None
    """In lenient mode, for a query the injector would read past the datagram (or through a
    length byte 0x40-0xFF): the kind a bounds-checked read raised. The name fields are then
    empty; the Wallbleed-era injector reads such queries itself (:mod:`gfwlab.proto.wallbleed`)."""

    # Written out: a dataclass's generated __init__ runs interpreted even where the class is
    # compiled (gfwlab._build); this one is compiled with it.
    def __init__(
        self,
        id: int,
        flags: int,
        rd: bool,
        opcode: int,
        qname: str,
        qname_wire: bytes,
        qtype: int,
        qclass: int,
        question_end: int,
        anomalies: tuple[str, ...] = (),
        overrun: str | None = None,
    ) -> None:
        object.__setattr__(self, "id", id)
        object.__setattr__(self, "flags", flags)
        object.__setattr__(self, "rd", rd)
        object.__setattr__(self, "opcode", opcode)
        object.__setattr__(self, "qname", qname)
        object.__setattr__(self, "qname_wire", qname_wire)
        object.__setattr__(self, "qtype", qtype)
        object.__setattr__(self, "qclass", qclass)
        object.__setattr__(self, "question_end", question_end)
        object.__setattr__(self, "anomalies", anomalies)
        object.__setattr__(self, "overrun", overrun)


OVERRUN_KINDS: Final = frozenset(
    {"dns.no_question", "dns.label_overrun", "dns.compression_in_query", "dns.bad_label_type"}
)
"""The malformed kinds that a buggy injector would still have read (past the datagram)."""


def parse_query(
    data: bytes, *, name_limit: int = DEFAULT_MAX_NAME, lenient: bool = False
) -> DnsQuery | None:
    """:func:`parse_strict`; with ``lenient``, a query that reads past the datagram comes back
    as a :class:`DnsQuery` with ``overrun`` set (and the kind as its anomaly) instead of
    raising, so that a mechanism with its own reading (Wallbleed) sees it."""
    try:
        return parse_strict(data, name_limit=name_limit)
    except MalformedPacket as exc:
        if not lenient or exc.kind not in OVERRUN_KINDS:
            raise
        ident, flags = _HEADER.unpack_from(data)[:2]
        return DnsQuery(
            id=ident,
            flags=flags,
            rd=bool(flags & _RD),
            opcode=(flags >> 11) & 0xF,
            qname="",
            qname_wire=b"",
            qtype=0,
            qclass=0,
            question_end=len(data),
            anomalies=(exc.kind,),
            overrun=exc.kind,
        )


def parse_strict(data: bytes, *, name_limit: int = DEFAULT_MAX_NAME) -> DnsQuery | None:
    """Parse one UDP DNS payload the way the injector does.

    Returns ``None`` for a response (QR=1): the injector does not answer those. DNS over UDP is
    not a stream, so there is no "need more data": a datagram too short for its question raises.

    Raises :class:`MalformedPacket` with kind ``dns.short_header`` (under 12 bytes),
    ``dns.no_question`` (the data ends where a label length, QTYPE or QCLASS should be),
    ``dns.label_overrun`` (a label runs past the end), ``dns.compression_in_query`` (a length
    byte 0xC0-0xFF, i.e. a compression pointer) or ``dns.bad_label_type`` (0x40-0xBF).
    """
    if name_limit < 1:
        raise ValueError("name_limit must be at least 1")
    plain = _plain_query(data, name_limit)  # proto/_scan.c: most queries, read in C
    if plain is not None:
        ident, flags, qname, name_end, qtype, qclass = plain
        return DnsQuery(
            id=ident,
            flags=flags,
            rd=bool(flags & _RD),
            opcode=(flags >> 11) & 0xF,
            qname=qname,
            qname_wire=bytes(data[HEADER_LEN:name_end]),
            qtype=qtype,
            qclass=qclass,
            question_end=name_end + 4,
        )
    return _parse(data, name_limit)


def _parse(data: bytes, name_limit: int) -> DnsQuery | None:
    """:func:`parse_strict` in Python, for every query: the reference the compiled scan is held
    to, and the reader of each query that is not plain."""
    if len(data) < HEADER_LEN:
        raise MalformedPacket("dns.short_header", len(data), f"{len(data)} bytes, need 12")
    ident, flags, qdcount, _an, _ns, _ar = _HEADER.unpack_from(data)
    if flags & _QR:
        return None

    anomalies: list[str] = []
    if qdcount != 1:
        anomalies.append("dns.qdcount_not_one")
    labels: list[bytes] = []  # as copied, so the last may be cut short
    name_len = 0  # length of the flattened name so far, dots included
    pos = HEADER_LEN  # blackbox.c's query_i: bytes consumed by the name loop
    qname_end = pos  # blackbox.c's qname_end: just after the last length byte read
    truncated = False
    while True:
        if pos >= len(data):
            # blackbox.c reads this length byte from past the end of the datagram.
            raise MalformedPacket("dns.no_question", pos, "name not terminated")
        length = data[pos]
        pos += 1
        qname_end = pos
        if length == 0:
            break
        if length & 0xC0 == 0xC0:
            # The injector would take this as a 192..255-byte label, not a pointer, and copy
            # whatever follows (usually past the datagram). Not emulated: see module docstring.
            raise MalformedPacket("dns.compression_in_query", pos - 1, f"length byte {length:#x}")
        if length & 0xC0:
            raise MalformedPacket("dns.bad_label_type", pos - 1, f"length byte {length:#x}")
        # No room for a dot, one label byte and the C string's NUL: stop (name stays as is).
        if name_len + 2 > name_limit:
            truncated = True
            break
        if labels:
            name_len += 1  # the dot
        take = length if length <= name_limit - name_len else name_limit - name_len
        if pos + take > len(data):
            raise MalformedPacket(
                "dns.label_overrun", pos - 1, f"label of {length} bytes, {len(data) - pos} left"
            )
        labels.append(data[pos : pos + take])
        name_len += take
        pos += take
        if take < length:
            truncated = True
            break

    # QTYPE/QCLASS are read at qname_end; the copy for the answer runs to pos + 4. The two differ
    # only when the name was cut short inside a label (blackbox.c's "desync").
    if qname_end + 4 > len(data) or pos + 4 > len(data):
        raise MalformedPacket("dns.no_question", qname_end, "QTYPE/QCLASS missing")
    qtype, qclass = _QTYPE_QCLASS.unpack_from(data, qname_end)

    name = b".".join(labels)
    # More dots than separators, or any NUL: some label holds one (rare; find which first).
    if labels and (name.count(0x2E) >= len(labels) or 0 in name):
        anomalies += _label_anomalies(labels)
    if truncated:
        anomalies.append("dns.name_truncated")
    nul = name.find(0)
    if nul >= 0:
        name = name[:nul]
    return DnsQuery(
        id=ident,
        flags=flags,
        rd=bool(flags & _RD),
        opcode=(flags >> 11) & 0xF,
        qname=name.lower().decode("latin-1"),
        qname_wire=bytes(data[HEADER_LEN:pos]),
        qtype=qtype,
        qclass=qclass,
        question_end=pos + 4,
        anomalies=tuple(anomalies),
    )


def _label_anomalies(labels: list[bytes]) -> list[str]:
    """``dns.dot_in_label`` and ``dns.nul_in_label``, in the order the labels show them."""
    found: list[str] = []
    for label in labels:
        if 0x2E in label and "dns.dot_in_label" not in found:
            found.append("dns.dot_in_label")
        if 0 in label and "dns.nul_in_label" not in found:
            found.append("dns.nul_in_label")
    return found


def forged_flags(rd: bool) -> int:
    """Injector 3's answer flags: ``0x8180`` (QR, RD, RA) if RD was set, else ``0x8400`` (QR, AA).

    Other injectors differ (spec §2 saw ``0x8580``), so :func:`build_answer` takes the flags.
    """
    return 0x8180 if rd else 0x8400


def answer_type(q: DnsQuery) -> int:
    """The record type Injector 3 answers with: AAAA if QTYPE is AAAA, A for any other QTYPE."""
    return TYPE_AAAA if q.qtype == TYPE_AAAA else TYPE_A


def build_answer(query_bytes: bytes, q: DnsQuery, addr: bytes, ttl: int, flags: int) -> bytes:
    """The forged answer, laid out as Injector 3 lays it out (spec §2, "Forged response layout").

    The query is copied through QTYPE/QCLASS (``query_bytes[:q.question_end]``); the flags word is
    replaced by ``flags``; QDCOUNT=ANCOUNT=1 and NSCOUNT=ARCOUNT=0; then one answer follows: a
    pointer to offset 12, TYPE (AAAA for a 16-byte ``addr``, else A), CLASS IN, TTL, RDLENGTH
    and the address. Anything in the query after the question (e.g. an EDNS OPT record) is
    dropped, as the injector drops it.
    """
    if len(addr) not in (4, 16):
        raise ValueError(f"addr must be 4 or 16 bytes, got {len(addr)}")
    if not 0 <= ttl <= 0xFFFFFFFF:
        raise ValueError(f"ttl out of range: {ttl}")
    if q.question_end > len(query_bytes):
        raise ValueError("query_bytes is shorter than the parsed question")
    head = bytearray(query_bytes[: q.question_end])
    struct.pack_into("!HHHHH", head, 2, flags & 0xFFFF, 1, 1, 0, 0)
    rtype = TYPE_AAAA if len(addr) == 16 else TYPE_A
    return bytes(head) + _POINTER_TO_QNAME + _RR_FIXED.pack(rtype, CLASS_IN, ttl, len(addr)) + addr


def is_forged_answer(payload: bytes) -> bool:
    """True if ``payload`` has Injector 3's answer layout.

    The layout: QR=1, RCODE=0, QDCOUNT=1, ANCOUNT=1, NSCOUNT=ARCOUNT=0, and the datagram *ends*
    with exactly one A or AAAA record whose owner is the pointer ``c0 0c``, class IN and
    RDLENGTH 4 or 16. The question in between is not parsed, because Wallbleed-era answers carry
    leaked memory there. The Wallbleed tool also checks the address against the injector's IP
    pool; without the pool, a minimal legitimate answer (one A record, no EDNS) has the same
    layout, so this is a layout test, not proof of forgery.
    """
    if len(payload) < _MIN_COPIED + 2 + _RR_FIXED.size + 4:
        return False
    _ident, flags, qd, an, ns, ar = _HEADER.unpack_from(payload)
    if not flags & _QR or flags & 0xF or (qd, an, ns, ar) != (1, 1, 0, 0):
        return False
    for rtype, rdlen in ((TYPE_A, 4), (TYPE_AAAA, 16)):
        rr_len = 2 + _RR_FIXED.size + rdlen
        start = len(payload) - rr_len
        if start < _MIN_COPIED or payload[start : start + 2] != _POINTER_TO_QNAME:
            continue
        got_type, got_class, _ttl, got_rdlen = _RR_FIXED.unpack_from(payload, start + 2)
        if (got_type, got_class, got_rdlen) == (rtype, CLASS_IN, rdlen):
            return True
    return False


def build_query(
    name: str | Sequence[bytes],
    qtype: int = TYPE_A,
    *,
    id: int = 0x1234,
    rd: bool = True,
) -> bytes:
    """A plain one-question query, class IN, no EDNS.

    ``name`` is either dotted text (``"www.example.com"``; a trailing dot is allowed) or a
    sequence of raw labels, which may hold any bytes (``[b"rsf.org"]``, ``[b"a\\x00b", b"com"]``)
    so that tests can send the names the injector mis-reads.
    """
    if isinstance(name, str):
        text = name.rstrip(".") if name not in ("", ".") else ""
        labels = [part.encode("latin-1") for part in text.split(".")] if text else []
        if any(not label for label in labels):
            raise ValueError(f"empty label in {name!r}")
    else:
        labels = [bytes(label) for label in name]
    wire = bytearray()
    for label in labels:
        if not 0 < len(label) < 64:
            raise ValueError(f"label length {len(label)} not in 1..63")
        wire.append(len(label))
        wire += label
    wire.append(0)
    if isinstance(name, str) and len(wire) > 255:
        raise ValueError(f"name is {len(wire)} bytes on the wire, over 255")
    header = _HEADER.pack(id & 0xFFFF, _RD if rd else 0, 1, 0, 0, 0)
    return header + bytes(wire) + struct.pack("!HH", qtype & 0xFFFF, CLASS_IN)
