"""Plain-data configuration: what a profile says, validated, before any engine exists.

:class:`Profile` holds the engine-wide settings (:class:`EngineParams`), the censor's TCP quirks
(:class:`TcbParams`) and one parameter dataclass per mechanism, each a subclass of
:class:`CommonParams`. Nothing here knows which mechanisms exist: the profile loader
(:mod:`gfwlab.profiles`) resolves names against the mechanism registry and hands both to the
engine.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Literal

from gfwlab.rules.schema import DateRange, Prefixes

ResidualKey = Literal["3-tuple", "2-tuple", "server", "server-ip", "5-tuple"]
"""How a residual block is keyed (spec §10b): see :mod:`gfwlab.engine.residual`."""


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
class TcbParams:
    """How the censor tracks TCP (profile section ``[tcb]``)."""

    require_syn: bool = True
    """Inspect a TCP connection only if its client SYN was seen (S&P'25 parsing-logic table)."""
    on_rst: Literal["teardown", "resync", "ignore"] = "teardown"
    """What a RST (either direction, any checksum) does to the TCB (spec §9, unknown 3)."""
    on_fin: Literal["teardown", "resync", "ignore"] = "ignore"
    """What a FIN does to the TCB (spec §9: FIN insertion evades only ~53% of the time)."""
    resync_on_syn: bool = False
    """A second client SYN enters resynchronisation (IMC'17, unverified)."""
    check_checksum: bool = False
    """Ignore segments with a bad TCP checksum (the 2019 GFW did not: spec §9 (a))."""
    inspect_bytes: int = 16384
    """Client payload bytes the censor buffers per connection before it gives up on a flow."""
    max_out_of_order: int = 64
    """Out-of-order segments held per connection while waiting for a gap to fill."""

    def __post_init__(self) -> None:
        if self.inspect_bytes <= 0:
            raise ValueError("tcb.inspect_bytes must be positive")


@dataclass(frozen=True, slots=True, kw_only=True)
class EngineParams:
    """Engine-wide settings (profile section ``[engine]``)."""

    inside: Prefixes = Prefixes()
    """Prefixes inside the border. Empty: the side that opens a flow is taken as inside."""
    tcp_timeout_s: float = 120.0
    """Idle seconds after which a TCP flow is forgotten (the GFW's value is not published)."""
    udp_timeout_s: float = 60.0
    """Idle seconds before a UDP flow is forgotten (QUIC flow tracking: exactly 60 s, spec §5)."""
    hold_trigger: bool = True
    """Live: deliver a packet that triggered forged packets only after they are sent, so they win
    the race as they do on the real border, where the peer is further than the censor."""
    sweep_s: float = 10.0
    """How often (in packet time) idle flows and ended residual blocks are swept."""
    max_flows: int = 1_500_000
    """Flows remembered at once. A new flow beyond it evicts the oldest flow (the first made
    of those still held), as a middlebox's full connection table does; evictions are counted
    (``flows_evicted`` in the summary), never silent. About 1 KiB of memory per flow held."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Profile:
    """A loaded, validated profile."""

    name: str
    source: str
    description: str = ""
    date: dt.date | None = None
    """The emulated day, or None for every enabled mechanism regardless of dates."""
    reference_date: dt.date | None = None
    """The day a capture is analysed as when no ``--date`` is given and the capture's own date
    is before anything was measured (a synthetic capture at time 0)."""
    measured_from: dt.date | None = None
    """The first day the profile's behaviour was measured; mechanisms without an ``active``
    start are taken to be active from it."""
    engine: EngineParams = EngineParams()
    tcb: TcbParams = TcbParams()
    mechanisms: dict[str, CommonParams] = field(default_factory=dict)
    """Every mechanism the profile configures, active or not."""

    def earliest_start(self) -> dt.date | None:
        """The first day any enabled mechanism was active: its ``active`` start, or
        ``measured_from`` for one without (None if neither is known)."""
        starts = [
            p.active.start or self.measured_from for p in self.mechanisms.values() if p.enabled
        ]
        known = [d for d in starts if d is not None]
        return min(known) if known else None

    def active(self) -> dict[str, CommonParams]:
        """The mechanisms that run: enabled, and active on ``date`` if one is set (from
        ``measured_from`` if their ``active`` range has no start)."""
        day, since = self.date, self.measured_from
        return {
            name: p
            for name, p in self.mechanisms.items()
            if p.enabled
            and (
                day is None
                or (p.active.contains(day) and (p.active.start or since is None or day >= since))
            )
        }
