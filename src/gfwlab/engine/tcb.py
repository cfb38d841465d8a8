"""The censor's view of a TCP connection: its TCB state machine and its reassembly.

This is *not* an endpoint's TCP. It follows what was measured of the GFW (spec §9, §4a):

- the TCB is created on the client's SYN; the server's SYN/ACK is not needed (S&P'25);
- the TCP checksum is not checked and the TTL is not judged (Geneva strategies with bad
  checksums or low TTLs succeed 80-98% against it, spec §9 (a), (b)); ``check_checksum`` turns
  checksum validation on for what-if experiments;
- in-order client payload is reassembled (in-order segmentation alone fails as an evasion,
  spec §9 (d)), out-of-order segments are held until the gap fills, and where segments overlap the
  first bytes seen win ("TCP5"-style later-wins preferences of 2013 are history, spec §3);
- what a RST or FIN does to the TCB is a parameter (``on_rst``, ``on_fin``: ``teardown``,
  ``resync`` or ``ignore``), because the sources disagree: Geneva's censor8b tears down, its
  censor10/11 resynchronise (spec §9, unknown 3). Default: RST tears down (client-side RST
  insertion evades in ≥ 87% of trials, spec §9 (c)), FIN is ignored.
- a second client SYN can put the TCB into resynchronisation (IMC'17, unverified: off by
  default, ``resync_on_syn``); in RESYNC the next client data packet sets the expected sequence.

The transitions are a table (STYLE.md §4); a missing entry is a bug and raises.
"""

from __future__ import annotations

import enum
from typing import Literal

from gfwlab.packet.ip import ACK, FIN, PROTO_TCP, RST, SYN, Packet, checksum
from gfwlab.rules.profile import TcbParams

Effect = Literal["isn", "append", "resync_append", "teardown"] | None


class TcbState(enum.Enum):
    SYN_SEEN = "syn-seen"
    ESTABLISHED = "established"
    RESYNC = "resync"
    CLOSED = "closed"


class TcbInput(enum.Enum):
    RECV_SYN = "client SYN"
    RECV_SYNACK = "server SYN/ACK"
    RECV_DATA = "client data"
    RECV_ACK = "other segment"
    RECV_RST = "RST"
    RECV_FIN = "FIN"


def classify(flags: int, c2s: bool, has_payload: bool) -> TcbInput:
    """The TCB input one TCP segment is, from its flags, its direction and whether it carries data.

    A RST wins over every other flag; a SYN is the client's SYN only without ACK and the server's
    SYN/ACK only with it (a client-sent SYN/ACK or a server-sent bare SYN is just a segment);
    client data wins over FIN (a data+FIN segment is fed as data, then as FIN, by the caller).
    Server payload is not reassembled: it is an ordinary segment.
    """
    if flags & RST:
        return TcbInput.RECV_RST
    if flags & SYN:
        if c2s and not flags & ACK:
            return TcbInput.RECV_SYN
        if not c2s and flags & ACK:
            return TcbInput.RECV_SYNACK
        return TcbInput.RECV_ACK
    if c2s and has_payload:
        return TcbInput.RECV_DATA
    if flags & FIN:
        return TcbInput.RECV_FIN
    return TcbInput.RECV_ACK


def open_input(params: TcbParams, flags: int, c2s: bool, seq: int, has_payload: bool) -> int | None:
    """The ISN a TCB is created with on this segment of a flow that has none, or None for none.

    The client's SYN creates it (S&P'25: the server's SYN/ACK is not needed). Without
    ``require_syn``, client data seen mid-stream creates one too, as if its SYN had just been seen.
    """
    if c2s and flags & (SYN | ACK | RST) == SYN:
        return seq
    if not params.require_syn and c2s and has_payload:
        return (seq - 1) & 0xFFFFFFFF
    return None


def transition_table(params: TcbParams) -> dict[tuple[TcbState, TcbInput], tuple[Effect, TcbState]]:
    """The (state, input) -> (effect, next state) table for these parameters."""
    s, i = TcbState, TcbInput
    table: dict[tuple[TcbState, TcbInput], tuple[Effect, TcbState]] = {}
    for state in (s.SYN_SEEN, s.ESTABLISHED, s.RESYNC):
        table[(state, i.RECV_SYNACK)] = (None, s.ESTABLISHED if state is s.SYN_SEEN else state)
        table[(state, i.RECV_ACK)] = (None, state)
        for inp, how in ((i.RECV_RST, params.on_rst), (i.RECV_FIN, params.on_fin)):
            if how == "teardown":
                table[(state, inp)] = ("teardown", s.CLOSED)
            elif how == "resync":
                table[(state, inp)] = (None, s.RESYNC)
            else:
                table[(state, inp)] = (None, state)
    table[(s.SYN_SEEN, i.RECV_SYN)] = ("isn", s.SYN_SEEN)
    table[(s.SYN_SEEN, i.RECV_DATA)] = ("append", s.ESTABLISHED)
    table[(s.ESTABLISHED, i.RECV_DATA)] = ("append", s.ESTABLISHED)
    table[(s.RESYNC, i.RECV_DATA)] = ("resync_append", s.ESTABLISHED)
    syn_next = s.RESYNC if params.resync_on_syn else None
    table[(s.ESTABLISHED, i.RECV_SYN)] = (None, syn_next or s.ESTABLISHED)
    table[(s.RESYNC, i.RECV_SYN)] = (None, s.RESYNC)
    # A closed TCB is reborn by a new client SYN on the same 4-tuple and ignores the rest.
    table[(s.CLOSED, i.RECV_SYN)] = ("isn", s.SYN_SEEN)
    for inp in (i.RECV_SYNACK, i.RECV_DATA, i.RECV_ACK, i.RECV_RST, i.RECV_FIN):
        table[(s.CLOSED, inp)] = (None, s.CLOSED)
    return table


class Tcb:
    """One connection's censor-side state and client-to-server byte stream."""

    __slots__ = ("_table", "next_seq", "ooo", "params", "state", "stream")

    def __init__(
        self,
        params: TcbParams,
        table: dict[tuple[TcbState, TcbInput], tuple[Effect, TcbState]],
        isn: int,
    ) -> None:
        self.params = params
        self._table = table
        self.state = TcbState.SYN_SEEN
        self.next_seq = (isn + 1) & 0xFFFFFFFF
        self.stream = bytearray()
        self.ooo: dict[int, bytes] = {}

    def handle(self, inp: TcbInput, seq: int, data: bytes) -> bool:
        """Apply one segment; returns True if the client stream grew."""
        try:
            effect, nxt = self._table[(self.state, inp)]
        except KeyError:
            raise RuntimeError(f"tcb: no transition from {self.state} on {inp}") from None
        self.state = nxt
        if effect is None:
            return False
        if effect == "isn":
            self.next_seq = (seq + 1) & 0xFFFFFFFF
            self.stream.clear()
            self.ooo.clear()
            return False
        if effect == "teardown":
            self.stream.clear()
            self.ooo.clear()
            return False
        if effect == "resync_append":
            self.next_seq = seq
            self.ooo.clear()
        return self._append(seq, data)

    def feed(self, inp: TcbInput, seq: int, data: bytes, flags: int) -> bool:
        """Apply one classified segment; a data segment that also carries FIN is applied as its
        data, then as a FIN. Returns True if the client stream grew."""
        grew = self.handle(inp, seq, data)
        if inp is TcbInput.RECV_DATA and flags & FIN:
            self.handle(TcbInput.RECV_FIN, seq, b"")
        return grew

    @property
    def full(self) -> bool:
        return len(self.stream) >= self.params.inspect_bytes

    def _append(self, seq: int, data: bytes) -> bool:
        delta = (seq - self.next_seq) & 0xFFFFFFFF
        if delta >= 0x80000000:
            delta -= 0x100000000
        if delta > 0:
            if delta < 1 << 20 and len(self.ooo) < self.params.max_out_of_order:
                self.ooo.setdefault(seq, data)
            return False
        fresh = data[-delta:] if delta < 0 else data
        if not fresh:
            return False
        room = self.params.inspect_bytes - len(self.stream)
        self.stream += fresh[:room]
        self.next_seq = (self.next_seq + len(fresh)) & 0xFFFFFFFF
        while self.ooo:
            for pseq in list(self.ooo):
                off = (pseq - self.next_seq) & 0xFFFFFFFF
                if off == 0 or off >= 0x80000000:
                    chunk = self.ooo.pop(pseq)
                    skip = 0 if off == 0 else 0x100000000 - off
                    if skip < len(chunk):
                        rest = chunk[skip:]
                        room = self.params.inspect_bytes - len(self.stream)
                        self.stream += rest[:room]
                        self.next_seq = (self.next_seq + len(rest)) & 0xFFFFFFFF
                    break
            else:
                break
        return True


def tcp_checksum_ok(pkt: Packet) -> bool:
    """Whether a TCP segment's checksum is right (only checked with ``check_checksum``)."""
    seg = pkt.raw[pkt.l4 :]
    if pkt.version == 4:
        pseudo = pkt.src + pkt.dst + bytes((0, PROTO_TCP)) + len(seg).to_bytes(2, "big")
    else:
        pseudo = pkt.src + pkt.dst + len(seg).to_bytes(4, "big") + bytes((0, 0, 0, PROTO_TCP))
    return checksum(pseudo + seg) == 0
