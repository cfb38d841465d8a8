"""What the live censor tells the engine's TCP view about SYN/ACKs the kernel forwarded unqueued.

The kernel forwards a clean connection's SYN/ACK without the queue when no mechanism hooks it
(``live/chains.py`` :func:`~gfwlab.live.chains.skip_rules`); the engine's TCB still needs it where
it decides what a RST or a second SYN before the first data does (spec §9). These are the
methods of :class:`~gfwlab.live.daemon.LiveCensor` that rebuild it from a later packet and feed
it first, where it matters.
"""

from __future__ import annotations

from typing import Any

from gfwlab.engine import Censor
from gfwlab.engine.actions import Action
from gfwlab.engine.flows import Flow, flow_key
from gfwlab.engine.tcb import TcbState
from gfwlab.errors import MalformedPacket
from gfwlab.live.topology import SEEN_ORIGINAL_MARK
from gfwlab.offline.chain import Chain
from gfwlab.packet.ip import (
    ACK,
    PROTO_TCP,
    RST,
    SYN,
    Packet,
    build_tcp,
    is_tcp_data,
    parse,
)


def _client_data(pkt: Packet) -> bool:
    """Whether ``pkt``, sent by the client, is data without SYN or RST: it moves the engine's TCB
    to established by itself, so no missed SYN/ACK needs feeding before it (spec §9)."""
    return bool(pkt.payload) and not pkt.flags & (SYN | RST)


class MissedSynAcks:
    """The SYN/ACKs the engine missed, rebuilt and fed (a part of ``LiveCensor``)."""

    censor: Censor | Chain
    censors: list[Censor]
    synacks_fed: int

    def carry_out(self, actions: list[Action], nfpkt: Any | None) -> None:
        raise NotImplementedError

    def missed_syn_ack(self, payload: bytes, mark: int, now: float) -> None:
        """Tell the engine about the SYN/ACK the kernel forwarded unqueued (``live/chains.py``
        :func:`~gfwlab.live.chains.skip_rules`), before the first packet of the connection it
        shows the engine since: a SYN/ACK rebuilt from that packet (addresses, ports and the
        server's sequence number from its acknowledgement) is fed first.

        The TCP view is the only part of the engine that a clean connection's SYN/ACK changes
        (the skip is off when a mechanism hooks it or counts packets): it moves the TCB from
        SYN-seen to established, which decides what a RST or a second SYN before the first data
        does (spec §9; ``TcbParams.rst_before_synack``). Client data moves it there too, so a
        client data packet (without SYN or RST) needs nothing. While residual drop blocks are in
        force none is fed: the engine would judge it now, and the real one passed before the
        block started. Nor is one fed where no TCB awaits it (:meth:`awaiting_syn_ack`), as
        when one was fed already, before a packet without a connection
        (:meth:`invalid_after_syn_ack`)."""
        if mark & SEEN_ORIGINAL_MARK and is_tcp_data(payload):
            return  # client data, read from its bytes: the usual packet here, nothing to feed
        try:
            pkt = parse(payload)
        except MalformedPacket:
            return
        self._syn_ack_before(pkt, bool(mark & SEEN_ORIGINAL_MARK), now)

    def invalid_after_syn_ack(self, payload: bytes, now: float) -> None:
        """What :meth:`missed_syn_ack` does, for a TCP packet that conntrack found INVALID and
        that reached the queue after the kernel forwarded its connection's SYN/ACK unqueued
        (:data:`~gfwlab.live.topology.CT_INVALID_MARK`, ``live/chains.py``
        :func:`~gfwlab.live.chains.seen_rules`).

        Such a packet has no connection, so it cannot carry the seen marks; yet these are the
        packets that need the SYN/ACK: Geneva's teardown insertions (a RST or RST/ACK with a bad
        checksum, FIN+RST flag combinations, spec §9 (a), §14c) are INVALID to conntrack and not
        to the engine, and, sent after the handshake and before the request, they tear the TCB
        down only if the engine saw the SYN/ACK before them (at syn-seen a RST does nothing
        unless ``rst_before_synack``). The kernel decides the order when the packet reaches the
        queue, as it decides the queue's order: so the rebuilt SYN/ACK is fed first exactly when
        the engine would have seen the real one first with every packet queued, for any sender.
        Only where the engine's TCB awaits the SYN/ACK; client data needs nothing here either."""
        try:
            pkt = parse(payload)
        except MalformedPacket:
            return
        if not pkt.fragment:
            self._syn_ack_before(pkt, None, now)

    def _syn_ack_before(self, pkt: Packet, client: bool | None, now: float) -> None:
        """Feed the engine the SYN/ACK it missed before ``pkt`` where it needs one: a TCP packet
        other than client data, the engine's TCB awaiting the SYN/ACK, and no residual drop
        block in force on the flow (the engine would judge the rebuilt SYN/ACK now, and the real
        one passed before the block started; the kernel holds the skips off only for the
        blocks' servers, ``chains.hold_rules``, so other flows' SYN/ACKs still skip the queue
        and need feeding). ``client``: whether the client sent ``pkt``, or None if the flow
        says."""
        if pkt.proto != PROTO_TCP or (client and _client_data(pkt)):
            return  # checked first: client data is the usual first packet after the skip
        flow = self.awaiting_syn_ack(pkt)
        if flow is None or self._dropped_now(flow, now):
            return
        if client is None:
            client = pkt.src == flow.client and pkt.sport == flow.cport
            if client and _client_data(pkt):
                return
        self._feed_syn_ack(pkt, client, now)

    def _dropped_now(self, flow: Flow, now: float) -> bool:
        """Whether a residual drop block of a censor covers ``flow`` at ``now``."""
        for censor in self.censors:
            table = censor.residual
            if table.drops and any(table.lookup(flow, p, now) for p in ("drop-c2s", "drop-s2c")):
                return True
        return False

    def awaiting_syn_ack(self, pkt: Packet) -> Flow | None:
        """The engine's flow of ``pkt`` if its TCB has seen the client's SYN and nothing that
        moved it on since (``TcbState.SYN_SEEN``: the one state a SYN/ACK changes, spec §9);
        None otherwise."""
        key = flow_key(pkt.proto, pkt.src, pkt.sport, pkt.dst, pkt.dport)
        for censor in self.censors:
            flow = censor.flows.flows.get(key)
            if flow is not None and flow.tcb is not None and flow.tcb.state is TcbState.SYN_SEEN:
                return flow
        return None

    def _feed_syn_ack(self, pkt: Packet, client: bool, now: float) -> None:
        """Feed the engine the SYN/ACK rebuilt from ``pkt`` (sent by the client if ``client``)."""
        if client:
            seq = (pkt.ack - 1) & 0xFFFFFFFF if pkt.flags & ACK else 0
            synack = build_tcp(
                pkt.dst, pkt.src, pkt.dport, pkt.sport, seq=seq, ack=pkt.seq, flags=SYN | ACK
            )
        else:
            seq = (pkt.seq - 1) & 0xFFFFFFFF
            synack = build_tcp(
                pkt.src, pkt.dst, pkt.sport, pkt.dport, seq=seq, ack=pkt.ack, flags=SYN | ACK
            )
        self.synacks_fed += 1
        self.carry_out(self.censor.feed(synack, now)[1:], None)
