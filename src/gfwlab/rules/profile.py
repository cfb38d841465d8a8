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
    """What a RST (either direction, any checksum, TTL or other flags) does to the TCB when it acts
    (spec §9, unknown 3)."""
    rst_probability: float = 0.92
    """How often a RST acts; otherwise it is ignored. Drawn per packet from the flow's keyed
    stream. Fitted to Geneva's nine China teardown insertions (RST, RST+ACK and odd flag sets
    containing R after the handshake: 80-96%, spec §14c); 0.92 lies within the 99.9% binomial
    interval of each at 50 trials."""
    rst_before_synack: bool = False
    """A RST seen before the server's SYN/ACK (in syn-seen) acts too. Off: it is ignored. Geneva
    2019: a client SYN/ACK sent before the SYN, which the server answers with a RST, got 3% on
    HTTP (spec §14c), so that RST did not tear the TCB down."""
    on_fin: Literal["teardown", "resync", "ignore"] = "teardown"
    """What a FIN does to the TCB when it acts (spec §9, §14c)."""
    fin_probability: float = 0.515
    """How often a FIN acts; otherwise it is ignored. Geneva's FIN insertion (a FIN copy of the
    request with a short IP length) evades 53% in China: 0.515 plus the 3% baseline of the
    remaining trials gives 53% (spec §14c)."""
    simultaneous_open_probability: float = 0.412
    """How often a server's SYN without ACK, seen before its SYN/ACK, swaps the censor's idea of
    client and server (the TCB starts anew from that SYN; the real client's data is then server
    data, not inspected); otherwise it is just a segment. Come as You Are (SIGCOMM 2020): the
    server-side simultaneous-open strategy got 43% on HTTP in China (spec §9, §14c); 0.412 plus
    the 3% baseline of the remaining trials gives 43%. How the GFW treats such a SYN was not
    measured beyond that rate."""
    resync_on_syn: bool = False
    """A second client SYN enters resynchronisation (IMC'17, unverified)."""
    reopen_bypassed: bool = True
    """A client's SYN (without ACK) with a new initial sequence number on the 5-tuple of a flow
    the censor no longer inspects (bypassed: judged clean, or let through unread) opens a new
    connection, judged anew, as one on the 5-tuple of a blocked flow does. The GFW makes a TCB
    on a client's SYN (S&P'25, spec §9, §3, §4a), and the engine keeps no TCB for a bypassed
    flow, so such a SYN finds none to resynchronise. What the GFW does with a SYN that reuses a
    connection it has already judged was not measured (spec §9, unknown 3): off, the new
    connection inherits the old one's bypass until the flow idles out (``tcp_timeout_s``), as a
    censor that keeps a judged connection's TCB and ignores a SYN on it would. A SYN on a flow
    still being inspected follows the TCB table (``resync_on_syn``); a retransmitted SYN (the
    same sequence number) stays with its flow."""
    turnaround: bool = False
    """A SYN/ACK that opens a flow makes its sender the server ("TCB turnaround"). Off: the roles
    come from the ports and a client-sent SYN/ACK changes nothing (Geneva 2019: 3% on HTTP; it
    worked only against 2020 ESNI blocking, spec §14c)."""
    check_checksum: bool = False
    """Ignore segments with a bad TCP checksum (the 2019 GFW did not: spec §9 (a))."""
    inspect_bytes: int = 16384
    """Client payload bytes the censor buffers per connection before it gives up on a flow."""
    max_out_of_order: int = 64
    """Out-of-order segments held per connection while waiting for a gap to fill."""
    small_segment_bytes: int = 16
    """Client segments shorter than this were not reassembled before the fix (not published: chosen
    so that Geneva's 2019 cuts at offsets 4 and 8 evade and halving a request does not)."""
    small_segment_reassembly: DateRange = DateRange(start=dt.date(2022, 2, 1))
    """The days small segments are reassembled. GFWeb (USENIX Security 2024, data Feb 2022 -
    Sep 2023) reports the GFW "upgraded to mitigate ... failure in reassembling fragmented
    packets" without a date; default: from the start of GFWeb's data, 2022-02-01. Without
    ``--date`` they are."""

    def __post_init__(self) -> None:
        if self.inspect_bytes <= 0:
            raise ValueError("tcb.inspect_bytes must be positive")
        for name in ("rst_probability", "fin_probability", "simultaneous_open_probability"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"tcb.{name} must be between 0 and 1")

    def min_segment(self, day: dt.date | None) -> int:
        """The shortest client segment reassembled on ``day`` (0: all are)."""
        if day is None or self.small_segment_reassembly.contains(day):
            return 0
        return self.small_segment_bytes


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
    ip_reassembly: bool = True
    """Reassemble IPv4 fragments before inspecting them (Khattak'13, spec §3); off: fragments
    pass uninspected."""
    ip_overlap: Literal["first", "last", "khattak2013"] = "khattak2013"
    """Whose bytes win where fragments overlap: the first to arrive, the last, or the first
    unless the later one covers it on both sides (Khattak'13, spec §3)."""
    ip_fragment_timeout_s: float = 30.0
    """How long an incomplete datagram is held (the GFW's value is not published)."""
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
    epoch_offset_s: float = 0.0
    """Seconds added to the engine's ``now`` to give the emulated UTC moment (POSIX seconds).
    Offline ``now`` is the capture's clock (0 unless ``--at`` shifts it); live it is a monotonic
    clock, so the daemon sets the wall clock's offset plus ``lab up --at``'s shift."""
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
        # A moment (a dated event's start) counts as its day.
        known = [d.date() if isinstance(d, dt.datetime) else d for d in starts if d is not None]
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
