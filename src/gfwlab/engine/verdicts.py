"""From decisions to Actions: forged packets, drops, residual blocks, probes and events.

:class:`Verdicts` is the half of the engine that acts. The censor hands it a mechanism's
:class:`~gfwlab.engine.mechanism.Decision` with the packet it was about; it turns that into
Actions for the adapter (now, or later through the timer heap), records residual blocks and
planned probes, and builds the events of the DESIGN.md contract. It never looks at packets.
"""

from __future__ import annotations

import heapq
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from gfwlab.engine.actions import (
    Accept,
    Action,
    ActionName,
    Drop,
    Event,
    EventFields,
    FlowId,
    Inject,
    Probe,
    Report,
    rounded,
)
from gfwlab.engine.flows import Flow, FlowState
from gfwlab.engine.mechanism import Decision, Mechanism, PlannedProbe, ProbeResult, Seen
from gfwlab.engine.residual import ResidualEntry, ResidualTable
from gfwlab.errors import MalformedPacket
from gfwlab.packet.ip import addr_text, parse
from gfwlab.rules.profile import TcbParams

NO_PACKET: Final = parse(bytes.fromhex("450000140000000040fd00000000000000000000"))
"""Stands in for a trigger packet where there is none (a probe result)."""


@dataclass(frozen=True, kw_only=True, init=False)
class ResidualFields(EventFields):
    """A new connection met a residual block."""

    residual: bool = True
    """Always true: the flow was hit (or spared) by a block another flow started."""
    draw: float | None = None
    """The draw that spared it, for a probabilistic residual (HTTP: spec §3)."""
    probability: float | None = None
    """The residual's probability of hitting a new connection."""

    # Written out: a dataclass's generated __init__ runs interpreted even where the class is
    # compiled (gfwlab._build); this one is compiled with it.
    def __init__(
        self,
        *,
        residual: bool = True,
        draw: float | None = None,
        probability: float | None = None,
    ) -> None:
        object.__setattr__(self, "residual", residual)
        object.__setattr__(self, "draw", draw)
        object.__setattr__(self, "probability", probability)


@dataclass(frozen=True, kw_only=True, init=False)
class ProbePlannedFields(EventFields):
    """An active probe was planned."""

    probe: str
    """The probe type (``R1``-``R5``, ``NR1``, ``NR2``)."""
    probe_id: int
    """Its number, as in the Probe action and the probe result."""
    at: float
    """When it is (or, offline, would be) sent."""
    length: int
    """Its payload's length."""
    prober_sport: int
    """The prober's source port."""
    ttl: int
    """The prober's IP TTL."""

    # Written out: a dataclass's generated __init__ runs interpreted even where the class is
    # compiled (gfwlab._build); this one is compiled with it.
    def __init__(
        self,
        *,
        probe: str,
        probe_id: int,
        at: float,
        length: int,
        prober_sport: int,
        ttl: int,
    ) -> None:
        object.__setattr__(self, "probe", probe)
        object.__setattr__(self, "probe_id", probe_id)
        object.__setattr__(self, "at", at)
        object.__setattr__(self, "length", length)
        object.__setattr__(self, "prober_sport", prober_sport)
        object.__setattr__(self, "ttl", ttl)


@dataclass(frozen=True, kw_only=True, init=False)
class ProbeResultFields(EventFields):
    """What a probed server did."""

    probe: str
    """The probe type."""
    probe_id: int
    """Its number."""
    reaction: str
    """``data``, ``fin``, ``rst``, ``timeout`` or ``unreachable``."""
    response_len: int
    """Bytes the server sent back."""

    # Written out: a dataclass's generated __init__ runs interpreted even where the class is
    # compiled (gfwlab._build); this one is compiled with it.
    def __init__(self, *, probe: str, probe_id: int, reaction: str, response_len: int) -> None:
        object.__setattr__(self, "probe", probe)
        object.__setattr__(self, "probe_id", probe_id)
        object.__setattr__(self, "reaction", reaction)
        object.__setattr__(self, "response_len", response_len)


@dataclass(frozen=True, kw_only=True, init=False)
class AnomalyFields(EventFields):
    """Traffic the censor could not parse (it passes)."""

    offset: int | None = None
    """Where in the parsed bytes the problem is."""
    detail: str | None = None
    """What is wrong, in words."""
    qname: str | None = None
    """The DNS name of the query the anomaly is about."""
    mechanism: str | None = None
    """The mechanism on whose behalf the bytes were parsed."""

    # Written out: a dataclass's generated __init__ runs interpreted even where the class is
    # compiled (gfwlab._build); this one is compiled with it.
    def __init__(
        self,
        *,
        offset: int | None = None,
        detail: str | None = None,
        qname: str | None = None,
        mechanism: str | None = None,
    ) -> None:
        object.__setattr__(self, "offset", offset)
        object.__setattr__(self, "detail", detail)
        object.__setattr__(self, "qname", qname)
        object.__setattr__(self, "mechanism", mechanism)


@dataclass(frozen=True, kw_only=True)
class ReassemblyFields(EventFields):
    """The censor reassembled a client segment it would not have before the GFW's fix."""

    segment_bytes: int
    """The shortest segment size not reassembled before the fix (``tcb.small_segment_bytes``)."""
    reassembled_since: str
    """The first day small segments are reassembled (``tcb.small_segment_reassembly``)."""


SMALL_SEGMENT_CITATION: Final = (
    "spec §14c, §14d; Hoang et al., GFWeb, USENIX Security 2024 (the GFW was upgraded to "
    "reassemble fragmented packets, within Feb 2022 - Sep 2023); Bock et al., Geneva, CCS 2019 "
    "(small in-order segments evaded in 2019)"
)


@dataclass
class Stats:
    """Counters an adapter can show."""

    packets: int = 0
    bytes: int = 0
    dropped: int = 0
    injected: int = 0
    anomalies: int = 0
    fragments: int = 0
    bypassed_pkts: int = 0
    bypassed_bytes: int = 0
    flows: int = 0
    events: dict[str, int] = field(default_factory=dict)
    """Events per ``mechanism/action``."""


class Verdicts:
    """Carries out decisions for one censor: its counters, timers, residual table and probes."""

    def __init__(
        self,
        mechanisms: Mapping[str, Mechanism[Any]],
        residual: ResidualTable,
        *,
        hold_trigger: bool,
    ) -> None:
        self.mechanisms = mechanisms
        self.residual = residual
        self.hold_trigger = hold_trigger
        self.runs_probes = True
        """Whether the adapter sends the probes (the Probe actions ``Censor.on_timer`` releases
        when each is due) and reports what each met (``Censor.on_probe_result``). If not (an
        analysis of a capture: no prober, no server; ``build_censor(..., runs_probes=False)``),
        the probes are planned and reported as events the same, but none is held: not as a timer
        for an action nobody sends, nor for a result that cannot come (each such probe kept its
        flow alive, about a kilobyte, after the flow table had forgotten the flow)."""
        self.stats = Stats()
        self._keys: dict[str, dict[str, str]] = {}
        """The counters' keys (``mechanism/action``) by mechanism and action, made once each."""
        self.timers: list[tuple[float, int, Inject | Probe]] = []
        self.probes: dict[int, tuple[Mechanism[Any], Flow, PlannedProbe, dict[str, Any]]] = {}
        self.timer_seq = 0
        """The number of the last timer held: timers due at the same time are released in the
        order they were held. An adapter that splits a capture into parts sets it before each
        packet to the packet's number in the whole capture shifted left by 20 bits, so that the
        parts' timers order as one engine's would."""

    def later(self, action: Inject | Probe) -> None:
        """Hold ``action`` until its time comes (``Censor.on_timer``)."""
        self.timer_seq += 1
        heapq.heappush(self.timers, (action.at, self.timer_seq, action))

    def apply(
        self,
        mech: Mechanism[Any],
        decision: Decision,
        seen: Seen,
        out: list[Action],
        *,
        residual_until: float | None = None,
        extend: bool = True,
    ) -> None:
        """Carry out ``decision``; ``out[0]`` is the packet's verdict and may become a Drop."""
        flow, now = seen.flow, seen.now
        if decision.injections and self.hold_trigger and isinstance(out[0], Accept):
            first = min(f.delay for f in decision.injections)
            if first > 0:
                out[0] = Accept(hold_until=now + first)
        for forged in decision.injections:
            inject = Inject(
                packet=forged.packet,
                at=now + forged.delay,
                toward=forged.toward,
                mechanism=mech.name,
            )
            self.stats.injected += 1
            if forged.delay <= 0:
                out.append(inject)
            else:
                self.later(inject)
        if decision.drop and isinstance(out[0], Accept):
            self.stats.dropped += 1
            out[0] = Drop(mechanism=mech.name)
        if extend:
            for k, res in enumerate((decision.residual, *decision.also)):
                if res is None or res.seconds <= 0:
                    continue
                delay = res.delay or decision.block_after
                until = now + delay + res.seconds
                if k == 0:
                    residual_until = until
                entry = ResidualEntry(
                    mechanism=mech.name,
                    rule=decision.rule,
                    until=until,
                    policy=res.policy,
                    probability=res.probability,
                    start=now + delay,
                )
                self.residual.add(flow, res.key, entry)
        for planned in decision.probes:
            self._schedule_probe(mech, flow, planned, now, decision.rule, out)
        if decision.action == "pass":
            self.report(out, flow, now, mech.name, "pass", decision.rule, None, decision.fields)
            return
        if decision.action in ("rst", "drop", "null-route"):
            flow.block_flow(decision.block, mech.name, now + decision.block_after)
        action = decision.action
        self.report(
            out, flow, now, mech.name, action, decision.rule, residual_until, decision.fields
        )

    def residual_drop(self, flow: Flow, c2s: bool, now: float, out: list[Action]) -> bool:
        """Drop a packet on a residual drop key; True if it was (``out[0]`` is then a Drop)."""
        entry = self.residual.lookup(flow, "drop-c2s" if c2s else "drop-s2c", now)
        if entry is None:
            return False
        self.stats.dropped += 1
        out[0] = Drop(mechanism=entry.mechanism)
        first = flow.state is not FlowState.BLOCKED
        flow.block_flow("c2s" if c2s else "s2c", entry.mechanism)
        if first:
            action: ActionName = "drop" if c2s else "null-route"
            fields = ResidualFields()
            self.report(out, flow, now, entry.mechanism, action, entry.rule, entry.until, fields)
        return True

    def residual_rst(self, seen: Seen, out: list[Action]) -> None:
        """A new connection on a residual ``rst`` key: drawn, then hit or spared."""
        entry = self.residual.lookup(seen.flow, "rst", seen.now)
        mech = self.mechanisms.get(entry.mechanism) if entry is not None else None
        if entry is None or mech is None:
            return
        draw = mech.rng(seen).random()
        if draw >= entry.probability:
            extra = ResidualFields(draw=rounded(draw, 6), probability=entry.probability)
            self.report(
                out, seen.flow, seen.now, entry.mechanism, "pass", entry.rule, entry.until, extra
            )
            return
        decision = mech.residual_hit(seen, entry.rule)
        if decision is not None:
            # A residual hit does not extend the residual block.
            self.apply(mech, decision, seen, out, residual_until=entry.until, extend=False)

    def _schedule_probe(
        self,
        mech: Mechanism[Any],
        flow: Flow,
        planned: PlannedProbe,
        now: float,
        rule: str,
        out: list[Action],
    ) -> None:
        probe_id, at = flow.probe_id(), now + planned.delay
        if self.runs_probes:
            probe = Probe(
                probe_id=probe_id,
                kind=planned.kind,
                server=addr_text(flow.server),
                port=flow.sport,
                payload=planned.payload,
                at=at,
                ttl=planned.ttl,
                sport=planned.sport,
                tsval_hz=planned.tsval_hz,
                linger=planned.linger,
                mechanism=mech.name,
            )
            context: dict[str, Any] = {"rule": rule, "origin": planned.origin}
            self.probes[probe_id] = (mech, flow, planned, context)
            self.later(probe)
        extra = ProbePlannedFields(
            probe=planned.kind,
            probe_id=probe_id,
            at=rounded(at, 6),
            length=len(planned.payload),
            prober_sport=planned.sport,
            ttl=planned.ttl,
        )
        self.report(out, flow, now, mech.name, "probe", rule, None, extra)

    def probe_result(
        self, probe_id: int, reaction: str, now: float, response_len: int, out: list[Action]
    ) -> tuple[Mechanism[Any], Seen, ProbeResult] | None:
        """Report a probe's result; returns what the planning mechanism is to be told, or None
        for an unknown probe."""
        entry = self.probes.pop(probe_id, None)
        if entry is None:
            return None
        mech, flow, planned, context = entry
        result = ProbeResult(
            probe_id=probe_id,
            kind=planned.kind,
            server=flow.server,
            port=flow.sport,
            reaction=reaction,  # type: ignore[arg-type]
            response_len=response_len,
            context=context,
        )
        extra = ProbeResultFields(
            probe=planned.kind, probe_id=probe_id, reaction=reaction, response_len=response_len
        )
        self.report(out, flow, now, mech.name, "probe", context["rule"], None, extra)
        return mech, Seen(pkt=NO_PACKET, flow=flow, now=now, c2s=True), result

    def report(
        self,
        out: list[Action],
        flow: Flow,
        now: float,
        mechanism: str,
        action: ActionName,
        rule: str,
        residual_until: float | None,
        fields: EventFields | None,
    ) -> None:
        """Append the event of one decision or observation to ``out``."""
        mech = self.mechanisms.get(mechanism)
        event = Event(
            ts=now,
            flow=flow.id(),
            direction=flow.direction,
            mechanism=mechanism,
            action=action,
            rule=rule,
            residual_until=residual_until,
            citation=mech.citation if mech is not None else "",
            extra=fields.as_dict() if fields is not None else {},
        )
        self._count(mechanism, action)
        out.append(Report(event=event))

    def malformed(
        self,
        out: list[Action],
        flow: Flow,
        now: float,
        exc: MalformedPacket,
        mechanism: str | None = None,
    ) -> None:
        """Report traffic the censor could not parse as an anomaly event (it passes)."""
        fields = AnomalyFields(offset=exc.offset, detail=exc.detail, mechanism=mechanism)
        self.report(out, flow, now, "engine", "anomaly", exc.kind, None, fields)

    def small_segment(self, out: list[Action], flow: Flow, now: float, tcb: TcbParams) -> None:
        """Report, once per flow, that a small segment was reassembled on a date after the fix."""
        self._count("engine", "pass")
        since = tcb.small_segment_reassembly.start
        fields = ReassemblyFields(
            segment_bytes=tcb.small_segment_bytes,
            reassembled_since=since.isoformat() if since else "always",
        )
        event = Event(
            ts=now,
            flow=flow.id(),
            direction=flow.direction,
            mechanism="engine",
            action="pass",
            rule="tcb.small-segment-reassembled",
            citation=SMALL_SEGMENT_CITATION,
            extra=fields.as_dict(),
        )
        out.append(Report(event=event))

    def anomaly_ip(self, packet: bytes, exc: MalformedPacket, now: float) -> Report:
        """The event of a packet that is not even IP: it has no flow, only addresses."""
        self._count("engine", "anomaly")
        src = dst = "?"
        if len(packet) >= 20 and packet[0] >> 4 == 4:
            src, dst = addr_text(packet[12:16]), addr_text(packet[16:20])
        elif len(packet) >= 40 and packet[0] >> 4 == 6:
            src, dst = addr_text(packet[8:24]), addr_text(packet[24:40])
        return Report(
            event=Event(
                ts=now,
                flow=FlowId(proto="ip", src=src, sport=0, dst=dst, dport=0),
                direction="inside-out",
                mechanism="engine",
                action="anomaly",
                rule=exc.kind,
                extra=AnomalyFields(offset=exc.offset, detail=exc.detail).as_dict(),
            )
        )

    def _count(self, mechanism: str, action: str) -> None:
        keys = self._keys.get(mechanism)
        if keys is None:
            keys = self._keys[mechanism] = {}
        key = keys.get(action)
        if key is None:
            key = keys[action] = f"{mechanism}/{action}"
        self.stats.events[key] = self.stats.events.get(key, 0) + 1
        if action == "anomaly":
            self.stats.anomalies += 1
