"""What every GFW mechanism is: a small detector class with a registry entry and a citation.

A mechanism declares ``name`` (its registry name, used in profiles, ``--set`` and events),
``citation`` (the spec section and paper), ``params_cls`` (a frozen dataclass of its
parameters) and the hooks it implements. The engine calls a hook only for flows the mechanism's
``direction`` parameter admits and only while the mechanism is active on the emulated date. A
hook returns a :class:`Decision` or None; it never touches the flow table itself.
"""

from __future__ import annotations

import datetime as dt
import random
from abc import ABC
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from gfwlab.engine.actions import ActionName
from gfwlab.profiles.schema import DateRange

if TYPE_CHECKING:
    from gfwlab.engine.flows import Block, Flow
    from gfwlab.packet.ip import Packet
    from gfwlab.proto.dns import DnsQuery
    from gfwlab.proto.http import HttpRequest
    from gfwlab.proto.tls import ClientHello

ResidualKey = Literal["3-tuple", "2-tuple", "server", "server-ip", "5-tuple"]


@dataclass(frozen=True, slots=True, kw_only=True)
class CommonParams:
    """Parameters every mechanism has, with the same names everywhere (DESIGN.md)."""

    enabled: bool = True
    """Whether the profile uses this mechanism at all."""
    active: DateRange = DateRange()
    """The days the mechanism was active (start inclusive, end exclusive); ``--date`` picks one."""
    direction: Literal["both", "inside-out", "outside-in"] = "both"
    """Which flows it inspects: the client inside the border (inside-out), outside, or both."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Forged:
    """A forged packet a mechanism wants sent ``delay`` seconds after the trigger."""

    packet: bytes
    delay: float
    toward: Literal["client", "server"]


@dataclass(frozen=True, slots=True, kw_only=True)
class PlannedProbe:
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


@dataclass(frozen=True, slots=True, kw_only=True)
class Residual:
    """A residual block a decision starts: later flows on ``key`` are hit until it ends."""

    key: ResidualKey
    seconds: float
    policy: Literal["drop-c2s", "drop-s2c", "rst"]
    """``drop-c2s`` / ``drop-s2c``: drop one way on the key; ``rst``: reset new connections."""
    delay: float = 0.0
    """Seconds before the block starts (static blocking begins days after detection)."""
    probability: float = 1.0
    """Chance that each new connection on the key is hit (HTTP: 50-75%, spec §3)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Decision:
    """A mechanism's verdict on one trigger."""

    action: ActionName
    rule: str
    injections: tuple[Forged, ...] = ()
    drop: bool = False
    """Drop the triggering packet itself."""
    block: Block = "none"
    """What the flow's later packets get."""
    residual: Residual | None = None
    also: tuple[Residual, ...] = ()
    """Further blocks the decision starts (static blocking of a whole address)."""
    probes: tuple[PlannedProbe, ...] = ()
    """Active probes to send to the flow's server."""
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True, kw_only=True)
class ProbeResult:
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


@dataclass(slots=True)
class Seen:
    """The packet a hook is looking at, with its flow and time."""

    pkt: Packet
    flow: Flow
    now: float
    c2s: bool
    """True if the packet goes from the flow's client to its server."""


class Mechanism(ABC):
    """Base class of the GFW mechanisms. Subclasses override the hooks they need."""

    name: ClassVar[str]
    citation: ClassVar[str]
    params_cls: ClassVar[type[CommonParams]]
    date: dt.date | None = None
    """The emulated day (the profile's ``--date``), set by the engine; None if none was given.
    For behaviour that changes within a mechanism's active window (quic_sni's direction)."""

    def __init__(self, params: Any, rng: random.Random) -> None:
        self.params = params
        self.rng = rng

    def admits(self, flow: Flow) -> bool:
        d = self.params.direction
        return d in ("both", flow.direction)

    # Hooks. Each returns a Decision to act, or None to let the packet be.
    def on_new_flow(self, seen: Seen) -> Decision | None:
        """The first packet of a flow (a TCP SYN, or a UDP datagram)."""
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
        """The first client-to-server UDP datagram of a flow (QUIC: the Initial)."""
        return None

    def on_probe_result(self, result: ProbeResult, now: float) -> Decision | None:
        """A server's reaction to a probe this mechanism planned (live adapters only)."""
        return None

    def residual_hit(self, seen: Seen, rule: str) -> Decision | None:
        """A new connection on a residual key this mechanism blocked (``rst`` policy)."""
        return None


_REGISTRY: dict[str, type[Mechanism]] = {}


def register_mechanism(name: str, cls: type[Mechanism]) -> None:
    """Make ``cls`` available to profiles under ``name``."""
    if name in _REGISTRY and _REGISTRY[name] is not cls:
        raise RuntimeError(f"mechanism {name!r} registered twice")
    cls.name = name
    _REGISTRY[name] = cls


def registry() -> dict[str, type[Mechanism]]:
    """Every registered mechanism by name (importing the built-in ones first)."""
    import gfwlab.mechanisms  # noqa: F401, PLC0415 - the built-ins register themselves

    return dict(_REGISTRY)


def hook_names(cls: type[Mechanism]) -> frozenset[str]:
    """The hooks ``cls`` overrides, so the engine calls only those."""
    return frozenset(
        h
        for h in (
            "on_new_flow",
            "on_dns_query",
            "on_http_request",
            "on_client_hello",
            "on_first_data",
            "on_first_datagram",
        )
        if getattr(cls, h) is not getattr(Mechanism, h)
    )
