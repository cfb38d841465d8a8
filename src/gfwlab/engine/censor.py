"""The censor: a sans-I/O engine that turns packets into verdicts.

``Censor(profile, seed).feed(packet, now)`` returns the Actions for one raw IP packet;
``next_deadline()`` and ``on_timer(now)`` release delayed injections and expire state. The engine
never reads a clock, never draws from an unseeded RNG and never touches a socket: the same
packets, times, profile and seed give the same Actions, offline or live.

Per packet: parse → flow lookup (create) → the fast path for BLOCKED/BYPASSED flows → residual
blocks → new-flow hooks → the censor's TCP view / UDP → dissectors → mechanism hooks → Decision →
Actions. Malformed input becomes an ``anomaly`` event and the packet is accepted: nothing raised
by a dissector escapes ``feed``.
"""

from __future__ import annotations

import heapq
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from gfwlab.engine.actions import (
    Accept,
    Action,
    Bypass,
    Drop,
    Event,
    FlowId,
    Inject,
    Probe,
    Report,
)
from gfwlab.engine.flows import Flow, FlowState, FlowTable, flow_key
from gfwlab.engine.residual import ResidualEntry, ResidualTable
from gfwlab.engine.tcb import Tcb, TcbInput, TcbState, classify, transition_table
from gfwlab.errors import MalformedPacket
from gfwlab.mechanisms.base import (
    Decision,
    Mechanism,
    PlannedProbe,
    ProbeResult,
    Seen,
    hook_names,
    registry,
)
from gfwlab.packet.ip import (
    ACK,
    FIN,
    PROTO_TCP,
    PROTO_UDP,
    RST,
    SYN,
    Packet,
    addr_text,
    checksum,
    parse,
)
from gfwlab.profiles.loader import Profile
from gfwlab.proto.dns import parse_query
from gfwlab.proto.http import HttpRequest, parse_request
from gfwlab.proto.tls import ClientHello, parse_client_hello

_ACCEPT = Accept()
_NO_PACKET = parse(bytes.fromhex("450000140000000040fd00000000000000000000"))
"""Stands in for a trigger packet where there is none (a probe result)."""
_HTTP_START = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZ")


@dataclass(slots=True)
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


class Censor:
    """The emulated GFW for one profile and seed."""

    def __init__(self, profile: Profile, seed: int = 0) -> None:
        self.profile = profile
        self.seed = seed
        eng = profile.engine
        self.flows = FlowTable(eng.tcp_timeout_s, eng.udp_timeout_s)
        self.residual = ResidualTable()
        self.stats = Stats()
        self._tcb_table = transition_table(profile.tcb)
        self._timers: list[tuple[float, int, Inject | Probe]] = []
        self._probes: dict[int, tuple[Mechanism, Flow, PlannedProbe, dict[str, Any]]] = {}
        self._probe_seq = 0
        self._timer_seq = 0
        self._next_sweep: float | None = None
        self._rng = random.Random(f"{seed}:engine")
        known = registry()
        self.mechanisms: dict[str, Mechanism] = {}
        hooks: dict[str, list[Mechanism]] = {}
        for name, params in profile.active().items():
            cls = known[name]
            # Each mechanism draws from its own seeded stream, so turning one on or off does not
            # change the draws of another.
            mech = cls(params, random.Random(f"{seed}:{name}"))
            mech.date = profile.date
            self.mechanisms[name] = mech
            for hook in hook_names(cls):
                hooks.setdefault(hook, []).append(mech)
        self._on_new_flow = hooks.get("on_new_flow", [])
        self._on_dns = hooks.get("on_dns_query", [])
        self._on_http = hooks.get("on_http_request", [])
        self._on_hello = hooks.get("on_client_hello", [])
        self._dns_ports = {m.params.port for m in self._on_dns}
        self._max_name = min((m.params.max_name for m in self._on_dns), default=125)
        self._on_first_data = hooks.get("on_first_data", [])
        self._on_first_dgram = hooks.get("on_first_datagram", [])
        self._inspect_tcp = bool(self._on_http or self._on_hello or self._on_first_data)

    # ------------------------------------------------------------------ timers

    def next_deadline(self) -> float | None:
        """The earliest time ``on_timer`` has work to do, or None."""
        deadline = self._timers[0][0] if self._timers else None
        if self._next_sweep is not None and (deadline is None or self._next_sweep < deadline):
            deadline = self._next_sweep
        return deadline

    def on_timer(self, now: float) -> list[Action]:
        """Release injections due by ``now``; expire idle flows and ended residual blocks."""
        out: list[Action] = []
        while self._timers and self._timers[0][0] <= now:
            out.append(heapq.heappop(self._timers)[2])
        if self._next_sweep is not None and now >= self._next_sweep:
            self._sweep(now)
        return out

    def flush(self) -> list[Action]:
        """Release every pending injection (end of a capture)."""
        out: list[Action] = [t[2] for t in sorted(self._timers)]
        self._timers.clear()
        return out

    def _sweep(self, now: float) -> None:
        self.flows.expire(now)
        self.residual.expire(now)
        self._next_sweep = (
            now + self.profile.engine.sweep_s
            if (self.flows.flows or self.residual.entries)
            else None
        )

    # ------------------------------------------------------------------ packets

    def feed(self, packet: bytes, now: float) -> list[Action]:
        """The Actions for one raw IP packet seen at ``now``: one verdict, then the rest."""
        st = self.stats
        st.packets += 1
        st.bytes += len(packet)
        if self._next_sweep is None:
            self._next_sweep = now + self.profile.engine.sweep_s
        try:
            pkt = parse(packet)
        except MalformedPacket as exc:
            return [_ACCEPT, self._anomaly_ip(packet, exc, now)]
        if pkt.fragment:
            st.fragments += 1
            return [_ACCEPT]
        if pkt.proto not in (PROTO_TCP, PROTO_UDP):
            return [_ACCEPT]
        key = flow_key(pkt.proto, pkt.src, pkt.sport, pkt.dst, pkt.dport)
        flow = self.flows.flows.get(key)
        if flow is not None and now - flow.last_seen >= self.flows.timeout(flow):
            # Idle past its timeout: forgotten now, not at the next sweep, so that a datagram
            # exactly udp_timeout_s after the last one starts a new flow (QUIC, spec §5).
            del self.flows.flows[key]
            self.flows.expired += 1
            flow = None
        new = flow is None
        if flow is None:
            flow = self._new_flow(pkt, now)
            self.flows.flows[key] = flow
        flow.last_seen = now
        flow.packets += 1
        c2s = pkt.src == flow.client and pkt.sport == flow.cport
        state = flow.state
        if state is FlowState.BYPASSED and not self.residual.drops:
            st.bypassed_pkts += 1
            st.bypassed_bytes += len(packet)
            return [_ACCEPT]
        if state is FlowState.BLOCKED:
            return self._blocked_verdict(flow, c2s)
        out: list[Action] = [_ACCEPT]
        if self.residual.drops and self._residual_drop(flow, pkt, c2s, now, out):
            return out
        if state is FlowState.BYPASSED:
            st.bypassed_pkts += 1
            st.bypassed_bytes += len(packet)
            return out
        tcp = pkt.proto == PROTO_TCP
        opening = new or (tcp and c2s and pkt.flags & (SYN | ACK) == SYN)
        if opening:
            seen = Seen(pkt=pkt, flow=flow, now=now, c2s=c2s)
            for mech in self._on_new_flow:
                if mech.admits(flow):
                    decision = mech.on_new_flow(seen)
                    if decision is not None:
                        self._apply(mech, decision, seen, out)
            if tcp and c2s and flow.state is FlowState.CLEAN and self.residual.entries:
                self._residual_rst(flow, seen, out)
            if flow.state is FlowState.BLOCKED:
                return out
        if tcp:
            self._tcp(flow, pkt, c2s, now, out)
        else:
            self._udp(flow, pkt, c2s, now, out)
        return out

    def _new_flow(self, pkt: Packet, now: float) -> Flow:
        """Decide who is the client and which way the flow crosses the border."""
        src_is_client = True
        if pkt.proto == PROTO_TCP:
            if pkt.flags & (SYN | ACK) == SYN | ACK:
                src_is_client = False
            elif not pkt.flags & SYN:
                src_is_client = (
                    pkt.sport >= pkt.dport
                )  # mid-stream: the ephemeral port is the client's
        elif pkt.sport in self._dns_ports and pkt.dport not in self._dns_ports:
            src_is_client = False  # a DNS response seen before its query
        if src_is_client:
            client, cport, server, sport = pkt.src, pkt.sport, pkt.dst, pkt.dport
        else:
            client, cport, server, sport = pkt.dst, pkt.dport, pkt.src, pkt.sport
        inside = self.profile.engine.inside
        if inside:
            ci, si = inside.contains(client), inside.contains(server)
            crossing, direction = ci != si, "inside-out" if ci or not si else "outside-in"
        else:
            crossing, direction = True, "inside-out"
        self.stats.flows += 1
        flow = Flow(
            proto=pkt.proto,
            client=client,
            cport=cport,
            server=server,
            sport=sport,
            direction="inside-out" if direction == "inside-out" else "outside-in",
            crossing=crossing,
            first_seen=now,
            last_seen=now,
        )
        if not crossing:
            flow.finish()  # domestic traffic is not inspected (spec §1)
        return flow

    def _blocked_verdict(self, flow: Flow, c2s: bool) -> list[Action]:
        block = flow.block
        if block == "both" or (block == "c2s" and c2s) or (block == "s2c" and not c2s):
            self.stats.dropped += 1
            return [Drop(mechanism=flow.blocked_by)]
        return [_ACCEPT]

    # ------------------------------------------------------------------ residual blocks

    def _residual_drop(
        self, flow: Flow, pkt: Packet, c2s: bool, now: float, out: list[Action]
    ) -> bool:
        entry = self.residual.lookup(flow, "drop-c2s" if c2s else "drop-s2c", now)
        if entry is None:
            return False
        self.stats.dropped += 1
        out[0] = Drop(mechanism=entry.mechanism)
        first = flow.state is not FlowState.BLOCKED
        flow.block_flow("c2s" if c2s else "s2c", entry.mechanism)
        if first:
            action = "drop" if c2s else "null-route"
            self._report(
                out, flow, now, entry.mechanism, action, entry.rule, entry.until, {"residual": True}
            )
        return True

    def _residual_rst(self, flow: Flow, seen: Seen, out: list[Action]) -> None:
        entry = self.residual.lookup(flow, "rst", seen.now)
        if entry is None:
            return
        mech = self.mechanisms.get(entry.mechanism)
        if mech is None:
            return
        draw = mech.rng.random()
        if draw >= entry.probability:
            self._report(
                out,
                flow,
                seen.now,
                entry.mechanism,
                "pass",
                entry.rule,
                entry.until,
                {"residual": True, "draw": round(draw, 6), "probability": entry.probability},
            )
            return
        decision = mech.residual_hit(seen, entry.rule)
        if decision is not None:
            # A residual hit does not extend the residual block.
            self._apply(mech, decision, seen, out, residual_until=entry.until, extend=False)

    # ------------------------------------------------------------------ transports

    def _tcp(self, flow: Flow, pkt: Packet, c2s: bool, now: float, out: list[Action]) -> None:
        if not self._inspect_tcp:
            self._finish(flow, out)
            return
        params = self.profile.tcb
        flags = pkt.flags
        if params.check_checksum and not _tcp_checksum_ok(pkt):
            return
        tcb = flow.tcb
        if tcb is None:
            if c2s and flags & (SYN | ACK | RST) == SYN:
                tcb = flow.tcb = Tcb(params, self._tcb_table, pkt.seq)
            elif params.require_syn:
                self._finish(flow, out)  # no client SYN: the censor keeps no TCB (S&P'25)
                return
            elif c2s and pkt.payload:
                tcb = flow.tcb = Tcb(params, self._tcb_table, pkt.seq - 1)
            else:
                return
        inp = classify(flags, c2s, bool(pkt.payload))
        if inp is TcbInput.RECV_DATA and not flow.first_data_seen:
            flow.first_data_seen = True
            if self._on_first_data:
                self._run_hooks(
                    self._on_first_data, "on_first_data", flow, pkt, c2s, now, out, pkt.payload
                )
                if flow.state is not FlowState.CLEAN:
                    return
        grew = tcb.handle(inp, pkt.seq, pkt.payload)
        if inp is TcbInput.RECV_DATA and flags & FIN:
            tcb.handle(TcbInput.RECV_FIN, pkt.seq, b"")
        if tcb.state is TcbState.CLOSED:
            return  # torn down: inspection resumes only if a new client SYN arrives
        if grew:
            self._dissect_tcp(flow, tcb, pkt, c2s, now, out)

    def _dissect_tcp(
        self, flow: Flow, tcb: Tcb, pkt: Packet, c2s: bool, now: float, out: list[Action]
    ) -> None:
        data = bytes(tcb.stream)
        first = data[0]
        parser: Callable[[bytes], ClientHello | HttpRequest | None]
        if first == 0x16 and self._on_hello:
            parser, hooks, hook = parse_client_hello, self._on_hello, "on_client_hello"
        elif first in _HTTP_START and self._on_http:
            parser, hooks, hook = parse_request, self._on_http, "on_http_request"
        else:
            hooks = []
        if hooks:
            try:
                parsed = parser(data)
            except MalformedPacket as exc:
                parsed = None
                if exc.kind != "http.not_http":  # not HTTP at all is no anomaly
                    self._malformed(out, flow, now, exc)
            else:
                if parsed is None:  # need more data
                    if tcb.full:
                        self._finish(flow, out)
                    return
                for anomaly in parsed.anomalies:
                    self._report(out, flow, now, "engine", "anomaly", anomaly, None, {})
                self._run_hooks(hooks, hook, flow, pkt, c2s, now, out, parsed)
        if flow.state is FlowState.CLEAN:
            self._finish(flow, out)

    def _udp(self, flow: Flow, pkt: Packet, c2s: bool, now: float, out: list[Action]) -> None:
        if self._on_first_dgram and c2s and flow.packets == 1:
            self._run_hooks(self._on_first_dgram, "on_first_datagram", flow, pkt, c2s, now, out)
            if flow.state is not FlowState.CLEAN:
                return
        if not (self._on_dns and pkt.dport in self._dns_ports):
            if not (self._on_dns and pkt.sport in self._dns_ports):
                self._finish(flow, out)
            return
        try:
            query = parse_query(pkt.payload, max_name=self._max_name)
        except MalformedPacket as exc:
            self._malformed(out, flow, now, exc)
            return
        if query is None:
            return
        for anomaly in query.anomalies:
            self._report(out, flow, now, "engine", "anomaly", anomaly, None, {"qname": query.qname})
        seen = Seen(pkt=pkt, flow=flow, now=now, c2s=c2s)
        for mech in self._on_dns:
            if mech.admits(flow) and pkt.dport == mech.params.port:
                decision = mech.on_dns_query(seen, query)
                if decision is not None:
                    self._apply(mech, decision, seen, out)

    def _run_hooks(
        self,
        mechs: list[Mechanism],
        hook: str,
        flow: Flow,
        pkt: Packet,
        c2s: bool,
        now: float,
        out: list[Action],
        *args: object,
    ) -> None:
        """Call ``hook`` on each admitting mechanism; a MalformedPacket becomes an anomaly."""
        seen = Seen(pkt=pkt, flow=flow, now=now, c2s=c2s)
        for mech in mechs:
            if not mech.admits(flow):
                continue
            try:
                decision = getattr(mech, hook)(seen, *args)
            except MalformedPacket as exc:
                self._malformed(out, flow, now, exc, mechanism=mech.name)
                continue
            if decision is not None:
                self._apply(mech, decision, seen, out)

    # ------------------------------------------------------------------ decisions

    def _apply(
        self,
        mech: Mechanism,
        decision: Decision,
        seen: Seen,
        out: list[Action],
        *,
        residual_until: float | None = None,
        extend: bool = True,
    ) -> None:
        flow, now = seen.flow, seen.now
        if decision.injections and self.profile.engine.hold_trigger and isinstance(out[0], Accept):
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
                self._timer_seq += 1
                heapq.heappush(self._timers, (inject.at, self._timer_seq, inject))
        if decision.drop and isinstance(out[0], Accept):
            self.stats.dropped += 1
            out[0] = Drop(mechanism=mech.name)
        if extend:
            for k, res in enumerate((decision.residual, *decision.also)):
                if res is None or res.seconds <= 0:
                    continue
                until = now + res.delay + res.seconds
                if k == 0:
                    residual_until = until
                entry = ResidualEntry(
                    mechanism=mech.name,
                    rule=decision.rule,
                    until=until,
                    policy=res.policy,
                    probability=res.probability,
                    start=now + res.delay,
                )
                self.residual.add(flow, res.key, entry)
        for planned in decision.probes:
            self._schedule_probe(mech, flow, planned, now, decision.rule, out)
        if decision.action == "pass":
            self._report(out, flow, now, mech.name, "pass", decision.rule, None, decision.extra)
            return
        if decision.action in ("rst", "drop", "null-route"):
            flow.block_flow(decision.block, mech.name)
        self._report(
            out,
            flow,
            now,
            mech.name,
            decision.action,
            decision.rule,
            residual_until,
            decision.extra,
        )

    def _schedule_probe(
        self,
        mech: Mechanism,
        flow: Flow,
        planned: PlannedProbe,
        now: float,
        rule: str,
        out: list[Action],
    ) -> None:
        self._probe_seq += 1
        probe = Probe(
            probe_id=self._probe_seq,
            kind=planned.kind,
            server=addr_text(flow.server),
            port=flow.sport,
            payload=planned.payload,
            at=now + planned.delay,
            ttl=planned.ttl,
            sport=planned.sport,
            tsval_hz=planned.tsval_hz,
            linger=planned.linger,
            mechanism=mech.name,
        )
        context: dict[str, Any] = {"rule": rule, "origin": planned.origin}
        self._probes[probe.probe_id] = (mech, flow, planned, context)
        self._timer_seq += 1
        heapq.heappush(self._timers, (probe.at, self._timer_seq, probe))
        self._report(
            out,
            flow,
            now,
            mech.name,
            "probe",
            rule,
            None,
            {
                "probe": planned.kind,
                "probe_id": probe.probe_id,
                "at": round(probe.at, 6),
                "length": len(planned.payload),
                "prober_sport": planned.sport,
                "ttl": planned.ttl,
            },
        )

    def on_probe_result(
        self,
        probe_id: int,
        reaction: str,
        now: float,
        response_len: int = 0,
    ) -> list[Action]:
        """What the server did with a probe; returns the Actions that follow (more probes, a
        block). Unknown ids are ignored (a result that arrives after the engine forgot them)."""
        entry = self._probes.pop(probe_id, None)
        if entry is None:
            return []
        mech, flow, planned, context = entry
        out: list[Action] = [_ACCEPT]
        result = ProbeResult(
            probe_id=probe_id,
            kind=planned.kind,
            server=flow.server,
            port=flow.sport,
            reaction=reaction,  # type: ignore[arg-type]
            response_len=response_len,
            context=context,
        )
        self._report(
            out,
            flow,
            now,
            mech.name,
            "probe",
            context["rule"],
            None,
            {
                "probe": planned.kind,
                "probe_id": probe_id,
                "reaction": reaction,
                "response_len": response_len,
            },
        )
        decision = mech.on_probe_result(result, now)
        if decision is not None:
            seen = Seen(pkt=_NO_PACKET, flow=flow, now=now, c2s=True)
            self._apply(mech, decision, seen, out)
        return out[1:]

    def _finish(self, flow: Flow, out: list[Action]) -> None:
        if flow.state is FlowState.CLEAN:
            flow.finish()
            out.append(Bypass(flow=flow.id()))

    def _report(
        self,
        out: list[Action],
        flow: Flow,
        now: float,
        mechanism: str,
        action: Any,
        rule: str,
        residual_until: float | None,
        extra: dict[str, Any],
    ) -> None:
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
            extra=extra,
        )
        key = f"{mechanism}/{action}"
        self.stats.events[key] = self.stats.events.get(key, 0) + 1
        if action == "anomaly":
            self.stats.anomalies += 1
        out.append(Report(event=event))

    def _malformed(
        self, out: list[Action], flow: Flow, now: float, exc: MalformedPacket, **extra: Any
    ) -> None:
        """Report traffic the censor could not parse as an anomaly event (it passes)."""
        detail = {"offset": exc.offset, "detail": exc.detail, **extra}
        self._report(out, flow, now, "engine", "anomaly", exc.kind, None, detail)

    def _anomaly_ip(self, packet: bytes, exc: MalformedPacket, now: float) -> Report:
        self.stats.anomalies += 1
        key = "engine/anomaly"
        self.stats.events[key] = self.stats.events.get(key, 0) + 1
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
                extra={"offset": exc.offset, "detail": exc.detail},
            )
        )


def _tcp_checksum_ok(pkt: Packet) -> bool:
    seg = pkt.raw[pkt.l4 :]
    if pkt.version == 4:
        pseudo = pkt.src + pkt.dst + bytes((0, PROTO_TCP)) + len(seg).to_bytes(2, "big")
    else:
        pseudo = pkt.src + pkt.dst + len(seg).to_bytes(4, "big") + bytes((0, 0, 0, PROTO_TCP))
    return checksum(pseudo + seg) == 0
