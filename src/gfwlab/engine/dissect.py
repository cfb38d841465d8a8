"""The dissector table: which censor's-view parser reads what, and which hook it feeds.

One row per dissector (STYLE.md §4, §5). A row names what it reads (``carrier``): the censor's
reassembled client stream of a TCP connection, every UDP datagram to a port some mechanism
declared (:class:`~gfwlab.engine.mechanism.Needs`), or the first client datagram of a UDP flow;
the first bytes it can start with; its parser; and the hook it feeds. Adding a dissector is
adding a row here and a hook method on :class:`~gfwlab.engine.mechanism.Mechanism`.

Parsers return None for "need more data" and raise
:class:`~gfwlab.errors.MalformedPacket` for garbage; the engine turns the latter into an
``anomaly`` event (unless the row lists the kind as ``silent``: text that is not HTTP at all is
no anomaly) and lets the packet pass.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, Literal, Protocol

from gfwlab._frozen import Frozen
from gfwlab.engine.actions import EventFields
from gfwlab.engine.mechanism import Mechanism
from gfwlab.proto.dns import DEFAULT_MAX_NAME, parse_query
from gfwlab.proto.http import parse_request
from gfwlab.proto.quic import CRYPTO_READINGS, CryptoReading, parse_initial
from gfwlab.proto.tls import join_records, parse_client_hello

Carrier = Literal["tcp-stream", "udp-port", "udp-first"]


class Parsed(Protocol):
    """What every dissector returns: the parsed message, with the oddities it noticed."""

    @property
    def anomalies(self) -> tuple[str, ...]: ...


@dataclass(frozen=True)
class Options(Frozen):
    """Parser settings the active mechanisms asked for (from their ``needs()``)."""

    dns_name_limit: int = DEFAULT_MAX_NAME
    tls_records: bool = False
    """Join a ClientHello split across TLS records before parsing it (spec §14d)."""
    dns_lenient: bool = False
    quic_crypto_reading: CryptoReading = CRYPTO_READINGS[0]


@dataclass(frozen=True, kw_only=True)
class Dissector(Frozen):
    """One row of the table."""

    name: str
    hook: str
    """The :class:`~gfwlab.engine.mechanism.Mechanism` method it feeds."""
    carrier: Carrier
    starts: frozenset[int] | None = None
    """First bytes the message can start with (None: any); other data is not offered to it."""
    parse: Callable[[bytes, Options], Parsed | None]
    silent: frozenset[str] = frozenset()
    """Malformed kinds that are not reported (the data is simply not this protocol)."""
    report_anomalies: bool = True
    """Report the parsed message's ``anomalies`` as events."""
    names_mechanism: bool = False
    """Malformed input is reported with the mechanism that asked for the parse (a QUIC Initial
    is decrypted on a mechanism's behalf, not as a matter of course)."""
    detail: Callable[[Parsed], EventFields | None] | None = None
    """Fields added to the events of the parsed message's anomalies."""

    def offered(self, data: bytes) -> bool:
        """Whether ``data`` is offered to this row at all (its first byte is one it can start
        with): a DNS query is not handed to the QUIC parser, only to be refused there."""
        return self.starts is None or (bool(data) and data[0] in self.starts)


@dataclass(frozen=True, kw_only=True, init=False)
class QueryFields(EventFields):
    """An oddity of a DNS query."""

    qname: str
    """The name queried, as the censor flattened it."""

    # Written out: a dataclass's generated __init__ runs interpreted even where the class is
    # compiled (gfwlab._build); this one is compiled with it.
    def __init__(self, *, qname: str) -> None:
        object.__setattr__(self, "qname", qname)


def _client_hello(data: bytes, options: Options) -> Parsed | None:
    if options.tls_records:
        joined = join_records(data)
        return None if joined is None else parse_client_hello(joined)
    return parse_client_hello(data)


def _http_request(data: bytes, _options: Options) -> Parsed | None:
    return parse_request(data)


def _dns_query(data: bytes, options: Options) -> Parsed | None:
    return parse_query(data, name_limit=options.dns_name_limit, lenient=options.dns_lenient)


def _quic_initial(data: bytes, options: Options) -> Parsed | None:
    return parse_initial(data, crypto_reading=options.quic_crypto_reading)


def _dns_detail(parsed: Parsed) -> EventFields:
    return QueryFields(qname=getattr(parsed, "qname", ""))


DISSECTORS: Final[tuple[Dissector, ...]] = (
    Dissector(
        name="tls",
        hook="on_client_hello",
        carrier="tcp-stream",
        starts=frozenset({0x16}),
        parse=_client_hello,
    ),
    Dissector(
        name="http",
        hook="on_http_request",
        carrier="tcp-stream",
        starts=frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZ"),
        parse=_http_request,
        silent=frozenset({"http.not_http"}),
    ),
    Dissector(
        name="dns",
        hook="on_dns_query",
        carrier="udp-port",
        parse=_dns_query,
        detail=_dns_detail,
    ),
    Dissector(
        name="quic",
        hook="on_quic_initial",
        carrier="udp-first",
        starts=frozenset(range(0x80, 0x100)),  # a long header (parse_initial: else not QUIC)
        parse=_quic_initial,
        report_anomalies=False,
        names_mechanism=True,
    ),
)
"""Every dissector, in the order the engine offers data to them."""


@dataclass(frozen=True)
class Plan(Frozen):
    """The rows the active mechanisms use, and the parser settings and UDP ports they declared."""

    rows: tuple[list[Dissector], list[Dissector], list[Dissector]]
    """The rows fed by each carrier: TCP stream, first UDP datagram, UDP port."""
    udp_ports: dict[str, frozenset[int]]
    """Per mechanism on a UDP-port row: the server ports it declared."""
    ports: frozenset[int]
    """Every declared UDP port. The engine dissects only the datagrams sent to one of them: a
    datagram from one of them to a port outside them (a DNS answer) changes nothing in the
    engine but counters and its flow's idle time (``Censor._udp`` keeps such a flow open for its
    next query), so an inline adapter may forward it unqueued while no residual drop block is
    in force (``live/chains.py`` ``udp_replies``)."""
    options: Options

    @classmethod
    def of(cls, hooks: Mapping[str, Sequence[Mechanism[Any]]]) -> Plan:
        """The plan for mechanisms grouped by the hooks they override."""
        used = [d for d in DISSECTORS if hooks.get(d.hook)]
        by = tuple(
            [d for d in used if d.carrier == c] for c in ("tcp-stream", "udp-first", "udp-port")
        )
        mechs = {m.name: m for ms in hooks.values() for m in ms}
        needs = {name: m.needs() for name, m in mechs.items()}
        udp_ports = {
            m.name: ports
            for row in by[2]
            for m in hooks[row.hook]
            if (ports := needs[m.name].udp_ports) is not None
        }
        limits = [n.dns_name_limit for n in needs.values() if n.dns_name_limit is not None]
        readings = [r for n in needs.values() if (r := n.quic_crypto_reading) is not None]
        return cls(
            rows=(by[0], by[1], by[2]),
            udp_ports=udp_ports,
            ports=frozenset().union(*udp_ports.values()),
            options=Options(
                dns_name_limit=min(limits, default=DEFAULT_MAX_NAME),
                tls_records=any(n.tls_records for n in needs.values()),
                dns_lenient=any(n.dns_lenient for n in needs.values()),
                quic_crypto_reading=readings[0] if readings else CRYPTO_READINGS[0],
            ),
        )
