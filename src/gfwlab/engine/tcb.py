"""The censor's view of a TCP connection: its TCB state machine and its reassembly.

This is *not* an endpoint's TCP. It follows what was measured of the GFW (spec §9, §4a):

- the TCB is created on the client's SYN; the server's SYN/ACK is not needed (S&P'25);
- the TCP checksum is not checked and the TTL is not judged (Geneva strategies with bad
  checksums or low TTLs succeed 80-98% against it, spec §9 (a), (b)); ``check_checksum`` turns
  checksum validation on for what-if experiments;
- in-order client payload is reassembled, out-of-order segments are held until the gap fills, and
  where segments overlap the first bytes seen win, whichever segment carried them ("TCP5"-style
  later-wins preferences of 2013 are history, spec §3);
- before the GFW's reassembly fix (``small_segment_reassembly``; GFWeb, USENIX Security 2024,
  reports the fix within Feb 2022 - Sep 2023 without a date) a client segment shorter than
  ``small_segment_bytes`` is not reassembled: it leaves a gap the stream never fills (Geneva
  2019: in-order segmentation at offsets 8 and 4 evades 98%, halving the request 3%; spec §14c);
- what a RST or FIN does to the TCB is a parameter (``on_rst``, ``on_fin``: ``teardown``,
  ``resync`` or ``ignore``), because the sources disagree: Geneva's censor8b tears down, its
  censor10/11 resynchronise (spec §9, unknown 3). Each acts with a probability
  (``rst_probability``, ``fin_probability``) drawn by the engine from the flow's keyed stream:
  Geneva's China teardown insertions succeed 80-96% (fitted: 0.92), its FIN insertion 53%
  (fitted: 0.515, which with the 3% baseline gives 53%). A FIN that acts is applied before the
  data it carries (Geneva's FIN copy carries the request's first bytes and still evades);
- a client-sent SYN/ACK neither creates a TCB nor swaps the roles of client and server unless
  ``turnaround`` is set (Geneva 2019: "TCB turnaround" got 3% on HTTP, spec §14c), and the
  server's RST answering it, seen before the server's SYN/ACK, does not tear the TCB down
  unless ``rst_before_synack`` is set.
- a SYN from the server without ACK, seen before the server's SYN/ACK (a server that answers
  its client with a simultaneous open: Come as You Are, SIGCOMM 2020), swaps the roles of
  client and server with probability ``simultaneous_open_probability`` (fitted: 0.412, which
  with the 3% baseline gives the 43% the strategy got on HTTP in China, spec §9 and §14c): the
  censor then takes the real client's request for the server's data and does not inspect it;
- a second client SYN can put the TCB into resynchronisation (IMC'17, unverified: off by
  default, ``resync_on_syn``); in RESYNC the next client data packet sets the expected sequence.

The transitions are a table (STYLE.md §4); a missing entry is a bug and raises.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from typing import Literal

from gfwlab.packet.ip import ACK, FIN, PROTO_TCP, RST, SYN, Packet, checksum
from gfwlab.rules.profile import TcbParams

Effect = Literal["isn", "append", "resync_append", "teardown", "turnaround"] | None


class TcbState(enum.Enum):
    SYN_SEEN = "syn-seen"
    ESTABLISHED = "established"
    RESYNC = "resync"
    CLOSED = "closed"

    # Members are singletons: hashed by identity in C, not by name in Python (Enum's own
    # __hash__), for the transition table's lookup on every TCP segment. Nothing iterates a set
    # of them (a set's order would then change between processes).
    __hash__ = object.__hash__


class TcbInput(enum.Enum):
    RECV_SYN = "client SYN"
    RECV_SYNACK = "server SYN/ACK"
    RECV_SERVER_SYN = "server SYN"
    RECV_DATA = "client data"
    RECV_ACK = "other segment"
    RECV_RST = "RST"
    RECV_FIN = "FIN"

    __hash__ = object.__hash__  # as TcbState's


def classify(flags: int, c2s: bool, has_payload: bool) -> TcbInput:
    """The TCB input one TCP segment is, from its flags, its direction and whether it carries data.

    A RST wins over every other flag; a SYN is the client's SYN without ACK, the server's SYN/ACK
    with it, and the server's SYN (a simultaneous open) without it (a client-sent SYN/ACK is just
    a segment);
    client data wins over FIN (:meth:`Tcb.feed` applies the FIN of a data+FIN segment).
    Server payload is not reassembled: it is an ordinary segment.
    """
    if flags & RST:
        return TcbInput.RECV_RST
    if flags & SYN:
        if c2s and not flags & ACK:
            return TcbInput.RECV_SYN
        if not c2s:
            return TcbInput.RECV_SYNACK if flags & ACK else TcbInput.RECV_SERVER_SYN
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
        table[(state, i.RECV_SERVER_SYN)] = (None, state)
        for inp, how in ((i.RECV_RST, params.on_rst), (i.RECV_FIN, params.on_fin)):
            if inp is i.RECV_RST and state is s.SYN_SEEN and not params.rst_before_synack:
                table[(state, inp)] = (None, state)
            elif how == "teardown":
                table[(state, inp)] = ("teardown", s.CLOSED)
            elif how == "resync":
                table[(state, inp)] = (None, s.RESYNC)
            else:
                table[(state, inp)] = (None, state)
    table[(s.SYN_SEEN, i.RECV_SYN)] = ("isn", s.SYN_SEEN)
    # Simultaneous open: the server's SYN starts a TCB with the roles swapped (the engine swaps
    # the flow's client and server; the server's SYN is the new client's ISN).
    table[(s.SYN_SEEN, i.RECV_SERVER_SYN)] = ("turnaround", s.SYN_SEEN)
    table[(s.SYN_SEEN, i.RECV_DATA)] = ("append", s.ESTABLISHED)
    table[(s.ESTABLISHED, i.RECV_DATA)] = ("append", s.ESTABLISHED)
    table[(s.RESYNC, i.RECV_DATA)] = ("resync_append", s.ESTABLISHED)
    syn_next = s.RESYNC if params.resync_on_syn else None
    table[(s.ESTABLISHED, i.RECV_SYN)] = (None, syn_next or s.ESTABLISHED)
    table[(s.RESYNC, i.RECV_SYN)] = (None, s.RESYNC)
    # A closed TCB is reborn by a new client SYN on the same 4-tuple and ignores the rest.
    table[(s.CLOSED, i.RECV_SYN)] = ("isn", s.SYN_SEEN)
    for inp in (i.RECV_SYNACK, i.RECV_SERVER_SYN, i.RECV_DATA, i.RECV_ACK, i.RECV_RST, i.RECV_FIN):
        table[(s.CLOSED, inp)] = (None, s.CLOSED)
    return table


def acts(params: TcbParams, inp: TcbInput, draw: float) -> bool:
    """Whether a RST, FIN or server SYN takes effect, given a uniform ``draw`` from the flow's
    keyed stream (``rst_probability``, ``fin_probability``, ``simultaneous_open_probability``);
    every other input always does."""
    if inp is TcbInput.RECV_SERVER_SYN:
        return draw < params.simultaneous_open_probability
    if inp is TcbInput.RECV_RST:
        return draw < params.rst_probability
    if inp is TcbInput.RECV_FIN:
        return draw < params.fin_probability
    return True


class Tcb:
    """One connection's censor-side state and client-to-server byte stream.

    ``min_segment``: client segments shorter than this are not reassembled (0: all are); the
    engine sets it from ``small_segment_reassembly`` and the emulated date. ``small_reassembled``
    records that a segment shorter than ``small_segment_bytes`` did reach the stream.
    """

    def __init__(
        self,
        params: TcbParams,
        table: dict[tuple[TcbState, TcbInput], tuple[Effect, TcbState]],
        isn: int,
        *,
        min_segment: int = 0,
    ) -> None:
        self.params = params
        self._table = table
        self.state = TcbState.SYN_SEEN
        self.next_seq = (isn + 1) & 0xFFFFFFFF
        self.stream = bytearray()
        self.ooo: dict[int, bytes] = {}
        self.min_segment = min_segment
        self.small_reassembled = False

    def handle(self, inp: TcbInput, seq: int, data: bytes) -> bool:
        """Apply one segment; returns True if the client stream grew."""
        try:
            effect, nxt = self._table[(self.state, inp)]
        except KeyError:
            raise RuntimeError(f"tcb: no transition from {self.state} on {inp}") from None
        self.state = nxt
        if effect is None:
            return False
        if effect in ("isn", "turnaround"):
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

    def server_syn(self, seq: int, draw: Callable[[], float], then: Callable[[], None]) -> None:
        """Apply a server's SYN (``seq``: its sequence number): where the table turns the TCB
        around and a uniform ``draw()`` says it acts (``simultaneous_open_probability``), the
        TCB restarts from that SYN and ``then()`` swaps the flow's client and server. Otherwise
        it is just a segment."""
        inp = TcbInput.RECV_SERVER_SYN
        if self._table[(self.state, inp)][0] != "turnaround" or not acts(self.params, inp, draw()):
            self.handle(TcbInput.RECV_ACK, seq, b"")
            return
        self.handle(inp, seq, b"")
        then()

    def feed(self, inp: TcbInput, seq: int, data: bytes, flags: int, *, fin: bool = True) -> bool:
        """Apply one classified segment. A data segment that also carries a FIN that acts
        (``fin``) is applied as a FIN first, so its data is not seen; with a FIN that does not
        act, as its data alone. Returns True if the client stream grew."""
        if inp is TcbInput.RECV_DATA and flags & FIN and fin:
            self.handle(TcbInput.RECV_FIN, seq, b"")
        return self.handle(inp, seq, data)

    @property
    def full(self) -> bool:
        return len(self.stream) >= self.params.inspect_bytes

    def _append(self, seq: int, data: bytes) -> bool:
        """Add one client segment: first bytes seen win, whichever segment carried them."""
        if not data or len(data) < self.min_segment:
            return False
        delta = _diff(seq, self.next_seq)
        if delta > 0:
            if delta < 1 << 20:
                held = self.ooo.get(seq)
                if held is None and len(self.ooo) < self.params.max_out_of_order:
                    self.ooo[seq] = data
                elif held is not None and len(data) > len(held):
                    self.ooo[seq] = held + data[len(held) :]  # keep the held bytes, add the rest
            return False
        before = len(self.stream)
        self._take(data[-delta:] if delta < 0 else data)
        while self.ooo:
            for index, pseq in enumerate(list(self.ooo)):
                off = _diff(pseq, self.next_seq)
                if off <= 0:
                    chunk = self.ooo.pop(pseq)
                    if -off < len(chunk):
                        self._take(chunk[-off:], index)
                    break
            else:
                break
        if len(data) < self.params.small_segment_bytes and len(self.stream) > before:
            self.small_reassembled = True
        return len(self.stream) > before

    def _take(self, fresh: bytes, seen_before: int | None = None) -> None:
        """Append bytes at ``next_seq``, except where a held segment was seen first: its bytes
        win over the ones given here. ``seen_before``: only the first that many held segments
        were seen before these bytes (all of them if None)."""
        if not fresh:
            return
        buf = bytearray(fresh)
        held = list(self.ooo.items())[:seen_before]
        for pseq, chunk in reversed(held):  # the first seen is written last
            off = _diff(pseq, self.next_seq)
            if 0 < off < len(buf):
                n = min(len(chunk), len(buf) - off)
                buf[off : off + n] = chunk[:n]
        room = self.params.inspect_bytes - len(self.stream)
        self.stream += buf[: max(room, 0)]
        self.next_seq = (self.next_seq + len(buf)) & 0xFFFFFFFF


def _diff(a: int, b: int) -> int:
    """``a - b`` in sequence space, in [-2**31, 2**31)."""
    d = (a - b) & 0xFFFFFFFF
    return d - 0x100000000 if d >= 0x80000000 else d


def tcp_checksum_ok(pkt: Packet) -> bool:
    """Whether a TCP segment's checksum is right (only checked with ``check_checksum``)."""
    seg = pkt.raw[pkt.l4 :]
    if pkt.version == 4:
        pseudo = pkt.src + pkt.dst + bytes((0, PROTO_TCP)) + len(seg).to_bytes(2, "big")
    else:
        pseudo = pkt.src + pkt.dst + len(seg).to_bytes(4, "big") + bytes((0, 0, 0, PROTO_TCP))
    return checksum(pseudo + seg) == 0
