"""The censor: a sans-I/O engine that turns packets into verdicts.

``Censor(profile, seed, mechanisms=registry).feed(packet, now)`` returns the Actions for one raw
IP packet; ``next_deadline()`` and ``on_timer(now)`` release delayed injections and expire state.
The engine never reads a clock, never draws from an unseeded RNG and never touches a socket: the
same packets, times, profile and seed give the same Actions, offline or live. It imports no
mechanism: the registry is handed to it, and each mechanism says what it needs.

Per packet: parse → flow lookup (create) → the fast path for BLOCKED/BYPASSED flows → residual
blocks → new-flow hooks → the TCP view / UDP → dissectors (:mod:`.dissect`) → mechanism hooks →
Decision → Actions (:mod:`.verdicts`). Every hook is called through one path (``_call_with``),
where malformed input becomes an ``anomaly`` event: nothing raised by parsing escapes ``feed``.
"""

from __future__ import annotations

import heapq
from collections.abc import Mapping
from typing import Any, Final

from gfwlab.engine.actions import Accept, Action, Bypass, Drop
from gfwlab.engine.defrag import Defragmenter
from gfwlab.engine.dissect import Dissector, Plan
from gfwlab.engine.flows import Flow, FlowState, FlowTable, flow_key, open_flow
from gfwlab.engine.mechanism import Calls, Mechanism, Seen, bound_hooks
from gfwlab.engine.residual import ResidualTable
from gfwlab.engine.tcb import (
    Tcb,
    TcbInput,
    acts,
    classify,
    open_input,
    tcp_checksum_ok,
    transition_table,
)
from gfwlab.engine.verdicts import Stats, Verdicts
from gfwlab.errors import MalformedPacket
from gfwlab.packet.ip import ACK, FIN, PROTO_TCP, PROTO_UDP, SYN, Packet, parse
from gfwlab.rules.profile import Profile

__all__ = ["Censor", "Stats"]

_ACCEPT: Final = Accept()


class Censor:
    """The emulated GFW for one profile, seed and set of mechanism classes."""

    def __init__(
        self, profile: Profile, seed: int = 0, *, mechanisms: Mapping[str, type[Mechanism[Any]]]
    ) -> None:
        self.profile, self.seed = profile, seed
        eng = profile.engine
        self._tcb, self._turnaround, self._inside = profile.tcb, profile.tcb.turnaround, eng.inside
        self.flows = FlowTable(eng.tcp_timeout_s, eng.udp_timeout_s, eng.max_flows)
        self.residual = ResidualTable()
        self.mechanisms: dict[str, Mechanism[Any]] = {}
        for name, params in profile.active().items():
            cls = mechanisms[name]
            mech = cls(params, seed=seed, date=profile.date, epoch_offset=profile.epoch_offset_s)
            self.mechanisms[name] = mech
        self._calls = bound_hooks(self.mechanisms.values())
        self.hooks = {hook: [m for m, _ in calls] for hook, calls in self._calls.items()}
        self.verdicts = Verdicts(self.mechanisms, self.residual, hold_trigger=eng.hold_trigger)
        self.stats = self.verdicts.stats
        self._tcb_table = transition_table(profile.tcb)
        self._min_segment = profile.tcb.min_segment(profile.date)
        self._tcb_key, self._reopen_bypassed = f"{seed}:engine.tcb", profile.tcb.reopen_bypassed
        self._next_sweep: float | None = None
        self.defrag = Defragmenter(eng.ip_overlap, eng.ip_fragment_timeout_s, eng.ip_reassembly)
        self.plan = plan = Plan.of(self.hooks)
        self._stream_rows, self._first_dgram_rows, self._port_rows = plan.rows
        self._udp_ports, self._port_set, self._options = plan.udp_ports, plan.ports, plan.options
        self._syn_ack = bool(self.hooks.get("on_syn_ack"))
        watchers = self.hooks.get("on_tcp_packet", ())
        self._watch = max((m.needs().watch_packets for m in watchers), default=0)
        first = self.hooks.get("on_first_data")
        self._inspect_tcp = bool(self._stream_rows or first or self._watch) or self._syn_ack
        handshake_ack = any(m.needs().handshake_ack for m in self.mechanisms.values())
        self.needs_handshake_ack = bool(self._watch) or handshake_ack
        """The engine needs the client's data-less handshake ACK (``Needs.handshake_ack``)."""
        self.needs_syn = any(m.needs().syn for m in self.hooks.get("on_new_flow", ()))  # Needs.syn
        self.rebypass = False
        """Answer each passing packet of a bypassed flow with Bypass again: the kernel shows the
        engine such packets while a residual block may cover them (``live/kernel.py``)."""
        self.last: tuple[Flow, bool] | None = None
        """The flow of the packet fed last and whether it went client to server (None: none)."""

    # ------------------------------------------------------------------ timers

    def next_deadline(self) -> float | None:
        """The earliest time ``on_timer`` has work to do, or None."""
        timers = self.verdicts.timers
        deadline = timers[0][0] if timers else None
        if self._next_sweep is not None and (deadline is None or self._next_sweep < deadline):
            deadline = self._next_sweep
        return deadline

    def on_timer(self, now: float) -> list[Action]:
        """Release injections due by ``now``; expire idle flows and ended residual blocks."""
        timers = self.verdicts.timers
        out: list[Action] = []
        while timers and timers[0][0] <= now:
            out.append(heapq.heappop(timers)[2])
        if self._next_sweep is not None and now >= self._next_sweep:
            self.flows.expire(now)
            self.residual.expire(now)
            self.defrag.expire(now)
            live = self.flows.flows or self.residual.entries
            self._next_sweep = now + self.profile.engine.sweep_s if live else None
        return out

    def flush(self) -> list[Action]:
        """Release every pending injection (end of a capture)."""
        out: list[Action] = [t[2] for t in sorted(self.verdicts.timers)]
        self.verdicts.timers.clear()
        return out

    def on_probe_result(
        self, probe_id: int, reaction: str, now: float, response_len: int = 0
    ) -> list[Action]:
        """What the server did with a probe; returns the Actions that follow (more probes, a
        block). Unknown ids are ignored (a result that arrives after the engine forgot them)."""
        out: list[Action] = [_ACCEPT]
        told = self.verdicts.probe_result(probe_id, reaction, now, response_len, out)
        if told is not None:
            mech, seen, result = told
            decision = mech.on_probe_result(seen, result)
            if decision is not None:
                self.verdicts.apply(mech, decision, seen, out)
        return out[1:]

    # ------------------------------------------------------------------ packets

    def feed(self, packet: bytes, now: float) -> list[Action]:
        """The Actions for one raw IP packet seen at ``now``: one verdict, then the rest."""
        st = self.stats
        st.packets += 1
        st.bytes += len(packet)
        self.last = None
        self.flows.clock(now)
        if self._next_sweep is None:
            self._next_sweep = now + self.profile.engine.sweep_s
        try:
            pkt = parse(packet)
        except MalformedPacket as exc:
            return [_ACCEPT, self.verdicts.anomaly_ip(packet, exc, now)]
        if pkt.fragment:
            st.fragments += 1
            if (whole := self.defrag.add(pkt, now)) is None:
                return self._fragment_verdict(pkt, now)
            packet, pkt = whole, parse(whole)  # rebuilt with valid headers: parses
        if pkt.proto not in (PROTO_TCP, PROTO_UDP):
            return [_ACCEPT]
        flow, new = self._flow(pkt, now)
        c2s = pkt.src == flow.client and pkt.sport == flow.cport
        self.last = (flow, c2s)
        state = flow.state
        if state is FlowState.BYPASSED and not self.residual.drops:
            st.bypassed_pkts += 1
            st.bypassed_bytes += len(packet)
            return [_ACCEPT, Bypass(flow=flow)] if self.rebypass else [_ACCEPT]
        syn_ack = self._syn_ack and not c2s and pkt.flags & (SYN | ACK) == SYN | ACK
        if state is FlowState.BLOCKED:
            out = self._blocked_verdict(flow, c2s, now)
            if syn_ack and pkt.proto == PROTO_TCP:
                self._run_hooks("on_syn_ack", Seen(pkt=pkt, flow=flow, now=now, c2s=c2s), out)
            return out
        out = [_ACCEPT]
        if self.residual.drops and self.verdicts.residual_drop(flow, c2s, now, out):
            return out
        if state is FlowState.BYPASSED:
            st.bypassed_pkts += 1
            st.bypassed_bytes += len(packet)
            if self.rebypass:
                out.append(Bypass(flow=flow))
            return out
        tcp = pkt.proto == PROTO_TCP
        seen = Seen(pkt=pkt, flow=flow, now=now, c2s=c2s)
        if new or (tcp and c2s and pkt.flags & (SYN | ACK) == SYN):
            self._run_hooks("on_new_flow", seen, out)
            if tcp and c2s and flow.state is FlowState.CLEAN and self.residual.entries:
                self.verdicts.residual_rst(seen, out)
            if flow.state is FlowState.BLOCKED:
                return out
        if tcp and syn_ack:
            self._run_hooks("on_syn_ack", seen, out)
        if tcp:
            self._tcp(seen, out)
            if self._watch and flow.state is FlowState.CLEAN:
                self._run_hooks("on_tcp_packet", seen, out)
                if flow.packets >= self._watch and flow.tcb is None:
                    self._finish(flow, out)
        else:
            self._udp(seen, out)
        return out

    def _flow(self, pkt: Packet, now: float) -> tuple[Flow, bool]:
        """The packet's flow, made on its first packet, after idle expiry or on a new connection."""
        key = flow_key(pkt.proto, pkt.src, pkt.sport, pkt.dst, pkt.dport)
        flow = self.flows.flows.get(key)
        if flow is not None and flow.opened_anew_by(pkt, bypassed=self._reopen_bypassed):
            self.flows.remove(key)
            flow = None
        if flow is not None and now - flow.last_seen >= self.flows.timeout(flow):
            # Idle past its timeout: forgotten now, not at the next sweep, so that a datagram
            # exactly udp_timeout_s after the last one starts a new flow (QUIC, spec §5).
            self.flows.remove(key, idle=True)
            flow = None
        new = flow is None
        if flow is None:
            flow = self._new_flow(pkt, now)
            self.flows.add(key, flow)
        flow.last_seen = now
        flow.packets += 1
        return flow, new

    def _new_flow(self, pkt: Packet, now: float) -> Flow:
        self.stats.flows += 1
        t, inside = self._turnaround, self._inside  # the profile's, kept natively (per flow)
        return open_flow(pkt, now, turnaround=t, udp_ports=self._port_set, inside=inside)

    def _fragment_verdict(self, pkt: Packet, now: float) -> list[Action]:
        """A fragment that completes nothing gets its flow's verdict if that flow is blocked."""
        key, sport = self.defrag.flow_of(pkt)
        if (flow := self.flows.flows.get(key) if key else None) and flow.state is FlowState.BLOCKED:
            return self._blocked_verdict(flow, pkt.src == flow.client and sport == flow.cport, now)
        return [_ACCEPT]

    def _blocked_verdict(self, flow: Flow, c2s: bool, now: float) -> list[Action]:
        block = flow.block if now >= flow.blocked_from else "none"  # not in effect yet
        if block == "both" or (block == "c2s" and c2s) or (block == "s2c" and not c2s):
            self.stats.dropped += 1
            return [Drop(mechanism=flow.blocked_by)]
        return [_ACCEPT]

    # ------------------------------------------------------------------ transports

    def _tcp(self, seen: Seen, out: list[Action]) -> None:
        flow, pkt, c2s = seen.flow, seen.pkt, seen.c2s
        if not self._inspect_tcp:
            self._finish(flow, out)
            return
        params = self._tcb
        if params.check_checksum and not tcp_checksum_ok(pkt):
            return
        if (tcb := flow.tcb) is None:
            isn = open_input(params, pkt.flags, c2s, pkt.seq, bool(pkt.payload))
            if isn is None:
                if params.require_syn and not pkt.flags & SYN:
                    flow.synless = True
                    self._finish(flow, out)  # no client SYN: the censor keeps no TCB (S&P'25)
                return
            tcb = flow.tcb = Tcb(params, self._tcb_table, isn, min_segment=self._min_segment)
        inp = classify(pkt.flags, c2s, bool(pkt.payload))
        if inp is TcbInput.RECV_SERVER_SYN:  # a simultaneous open, where it acts (spec §9)
            return tcb.server_syn(pkt.seq, lambda: self._draw(flow), then=flow.swap_roles)
        fin = acts(params, TcbInput.RECV_FIN, self._draw(flow)) if pkt.flags & FIN else False
        rst_ignored = inp is TcbInput.RECV_RST and not acts(params, inp, self._draw(flow))
        if rst_ignored or (inp is TcbInput.RECV_FIN and not fin):
            inp = TcbInput.RECV_ACK  # a RST or FIN that does not act is just a segment
        if inp is TcbInput.RECV_DATA and not flow.first_data_seen:
            flow.first_data_seen = True
            self._run_hooks("on_first_data", seen, out, pkt.payload)
            if flow.state is not FlowState.CLEAN:
                return
        if tcb.feed(inp, pkt.seq, pkt.payload, pkt.flags, fin=fin):
            if tcb.small_reassembled and not flow.small_noted:
                flow.small_noted = True
                self.verdicts.small_segment(out, flow, seen.now, params)
            self._dissect_stream(seen, tcb, out)

    def _draw(self, flow: Flow) -> float:
        """The next uniform draw of the flow's keyed TCB stream (RST, FIN, server SYN acting)."""
        return flow.draws(self._tcb_key).random()

    def _dissect_stream(self, seen: Seen, tcb: Tcb, out: list[Action]) -> None:
        data = bytes(tcb.stream)
        row = next((d for d in self._stream_rows if d.offered(data)), None)
        if row is not None and self._dissect(row, seen, data, out) is None and not tcb.full:
            return  # need more data
        self._finish(seen.flow, out)  # (if it is still clean)

    def _udp(self, seen: Seen, out: list[Action]) -> None:
        flow, pkt = seen.flow, seen.pkt
        if seen.c2s and flow.packets == 1:
            self._run_hooks("on_first_datagram", seen, out)
            for row in self._first_dgram_rows:
                if flow.state is FlowState.CLEAN and row.offered(pkt.payload):
                    self._dissect(row, seen, pkt.payload, out)
            if flow.state is not FlowState.CLEAN:
                return
        if pkt.dport in self._port_set:
            for row in self._port_rows:
                self._dissect(row, seen, pkt.payload, out)
        elif pkt.sport not in self._port_set:
            self._finish(flow, out)

    def _dissect(self, row: Dissector, seen: Seen, data: bytes, out: list[Action]) -> bool | None:
        """Parse ``data`` with ``row`` and feed its hook; None means "need more data"."""
        calls = [c for c in self._calls[row.hook] if c[0].admits(seen.flow)]
        if row.carrier == "udp-port":
            calls = [c for c in calls if seen.pkt.dport in (self._udp_ports.get(c[0].name) or ())]
        if not calls:
            return False  # no mechanism looks at this flow: nothing to dissect
        try:
            parsed = row.parse(data, self._options)
        except MalformedPacket as exc:
            inspecting = [m for m, _ in calls if m.inspects(seen)]
            if inspecting and exc.kind not in row.silent:
                named = inspecting[0].name if row.names_mechanism else None
                self.verdicts.malformed(out, seen.flow, seen.now, exc, named)
            return False
        if parsed is None:
            return None
        if row.report_anomalies:
            fields = None if row.detail is None else row.detail(parsed)
            for anomaly in parsed.anomalies:
                self.verdicts.report(
                    out, seen.flow, seen.now, "engine", "anomaly", anomaly, None, fields
                )
        self._call_with(calls, seen, out, parsed)  # admitted above
        return True

    def _run_hooks(self, hook: str, seen: Seen, out: list[Action], arg: object = None) -> None:
        """Call ``hook`` of the mechanisms that admit the flow (see :meth:`_call_with`)."""
        calls = self._calls.get(hook)
        if calls:
            self._call_with([c for c in calls if c[0].admits(seen.flow)], seen, out, arg)

    def _call_with(self, calls: Calls, seen: Seen, out: list[Action], arg: object) -> None:
        """The one path every hook is called through (admitted mechanisms only, ``arg`` after
        ``seen`` unless None); a MalformedPacket raised in a mechanism becomes an anomaly event."""
        for mech, call in calls:
            try:
                decision = call(seen) if arg is None else call(seen, arg)
            except MalformedPacket as exc:
                self.verdicts.malformed(out, seen.flow, seen.now, exc, mech.name)
                continue
            if decision is not None:
                self.verdicts.apply(mech, decision, seen, out)

    def _finish(self, flow: Flow, out: list[Action]) -> None:
        if flow.state is FlowState.CLEAN and flow.packets < self._watch and flow.proto == PROTO_TCP:
            flow.tcb = None  # nothing left to reassemble; on_tcp_packet watchers still count
            return
        if flow.state is FlowState.CLEAN:
            flow.finish()
            out.append(Bypass(flow=flow))
