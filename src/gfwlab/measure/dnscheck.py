"""DNS measurements: every reply to one query, compared with a control, checked for injection.

A stub resolver takes the first reply and drops the rest; an on-path injector (spec §2) races
the real answer and wins, and the real answer arrives after it. So :func:`lookup` keeps reading
replies to its query for a short while after the first one (``linger``), with each reply's IP
TTL (``IP_RECVTTL``), DNS flags, answer TTL and arrival time: several replies to one query is
the first sign of injection. :func:`analyse` adds the others the spec names:

- forged addresses from the known pools: the Wallbleed-type injector's ordered pools (spec
  §14f: 592 IPv4, 30 IPv6) and the forged destination 59.24.3.174 (spec §2), and forged AAAA
  in the Teredo prefix 2001::/32 (spec §2, GFWatch);
- the injector's fingerprint: the reply flags (0x8180 or 0x8400 for Injector 3's rule, 0x8580
  for the injector seen in 2024-25, spec §2), the IP TTL and the answer TTL of each reply;
- the answers differing from the control resolver's.

:func:`scan` is the DNS-only mode: many queries in flight on one socket, replies matched by
query ID, for list-scale scans (GFWatch-style).
"""

from __future__ import annotations

import ipaddress
import os
import select
import socket
import struct
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import dns.exception
import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype

from gfwlab.mechanisms._wallbleed_pools import POOL_V4, POOL_V6
from gfwlab.proto.dns import build_query

KNOWN_FORGED_V4 = frozenset(POOL_V4) | {"59.24.3.174"}
KNOWN_FORGED_V6 = frozenset(str(ipaddress.IPv6Address(a)) for a in POOL_V6)
TEREDO = ipaddress.IPv6Network("2001::/32")
IP_RECVTTL = getattr(socket, "IP_RECVTTL", 12)
IP_TTL = getattr(socket, "IP_TTL", 2)
QUERY_TTL = 61
"""The IP TTL of the probe's queries: an answer with the same TTL mirrors it (spec §2)."""
INJECTOR_FLAGS = {
    0x8580: "aa-ra (0x8580, 2024-25)",
    0x8400: "injector-3 (0x8400)",
    0x8180: "injector-3-rule (0x8180)",
}
"""Reply flags -> injector label (spec §2, §14f)."""


@dataclass(slots=True)
class Reply:
    """One DNS reply to the query."""

    addrs: list[str]
    rcode: str
    flags: int
    dns_ttl: int | None
    ip_ttl: int | None
    t: float
    """Seconds from sending the query."""

    def as_dict(self) -> dict[str, Any]:
        return {
            "addrs": self.addrs,
            "rcode": self.rcode,
            "flags": f"0x{self.flags:04x}",
            "dns_ttl": self.dns_ttl,
            "ip_ttl": self.ip_ttl,
            "t": round(self.t, 6),
        }


@dataclass(slots=True)
class DnsResult:
    """What one query drew."""

    hostname: str
    resolver: str
    qtype: str = "A"
    replies: list[Reply] = field(default_factory=list)
    failure: str | None = None
    t0: float = 0.0

    @property
    def first(self) -> Reply | None:
        return self.replies[0] if self.replies else None

    @property
    def addrs(self) -> list[str]:
        """What a stub resolver would have used: the first reply's addresses."""
        return self.replies[0].addrs if self.replies else []


def _family(addr: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in addr else socket.AF_INET


def _parse_slow(wire: bytes, qid: int, qname: str) -> tuple[list[str], str, int, int | None] | None:
    """:func:`_parse` with dnspython's message parser (what anything unusual falls back to)."""
    try:
        msg = dns.message.from_wire(wire, ignore_trailing=True)
    except (dns.exception.DNSException, ValueError):
        return None
    if msg.id != qid or not msg.flags & dns.flags.QR:
        return None
    if msg.question and msg.question[0].name.to_text().rstrip(".").lower() != qname:
        return None
    addrs: list[str] = []
    ttl: int | None = None
    for rrset in msg.answer:
        if rrset.rdtype in (dns.rdatatype.A, dns.rdatatype.AAAA):
            ttl = rrset.ttl if ttl is None else ttl
            addrs += [r.address for r in rrset]
    return addrs, dns.rcode.to_text(msg.rcode()), int(msg.flags), ttl


class _Unusual(Exception):
    """A reply the direct reader leaves to dnspython."""


_RCODES = {
    0: "NOERROR",
    1: "FORMERR",
    2: "SERVFAIL",
    3: "NXDOMAIN",
    4: "NOTIMP",
    5: "REFUSED",
}


def _name_at(data: bytes, pos: int) -> tuple[str, int]:
    """The (lower-case, dotted) name at ``pos`` and the offset after it; compression pointers
    followed. Anything but plain letters, digits, ``-`` and ``_`` in a label is unusual."""
    labels: list[str] = []
    end = -1
    hops = 0
    while True:
        n = data[pos]
        if n >= 0xC0:
            if end < 0:
                end = pos + 2
            pos = ((n & 0x3F) << 8) | data[pos + 1]
            hops += 1
            if hops > 16:
                raise _Unusual
            continue
        if n > 63:
            raise _Unusual
        if n == 0:
            return ".".join(labels), (end if end >= 0 else pos + 1)
        label = data[pos + 1 : pos + 1 + n]
        if len(label) != n or not label.replace(b"-", b"").replace(b"_", b"").isalnum():
            raise _Unusual
        labels.append(label.decode("ascii").lower())
        pos += n + 1


def _parse(wire: bytes, qid: int, qname: str) -> tuple[list[str], str, int, int | None] | None:
    """A reply's (addresses, rcode, flags, answer TTL), or None if it is not a reply to the
    query ``qid`` for ``qname``; the same as dnspython reads it (:func:`_parse_slow`), read
    directly (a tenth of the time): the first A/AAAA RRset's TTL, the addresses of every A and
    AAAA RRset in order. A reply with anything unusual (EDNS, escapes in names, A/AAAA
    records of several names) is left to dnspython."""
    try:
        if len(wire) < 12:
            return None
        rid, flags, qd, an, ns, ar = struct.unpack_from("!HHHHHH", wire)
        if rid != qid or not flags & 0x8000:
            return None
        if qd > 1 or ar or ns:
            raise _Unusual
        pos = 12
        if qd:
            name, pos = _name_at(wire, pos)
            if pos + 4 > len(wire):
                return None
            pos += 4
            if name != qname:
                return None
        addrs: list[str] = []
        ttl: int | None = None
        owner: tuple[str, int] | None = None
        for _ in range(an):
            name, pos = _name_at(wire, pos)
            rtype, rclass, rttl, rdlen = struct.unpack_from("!HHIH", wire, pos)
            pos += 10
            rdata = wire[pos : pos + rdlen]
            if len(rdata) != rdlen:
                raise _Unusual
            pos += rdlen
            if rtype not in (1, 28):
                continue
            if rclass != 1 or (owner is not None and owner != (name, rtype)):
                raise _Unusual  # several RRsets or another class: dnspython groups them
            if ttl is not None and rttl != ttl:
                raise _Unusual  # dnspython keeps an RRset's smallest TTL
            owner, ttl = (name, rtype), rttl
            if rtype == 1 and rdlen == 4:
                addrs.append(f"{rdata[0]}.{rdata[1]}.{rdata[2]}.{rdata[3]}")
            elif rtype == 28 and rdlen == 16:
                addrs.append(socket.inet_ntop(socket.AF_INET6, rdata))
            else:
                raise _Unusual
        rcode = _RCODES.get(flags & 0xF)
        if rcode is None:
            raise _Unusual
        return addrs, rcode, flags, ttl
    except (_Unusual, IndexError, struct.error, UnicodeError):
        return _parse_slow(wire, qid, qname)


def _ttl_of(ancdata: list[tuple[int, int, bytes]]) -> int | None:
    for level, kind, data in ancdata:
        if level == socket.IPPROTO_IP and kind == IP_TTL and len(data) >= 4:
            return int(struct.unpack("=i", data[:4])[0])
        if level == socket.IPPROTO_IPV6 and len(data) >= 4:
            return int(struct.unpack("=i", data[:4])[0])
    return None


def lookup(
    hostname: str,
    resolver: str,
    *,
    port: int = 53,
    qtype: str = "A",
    timeout: float = 2.0,
    linger: float = 0.25,
) -> DnsResult:
    """Send one query to ``resolver`` and collect every reply until ``linger`` s after the
    first (or ``timeout`` without any)."""
    qname = hostname.lower().rstrip(".")
    res = DnsResult(qname, f"{resolver}:{port}", qtype, t0=time.time())
    qid = int.from_bytes(os.urandom(2), "big")
    try:
        wire = wire_query(qname, qid, QTYPES[qtype])
    except (KeyError, UnicodeError, ValueError):  # an IDN or another type: dnspython's encoder
        query = dns.message.make_query(qname, qtype)
        qid, wire = query.id, query.to_wire()
    sock = socket.socket(_family(resolver), socket.SOCK_DGRAM)
    try:
        if sock.family == socket.AF_INET:
            sock.setsockopt(socket.IPPROTO_IP, IP_RECVTTL, 1)
            sock.setsockopt(socket.IPPROTO_IP, IP_TTL, QUERY_TTL)
        else:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_RECVHOPLIMIT, 1)
        sock.connect((resolver, port))
        start = time.monotonic()
        sock.send(wire)
        deadline = start + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([sock], [], [], left)[0]:
                break
            try:
                data, anc, _flags, _addr = sock.recvmsg(4096, 64)
            except ConnectionRefusedError:
                res.failure = "connection_refused"
                break
            got = _parse(data, qid, qname)
            if got is None:
                continue
            now = time.monotonic()
            res.replies.append(Reply(got[0], got[1], got[2], got[3], _ttl_of(anc), now - start))
            if len(res.replies) == 1:
                deadline = min(deadline, now + linger)
    except OSError as exc:
        res.failure = "host_unreachable" if exc.errno in (101, 113) else "generic_socket_error"
    finally:
        sock.close()
    if not res.replies and res.failure is None:
        res.failure = "generic_timeout_error"
    elif res.replies and res.first is not None and res.first.rcode == "NXDOMAIN":
        res.failure = "dns_nxdomain_error"
    return res


@dataclass(slots=True)
class DnsAnalysis:
    """What the probe's DNS result says, compared with the control."""

    injected: bool = False
    consistent: bool | None = None
    """First reply's addresses equal the control's (None: no control)."""
    forged: list[str] = field(default_factory=list)
    injectors: list[str] = field(default_factory=list)
    reasons: list[str] = field(default_factory=list)


def known_forged(addr: str) -> bool:
    """Whether ``addr`` is in a forged pool the spec publishes (§2, §14f)."""
    if ":" in addr:
        ip6 = ipaddress.IPv6Address(addr)
        return str(ip6) in KNOWN_FORGED_V6 or ip6 in TEREDO
    return addr in KNOWN_FORGED_V4


def analyse(probe: DnsResult, control: DnsResult | None) -> DnsAnalysis:
    """Injection and consistency from the replies only (never from the censor's events)."""
    out = DnsAnalysis()
    control_set = set(control.addrs) if control is not None and control.failure is None else None
    distinct = {tuple(sorted(r.addrs)) for r in probe.replies}
    forged_replies: list[Reply] = []
    if len(probe.replies) > 1 and len(distinct) > 1:
        out.injected = True
        out.reasons.append(f"{len(probe.replies)} replies with {len(distinct)} different answers")
        if control_set is not None:
            forged_replies = [r for r in probe.replies if set(r.addrs) != control_set]
        else:  # the real answer arrives last (spec §2: the forged reply wins the race)
            forged_replies = probe.replies[:-1]
    pooled = [r for r in probe.replies if any(known_forged(a) for a in r.addrs)]
    if pooled:
        out.injected = True
        out.reasons.append("answer in a known forged pool (spec §2, §14f)")
        forged_replies += [r for r in pooled if r not in forged_replies]
    if control_set is not None and probe.failure is None:
        out.consistent = set(probe.addrs) == control_set
        if not out.consistent:
            out.reasons.append(
                f"answer {probe.addrs} differs from the control's {sorted(control_set)}"
            )
    elif control_set is not None:
        out.consistent = False
    for r in forged_replies:
        out.forged += [a for a in r.addrs if a not in out.forged]
        label = INJECTOR_FLAGS.get(r.flags, f"flags 0x{r.flags:04x}")
        if r.ip_ttl is not None and QUERY_TTL - 8 < r.ip_ttl <= QUERY_TTL:
            label += " ttl-mirror"  # copies the query's IP TTL as it saw it (spec §2)
        if any(a in KNOWN_FORGED_V4 or a in KNOWN_FORGED_V6 for a in r.addrs):
            label += " known-pool"
        out.injectors.append(f"{label} ip_ttl={r.ip_ttl} dns_ttl={r.dns_ttl}")
    return out


QTYPES = {"A": 1, "AAAA": 28}


def wire_query(name: str, qid: int, qtype: int = 1) -> bytes:
    """A query (RD set, type ``qtype``, class IN) for the ASCII ``name``, built directly (the
    hot path of the scan and of :func:`lookup`): the bytes dnspython's ``make_query`` makes.
    Empty labels are left out; a non-ASCII name raises UnicodeError, a label over 63 bytes
    ValueError."""
    labels = [x for x in name.encode("ascii").split(b".") if x]
    return build_query(labels, qtype, id=qid)


def wire_answers(data: bytes) -> list[str] | None:
    """The A addresses of a reply (None if it is not a parseable reply), read directly."""
    try:
        if len(data) < 12 or not data[2] & 0x80:
            return None
        qd, an = struct.unpack_from("!HH", data, 4)
        pos = 12
        for _ in range(qd):
            while data[pos]:
                if data[pos] >= 0xC0:
                    pos += 1
                    break
                pos += data[pos] + 1
            pos += 5
        out = []
        for _ in range(an):
            if data[pos] >= 0xC0:
                pos += 2
            else:
                while data[pos]:
                    pos += data[pos] + 1
                pos += 1
            rtype, _cls, _ttl, rdlen = struct.unpack_from("!HHIH", data, pos)
            pos += 10
            if rtype == 1 and rdlen == 4:
                out.append(".".join(str(b) for b in data[pos : pos + 4]))
            pos += rdlen
        return out
    except (IndexError, struct.error):
        return None


@dataclass(slots=True)
class ScanResult:
    """A DNS-only scan: per name, the replies' addresses (all of them) and the timing."""

    answers: dict[str, list[list[str]]]
    sent: int
    elapsed_s: float

    @property
    def rate(self) -> float:
        return self.sent / self.elapsed_s if self.elapsed_s > 0 else 0.0

    def injected(self, control: dict[str, list[str]] | None = None) -> list[str]:
        """Names with several different replies, a known forged address, or (given the
        control's answers) a first answer that differs from the control's."""
        out = []
        for name, replies in self.answers.items():
            distinct = {tuple(sorted(r)) for r in replies}
            bad = len(distinct) > 1 or any(known_forged(a) for r in replies for a in r)
            if not bad and control is not None and replies:
                bad = sorted(replies[0]) != sorted(control.get(name, []))
            if bad:
                out.append(name)
        return out


def _buffer(sock: socket.socket, size: int) -> None:
    """A receive buffer of ``size`` bytes: past ``net.core.rmem_max`` when root may
    (``SO_RCVBUFFORCE``), else as much as the limit allows. A burst of replies that overflows
    it is lost, and a lost reply is a two-second timeout."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, getattr(socket, "SO_RCVBUFFORCE", 33), size)
    except OSError:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, size)


def scan(
    names: Sequence[str],
    resolver: str,
    *,
    port: int = 53,
    window: int = 128,
    timeout: float = 0.5,
    tries: int = 3,
    linger: float = 0.05,
    progress: Any = None,
) -> ScanResult:
    """Query every name (A), at most ``window`` queries unanswered at a time, collecting every
    reply.

    A reply is matched by its query ID (unique among the queries in flight) and its question
    (the name, as sent). Replies to a name keep being collected for ``linger`` s after its
    first (the real answer follows the forged one, spec §2); a name that has its first reply
    no longer counts against ``window``, so the linger costs no rate. A query unanswered after
    ``timeout`` is sent again with a new ID, ``tries`` times in all (as scanners do: a lost
    datagram then costs ``timeout``, and a name is given up only after ``tries * timeout``).
    ``window`` bounds what waits in the resolver's and the censor's queues: the lab's dnsmasq
    has the kernel's default receive buffer (about 270 queries), and a burst that overflows it
    is lost. Queries and replies are built and read directly (:func:`wire_query`,
    :func:`wire_answers`): dnspython's message objects cost more than the network here.
    """
    sock = socket.socket(_family(resolver), socket.SOCK_DGRAM)
    _buffer(sock, 8 << 20)
    sock.connect((resolver, port))
    sock.setblocking(False)
    answers: dict[str, list[list[str]]] = {n.lower(): [] for n in names}
    # qid -> [name, question bytes, deadline, tries left], in deadline order (insertion order)
    waiting: dict[int, list[Any]] = {}
    lingering: dict[int, list[Any]] = {}
    retry: list[list[Any]] = []
    idx, done = 0, 0
    start = time.monotonic()
    next_id = int.from_bytes(os.urandom(2), "big")
    last_sweep = start
    try:
        while idx < len(names) or waiting or lingering or retry:
            now = time.monotonic()
            while (retry or idx < len(names)) and len(waiting) < window:
                next_id = next_id % 65535 + 1
                if next_id in waiting or next_id in lingering:
                    continue
                again = retry[-1] if retry else None
                name = again[0] if again is not None else names[idx].lower()
                try:
                    query = wire_query(name, next_id)
                    sock.send(query)
                except BlockingIOError:
                    break
                except (UnicodeError, ValueError):
                    idx += 1  # not a sendable name: counted, never answered
                    done += 1
                    continue
                if again is not None:
                    retry.pop()
                    waiting[next_id] = [name, query[12:].lower(), now + timeout, again[3]]
                else:
                    waiting[next_id] = [name, query[12:].lower(), now + timeout, tries - 1]
                    idx += 1
            select.select([sock], [], [], 0.002)
            now = time.monotonic()
            while True:
                try:
                    data = sock.recv(4096)
                except (BlockingIOError, ConnectionRefusedError):
                    break
                if len(data) < 12:
                    continue
                qid = int.from_bytes(data[:2], "big")
                entry = waiting.get(qid) or lingering.get(qid)
                if entry is None or data[12 : 12 + len(entry[1])].lower() != entry[1]:
                    continue  # not a reply to a query in flight
                got = wire_answers(data)
                if got is None:
                    continue
                answers[entry[0]].append(got)
                if waiting.pop(qid, None) is not None:
                    entry[2] = now + linger
                    lingering[qid] = entry
            if now - last_sweep > 0.01 or idx >= len(names):
                last_sweep = now
                while waiting:
                    qid = next(iter(waiting))
                    entry = waiting[qid]
                    if entry[2] > now:
                        break
                    del waiting[qid]
                    if entry[3] > 0 and not answers[entry[0]]:
                        retry.append([entry[0], entry[1], 0.0, entry[3] - 1])
                    else:
                        done += 1
                while lingering:
                    qid = next(iter(lingering))
                    if lingering[qid][2] > now:
                        break
                    del lingering[qid]
                    done += 1
                if progress is not None:
                    progress(done)
    finally:
        sock.close()
    return ScanResult(answers, len(names), time.monotonic() - start)
