"""The mechanism contract: what a GFW mechanism is to the engine, and what it may answer.

A mechanism is a small detector class (one module per measured GFW behaviour, under
:mod:`gfwlab.mechanisms`). It declares ``name`` (its registry name, used in profiles, ``--set``
and events), ``citation`` (the spec section and paper), ``params_cls`` (a frozen dataclass of its
parameters, a :class:`~gfwlab.rules.CommonParams`, also the class's type parameter: ``class
Fet(Mechanism[FetParams])`` types ``self.params``), what it needs the engine to look at
(:meth:`Mechanism.needs`) and the hooks it overrides. The hooks are the ``on_*`` methods of
:class:`Mechanism`; :data:`HOOKS` is derived from them, so their names are written once.

The engine calls a hook only for flows the mechanism's ``direction`` parameter admits and only
while the mechanism is active on the emulated date. A hook returns a :class:`Decision` or None;
it never touches the flow table itself. Random draws come from :meth:`Mechanism.rng`: a stream
keyed by (seed, mechanism, flow), so a flow's draws do not depend on which other flows were seen,
or in which order. State a mechanism shares across flows on purpose is declared in its
``shared_state`` with the rule that keeps it deterministic.

Nothing here imports a mechanism: the registry is handed to :class:`~gfwlab.engine.Censor`.
"""

from __future__ import annotations

import datetime as dt
from abc import ABC
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Final, Generic, Literal, TypeVar

from mypy_extensions import mypyc_attr

from gfwlab._frozen import Frozen
from gfwlab.engine.actions import ActionName, EventFields
from gfwlab.engine.flows import Block, Flow
from gfwlab.engine.stream import Stream
from gfwlab.packet.ip import Packet
from gfwlab.proto.dns import DnsQuery
from gfwlab.proto.http import HttpRequest
from gfwlab.proto.quic import CryptoReading, QuicInitial
from gfwlab.proto.tls import ClientHello
from gfwlab.rules.profile import CommonParams, ResidualKey


@dataclass(frozen=True, kw_only=True)
class Needs(Frozen):
    """What a mechanism asks the engine to look at. The engine reads no mechanism's parameters:
    each mechanism states here what its hooks need."""

    udp_ports: frozenset[int] | None = None
    """Server UDP ports whose datagrams its per-datagram hooks (DNS) need; None: any port."""
    dns_name_limit: int | None = None
    """Longest flattened DNS name the dissector keeps for it (a censor's own limit)."""
    inspect_bytes: int | None = None
    """Client bytes per TCP connection it needs reassembled; None: up to the TCB's cap."""
    tls_records: bool = False
    """A ClientHello split across TLS records is joined before it is parsed (spec §14d)."""
    watch_packets: int = 0
    """TCP packets per flow (both directions, from its first) its ``on_tcp_packet`` hook must
    see: the engine does not bypass a clean flow before that many."""
    dns_lenient: bool = False
    """Hand DNS queries that a bounds-checked read rejects to the hook too (``overrun`` set),
    for a mechanism that reads them its own way."""
    quic_crypto_reading: CryptoReading | None = None
    """How the QUIC dissector reads a zero-Length CRYPTO frame that carries data (spec §14e);
    None: the dissector's default."""
    handshake_ack: bool = False
    """The client's data-less ACK that ends the handshake matters to it (a decision on the SYN or
    SYN/ACK that drops the client's later packets). Without any such mechanism (and without
    ``watch_packets``) an inline adapter may let the kernel forward that ACK unqueued: to the
    engine it changes nothing but a packet count."""
    syn: bool = True
    """Its ``on_new_flow`` hook may decide on a connection's first SYN (drop it, or reset or
    block the connection there), so the SYN must wait for the engine's verdict. Only read for
    mechanisms with that hook; one that can tell it will not act (nothing configured to act on)
    says False, and an inline adapter may then let the kernel forward the SYN and show the
    engine a copy."""


@dataclass(frozen=True, kw_only=True, init=False)
class Forged(Frozen):
    """A forged packet a mechanism wants sent ``delay`` seconds after the trigger."""

    packet: bytes
    delay: float
    toward: Literal["client", "server"]

    # Written out: a dataclass's generated __init__ runs interpreted even where the class is
    # compiled (gfwlab._build); this one is compiled with it.
    def __init__(self, *, packet: bytes, delay: float, toward: Literal["client", "server"]) -> None:
        object.__setattr__(self, "packet", packet)
        object.__setattr__(self, "delay", delay)
        object.__setattr__(self, "toward", toward)


@dataclass(frozen=True, kw_only=True, init=False)
class PlannedProbe(Frozen):
    """A probe a mechanism wants sent ``delay`` seconds from now (see actions.Probe)."""

    kind: str
    payload: bytes
    delay: float
    ttl: int
    sport: int
    tsval_hz: int = 250
    linger: float = 8.0
    origin: bytes = b""
    """The trigger payload a replay derives from (handed back in ProbeResult.context)."""

    # Written out: a dataclass's generated __init__ runs interpreted even where the class is
    # compiled (gfwlab._build); this one is compiled with it.
    def __init__(
        self,
        *,
        kind: str,
        payload: bytes,
        delay: float,
        ttl: int,
        sport: int,
        tsval_hz: int = 250,
        linger: float = 8.0,
        origin: bytes = b"",
    ) -> None:
        object.__setattr__(self, "kind", kind)
        object.__setattr__(self, "payload", payload)
        object.__setattr__(self, "delay", delay)
        object.__setattr__(self, "ttl", ttl)
        object.__setattr__(self, "sport", sport)
        object.__setattr__(self, "tsval_hz", tsval_hz)
        object.__setattr__(self, "linger", linger)
        object.__setattr__(self, "origin", origin)


@dataclass(frozen=True, kw_only=True, init=False)
class Residual(Frozen):
    """A residual block a decision starts: later flows on ``key`` are hit until it ends."""

    key: ResidualKey
    seconds: float
    policy: Literal["drop-c2s", "drop-s2c", "rst"]
    """``drop-c2s`` / ``drop-s2c``: drop one way on the key; ``rst``: reset new connections."""
    delay: float = 0.0
    """Seconds before the block starts (static blocking begins days after detection)."""
    probability: float = 1.0
    """Chance that each new connection on the key is hit (HTTP: 50-75%, spec §3)."""

    # Written out: a dataclass's generated __init__ runs interpreted even where the class is
    # compiled (gfwlab._build); this one is compiled with it.
    def __init__(
        self,
        *,
        key: ResidualKey,
        seconds: float,
        policy: Literal["drop-c2s", "drop-s2c", "rst"],
        delay: float = 0.0,
        probability: float = 1.0,
    ) -> None:
        object.__setattr__(self, "key", key)
        object.__setattr__(self, "seconds", seconds)
        object.__setattr__(self, "policy", policy)
        object.__setattr__(self, "delay", delay)
        object.__setattr__(self, "probability", probability)


@dataclass(frozen=True, kw_only=True, init=False)
class Decision(Frozen):
    """A mechanism's verdict on one trigger."""

    action: ActionName
    rule: str
    injections: tuple[Forged, ...] = ()
    drop: bool = False
    """Drop the triggering packet itself."""
    block: Block = "none"
    """What the flow's later packets get."""
    block_after: float = 0.0
    """Seconds after the trigger before ``block`` (and ``residual``, unless it has a delay of its
    own) takes effect: packets in between pass (a censor's reaction time)."""
    residual: Residual | None = None
    also: tuple[Residual, ...] = ()
    """Further blocks the decision starts (static blocking of a whole address)."""
    probes: tuple[PlannedProbe, ...] = ()
    """Active probes to send to the flow's server."""
    fields: EventFields | None = None
    """The fields its event adds (the mechanism's declared event fields)."""

    # Written out: a dataclass's generated __init__ runs interpreted even where the class is
    # compiled (gfwlab._build); this one is compiled with it.
    def __init__(
        self,
        *,
        action: ActionName,
        rule: str,
        injections: tuple[Forged, ...] = (),
        drop: bool = False,
        block: Block = "none",
        block_after: float = 0.0,
        residual: Residual | None = None,
        also: tuple[Residual, ...] = (),
        probes: tuple[PlannedProbe, ...] = (),
        fields: EventFields | None = None,
    ) -> None:
        object.__setattr__(self, "action", action)
        object.__setattr__(self, "rule", rule)
        object.__setattr__(self, "injections", injections)
        object.__setattr__(self, "drop", drop)
        object.__setattr__(self, "block", block)
        object.__setattr__(self, "block_after", block_after)
        object.__setattr__(self, "residual", residual)
        object.__setattr__(self, "also", also)
        object.__setattr__(self, "probes", probes)
        object.__setattr__(self, "fields", fields)


@dataclass(frozen=True, kw_only=True, init=False)
class ProbeResult(Frozen):
    """What a suspected server did with one probe."""

    probe_id: int
    kind: str
    server: bytes
    port: int
    reaction: Literal["data", "fin", "rst", "timeout", "unreachable"]
    """It sent data, closed with FIN, reset, said nothing for ``linger`` s, or never accepted."""
    response_len: int = 0
    context: dict[str, Any] = field(default_factory=dict)
    """What the mechanism attached when it planned the probe (the trigger's flow, rule...)."""

    # Written out: a dataclass's generated __init__ runs interpreted even where the class is
    # compiled (gfwlab._build); this one is compiled with it.
    def __init__(
        self,
        *,
        probe_id: int,
        kind: str,
        server: bytes,
        port: int,
        reaction: Literal["data", "fin", "rst", "timeout", "unreachable"],
        response_len: int = 0,
        context: dict[str, Any] | None = None,
    ) -> None:
        object.__setattr__(self, "probe_id", probe_id)
        object.__setattr__(self, "kind", kind)
        object.__setattr__(self, "server", server)
        object.__setattr__(self, "port", port)
        object.__setattr__(self, "reaction", reaction)
        object.__setattr__(self, "response_len", response_len)
        object.__setattr__(self, "context", {} if context is None else context)


@dataclass(init=False)
class Seen:
    """The packet a hook is looking at, with its flow and time."""

    pkt: Packet
    flow: Flow
    now: float
    c2s: bool
    """True if the packet goes from the flow's client to its server."""

    # Written out: a dataclass's generated __init__ runs interpreted even where the class is
    # compiled (gfwlab._build); this one is compiled with it.
    def __init__(self, pkt: Packet, flow: Flow, now: float, c2s: bool) -> None:
        self.pkt = pkt
        self.flow = flow
        self.now = now
        self.c2s = c2s


P = TypeVar("P", bound=CommonParams)
"""A mechanism's parameters class (its ``params_cls``)."""


@mypyc_attr(allow_interpreted_subclasses=True)  # mechanisms subclass it
class Mechanism(ABC, Generic[P]):
    """Base class of the GFW mechanisms. Subclasses override the hooks they need."""

    name: ClassVar[str] = ""
    """The registry name, set by the registry."""
    citation: ClassVar[str]
    params_cls: ClassVar[type[CommonParams]]
    shared_state: ClassVar[tuple[str, ...]] = ()
    """State this mechanism keeps across flows on purpose, each with the rule that keeps it
    deterministic (e.g. "a pool cursor, advanced in packet-time order")."""
    shard_scope: ClassVar[Literal["flow", "server", "all"]] = "flow"
    """The widest set of flows one piece of ``shared_state`` spans, which says how a capture
    may be split for analysis in parallel (:mod:`gfwlab.offline.shard`): ``flow`` (no shared
    state), ``server`` (state keyed by the server's address: the flows of one server address
    stay together) or ``all`` (state any flow on the mechanism's declared UDP ports may touch,
    such as a pool cursor: those flows all go to one part)."""

    def __init__(
        self,
        params: P,
        *,
        seed: int = 0,
        date: dt.date | None = None,
        epoch_offset: float = 0.0,
    ) -> None:
        self.params: P = params
        self.seed = seed
        self.date = date
        """The emulated day (the profile's ``--date``); None if none was given. For behaviour
        that changes within a mechanism's active window (a direction that changed on a date)."""
        self.epoch_offset = epoch_offset
        """Seconds from the engine's ``now`` to the emulated UTC moment (the profile's
        ``epoch_offset_s``): the engine is handed the offset, it never reads a clock."""
        self._key = f"{seed}:{self.name}"
        self._direction: str = params.direction  # read for every hook call: kept natively
        self.setup()

    def setup(self) -> None:
        """Make the state this mechanism keeps, from its parameters and date (called last by
        ``__init__``, which subclasses leave alone: compiled, a ``super().__init__(params,
        **kw)`` passes the keywords to the wrong parameters, mypyc 2.4.1)."""

    def moment(self, now: float) -> dt.datetime:
        """The emulated UTC moment of engine time ``now``."""
        return dt.datetime.fromtimestamp(max(now + self.epoch_offset, 0.0), dt.UTC)

    def in_window(self, seen: Seen) -> bool:
        """Whether ``seen`` happened inside the ``active`` range, to the minute (dated events
        act only then, whatever ``--date`` says; day-long mechanisms are chosen by day)."""
        return bool(self.params.active.contains_moment(self.moment(seen.now)))

    def needs(self) -> Needs:
        """What this mechanism's hooks need the engine to look at (the default: nothing special)."""
        return Needs()

    def admits(self, flow: Flow) -> bool:
        """Whether this mechanism looks at ``flow`` at all (its ``direction`` parameter)."""
        d = self._direction
        return d in ("both", flow.direction)

    def inspects(self, seen: Seen) -> bool:
        """Whether this packet of an admitted flow is inspected (a dissector's malformed-input
        anomaly is reported only if some mechanism inspects the packet)."""
        return True

    def rng(self, seen: Seen) -> Stream:
        """This mechanism's random stream for the flow of ``seen``, keyed by (seed, mechanism,
        flow): the n-th draw of a flow is the same whatever other flows were seen, in any order."""
        return seen.flow.draws(self._key)

    def keyed_rng(self, *key: object) -> Stream:
        """A fresh stream keyed by (seed, mechanism, ``key``): the same key, the same draws."""
        return Stream(f"{self._key}:{key!r}".encode())

    # Hooks. Each returns a Decision to act, or None to let the packet be.
    def on_new_flow(self, seen: Seen) -> Decision | None:
        """The first packet of a flow (a TCP SYN, or a UDP datagram)."""
        return None

    def on_syn_ack(self, seen: Seen) -> Decision | None:
        """The server's SYN/ACK, whatever the flow's state (a device that acts on the handshake
        alone keeps no per-flow verdict): called even after an earlier packet blocked the flow."""
        return None

    def on_tcp_packet(self, seen: Seen) -> Decision | None:
        """Every TCP packet of a clean flow, both directions, up to the ``watch_packets``-th
        (for detectors of packet sizes, directions and gaps)."""
        return None

    def on_dns_query(self, seen: Seen, query: DnsQuery) -> Decision | None:
        return None

    def on_http_request(self, seen: Seen, request: HttpRequest) -> Decision | None:
        return None

    def on_client_hello(self, seen: Seen, hello: ClientHello) -> Decision | None:
        return None

    def on_first_data(self, seen: Seen, payload: bytes) -> Decision | None:
        """The client's first TCP data packet, its payload as sent (not reassembled)."""
        return None

    def on_first_datagram(self, seen: Seen) -> Decision | None:
        """The first client-to-server UDP datagram of a flow, as sent."""
        return None

    def on_quic_initial(self, seen: Seen, initial: QuicInitial) -> Decision | None:
        """The first client-to-server UDP datagram of a flow, read as a QUIC Initial."""
        return None

    def on_probe_result(self, seen: Seen, result: ProbeResult) -> Decision | None:
        """A server's reaction to a probe this mechanism planned (live adapters only); ``seen``
        is the flow that triggered the probe, at the time of the result."""
        return None

    def residual_hit(self, seen: Seen, rule: str) -> Decision | None:
        """A new connection on a residual key this mechanism blocked (``rst`` policy)."""
        return None


HOOKS: Final[tuple[str, ...]] = tuple(
    name for name in vars(Mechanism) if name.startswith("on_") and name != "on_probe_result"
)
"""The packet hooks, in the order they are defined above (the one place their names are written)."""


def overridden_hooks(cls: type[Mechanism[Any]]) -> frozenset[str]:
    """The hooks ``cls`` overrides, so the engine calls only those."""
    return frozenset(h for h in HOOKS if getattr(cls, h) is not getattr(Mechanism, h))


Calls = list[tuple[Mechanism[Any], Callable[..., Decision | None]]]
"""A hook's mechanisms, each with its method for the hook."""


def bound_hooks(mechanisms: Iterable[Mechanism[Any]]) -> dict[str, Calls]:
    """Each hook that any of ``mechanisms`` overrides, with their methods for it bound once,
    in their order: the engine calls them for every flow, and a getattr and a call through a
    tuple of arguments each time cost about a tenth of a TCP flow's handling."""
    calls: dict[str, Calls] = {}
    for mech in mechanisms:
        for hook in sorted(overridden_hooks(type(mech))):
            calls.setdefault(hook, []).append((mech, getattr(mech, hook)))
    return calls


def all_scoped(
    mechanisms: Mapping[str, Mechanism[Any]], udp_ports: Mapping[str, frozenset[int]]
) -> list[tuple[str, frozenset[int] | None]]:
    """Each of ``mechanisms`` whose state spans every flow (:attr:`Mechanism.shard_scope`
    ``all``), with the UDP ports whose datagrams alone reach it (``udp_ports``: a censor's
    ``plan.udp_ports``; None: no port bounds it): what a split of the flows must keep whole
    (``offline/shard.py``, ``live/engines.py``)."""
    return [
        (name, udp_ports.get(name))
        for name, mech in mechanisms.items()
        if type(mech).shard_scope == "all"
    ]


def pinned_ports(
    mechanisms: Mapping[str, Mechanism[Any]], udp_ports: Mapping[str, frozenset[int]]
) -> frozenset[int]:
    """The UDP ports of :func:`all_scoped`'s mechanisms, together: the datagrams a split keeps
    with one engine or part (a mechanism no port bounds adds none; it forbids the split)."""
    out: set[int] = set()
    for _name, ports in all_scoped(mechanisms, udp_ports):
        out |= ports or frozenset()
    return frozenset(out)
