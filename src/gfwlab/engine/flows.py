"""Flows: the censor's per-connection memory, keyed by 5-tuple, with idle expiry.

A flow knows its client (the side that sent the TCP SYN or the first UDP datagram) and its
server, and whether it crosses the border inside-out or outside-in (DESIGN.md "Flows"). The
per-flow verdict state is a small table-driven machine (STYLE.md §4)::

    CLEAN ──mechanism fires──► BLOCKED ──(idle expiry, or a new connection)──► gone
      │
      └──nothing left to inspect──► BYPASSED ──(idle expiry, or a new connection)──► gone

A BLOCKED or BYPASSED flow gets its cached verdict before any reassembly or dissection. A new
connection on its 5-tuple (a client's SYN with a new initial sequence number,
:meth:`Flow.opened_anew_by`) replaces it with a new flow, judged anew.
"""

from __future__ import annotations

import enum
import hashlib
import heapq
import math
import zlib
from collections import OrderedDict, deque
from dataclasses import dataclass
from typing import Final, Literal

from gfwlab.engine.actions import Direction, FlowId
from gfwlab.engine.stream import Stream
from gfwlab.engine.tcb import Tcb
from gfwlab.packet.ip import ACK, PROTO_TCP, PROTO_UDP, RST, SYN, Packet, addr_text
from gfwlab.rules.schema import Prefixes


class FlowState(enum.Enum):
    CLEAN = "clean"
    BLOCKED = "blocked"
    BYPASSED = "bypassed"

    # Members are singletons compared by identity; Enum's own __hash__ is a Python function,
    # called for each lookup in _TRANSITIONS (once per flow).
    __hash__ = object.__hash__


class FlowInput(enum.Enum):
    RECV_BLOCK = "block"
    RECV_DONE = "done"

    __hash__ = object.__hash__


_TRANSITIONS: Final[dict[tuple[FlowState, FlowInput], FlowState]] = {
    (FlowState.CLEAN, FlowInput.RECV_BLOCK): FlowState.BLOCKED,
    (FlowState.CLEAN, FlowInput.RECV_DONE): FlowState.BYPASSED,
    # A residual hit or a second mechanism may block a flow another mechanism already blocked:
    (FlowState.BLOCKED, FlowInput.RECV_BLOCK): FlowState.BLOCKED,
    (FlowState.BLOCKED, FlowInput.RECV_DONE): FlowState.BLOCKED,
    # A bypassed flow is never re-inspected; only a residual drop (outside the flow) can hit it.
    (FlowState.BYPASSED, FlowInput.RECV_DONE): FlowState.BYPASSED,
    (FlowState.BYPASSED, FlowInput.RECV_BLOCK): FlowState.BLOCKED,
}

Block = Literal["none", "c2s", "s2c", "both"]
FlowKey = tuple[int, bytes, int, bytes, int]


@dataclass(eq=False, init=False)
class Flow:
    """One flow as the censor remembers it."""

    proto: int
    client: bytes
    cport: int
    server: bytes
    sport: int
    direction: Direction
    crossing: bool
    """False if both ends are on the same side of the border: the GFW does not see it (spec §1)."""
    first_seen: float
    last_seen: float
    salt: int = 0
    """What tells this flow from an earlier one on the same 5-tuple, taken from its first packet
    (a TCP sequence number, a hash of a datagram's first bytes): with the 5-tuple it keys the
    flow's random draws, so they depend on the packets alone, not on clocks or arrival order."""
    state: FlowState = FlowState.CLEAN
    block: Block = "none"
    """What a BLOCKED flow's later packets get: dropped client-to-server, server-to-client, both."""
    blocked_by: str = ""
    blocked_from: float = 0.0
    """When the block takes effect (a censor that needs time to act lets packets through until
    then: QUIC, spec §5 "Block latency")."""
    tcb: Tcb | None = None
    packets: int = 0
    first_data_seen: bool = False
    """The client's first TCP data packet has been shown to the first-packet mechanisms."""
    small_noted: bool = False
    """The event that a small segment was reassembled after the GFW's fix has been reported."""
    synless: bool = False
    """Let go because no client SYN had been seen (S&P'25: no TCB without one); a SYN on the same
    5-tuple later starts the flow anew (a client's SYN/ACK answered by the server's RST before the
    client's own SYN must not hide the connection that SYN opens, spec §14c)."""
    turned: bool = False
    """The roles were swapped by a server's SYN the censor took for a simultaneous open."""
    ident: FlowId | None = None
    probes: int = 0
    """Active probes planned because of this flow (numbers its probes)."""
    rngs: dict[str, Stream] | None = None
    """Per-mechanism random streams of this flow, made on first use (see :meth:`draws`)."""

    # Written out: a dataclass's generated __init__ runs interpreted even where the class is
    # compiled (gfwlab._build); this one is compiled with it.
    def __init__(
        self,
        proto: int,
        client: bytes,
        cport: int,
        server: bytes,
        sport: int,
        direction: Direction,
        crossing: bool,
        first_seen: float,
        last_seen: float,
        salt: int = 0,
        state: FlowState = FlowState.CLEAN,
        block: Block = "none",
        blocked_by: str = "",
        blocked_from: float = 0.0,
        tcb: Tcb | None = None,
        packets: int = 0,
        first_data_seen: bool = False,
        small_noted: bool = False,
        synless: bool = False,
        turned: bool = False,
        ident: FlowId | None = None,
        probes: int = 0,
        rngs: dict[str, Stream] | None = None,
    ) -> None:
        self.proto = proto
        self.client = client
        self.cport = cport
        self.server = server
        self.sport = sport
        self.direction = direction
        self.crossing = crossing
        self.first_seen = first_seen
        self.last_seen = last_seen
        self.salt = salt
        self.state = state
        self.block = block
        self.blocked_by = blocked_by
        self.blocked_from = blocked_from
        self.tcb = tcb
        self.packets = packets
        self.first_data_seen = first_data_seen
        self.small_noted = small_noted
        self.synless = synless
        self.turned = turned
        self.ident = ident
        self.probes = probes
        self.rngs = rngs
        self.held = False
        """Whether a FlowTable holds this flow (set and cleared by the table and the censor: a
        sweep passes over the flows that left it without looking them up)."""

    def step(self, what: FlowInput) -> None:
        try:
            self.state = _TRANSITIONS[(self.state, what)]
        except KeyError:  # pragma: no cover - the table is total
            raise RuntimeError(f"flow: no transition from {self.state} on {what}") from None

    def block_flow(self, block: Block, mechanism: str, start: float = 0.0) -> None:
        self.step(FlowInput.RECV_BLOCK)
        if self.block == "none":
            self.block, self.blocked_by, self.blocked_from = block, mechanism, start
        elif block not in ("none", self.block):
            self.block = "both"

    def finish(self) -> None:
        """Nothing more to inspect: the verdict is final."""
        self.step(FlowInput.RECV_DONE)
        self.tcb = None  # free the reassembly buffer

    def swap_roles(self) -> None:
        """Take the server for the client and the client for the server (a simultaneous open the
        censor believes, see ``TcbParams.simultaneous_open_probability``)."""
        self.client, self.server = self.server, self.client
        self.cport, self.sport = self.sport, self.cport
        self.direction = "outside-in" if self.direction == "inside-out" else "inside-out"
        self.ident = None
        self.turned = not self.turned

    def opened_anew_by(self, pkt: Packet, *, bypassed: bool = True) -> bool:
        """Whether ``pkt``, a packet of this flow's 5-tuple, starts a new connection.

        The GFW makes a TCB on a client's SYN (S&P'25, spec §9, §3, §4a and §14c). A flow the
        censor has judged (BLOCKED, or BYPASSED: nothing left to inspect) holds no TCB, so a
        client's bare SYN with a new initial sequence number on its 5-tuple opens a new
        connection, judged anew as a fresh one would be (residual blocks on its key still apply
        to it): a client that reuses its source port toward the same server, after a reset (no
        TIME_WAIT follows a RST), after TIME_WAIT, or with ``tcp_tw_reuse`` and load tools that
        wrap their ports. ``bypassed`` (``TcbParams.reopen_bypassed``) off keeps such a SYN with
        a bypassed flow. A flow let go for want of a SYN (:attr:`synless`) is opened anew by any
        bare SYN. A retransmitted SYN (the same ISN) stays with its flow, and a flow still being
        inspected (CLEAN) keeps every SYN: its TCB table decides what a SYN does (a new ISN
        before the handshake, resynchronisation with ``resync_on_syn``, spec §9, or a closed
        TCB reborn).
        """
        if pkt.proto != PROTO_TCP or pkt.flags & (SYN | ACK | RST) != SYN:
            return False
        state = self.state
        if state is FlowState.CLEAN:
            return False
        if state is FlowState.BYPASSED:
            if self.synless:
                return True
            if not bypassed:
                return False
        return pkt.src == self.client and pkt.sport == self.cport and pkt.seq != self.salt

    def draws(self, key: str) -> Stream:
        """The random stream of ``key`` (seed and mechanism) for this flow.

        Keyed by the flow's 5-tuple and its ``salt``, never by time or by how many flows or
        packets came before, so a flow's draws are the same however flows interleave, whichever
        packets of other flows are left out, on whichever worker it is analysed, and live or
        offline (where the clocks differ).
        """
        if self.rngs is None:
            self.rngs = {}
        rng = self.rngs.get(key)
        if rng is None:
            rng = self.rngs[key] = Stream(key.encode() + self._ident_bytes())
        return rng

    def _ident_bytes(self) -> bytes:
        """The flow's identity (:meth:`_ident`) as bytes that tell every identity apart: a
        stream's key after the mechanism's (its seed and name, which hold no zero byte)."""
        return (
            bytes((0, self.proto, len(self.client)))
            + self.client
            + self.cport.to_bytes(2, "big")
            + self.server
            + self.sport.to_bytes(2, "big")
            + self.salt.to_bytes(8, "big")
        )

    def probe_id(self) -> int:
        """A number for the next probe this flow causes: from the flow's identity and its own
        count, so it does not depend on other flows (63 bits of a hash: unique in practice)."""
        self.probes += 1
        digest = hashlib.blake2b(f"{self._ident()!r}:{self.probes}".encode(), digest_size=8)
        return int.from_bytes(digest.digest(), "big") >> 1

    def _ident(self) -> tuple[object, ...]:
        return (self.proto, self.client, self.cport, self.server, self.sport, self.salt)

    def id(self) -> FlowId:
        if self.ident is None:
            proto: Literal["tcp", "udp", "ip"] = (
                "tcp" if self.proto == PROTO_TCP else "udp" if self.proto == PROTO_UDP else "ip"
            )
            self.ident = FlowId(
                proto=proto,
                src=addr_text(self.client),
                sport=self.cport,
                dst=addr_text(self.server),
                dport=self.sport,
            )
        return self.ident

    def is_c2s(self, src: bytes, sport: int) -> bool:
        return src == self.client and sport == self.cport


def flow_key(proto: int, a: bytes, ap: int, b: bytes, bp: int) -> FlowKey:
    """The direction-independent key of a 5-tuple."""
    if a < b or (a == b and ap <= bp):  # (a, ap) <= (b, bp), without making the two pairs
        return (proto, a, ap, b, bp)
    return (proto, b, bp, a, ap)


class FlowTable:
    """Flows by key, with idle expiry driven by the engine's timer and a bound on their number.

    The table is ordered by when each flow was made; when a new flow would make it hold more
    than ``max_flows``, the oldest is evicted first (a SYN flood of spoofed sources cycles
    through the table instead of growing it). Which flow goes depends only on the order flows
    were made, so every adapter (and the offline fast path) evicts the same ones.

    A sweep (:meth:`expire`) forgets exactly the flows idle for their timeout or longer. While
    time only moves forward (flows made in the order of their ``first_seen``, no packet earlier
    than one before it: a capture in time order, the live clock), it reads only the flows that
    may be due: each flow once when it is old enough to be idle (``_young``, in the order flows
    were made), then, if it was still active, again at the second its timeout could end
    (``_due``). Reading every flow old enough at every sweep took 3% of a flow-heavy capture's
    analysis, and with 300,000 active flows 100 ms a sweep (now 3.5 ms on average; 43 ms for
    the sweep that reads them all again once their timeout could end). Otherwise every flow is
    read.
    """

    def __init__(self, tcp_timeout: float, udp_timeout: float, max_flows: int = 1_500_000) -> None:
        self.flows: OrderedDict[FlowKey, Flow] = OrderedDict()
        self.tcp_timeout = tcp_timeout
        self.udp_timeout = udp_timeout
        self.max_flows = max_flows
        self.expired = 0
        self.evicted = 0
        self.evicted_log: list[Flow] | None = None
        """If a list, every evicted flow is appended to it (for an adapter that must know)."""
        self._newest = -math.inf
        """The latest ``first_seen`` of the flows added so far."""
        self._in_order = True
        """Whether time has only moved forward (:meth:`unordered`): flows added in the order of
        their ``first_seen``, and no flow's ``last_seen`` moved back."""
        self._young: deque[Flow] = deque()
        """The flows added, in that order, not yet read by a sweep: each is read once it is old
        enough to be idle. One that has left the table since (no longer ``held``) is passed
        over."""
        self._due: dict[int, list[Flow]] = {}
        """Flows a sweep found still active, by the whole second (of ``last_seen`` plus the
        timeout, as it was then) before which they cannot be idle."""
        self._seconds: list[int] = []
        """The keys of ``_due``, a heap."""
        self._clock = -math.inf
        """The time of the latest packet (:meth:`clock`)."""

    def add(self, key: FlowKey, flow: Flow) -> None:
        """Hold a new flow, evicting the oldest if the table is full."""
        flows = self.flows
        while len(flows) >= self.max_flows:
            _key, old = flows.popitem(last=False)
            old.held = False
            self.evicted += 1
            if self.evicted_log is not None:
                self.evicted_log.append(old)
            if self._young and self._young[0] is old:  # a flood: kept as short as the table
                self._young.popleft()
        if flow.first_seen < self._newest:
            self.unordered()
        else:
            self._newest = flow.first_seen
        flows[key] = flow
        flow.held = True
        if self._in_order:
            self._young.append(flow)

    def remove(self, key: FlowKey, *, idle: bool = False) -> None:
        """Forget the flow held under ``key``; ``idle``: it is idle past its timeout (counted as
        expired)."""
        self.flows.pop(key).held = False
        if idle:
            self.expired += 1

    def clock(self, now: float) -> None:
        """A packet came at ``now`` (the censor tells each): one earlier than the one before is
        time moving back, and a flow's ``last_seen`` may move back with it (:meth:`unordered`)."""
        if now < self._clock:
            self.unordered()
        self._clock = now

    def unordered(self) -> None:
        """Time moved back (a flow first seen before one added earlier, a packet earlier than one
        before it): from now on every sweep reads every flow."""
        if self._in_order:
            self._in_order = False
            self._young.clear()
            self._due.clear()
            self._seconds.clear()

    def __len__(self) -> int:
        return len(self.flows)

    def timeout(self, flow: Flow) -> float:
        return self.tcp_timeout if flow.proto == PROTO_TCP else self.udp_timeout

    def expire(self, now: float) -> int:
        """Forget flows idle for longer than their timeout; returns how many."""
        if not self._in_order:
            return self._expire_all(now)
        tcp, udp = self.tcp_timeout, self.udp_timeout  # self.timeout(f), without a call a flow
        dead = 0
        # A flow first seen less than the shorter timeout ago has been idle less than its own:
        # the young flows after the first such one are younger still.
        shortest = min(tcp, udp)
        young = self._young
        while young and now - young[0].first_seen >= shortest:
            f = young.popleft()
            if not f.held:
                continue  # evicted, expired, or replaced by a new flow on its key
            timeout = tcp if f.proto == PROTO_TCP else udp
            if now - f.last_seen >= timeout:
                dead += self._forget(f)
            else:
                self._later(f, f.last_seen + timeout)
        # A flow idle now had last_seen + timeout <= now (give or take a rounding) when it was
        # put off, for last_seen only grows: its second is at most this one, plus one.
        last = math.floor(now) + 1
        seconds, due = self._seconds, self._due
        again: list[Flow] = []
        while seconds and seconds[0] <= last:
            for f in due.pop(heapq.heappop(seconds)):
                if not f.held:
                    continue
                if now - f.last_seen >= (tcp if f.proto == PROTO_TCP else udp):
                    dead += self._forget(f)
                else:
                    again.append(f)
        for f in again:  # after the loop: it may fall in a second read above
            self._later(f, f.last_seen + (tcp if f.proto == PROTO_TCP else udp))
        self.expired += dead
        return dead

    def _forget(self, flow: Flow) -> int:
        """Forget ``flow`` if the table holds it under its key (1), else nothing (0)."""
        key = flow_key(flow.proto, flow.client, flow.cport, flow.server, flow.sport)
        if self.flows.get(key) is not flow:
            return 0
        del self.flows[key]
        flow.held = False
        return 1

    def _later(self, flow: Flow, at: float) -> None:
        """Read ``flow`` again at the first sweep at most a second before ``at``."""
        second = math.floor(at)
        bucket = self._due.get(second)
        if bucket is None:
            self._due[second] = [flow]
            heapq.heappush(self._seconds, second)
        else:
            bucket.append(flow)

    def _expire_all(self, now: float) -> int:
        """:meth:`expire` reading every flow."""
        tcp, udp = self.tcp_timeout, self.udp_timeout
        dead = [
            k
            for k, f in self.flows.items()
            if now - f.last_seen >= (tcp if f.proto == PROTO_TCP else udp)
        ]
        for key in dead:
            self.flows.pop(key).held = False
        self.expired += len(dead)
        return len(dead)


def open_flow(
    pkt: Packet, now: float, *, turnaround: bool, udp_ports: frozenset[int], inside: Prefixes
) -> Flow:
    """A new flow from its first packet: who is the client, and which way it crosses the border.

    TCP: the sender of a SYN is the client, and of a SYN/ACK the server (with ``turnaround``:
    see TcbParams); mid-stream, the ephemeral (higher) port is the client's. UDP: the sender,
    unless a response from a watched port (DNS) is seen before its query. A flow whose ends are
    on the same side of the border is finished at once: the GFW does not see it (spec §1).
    """
    if pkt.proto == PROTO_TCP:
        if pkt.flags & (SYN | ACK) == SYN | ACK and turnaround:
            src_is_client = False
        else:
            src_is_client = bool(pkt.flags & SYN) or pkt.sport >= pkt.dport
    else:
        src_is_client = not (pkt.sport in udp_ports and pkt.dport not in udp_ports)
    if src_is_client:
        client, cport, server, sport = pkt.src, pkt.sport, pkt.dst, pkt.dport
    else:
        client, cport, server, sport = pkt.dst, pkt.dport, pkt.src, pkt.sport
    crossing, outbound = True, True
    if inside:
        ci, si = inside.contains(client), inside.contains(server)
        crossing, outbound = ci != si, ci or not si
    flow = Flow(
        proto=pkt.proto,
        client=client,
        cport=cport,
        server=server,
        sport=sport,
        direction="inside-out" if outbound else "outside-in",
        crossing=crossing,
        first_seen=now,
        salt=pkt.seq if pkt.proto == PROTO_TCP else zlib.crc32(pkt.payload[:64]),
        last_seen=now,
    )
    if not crossing:
        flow.finish()
    return flow
