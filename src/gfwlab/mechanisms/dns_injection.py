"""DNS injection: forged answers to queries for blocked names, racing the real answer.

Sources: spec §2; Anonymous, Niaki, Hoang, Gill, Houmansadr, *Triplet Censors: Demystifying Great
Firewall's DNS Censorship Behavior*, FOCI 2020 (several injectors, fingerprints, pools); Hoang et
al., *How Great is the Great Firewall? Measuring China's DNS Censorship*, USENIX Security 2021
(GFWatch: scale, over-blocking, forged IPs); Fan et al., *Wallbleed*, NDSS 2025 (Injector 3's
parser and answer layout, round-robin pool, answer TTLs).

Measured, and emulated here:

- any UDP datagram to port 53 carrying a query (QR=0) of at least 12 bytes, toward **any**
  address (no resolver need exist), in both directions; one question is parsed and the name is
  flattened as the injector does (see :mod:`gfwlab.proto.dns`);
- rules: end-anchored ``example.com`` (``(^|\\.)example\\.com$``), start-anchored
  ``^shadowvpn.com`` and unanchored ``*69.mu*``; the unanchored kind over-blocks, as GFWatch
  measured;
- several injectors answer the same query, each with its own fingerprint (IP TTL or a mirror of
  the query's TTL, IP-ID, DF, answer TTL, flags) and its own, overlapping share of the list
  (``coverage``: a stable per-name draw, so a name is either always or never answered by it);
- answers as Injector 3 builds them: the query copied through QCLASS, flags ``0x8180`` if RD
  else ``0x8400`` (or a fixed value such as the ``0x8580`` seen in 2024-25), one answer
  ``c0 0c``: AAAA for an AAAA query, A for any other type; answer TTL 68-252 s;
- forged addresses come from each injector's pool in round-robin order; all forged AAAA seen by
  GFWatch were in 2001::/32;
- the Wallbleed-type injector ("Injector 3", spec §14f; flags 0x8400 for a query without RD,
  0x8180 with it): its own query parsing (:mod:`gfwlab.proto.wallbleed`), era by date
  (``wallbleed``, ``wallbleed_dates``): v1 from October 2021 (when monitoring began) to the first
  patch (Sep-Nov 2023; 2023-11-01 here), v2 to March 2024 (2024-03-01 here), then fixed (a
  bounds-checked reading, no leak). In the v1 and v2 eras it answers exactly the queries the
  reverse-engineered injector answers, including those whose labels overrun the datagram, that
  lack a terminator or QTYPE/QCLASS, and its answers copy what it read past the datagram: the
  leaked-bytes tail, up to 125 bytes, filled from a seeded generator of plausible memory content
  (:mod:`gfwlab.mechanisms._memory`), never from the emulator's own memory. Its pools are the
  artifact's ordered pools for ``4.tt`` (592 IPv4, 30 IPv6); each of its ``processes`` walks the
  pool from its own starting point and wraps around, so a long scan of one name over one 4-tuple
  shows interleaved linear sequences (3 processes in the paper's Fig. 8). Which process answers a
  query is not known; here it is a draw from the flow's stream, and the processes start evenly
  spaced around the pool;
- the real answer is not suppressed (the resolver's reply passes untouched).

Unverified, so parameters (spec §12.2): per-injector IP TTL, IP-ID and DF, injection latency.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from dataclasses import dataclass, field
from typing import Final, Literal

from mypy_extensions import mypyc_attr

from gfwlab.engine import draws
from gfwlab.engine.actions import EventFields
from gfwlab.engine.mechanism import Decision, Forged, Mechanism, Needs, Seen
from gfwlab.engine.stream import Stream
from gfwlab.mechanisms import register_mechanism
from gfwlab.mechanisms._memory import plausible_memory
from gfwlab.mechanisms._wallbleed_pools import POOL_V4, POOL_V6
from gfwlab.packet.ip import addr_bytes, addr_text, build_udp
from gfwlab.proto import wallbleed
from gfwlab.proto.dns import DnsQuery, build_answer
from gfwlab.rules import CommonParams, DomainSet

Era = Literal["v1", "v2", "fixed"]

QTYPE_AAAA: Final = 28


@mypyc_attr(native_class=False)
@dataclass(frozen=True, slots=True, kw_only=True)
class DnsInjectorParams:
    """One injector's fingerprint (profile: ``[[mechanisms.dns_injection.injectors]]``)."""

    name: str
    """A label for events and reports."""
    coverage: float = 1.0
    """Share of the blocked names this injector answers (a stable draw per name)."""
    flags: int | None = None
    """Fixed DNS flags, or None for Injector 3's rule (0x8180 if RD else 0x8400)."""
    ip_ttl: tuple[int, int] = (64, 255)
    """Range the forged packet's IP TTL is drawn from (unverified)."""
    mirror_ttl: bool = False
    """Copy the query's IP TTL instead (one Triplet injector does)."""
    ip_id: Literal["random", "zero", "mirror"] = "random"
    """IP-ID of the forged packet (unverified)."""
    df: bool = False
    """IPv4 don't-fragment bit of the forged packet (unverified)."""
    dns_ttl: tuple[int, int] = (68, 252)
    """Answer TTL range in seconds (the real forged answers hexdumped in the Wallbleed test
    vectors: 68-252 s, n=36, spec §2 as corrected in Dec 2026)."""
    pool_v4: tuple[str, ...] = ("59.24.3.174",)
    """Forged IPv4 answers, handed out round-robin."""
    pool_v6: tuple[str, ...] = ("2001::1",)
    """Forged IPv6 answers, handed out round-robin (GFWatch: all in 2001::/32)."""
    latency_ms: tuple[float, float] = (0.0, 0.0)
    """Injection latency range in ms (unpublished). The forged answer beats the real one (spec
    §2): at 0 the live censor sends it before it lets the query through."""
    wallbleed: bool = False
    """This is the Wallbleed-type injector: it reads queries its own way in the v1 and v2 eras
    (only one injector type was affected, spec §2)."""
    processes: int = 1
    """Injector processes, each with its own cursor over the ordered pool (spec §14f)."""
    _v4: tuple[bytes, ...] = field(default=(), init=False, repr=False)
    _v6: tuple[bytes, ...] = field(default=(), init=False, repr=False)

    def __post_init__(self) -> None:
        try:
            v4 = tuple(addr_bytes(a) for a in self.pool_v4)
            v6 = tuple(addr_bytes(a) for a in self.pool_v6)
        except ValueError as exc:
            raise ValueError(f"injector {self.name}: {exc}") from None
        if not v4 or any(len(a) != 4 for a in v4):
            raise ValueError(f"injector {self.name}: pool_v4 needs IPv4 addresses")
        if not v6 or any(len(a) != 16 for a in v6):
            raise ValueError(f"injector {self.name}: pool_v6 needs IPv6 addresses")
        if not 0.0 <= self.coverage <= 1.0:
            raise ValueError(f"injector {self.name}: coverage must be between 0 and 1")
        if self.processes < 1:
            raise ValueError(f"injector {self.name}: processes must be at least 1")
        object.__setattr__(self, "_v4", v4)
        object.__setattr__(self, "_v6", v6)


DEFAULT_INJECTORS: Final = (
    DnsInjectorParams(
        name="injector3", wallbleed=True, processes=3, pool_v4=POOL_V4, pool_v6=POOL_V6
    ),
    DnsInjectorParams(name="flags-0x8580", flags=0x8580, coverage=0.9, df=True),
    DnsInjectorParams(name="ttl-mirror", mirror_ttl=True, ip_id="zero", coverage=0.8),
)


@mypyc_attr(native_class=False)
@dataclass(frozen=True, slots=True, kw_only=True)
class DnsInjectionParams(CommonParams):
    domains: DomainSet = DomainSet()
    """Name rules: ``example.com``, ``=exact.name``, ``^prefix``, ``*substring*``."""
    port: int = 53
    """UDP destination port inspected."""
    max_name: int = 125
    """Longest flattened name the injector keeps (Injector 3: 125 characters)."""
    require_class_in: bool = True
    """Answer only QCLASS IN, as the patched injector does (Wallbleed v2)."""
    injectors: tuple[DnsInjectorParams, ...] = DEFAULT_INJECTORS
    """The injectors that answer, each with its fingerprint and pool."""
    wallbleed: Literal["by-date", "v1", "v2", "fixed"] = "by-date"
    """How the Wallbleed-type injector reads queries: by the emulated date, or one era."""
    wallbleed_dates: tuple[str, str, str] = ("2021-10-01", "2023-11-01", "2024-03-01")
    """By date: v1 from the first day, v2 from the second, fixed from the third (YYYY-MM-DD);
    before the first (and with no ``--date``), fixed."""

    def __post_init__(self) -> None:
        try:
            days = [dt.date.fromisoformat(d) for d in self.wallbleed_dates]
        except ValueError:
            raise ValueError("wallbleed_dates must be three YYYY-MM-DD dates") from None
        if days != sorted(days):
            raise ValueError("wallbleed_dates must be in order")

    def era(self, day: dt.date | None) -> Era:
        """The Wallbleed-type injector's era on ``day``."""
        if self.wallbleed != "by-date":
            return self.wallbleed
        if day is None:
            return "fixed"
        v1, v2, fixed = (dt.date.fromisoformat(d) for d in self.wallbleed_dates)
        if v1 <= day < v2:
            return "v1"
        return "v2" if v2 <= day < fixed else "fixed"


_TWO_TO_MINUS_64: Final = 2.0**-64
_blake2b: Final = hashlib.blake2b

_FLAGS_TEXT: Final[dict[int, str]] = {}


def _flags_text(flags: int) -> str:
    """``0x8180`` for ``flags`` 0x8180: an answer's flags as its event shows them, formatted once
    for each value, at most 65,536 of them (compiled, the format is a ``str.format`` call:
    about a microsecond, for each forged answer)."""
    text = _FLAGS_TEXT.get(flags)
    if text is None:
        text = _FLAGS_TEXT[flags] = f"0x{flags:04x}"
    return text


def _share(prefix: bytes, name: str) -> float:
    """Where ``name`` falls in an injector's coverage, in [0, 1): the 64-bit BLAKE2b of the
    injector's name, a zero byte and ``name`` (``prefix``: the first two, as bytes, which an
    :class:`_Injector` keeps), over 2**64. Fixed per name, as an injector covers a fixed part of
    the names. The hook asks for every blocked query and injector, and nearly every name is
    new: answers kept saved less than keeping them cost."""
    d = _blake2b(prefix + name.encode(), digest_size=8).digest()
    # x / 2**64 as one float: x's halves give hi * 2**32 exactly, and adding lo rounds the
    # 64-bit sum once to the nearest double, as converting x does (a power of two then scales
    # exactly). Compiled, each half is machine arithmetic on the digest's bytes, where
    # int.from_bytes is a method call and x an object of three digits.
    hi = d[0] << 24 | d[1] << 16 | d[2] << 8 | d[3]
    lo = d[4] << 24 | d[5] << 16 | d[6] << 8 | d[7]
    return (hi * 4294967296.0 + lo) * _TWO_TO_MINUS_64


@dataclass(frozen=True, kw_only=True, init=False)
class ForgedAnswer(EventFields):
    """One forged answer."""

    injector: str
    """The injector that sent it (its fingerprint: spec §2)."""
    addr: str
    """The forged address."""
    flags: str
    """The DNS header flags it carries, in hex."""
    leaked: int = 0
    """Bytes of (generated) injector memory the answer carries past the query (Wallbleed)."""

    # Written out: a dataclass's generated __init__ runs interpreted even where the class is
    # compiled (gfwlab._build); this one is compiled with it.
    def __init__(self, *, injector: str, addr: str, flags: str, leaked: int = 0) -> None:
        object.__setattr__(self, "injector", injector)
        object.__setattr__(self, "addr", addr)
        object.__setattr__(self, "flags", flags)
        object.__setattr__(self, "leaked", leaked)


@dataclass(frozen=True, kw_only=True, init=False)
class InjectFields(EventFields):
    """A query answered with forged responses."""

    qname: str
    """The name queried, as the injector flattened it."""
    qtype: int
    """The query type."""
    answers: tuple[ForgedAnswer, ...]
    """The forged answers, one per injector that answered."""

    # Written out: a dataclass's generated __init__ runs interpreted even where the class is
    # compiled (gfwlab._build); this one is compiled with it.
    def __init__(self, *, qname: str, qtype: int, answers: tuple[ForgedAnswer, ...]) -> None:
        object.__setattr__(self, "qname", qname)
        object.__setattr__(self, "qtype", qtype)
        object.__setattr__(self, "answers", answers)


class _Injector:
    """An injector's fingerprint as the hook reads it for every forged answer: a compiled copy of
    its parameters. A parameters class stays a Python class (for the profile loader), whose
    fields compiled code reads through a generic attribute lookup, some forty of them for each
    blocked query with the default three injectors."""

    def __init__(self, index: int, p: DnsInjectorParams) -> None:
        self.index = index
        self.name = p.name
        self.share_prefix = (p.name + "\0").encode()
        """The injector's part of the text hashed for a name's share (:func:`_share`)."""
        self.coverage = p.coverage
        self.flags = p.flags
        self.ip_ttl_lo, self.ip_ttl_hi = p.ip_ttl
        self.mirror_ttl = p.mirror_ttl
        self.ip_id: str = p.ip_id
        self.df = p.df
        self.dns_ttl_lo, self.dns_ttl_hi = p.dns_ttl
        self.v4 = p._v4
        self.v6 = p._v6
        self.latency_lo, self.latency_hi = p.latency_ms
        self.wallbleed = p.wallbleed
        self.processes = p.processes


class DnsInjection(Mechanism[DnsInjectionParams]):
    citation = (
        "spec §2; Anonymous et al., Triplet Censors, FOCI 2020; Hoang et al., How Great is the "
        "Great Firewall?, USENIX Security 2021; Fan et al., Wallbleed, NDSS 2025"
    )
    params_cls = DnsInjectionParams

    shared_state = (
        "each injector process's pool cursor (per address family): advanced once per answer it "
        "sends, in the order queries are fed (packet-time order offline, arrival order live)",
    )
    shard_scope = "all"

    def setup(self) -> None:
        self._next: dict[tuple[int, int, bool], int] = {}
        p = self.params
        self._era = p.era(self.date)
        self._injectors = [_Injector(i, inj) for i, inj in enumerate(p.injectors)]
        self._domains = p.domains
        self._any_class = not p.require_class_in

    def needs(self) -> Needs:
        p = self.params
        lenient = self._era != "fixed" and any(i.wallbleed for i in p.injectors)
        return Needs(udp_ports=frozenset({p.port}), dns_name_limit=p.max_name, dns_lenient=lenient)

    def _address(self, inj: _Injector, v6: bool, process: int) -> bytes:
        """The next address of ``inj``'s process ``process`` (ordered, cyclic pools)."""
        pool = inj.v6 if v6 else inj.v4
        key = (inj.index, process, v6)
        start = process * len(pool) // inj.processes
        n = self._next.get(key, 0)
        self._next[key] = n + 1
        return pool[(start + n) % len(pool)]

    def on_dns_query(self, seen: Seen, query: DnsQuery) -> Decision | None:
        domains = self._domains
        pkt = seen.pkt
        rng: Stream | None = None  # made on the first draw (a stream keyed per flow)
        strict_rule = None
        if query.overrun is None and (self._any_class or query.qclass == 1):
            strict_rule = domains.match(query.qname)
        forged: list[Forged] = []
        answered: list[ForgedAnswer] = []
        rules: list[str] = []
        qname, qtype = query.qname, query.qtype
        for inj in self._injectors:
            reading = None
            if inj.wallbleed and self._era != "fixed":
                rng = rng or self.rng(seen)
                memory = plausible_memory(rng, 300)
                buffer = wallbleed.injector_buffer(pkt.payload, memory)
                reading = wallbleed.read_query(buffer, len(pkt.payload), self._era)
                if reading is None or (self._era == "v2" and reading.qclass != 1):
                    continue
                name = reading.name.lower().decode("latin-1")
                rule = domains.match(name)
                if rule is None:
                    continue
                qname, qtype = name, reading.qtype
            else:
                rule, name = strict_rule, query.qname
            if rule is None:
                continue
            if inj.coverage < 1.0 and _share(inj.share_prefix, name) >= inj.coverage:
                continue
            rtype = reading.qtype if reading is not None else query.qtype
            rng = rng or self.rng(seen)
            process = draws.randrange(rng, inj.processes) if inj.processes > 1 else 0
            addr = self._address(inj, rtype == QTYPE_AAAA, process)
            ttl = draws.randint(rng, inj.dns_ttl_lo, inj.dns_ttl_hi)
            if reading is not None:
                payload = wallbleed.build(reading, addr, ttl)
                if inj.flags is not None:
                    payload = payload[:2] + inj.flags.to_bytes(2, "big") + payload[4:]
                flags = int.from_bytes(payload[2:4], "big")
                leaked = reading.overread
            else:
                flags = inj.flags if inj.flags is not None else (0x8180 if query.rd else 0x8400)
                payload = build_answer(pkt.payload, query, addr, ttl, flags)
                leaked = 0
            forged.append(self._forge(seen, inj, payload, rng))
            rules.append(rule)
            answered.append(
                ForgedAnswer(
                    injector=inj.name, addr=addr_text(addr), flags=_flags_text(flags), leaked=leaked
                )
            )
        if not forged:
            return None
        return Decision(
            action="dns-inject",
            rule=rules[0],
            injections=tuple(forged),
            fields=InjectFields(qname=qname, qtype=qtype, answers=tuple(answered)),
        )

    def _forge(self, seen: Seen, inj: _Injector, payload: bytes, rng: Stream) -> Forged:
        pkt = seen.pkt
        ip_ttl = pkt.ttl if inj.mirror_ttl else draws.randint(rng, inj.ip_ttl_lo, inj.ip_ttl_hi)
        if inj.ip_id == "random":
            ip_id = draws.randint(rng, 0, 0xFFFF)
        else:
            ip_id = 0 if inj.ip_id == "zero" else pkt.ip_id
        lo, hi = inj.latency_lo, inj.latency_hi
        delay = draws.uniform(rng, lo, hi) / 1000.0 if hi > 0 else 0.0
        return Forged(
            packet=build_udp(
                pkt.dst, pkt.src, pkt.dport, pkt.sport, payload, ttl=ip_ttl, ip_id=ip_id, df=inj.df
            ),
            delay=delay,
            toward="client" if seen.c2s else "server",
        )


register_mechanism("dns_injection", DnsInjection)
