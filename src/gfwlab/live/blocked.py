"""Blocked flows held by the kernel: once the engine drops a packet of a flow, the kernel drops
the flow's later packets in that direction, and they no longer cost the censor anything.

A blocked flow's packets used to reach the queue one by one, each for the engine to answer with
its cached verdict: a client retransmitting into a FET drop, a QUIC client or a fixed-rate UDP
tunnel sending into a QUIC SNI drop. A fast sender could fill the queue, and with the queue's
fail-open flag the packets of every other flow would then pass uninspected. Now:

- The engine stays the source of truth. The censor hands a flow to the kernel only after the
  engine dropped one of its packets (``Drop``), in the direction of that packet: a block that
  starts later (QUIC's measured latency, spec §6) starts in the kernel when it starts in the
  engine, and a one-way block (FET's client-to-server drop, a null route's server-to-client
  drop) stays one-way.
- The sets (:func:`set_name`) hold (client, protocol and client port, server), as the SYN/ACK
  sets do: ipset has no type of five parts. Two flows that differ only in the server's port share
  an entry; a client reuses an ephemeral port toward one server on two ports only rarely.
- The chain (:data:`CHAIN`, crossed before the skip chain and the queue, :func:`chain_rules`)
  lets a packet with SYN set go on to the engine (a new connection on the 5-tuple,
  ``Flow.opened_anew_by``; a SYN/ACK that a hook reads even on a blocked flow), refreshes the
  entry of any other packet a set matches, and drops it.
- An entry lives for the engine's idle timeout of its protocol, rounded up, plus one second
  (:func:`entry_timeout`), from the last packet the kernel dropped: as long as the flow would
  live in an engine that saw those packets (offline, where it sees them all). The engine does
  not see them, so every :data:`CHECK_S` seconds :class:`HeldFlows` lists the sets (a netlink
  dump each, ``live/ipset.py``) and moves each held flow's ``last_seen`` to the time of the last
  packet its entry says the kernel dropped (the timeout it has left tells, to the second). The
  engine's own idle expiry then forgets the flow when it would have, had it seen every packet.
- A SYN that opens a new connection on a held flow's 5-tuple reaches the engine (above); if the
  engine makes a new flow on it, the old flow's entries go (:meth:`HeldFlows.after`).
- Not while ``lab record`` records (a recording holds every packet of the flows it sees), and
  not for censors in series (each has its own flows).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from gfwlab.engine.flows import Flow, FlowKey, FlowState, FlowTable, flow_key
from gfwlab.errors import GfwlabError, MalformedPacket
from gfwlab.live.ipset import CommandEntries, Entries
from gfwlab.packet.ip import PROTO_TCP, PROTO_UDP, SYN, Packet, addr_text, parse, peek_tcp_flags

CHAIN = "GFWLAB_BLOCKED"
"""The censor namespace's mangle chain that drops the held flows' packets."""
CHECK_S = 5.0
"""Seconds between two listings of the sets (:meth:`HeldFlows.check`), at most: a quarter of the
shortest idle timeout if that is less (not under half a second), so that the engine never
finds a held flow idle that the kernel still sees."""
MAX_ENTRIES = 1048576
"""Room in each set."""
_PROTOS = {PROTO_TCP: "tcp", PROTO_UDP: "udp"}
_MATCH = {"c2s": "src,src,dst", "s2c": "dst,dst,src"}
"""How a packet is matched against an entry (client, client port, server) in each direction."""

Direction = str
"""``c2s`` or ``s2c``."""


def set_name(direction: Direction, v6: bool) -> str:
    """The set of flows held in ``direction`` (names fit ipset's 31 characters)."""
    return f"gfwlab-blocked-{direction}{'6' if v6 else '4'}"


def set_names() -> list[str]:
    return [set_name(d, v6) for d in _MATCH for v6 in (False, True)]


def create_lines() -> str:
    """``ipset restore`` input that makes the sets (empty, with timeouts)."""
    return "".join(
        f"create {set_name(d, v6)} hash:ip,port,ip family {'inet6' if v6 else 'inet'} "
        f"timeout 120 maxelem {MAX_ENTRIES}\n"
        for d in _MATCH
        for v6 in (False, True)
    )


def entry_timeout(idle_s: float) -> int:
    """An entry's timeout for an engine idle timeout of ``idle_s``: rounded up, plus one second,
    so the kernel never forgets a flow the engine (seeing every packet) would still hold."""
    return max(1, math.ceil(idle_s) + 1)


def chain_rules(v6: bool, tcp_s: int, udp_s: int) -> list[list[str]]:
    """The rules (iptables arguments after ``-A CHAIN``) for one address family."""
    out: list[list[str]] = [["-p", "tcp", "--tcp-flags", "SYN", "SYN", "-j", "RETURN"]]
    for direction, match in _MATCH.items():
        name = set_name(direction, v6)
        for proto, seconds in (("tcp", tcp_s), ("udp", udp_s)):
            out.append(
                ["-p", proto, "-m", "set", "--match-set", name, match,
                 "-j", "SET", "--add-set", name, match, "--exist", "--timeout", str(seconds)]
            )  # fmt: skip
        out.append(["-m", "set", "--match-set", name, match, "-j", "DROP"])
    return out


def element(flow: Flow) -> str:
    """A flow's entry: client, protocol and client port, server."""
    return f"{addr_text(flow.client)},{_PROTOS[flow.proto]}:{flow.cport},{addr_text(flow.server)}"


def _set_of(direction: Direction, flow: Flow) -> str:
    return set_name(direction, len(flow.client) == 16)


@dataclass(slots=True)
class Held:
    """A flow the kernel holds in one direction."""

    flow: Flow
    added: float
    """When its entry was last written (engine time): it lives at least a timeout from then."""


Run = Callable[[list[str]], str]
"""Runs a command in the censor namespace and returns its output; raises GfwlabError if the
command fails (``Kernel.command``)."""


class HeldFlows:
    """The censor's side: writes entries as the engine drops packets, tells the engine's flows
    when the kernel last dropped a packet of theirs, and takes entries out for flows the engine
    replaced."""

    def __init__(
        self,
        table: FlowTable,
        run: Run,
        tcp_idle_s: float,
        udp_idle_s: float,
        entries: Entries | None = None,
    ) -> None:
        self.table = table
        self.entries = entries or CommandEntries(run)
        """Where entries are written (``live/ipset.py``: netlink in the censor's namespace)."""
        self.run = run
        self.timeouts = {PROTO_TCP: entry_timeout(tcp_idle_s), PROTO_UDP: entry_timeout(udp_idle_s)}
        self.held: dict[tuple[FlowKey, Direction], Held] = {}
        self.added = 0
        """Entries written."""
        self.errors = 0
        """Writes and listings that failed (``kernel_errors`` in the censor's counters)."""
        self.next_check = 0.0
        self.every = max(0.5, min(CHECK_S, tcp_idle_s / 4, udp_idle_s / 4))
        """Seconds between two listings of the sets."""

    def install(self, tools: Sequence[str] = ("iptables", "ip6tables")) -> None:
        """Fill the chain for this censor's timeouts and empty the sets (a new censor process
        knows no flow)."""
        tcp_s, udp_s = self.timeouts[PROTO_TCP], self.timeouts[PROTO_UDP]
        for tool in tools:
            ipt = [tool, "-w", "-t", "mangle"]
            self.run([*ipt, "-F", CHAIN])
            for rule in chain_rules(tool == "ip6tables", tcp_s, udp_s):
                self.run([*ipt, "-A", CHAIN, *rule])
        for name in set_names():
            self.run(["ipset", "flush", name])

    def verdict(self, packet: bytes, dropped: bool, now: float) -> None:
        """After the engine's verdict on a queued ``packet``: if it ``dropped`` it, its flow's
        direction goes to the kernel (:meth:`dropped`); a packet with SYN set of a held flow
        may have made the engine replace the flow (:meth:`after`)."""
        # Peeked only while a flow is held: it is the one check every queued packet pays.
        syn = bool(self.held) and (flags := peek_tcp_flags(packet)) >= 0 and bool(flags & SYN)
        if not dropped and not syn:
            return  # most packets: parsed no further
        try:
            pkt = parse(packet)
        except MalformedPacket:
            return
        if dropped:
            self.dropped(pkt, now)
        if syn and (key := self.holds(pkt)) is not None:
            self.after(key)

    def dropped(self, pkt: Packet, now: float) -> None:
        """The engine dropped ``pkt``: hand its flow's direction to the kernel."""
        if pkt.fragment or pkt.proto not in _PROTOS:
            return
        key = flow_key(pkt.proto, pkt.src, pkt.sport, pkt.dst, pkt.dport)
        flow = self.table.flows.get(key)
        if flow is None or flow.state is not FlowState.BLOCKED:
            return
        direction = "c2s" if pkt.src == flow.client and pkt.sport == flow.cport else "s2c"
        seconds = self.timeouts[flow.proto]
        held = self.held.get((key, direction))
        if held is not None and held.flow is flow and now - held.added < seconds / 2:
            return  # written already: a packet queued before the entry was in place
        try:
            self.entries.add(_set_of(direction, flow), element(flow), seconds)
        except GfwlabError:
            self.errors += 1
            return
        self.held[(key, direction)] = Held(flow, now)
        self.added += 1

    def holds(self, pkt: Packet) -> FlowKey | None:
        """The key of ``pkt``'s flow if the kernel holds it (either way), else None. The censor
        asks for the packets with SYN set, the ones that can start a new connection."""
        if not self.held or pkt.fragment or pkt.proto not in _PROTOS:
            return None
        key = flow_key(pkt.proto, pkt.src, pkt.sport, pkt.dst, pkt.dport)
        held = (key, "c2s") in self.held or (key, "s2c") in self.held
        return key if held else None

    def after(self, key: FlowKey) -> None:
        """A packet with SYN set of the held flow ``key`` was fed: if the engine now holds
        another flow on the 5-tuple (a new connection), take the old flow's entries out, so that
        the new one's packets reach the engine."""
        now_flow = self.table.flows.get(key)
        for direction in ("c2s", "s2c"):
            held = self.held.get((key, direction))
            if held is None or held.flow is now_flow:
                continue
            del self.held[(key, direction)]
            self._delete(direction, held.flow)

    def check(self, now: float) -> None:
        """Every :attr:`every` seconds: each held flow's ``last_seen`` moves to the last packet the
        kernel dropped for it (its entry's timeout left, to the second); a flow whose entry is
        gone is no longer held (its last packet is then what the engine saw)."""
        if now < self.next_check:
            return
        self.next_check = now + self.every
        if not self.held:
            return
        try:
            left = {name: self.entries.timeouts(name) for name in set_names()}
        except (GfwlabError, ValueError):
            self.errors += 1
            return
        for (key, direction), held in list(self.held.items()):
            flow = held.flow
            member = (flow.client, flow.proto, flow.cport, flow.server)
            seconds = left[_set_of(direction, flow)].get(member)
            if seconds is not None and self.table.flows.get(key) is flow:
                # The entry was last refreshed by a dropped packet ``timeout - left`` ago (it
                # counts whole seconds down, so this errs early by under a second).
                flow.last_seen = max(flow.last_seen, now - (self.timeouts[flow.proto] - seconds))
            elif seconds is None and now - held.added >= self.timeouts[flow.proto]:
                del self.held[(key, direction)]  # expired in the kernel
            elif seconds is not None:
                # The engine forgot the flow (idle, evicted from a full table) or replaced it:
                # its packets are the engine's to judge again.
                del self.held[(key, direction)]
                self._delete(direction, flow)

    def _delete(self, direction: Direction, flow: Flow) -> None:
        try:
            self.entries.delete(_set_of(direction, flow), element(flow))
        except GfwlabError:
            self.errors += 1
