"""engine/tcb.py: the censor's TCP view (spec §9, §4a) piece by piece, as STYLE.md §4 and §11 ask.

Input classification and the transition table are checked against tables written out here by
hand (not recomputed by the code under test); reassembly is checked by scenarios and by a
Hypothesis state machine against an independent byte-map model.
"""

from __future__ import annotations

import datetime as dt
import itertools

import hypothesis.strategies as st
import pytest
from hypothesis import HealthCheck, settings
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from gfwlab.engine.tcb import (
    Tcb,
    TcbInput,
    TcbState,
    acts,
    classify,
    open_input,
    tcp_checksum_ok,
    transition_table,
)
from gfwlab.packet.ip import ACK, FIN, PSH, RST, SYN, URG, addr_bytes, build_tcp, parse
from gfwlab.rules import TcbParams

S, In = TcbState, TcbInput
MOD = 1 << 32


def tcb(isn: int = 1000, **params: object) -> Tcb:
    p = TcbParams(**params)  # type: ignore[arg-type]
    return Tcb(p, transition_table(p), isn)


def established(isn: int = 1000, **params: object) -> Tcb:
    """A TCB after the client's SYN and SYN/ACK: next_seq is isn + 1, nothing received yet."""
    t = tcb(isn, **params)
    assert t.handle(In.RECV_SYNACK, 5000, b"") is False
    assert t.state is S.ESTABLISHED
    return t


# ------------------------------------------------------------------ classify()

# Hand-written vectors: (flags, c2s, has_payload) -> input.
CLASSIFY_VECTORS = [
    (SYN, True, False, In.RECV_SYN),
    (SYN, True, True, In.RECV_SYN),  # a SYN with data is still the client's SYN
    (SYN | PSH, True, True, In.RECV_SYN),
    (SYN | FIN, True, False, In.RECV_SYN),  # SYN wins over FIN
    (SYN | ACK, False, False, In.RECV_SYNACK),
    (SYN | ACK, False, True, In.RECV_SYNACK),
    (SYN | ACK | FIN, False, False, In.RECV_SYNACK),
    (SYN | ACK, True, False, In.RECV_ACK),  # a client-sent SYN/ACK is just a segment
    (SYN | ACK, True, True, In.RECV_ACK),
    (SYN, False, False, In.RECV_SERVER_SYN),  # a server's bare SYN: a simultaneous open
    (SYN, False, True, In.RECV_SERVER_SYN),
    (SYN | FIN, False, False, In.RECV_SERVER_SYN),  # Come as You Are's FSEC
    (RST, True, False, In.RECV_RST),
    (RST, False, False, In.RECV_RST),
    (RST | ACK, True, True, In.RECV_RST),  # RST wins over data
    (RST | SYN, True, False, In.RECV_RST),  # RST wins over SYN
    (RST | SYN | ACK, False, False, In.RECV_RST),
    (RST | FIN, False, True, In.RECV_RST),
    (ACK, True, True, In.RECV_DATA),
    (PSH | ACK, True, True, In.RECV_DATA),
    (0, True, True, In.RECV_DATA),  # no flags at all, but client payload
    (FIN | ACK, True, True, In.RECV_DATA),  # data wins over FIN (the caller feeds FIN after)
    (PSH | ACK, False, True, In.RECV_ACK),  # server payload is not reassembled
    (FIN | ACK, True, False, In.RECV_FIN),
    (FIN | ACK, False, False, In.RECV_FIN),
    (FIN | ACK, False, True, In.RECV_FIN),  # server data+FIN is a FIN
    (FIN, True, False, In.RECV_FIN),
    (ACK, True, False, In.RECV_ACK),
    (ACK, False, False, In.RECV_ACK),
    (0, False, False, In.RECV_ACK),
    (0, True, False, In.RECV_ACK),
    (URG | ACK, True, False, In.RECV_ACK),
]


@pytest.mark.parametrize(("flags", "c2s", "payload", "expected"), CLASSIFY_VECTORS)
def test_classify_vectors(flags: int, c2s: bool, payload: bool, expected: TcbInput) -> None:
    assert classify(flags, c2s, payload) is expected


def _expected_input(flags: int, c2s: bool, payload: bool) -> TcbInput:
    """The documented priority, restated as a decision on the four flags that matter."""
    rst, syn, ack, fin = (bool(flags & f) for f in (RST, SYN, ACK, FIN))
    match (rst, syn, ack, c2s):
        case (True, _, _, _):
            return In.RECV_RST
        case (False, True, False, True):
            return In.RECV_SYN
        case (False, True, True, False):
            return In.RECV_SYNACK
        case (False, True, False, False):
            return In.RECV_SERVER_SYN
        case (False, True, _, _):
            return In.RECV_ACK
    if c2s and payload:
        return In.RECV_DATA
    return In.RECV_FIN if fin else In.RECV_ACK


ALL_FLAGS = [
    sum(bits)
    for n in range(7)
    for bits in itertools.combinations((FIN, SYN, RST, PSH, ACK, URG), n)
]


@pytest.mark.parametrize("c2s", [True, False])
@pytest.mark.parametrize("payload", [True, False])
def test_classify_every_flag_combination(c2s: bool, payload: bool) -> None:
    assert len(ALL_FLAGS) == 64
    for flags in ALL_FLAGS:
        assert classify(flags, c2s, payload) is _expected_input(flags, c2s, payload), hex(flags)


# ------------------------------------------------------------------ transition_table()

# The table for the default parameters (on_rst=teardown, on_fin=ignore, resync_on_syn=False),
# written out entry by entry.
DEFAULT_TABLE = {
    (S.SYN_SEEN, In.RECV_SYN): ("isn", S.SYN_SEEN),
    (S.SYN_SEEN, In.RECV_SYNACK): (None, S.ESTABLISHED),
    (S.SYN_SEEN, In.RECV_DATA): ("append", S.ESTABLISHED),
    (S.SYN_SEEN, In.RECV_ACK): (None, S.SYN_SEEN),
    (S.SYN_SEEN, In.RECV_SERVER_SYN): ("turnaround", S.SYN_SEEN),
    (S.SYN_SEEN, In.RECV_RST): (None, S.SYN_SEEN),
    (S.SYN_SEEN, In.RECV_FIN): ("teardown", S.CLOSED),
    (S.ESTABLISHED, In.RECV_SYN): (None, S.ESTABLISHED),
    (S.ESTABLISHED, In.RECV_SYNACK): (None, S.ESTABLISHED),
    (S.ESTABLISHED, In.RECV_DATA): ("append", S.ESTABLISHED),
    (S.ESTABLISHED, In.RECV_ACK): (None, S.ESTABLISHED),
    (S.ESTABLISHED, In.RECV_SERVER_SYN): (None, S.ESTABLISHED),
    (S.ESTABLISHED, In.RECV_RST): ("teardown", S.CLOSED),
    (S.ESTABLISHED, In.RECV_FIN): ("teardown", S.CLOSED),
    (S.RESYNC, In.RECV_SYN): (None, S.RESYNC),
    (S.RESYNC, In.RECV_SYNACK): (None, S.RESYNC),
    (S.RESYNC, In.RECV_DATA): ("resync_append", S.ESTABLISHED),
    (S.RESYNC, In.RECV_ACK): (None, S.RESYNC),
    (S.RESYNC, In.RECV_SERVER_SYN): (None, S.RESYNC),
    (S.RESYNC, In.RECV_RST): ("teardown", S.CLOSED),
    (S.RESYNC, In.RECV_FIN): ("teardown", S.CLOSED),
    (S.CLOSED, In.RECV_SYN): ("isn", S.SYN_SEEN),
    (S.CLOSED, In.RECV_SYNACK): (None, S.CLOSED),
    (S.CLOSED, In.RECV_DATA): (None, S.CLOSED),
    (S.CLOSED, In.RECV_ACK): (None, S.CLOSED),
    (S.CLOSED, In.RECV_SERVER_SYN): (None, S.CLOSED),
    (S.CLOSED, In.RECV_RST): (None, S.CLOSED),
    (S.CLOSED, In.RECV_FIN): (None, S.CLOSED),
}

# What a RST or FIN does in each live state, per value of on_rst / on_fin.
RST_FIN_ROWS = {
    "teardown": {
        S.SYN_SEEN: ("teardown", S.CLOSED),
        S.ESTABLISHED: ("teardown", S.CLOSED),
        S.RESYNC: ("teardown", S.CLOSED),
    },
    "resync": {
        S.SYN_SEEN: (None, S.RESYNC),
        S.ESTABLISHED: (None, S.RESYNC),
        S.RESYNC: (None, S.RESYNC),
    },
    "ignore": {
        S.SYN_SEEN: (None, S.SYN_SEEN),
        S.ESTABLISHED: (None, S.ESTABLISHED),
        S.RESYNC: (None, S.RESYNC),
    },
}

# A second client SYN in ESTABLISHED, per value of resync_on_syn.
SECOND_SYN = {False: (None, S.ESTABLISHED), True: (None, S.RESYNC)}

HOWS = ["teardown", "resync", "ignore"]


def test_default_table_exactly() -> None:
    assert transition_table(TcbParams()) == DEFAULT_TABLE


@pytest.mark.parametrize("rst_before_synack", [False, True])
@pytest.mark.parametrize("resync_on_syn", [False, True])
@pytest.mark.parametrize("on_fin", HOWS)
@pytest.mark.parametrize("on_rst", HOWS)
def test_every_transition_for_every_parameter_value(
    on_rst: str, on_fin: str, resync_on_syn: bool, rst_before_synack: bool
) -> None:
    params = TcbParams(
        on_rst=on_rst,  # type: ignore[arg-type]
        on_fin=on_fin,  # type: ignore[arg-type]
        resync_on_syn=resync_on_syn,
        rst_before_synack=rst_before_synack,
    )
    table = transition_table(params)
    assert len(table) == 28
    assert set(table) == {(s, i) for s in S for i in In}  # total
    for (state, inp), got in table.items():
        if (state, inp) == (S.SYN_SEEN, In.RECV_RST) and not rst_before_synack:
            want = (None, S.SYN_SEEN)  # a RST before the SYN/ACK is ignored
        elif state is not S.CLOSED and inp is In.RECV_RST:
            want = RST_FIN_ROWS[on_rst][state]
        elif state is not S.CLOSED and inp is In.RECV_FIN:
            want = RST_FIN_ROWS[on_fin][state]
        elif (state, inp) == (S.ESTABLISHED, In.RECV_SYN):
            want = SECOND_SYN[resync_on_syn]
        else:
            want = DEFAULT_TABLE[(state, inp)]
        assert got == want, (state, inp)


@pytest.mark.parametrize(
    "params",
    [
        TcbParams(require_syn=False),
        TcbParams(check_checksum=True),
        TcbParams(inspect_bytes=1),
        TcbParams(max_out_of_order=0),
    ],
)
def test_other_parameters_do_not_change_the_table(params: TcbParams) -> None:
    assert transition_table(params) == DEFAULT_TABLE


@pytest.mark.parametrize("state", list(S))
@pytest.mark.parametrize("inp", list(In))
def test_a_missing_transition_raises(state: TcbState, inp: TcbInput) -> None:
    table = transition_table(TcbParams())
    del table[(state, inp)]
    t = Tcb(TcbParams(), table, 0)
    t.state = state
    with pytest.raises(RuntimeError, match="no transition"):
        t.handle(inp, 1, b"x")
    assert t.state is state


@pytest.mark.parametrize("bad", [0, -1])
def test_params_reject_non_positive_inspect_bytes(bad: int) -> None:
    with pytest.raises(ValueError, match=r"^tcb\.inspect_bytes must be positive$"):
        TcbParams(inspect_bytes=bad)
    assert TcbParams(inspect_bytes=1).inspect_bytes == 1


def test_param_defaults() -> None:
    p = TcbParams()
    assert (p.require_syn, p.on_rst, p.on_fin, p.resync_on_syn, p.check_checksum) == (
        True,
        "teardown",
        "teardown",
        False,
        False,
    )
    assert (p.inspect_bytes, p.max_out_of_order) == (16384, 64)
    assert (p.rst_probability, p.fin_probability, p.turnaround) == (0.92, 0.515, False)
    assert (p.small_segment_bytes, str(p.small_segment_reassembly)) == (16, "2022-02-01 → …")


@pytest.mark.parametrize("name", ["rst_probability", "fin_probability"])
@pytest.mark.parametrize("bad", [-0.01, 1.01])
def test_params_reject_probabilities_outside_0_1(name: str, bad: float) -> None:
    with pytest.raises(ValueError, match=rf"^tcb\.{name} must be between 0 and 1$"):
        TcbParams(**{name: bad})  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("day", "expected"),
    [(None, 0), ("2019-09-01", 16), ("2022-01-31", 16), ("2022-02-01", 0), ("2024-06-01", 0)],
)
def test_min_segment_follows_the_date(day: str | None, expected: int) -> None:
    when = None if day is None else dt.date.fromisoformat(day)
    assert TcbParams().min_segment(when) == expected


# ------------------------------------------------------------------ Tcb: creation, in-order data


@pytest.mark.parametrize(("isn", "nxt"), [(1000, 1001), (0, 1), (MOD - 1, 0), (MOD - 2, MOD - 1)])
def test_new_tcb_expects_isn_plus_one(isn: int, nxt: int) -> None:
    t = tcb(isn)
    assert (t.state, t.next_seq, bytes(t.stream), t.ooo) == (S.SYN_SEEN, nxt, b"", {})
    assert not t.full


def test_in_order_append_without_syn_ack() -> None:
    t = tcb(1000)
    assert t.handle(In.RECV_DATA, 1001, b"GET ") is True
    assert t.state is S.ESTABLISHED
    assert t.handle(In.RECV_DATA, 1005, b"/ HTTP") is True
    assert (bytes(t.stream), t.next_seq) == (b"GET / HTTP", 1011)


def test_empty_data_does_not_grow() -> None:
    t = established()
    assert t.handle(In.RECV_DATA, 1001, b"") is False
    assert (bytes(t.stream), t.next_seq, t.ooo) == (b"", 1001, {})


@pytest.mark.parametrize("isn", [MOD - 4, MOD - 3, MOD - 2, MOD - 1])
def test_sequence_wraps_at_2_32(isn: int) -> None:
    t = established(isn)
    first = (isn + 1) % MOD
    assert t.handle(In.RECV_DATA, first, b"abcd") is True
    assert t.next_seq == (isn + 5) % MOD
    assert t.handle(In.RECV_DATA, (isn + 5) % MOD, b"efgh") is True
    # a retransmission across the wrap is trimmed
    assert t.handle(In.RECV_DATA, (isn + 3) % MOD, b"cdefghij") is True
    assert bytes(t.stream) == b"abcdefghij"
    assert t.next_seq == (isn + 11) % MOD


def test_out_of_order_across_the_wrap() -> None:
    t = established(MOD - 3)  # next_seq 2**32 - 2
    assert t.handle(In.RECV_DATA, 2, b"EF") is False  # 4 ahead, past the wrap
    assert t.ooo == {2: b"EF"}
    assert t.handle(In.RECV_DATA, MOD - 2, b"ABCD") is True
    assert (bytes(t.stream), t.next_seq, t.ooo) == (b"ABCDEF", 4, {})


# ------------------------------------------------------------------ overlap: first bytes seen win


def test_exact_retransmission_does_not_grow() -> None:
    t = established()
    t.handle(In.RECV_DATA, 1001, b"hello")
    assert t.handle(In.RECV_DATA, 1001, b"HELLO") is False
    assert (bytes(t.stream), t.next_seq) == (b"hello", 1006)


def test_old_segment_ending_before_next_seq_does_not_grow() -> None:
    t = established()
    t.handle(In.RECV_DATA, 1001, b"hello")
    assert t.handle(In.RECV_DATA, 1002, b"EL") is False
    assert t.handle(In.RECV_DATA, 1001 - 100, b"x" * 50) is False  # long before the window
    assert (bytes(t.stream), t.next_seq) == (b"hello", 1006)


@pytest.mark.parametrize("back", [1, 2, 4, 5])
def test_partial_overlap_keeps_the_first_bytes(back: int) -> None:
    t = established()
    t.handle(In.RECV_DATA, 1001, b"hello")
    new = b"X" * back + b" world"
    assert t.handle(In.RECV_DATA, 1006 - back, new) is True
    assert bytes(t.stream) == b"hello world"
    assert t.next_seq == 1012


def test_half_the_sequence_space_back_is_old_not_future() -> None:
    t = established(0)  # next_seq 1
    t.handle(In.RECV_DATA, 1, b"ab")  # next_seq 3
    # exactly 2**31 behind is treated as old data
    assert t.handle(In.RECV_DATA, (3 - (1 << 31)) % MOD, b"zz") is False
    assert t.ooo == {}
    # 2**31 - 1 ahead would be future, but beyond the 1 << 20 window: dropped
    assert t.handle(In.RECV_DATA, (3 + (1 << 31) - 1) % MOD, b"zz") is False
    assert (bytes(t.stream), t.ooo) == (b"ab", {})


# ------------------------------------------------------------------ out-of-order segments


def test_out_of_order_is_held_then_released() -> None:
    t = established()
    assert t.handle(In.RECV_DATA, 1004, b"def") is False
    assert (bytes(t.stream), t.ooo, t.next_seq) == (b"", {1004: b"def"}, 1001)
    assert t.handle(In.RECV_DATA, 1001, b"abc") is True
    assert (bytes(t.stream), t.ooo, t.next_seq) == (b"abcdef", {}, 1007)


def test_chain_of_held_segments_in_any_order() -> None:
    t = established()
    for seq, data in [(1010, b"jk"), (1004, b"def"), (1007, b"ghi"), (1020, b"far")]:
        assert t.handle(In.RECV_DATA, seq, data) is False
    assert t.handle(In.RECV_DATA, 1001, b"abc") is True
    assert bytes(t.stream) == b"abcdefghijk"
    assert (t.next_seq, t.ooo) == (1012, {1020: b"far"})  # the gap to 1020 is still open
    assert t.handle(In.RECV_DATA, 1012, b"lmnopqrs") is True
    assert (bytes(t.stream), t.next_seq, t.ooo) == (b"abcdefghijklmnopqrsfar", 1023, {})


def test_held_segment_overlapping_the_stream_wins_where_it_overlaps() -> None:
    t = established()
    t.handle(In.RECV_DATA, 1004, b"DEFG")  # held: bytes 3..6, seen first
    assert t.handle(In.RECV_DATA, 1001, b"abcde") is True  # covers 0..4
    assert bytes(t.stream) == b"abcDEFG"
    assert (t.next_seq, t.ooo) == (1008, {})


def test_held_segment_entirely_covered_keeps_its_bytes_and_is_released() -> None:
    t = established()
    t.handle(In.RECV_DATA, 1003, b"CD")
    t.handle(In.RECV_DATA, 1009, b"ij")
    assert t.handle(In.RECV_DATA, 1001, b"abcdef") is True
    assert (bytes(t.stream), t.next_seq, t.ooo) == (b"abCDef", 1007, {1009: b"ij"})


def test_held_segment_ending_exactly_at_next_seq_keeps_its_bytes() -> None:
    t = established()
    t.handle(In.RECV_DATA, 1002, b"BC")  # 1002..1003
    t.handle(In.RECV_DATA, 1004, b"de")
    assert t.handle(In.RECV_DATA, 1001, b"abcd") is True  # next_seq 1005: "BC" ends at 1004
    assert (bytes(t.stream), t.next_seq, t.ooo) == (b"aBCde", 1006, {})


def test_held_segment_released_behind_another_overlap() -> None:
    t = established()
    t.handle(In.RECV_DATA, 1003, b"cdef")  # 2..5
    t.handle(In.RECV_DATA, 1005, b"EFGH")  # 4..7, seen after "cdef": its "EF" loses
    assert t.handle(In.RECV_DATA, 1001, b"ab") is True
    assert bytes(t.stream) == b"abcdefGH"
    assert (t.next_seq, t.ooo) == (1009, {})


def test_a_second_segment_at_a_held_seq_is_ignored() -> None:
    t = established()
    t.handle(In.RECV_DATA, 1003, b"cd")
    assert t.handle(In.RECV_DATA, 1003, b"XY") is False
    assert t.ooo == {1003: b"cd"}
    t.handle(In.RECV_DATA, 1001, b"ab")
    assert bytes(t.stream) == b"abcd"


@pytest.mark.parametrize("bound", [0, 1, 3, 64])
def test_out_of_order_bound(bound: int) -> None:
    t = established(max_out_of_order=bound)
    for k in range(bound):
        assert t.handle(In.RECV_DATA, 1003 + 2 * k, b"h") is False
    assert len(t.ooo) == bound
    assert t.handle(In.RECV_DATA, 1003 + 2 * bound, b"!") is False  # the (bound+1)th is dropped
    assert len(t.ooo) == bound
    assert 1003 + 2 * bound not in t.ooo
    t.handle(In.RECV_DATA, 1001, b"a")
    # every held segment still has a one-byte gap before it: nothing released
    assert bytes(t.stream) == b"a"


def test_out_of_order_bound_frees_room_after_release() -> None:
    t = established(max_out_of_order=1)
    t.handle(In.RECV_DATA, 1002, b"b")
    t.handle(In.RECV_DATA, 1003, b"c")  # dropped: the bound is 1
    t.handle(In.RECV_DATA, 1001, b"a")
    assert (bytes(t.stream), t.ooo) == (b"ab", {})
    assert t.handle(In.RECV_DATA, 1004, b"d") is False  # room again
    assert t.ooo == {1004: b"d"}


@pytest.mark.parametrize(("ahead", "held"), [(1, True), ((1 << 20) - 1, True), (1 << 20, False)])
def test_far_future_bound(ahead: int, held: bool) -> None:
    t = established(MOD - 10)
    seq = (t.next_seq + ahead) % MOD
    assert t.handle(In.RECV_DATA, seq, b"x") is False
    assert (seq in t.ooo) is held
    assert len(t.ooo) == int(held)


# ------------------------------------------------------------------ the inspect_bytes cap


def test_cap_on_in_order_data() -> None:
    t = established(inspect_bytes=8)
    assert t.handle(In.RECV_DATA, 1001, b"abcdefg") is True
    assert (len(t.stream), t.full) == (7, False)
    assert t.handle(In.RECV_DATA, 1008, b"hijk") is True
    assert (bytes(t.stream), t.full) == (b"abcdefgh", True)
    assert t.next_seq == 1012  # the sequence still advances past what is kept
    t.handle(In.RECV_DATA, 1012, b"lmn")
    assert (bytes(t.stream), t.next_seq) == (b"abcdefgh", 1015)


def test_full_flips_exactly_at_the_cap() -> None:
    t = established(inspect_bytes=4)
    t.handle(In.RECV_DATA, 1001, b"abc")
    assert not t.full
    t.handle(In.RECV_DATA, 1004, b"d")
    assert t.full and bytes(t.stream) == b"abcd"


def test_cap_on_released_held_segments() -> None:
    t = established(inspect_bytes=6)
    t.handle(In.RECV_DATA, 1003, b"cde")
    t.handle(In.RECV_DATA, 1006, b"fgh")
    t.handle(In.RECV_DATA, 1009, b"ijk")
    assert t.handle(In.RECV_DATA, 1001, b"ab") is True
    assert (bytes(t.stream), t.full, t.next_seq, t.ooo) == (b"abcdef", True, 1012, {})


def test_cap_reached_exactly_by_a_held_segment() -> None:
    t = established(inspect_bytes=5)
    t.handle(In.RECV_DATA, 1003, b"cde")
    t.handle(In.RECV_DATA, 1001, b"ab")
    assert (bytes(t.stream), t.full) == (b"abcde", True)


def test_full_stream_does_not_report_growth() -> None:
    t = established(inspect_bytes=2)
    t.handle(In.RECV_DATA, 1001, b"ab")
    assert t.handle(In.RECV_DATA, 1003, b"cd") is False


# ------------------------------------------------------------------ RST, FIN, SYN


def test_teardown_clears_stream_and_held_segments_and_closes() -> None:
    t = established()
    t.handle(In.RECV_DATA, 1001, b"abc")
    t.handle(In.RECV_DATA, 1010, b"zz")
    assert t.handle(In.RECV_RST, 1004, b"") is False
    assert (t.state, bytes(t.stream), t.ooo) == (S.CLOSED, b"", {})


@pytest.mark.parametrize(
    "inp", [In.RECV_DATA, In.RECV_ACK, In.RECV_SYNACK, In.RECV_RST, In.RECV_FIN]
)
def test_closed_ignores_all_but_a_new_syn(inp: TcbInput) -> None:
    t = established(on_fin="teardown")
    t.handle(In.RECV_DATA, 1001, b"abc")
    t.handle(In.RECV_FIN, 1004, b"")
    assert t.state is S.CLOSED
    nxt = t.next_seq
    assert t.handle(inp, 1004, b"def") is False
    assert (t.state, bytes(t.stream), t.ooo, t.next_seq) == (S.CLOSED, b"", {}, nxt)


def test_new_syn_revives_a_closed_tcb_with_a_new_isn() -> None:
    t = established()
    t.handle(In.RECV_DATA, 1001, b"abc")
    t.handle(In.RECV_RST, 1004, b"")
    assert t.handle(In.RECV_SYN, MOD - 1, b"") is False
    assert (t.state, t.next_seq, bytes(t.stream)) == (S.SYN_SEEN, 0, b"")
    assert t.handle(In.RECV_DATA, 1004, b"old") is False  # the old sequence is now far away
    assert t.handle(In.RECV_DATA, 0, b"new") is True
    assert (t.state, bytes(t.stream)) == (S.ESTABLISHED, b"new")


def test_retransmitted_syn_in_syn_seen_takes_the_new_isn() -> None:
    t = tcb(1000)
    assert t.handle(In.RECV_SYN, 2000, b"") is False
    assert (t.state, t.next_seq) == (S.SYN_SEEN, 2001)
    assert t.handle(In.RECV_DATA, 1001, b"old") is False
    assert t.handle(In.RECV_DATA, 2001, b"new") is True
    assert bytes(t.stream) == b"new"


def test_isn_effect_clears_stream_and_held_segments() -> None:
    """The "isn" effect on its own, from a table where a second SYN restarts the TCB."""
    p = TcbParams()
    table = transition_table(p)
    table[(S.ESTABLISHED, In.RECV_SYN)] = ("isn", S.SYN_SEEN)
    t = Tcb(p, table, 1000)
    t.handle(In.RECV_DATA, 1001, b"abc")
    t.handle(In.RECV_DATA, 1010, b"zz")
    assert t.handle(In.RECV_SYN, 7, b"") is False
    assert (t.state, t.next_seq, bytes(t.stream), t.ooo) == (S.SYN_SEEN, 8, b"", {})


def test_ignored_fin_and_a_second_syn() -> None:
    t = established(on_fin="ignore")
    t.handle(In.RECV_DATA, 1001, b"abc")
    assert t.handle(In.RECV_FIN, 1004, b"") is False
    assert t.handle(In.RECV_SYN, 5, b"") is False
    assert t.handle(In.RECV_ACK, 1004, b"zzz") is False
    assert (t.state, t.next_seq) == (S.ESTABLISHED, 1004)
    assert t.handle(In.RECV_DATA, 1004, b"def") is True
    assert bytes(t.stream) == b"abcdef"


@pytest.mark.parametrize(
    ("params", "inp"),
    [
        ({"on_rst": "resync"}, In.RECV_RST),
        ({"on_fin": "resync"}, In.RECV_FIN),
        ({"resync_on_syn": True}, In.RECV_SYN),
    ],
)
def test_resync_next_client_data_sets_the_sequence(params: dict, inp: TcbInput) -> None:
    t = established(**params)
    t.handle(In.RECV_DATA, 1001, b"abc")
    t.handle(In.RECV_DATA, 1010, b"held")
    assert t.handle(inp, 1004, b"") is False
    assert t.state is S.RESYNC
    # nothing is cleared on entry: the stream and the held segment are still there
    assert (bytes(t.stream), t.ooo, t.next_seq) == (b"abc", {1010: b"held"}, 1004)
    # in RESYNC, a SYN/ACK, ACK or further SYN change nothing
    for other in (In.RECV_SYNACK, In.RECV_ACK, In.RECV_SYN):
        assert t.handle(other, 99, b"") is False
        assert t.state is S.RESYNC
    # the next client data packet is taken as in order, wherever it is
    assert t.handle(In.RECV_DATA, 50000, b"XYZ") is True
    assert t.state is S.ESTABLISHED
    assert (bytes(t.stream), t.next_seq, t.ooo) == (b"abcXYZ", 50003, {})
    # the real continuation is now out of window and ignored
    assert t.handle(In.RECV_DATA, 1004, b"def") is False
    assert t.handle(In.RECV_DATA, 50003, b"!") is True
    assert bytes(t.stream) == b"abcXYZ!"


def test_resync_on_syn_off_keeps_the_sequence() -> None:
    t = established(resync_on_syn=False)
    t.handle(In.RECV_DATA, 1001, b"abc")
    t.handle(In.RECV_SYN, 7, b"")
    assert t.handle(In.RECV_DATA, 50000, b"XYZ") is False
    assert t.state is S.ESTABLISHED
    assert bytes(t.stream) == b"abc"


def test_resync_data_then_held_segments_follow_the_new_sequence() -> None:
    t = established(on_rst="resync")
    t.handle(In.RECV_RST, 1001, b"")
    assert t.handle(In.RECV_DATA, 500, b"ab") is True
    assert t.handle(In.RECV_DATA, 504, b"ef") is False
    assert t.handle(In.RECV_DATA, 502, b"cd") is True
    assert (bytes(t.stream), t.next_seq) == (b"abcdef", 506)


def test_resync_with_empty_data_sets_the_sequence_without_growth() -> None:
    t = established(on_rst="resync")
    t.handle(In.RECV_DATA, 1010, b"held")
    t.handle(In.RECV_RST, 1001, b"")
    assert t.handle(In.RECV_DATA, 70, b"") is False
    assert (t.state, t.next_seq, t.ooo) == (S.ESTABLISHED, 70, {})


def test_resync_in_syn_seen() -> None:
    t = tcb(1000, on_fin="resync")
    t.handle(In.RECV_FIN, 1001, b"")
    assert t.state is S.RESYNC
    assert t.handle(In.RECV_DATA, 9, b"GET") is True
    assert (t.state, bytes(t.stream), t.next_seq) == (S.ESTABLISHED, b"GET", 12)


def test_rst_in_resync_tears_down() -> None:
    t = established(on_fin="resync")
    t.handle(In.RECV_DATA, 1001, b"abc")
    t.handle(In.RECV_FIN, 1004, b"")
    assert t.handle(In.RECV_RST, 1004, b"") is False
    assert (t.state, bytes(t.stream)) == (S.CLOSED, b"")


def test_syn_ack_and_acks_change_nothing_but_the_state() -> None:
    t = tcb(1000)
    assert t.handle(In.RECV_ACK, 1001, b"") is False
    assert t.state is S.SYN_SEEN
    assert t.handle(In.RECV_SYNACK, 1, b"") is False
    assert (t.state, t.next_seq) == (S.ESTABLISHED, 1001)
    assert t.handle(In.RECV_SYNACK, 1, b"") is False
    assert t.state is S.ESTABLISHED


# ------------------------------------------------------------------ suspected deviations


def test_held_bytes_win_over_a_later_in_order_overlap() -> None:
    t = established()
    t.handle(In.RECV_DATA, 1004, b"DEF")  # seen first
    t.handle(In.RECV_DATA, 1001, b"abcxyz")  # seen second, covers 1004..1006 too
    assert bytes(t.stream) == b"abcDEF"


def test_longer_segment_at_a_held_seq_is_not_lost() -> None:
    t = established()
    t.handle(In.RECV_DATA, 1003, b"c")
    t.handle(In.RECV_DATA, 1003, b"cdef")
    t.handle(In.RECV_DATA, 1001, b"ab")
    assert bytes(t.stream) == b"abcdef"


# ------------------------------------------------------------------ model-based test


class Reassembly(RuleBasedStateMachine):
    """Random client segments against a byte-map model: first write wins, the stream is the
    contiguous prefix from offset 0, capped at inspect_bytes.

    Segments are cut from one random byte string, so overlaps agree on their bytes except for
    ``forged`` retransmissions, which rewrite bytes before the expected sequence, bytes nobody
    has sent yet, or bytes of held segments (which must win, having been seen first).
    """

    @initialize(
        data=st.binary(min_size=10, max_size=80),
        isn=st.one_of(st.integers(MOD - 90, MOD - 1), st.integers(0, MOD - 1), st.just(MOD - 1)),
        cap=st.sampled_from([1, 7, 40, 10_000]),
    )
    def start(self, data: bytes, isn: int, cap: int) -> None:
        self.data = data
        self.isn = isn
        self.cap = cap
        self.t = tcb(isn, inspect_bytes=cap, max_out_of_order=10_000)
        self.seen: dict[int, int] = {}

    def contiguous(self) -> int:
        n = 0
        while n in self.seen:
            n += 1
        return n

    def send(self, off: int, payload: bytes) -> None:
        before = self.contiguous()
        was_full = self.t.full
        for k, b in enumerate(payload):
            self.seen.setdefault(off + k, b)
        grew = self.t.handle(In.RECV_DATA, (self.isn + 1 + off) % MOD, payload)
        after = self.contiguous()
        if not was_full:
            assert grew is (after > before and before < self.cap), (off, len(payload), before)

    @rule(a=st.integers(0, 80), n=st.integers(0, 20))
    def segment(self, a: int, n: int) -> None:
        a %= len(self.data) + 1
        self.send(a, self.data[a : a + n])

    @rule(gap=st.integers(1, 20), n=st.integers(1, 20))
    def ahead(self, gap: int, n: int) -> None:
        a = min(self.contiguous() + gap, len(self.data) - 1)
        self.send(a, self.data[a : a + n])

    @rule(n=st.integers(1, 20))
    def in_order(self, n: int) -> None:
        a = min(self.contiguous(), len(self.data))
        self.send(a, self.data[a : a + n])

    @rule(back=st.integers(0, 20), n=st.integers(1, 30), fill=st.integers(0, 255))
    def forged(self, back: int, n: int, fill: int) -> None:
        a = max(0, self.contiguous() - back)
        self.send(a, bytes([fill]) * n)

    @invariant()
    def stream_matches_model(self) -> None:
        model = bytes(self.seen[k] for k in range(self.contiguous()))[: self.cap]
        stream = bytes(self.t.stream)
        assert len(stream) <= self.cap
        assert self.t.full is (len(stream) == self.cap)
        assert stream == model
        assert self.t.next_seq == (self.isn + 1 + self.contiguous()) % MOD
        assert self.t.state is S.ESTABLISHED or not self.seen


Reassembly.TestCase.settings = settings(
    max_examples=300,
    stateful_step_count=30,
    derandomize=True,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
test_reassembly_matches_model = Reassembly.TestCase


# --- making a TCB, data with FIN, checksums --------------------------------------------------


@pytest.mark.parametrize(
    ("flags", "c2s", "payload", "require_syn", "isn"),
    [
        (SYN, True, False, True, 77),  # the client's SYN makes it, its seq is the ISN
        (SYN, True, True, True, 77),  # a SYN carrying data still does
        (SYN | ACK, True, False, True, None),  # a client-sent SYN/ACK does not
        (SYN | ACK, False, False, True, None),  # nor the server's SYN/ACK
        (SYN | RST, True, False, True, None),
        (SYN, False, False, True, None),  # a bare SYN from the server side does not
        (ACK | PSH, True, True, True, None),  # mid-stream data: no TCB while a SYN is required
        (ACK | PSH, True, True, False, 76),  # without require_syn: as if its SYN were just seen
        (ACK | PSH, True, False, False, None),  # but only data makes one
        (ACK | PSH, False, True, False, None),  # and only the client's
    ],
)
def test_open_input(
    flags: int, c2s: bool, payload: bool, require_syn: bool, isn: int | None
) -> None:
    params = TcbParams(require_syn=require_syn)
    assert open_input(params, flags, c2s, 77, payload) == isn


def test_open_input_wraps_below_zero() -> None:
    assert open_input(TcbParams(require_syn=False), ACK, True, 0, True) == MOD - 1


def test_feed_applies_a_fin_that_acts_before_its_data() -> None:
    torn = established(on_fin="teardown")
    assert torn.feed(TcbInput.RECV_DATA, 1001, b"GET", ACK | FIN) is False
    assert torn.state is TcbState.CLOSED and bytes(torn.stream) == b""
    spared = established(on_fin="teardown")  # the FIN's draw said it does not act
    assert spared.feed(TcbInput.RECV_DATA, 1001, b"GET", ACK | FIN, fin=False) is True
    assert spared.state is TcbState.ESTABLISHED and bytes(spared.stream) == b"GET"
    ignored = established(on_fin="ignore")
    assert ignored.feed(TcbInput.RECV_DATA, 1001, b"GET", ACK | FIN) is True
    assert ignored.state is TcbState.ESTABLISHED and bytes(ignored.stream) == b"GET"
    plain = established(on_fin="teardown")
    assert plain.feed(TcbInput.RECV_DATA, 1001, b"GET", ACK | PSH) is True
    assert plain.state is TcbState.ESTABLISHED
    fin = established(on_fin="teardown")  # a bare FIN is fed as a FIN by its own input
    assert fin.feed(TcbInput.RECV_FIN, 1001, b"", ACK | FIN) is False
    assert fin.state is TcbState.CLOSED


@pytest.mark.parametrize("v6", [False, True])
def test_tcp_checksum(v6: bool) -> None:
    c, s = ("2001:db8::2", "2001:db8:1::2") if v6 else ("198.18.0.2", "198.19.0.2")
    raw = build_tcp(addr_bytes(c), addr_bytes(s), 40000, 80, seq=5, flags=ACK, payload=b"GET /")
    assert tcp_checksum_ok(parse(raw))
    bad = bytearray(raw)
    bad[-1] ^= 0x01
    assert not tcp_checksum_ok(parse(bytes(bad)))


# --- probabilistic teardown, small segments ----------------------------------------------------


def test_a_rst_or_fin_acts_below_its_probability_only() -> None:
    params = TcbParams(rst_probability=0.5, fin_probability=0.25)
    assert acts(params, TcbInput.RECV_RST, 0.4999) and not acts(params, TcbInput.RECV_RST, 0.5)
    assert acts(params, TcbInput.RECV_FIN, 0.2499) and not acts(params, TcbInput.RECV_FIN, 0.25)
    for inp in (TcbInput.RECV_SYN, TcbInput.RECV_DATA, TcbInput.RECV_ACK, TcbInput.RECV_SYNACK):
        assert acts(params, inp, 0.999999)


def test_every_segment_is_reassembled_by_default() -> None:
    t = Tcb(TcbParams(), transition_table(TcbParams()), 1000)
    assert t.min_segment == 0
    assert t.handle(TcbInput.RECV_DATA, 1001, b"G") is True
    assert bytes(t.stream) == b"G"


@pytest.mark.parametrize(("size", "kept"), [(3, False), (4, True), (5, True)])
def test_segments_shorter_than_min_segment_leave_a_gap(size: int, kept: bool) -> None:
    params = TcbParams()
    t = Tcb(params, transition_table(params), 1000, min_segment=4)
    assert t.handle(TcbInput.RECV_DATA, 1001, b"x" * size) is kept
    assert bytes(t.stream) == (b"x" * size if kept else b"")


def test_small_reassembled_notes_only_a_short_segment_that_grew_the_stream() -> None:
    t = established()
    assert t.small_reassembled is False
    assert t.handle(TcbInput.RECV_DATA, 1001, b"A" * 16) is True  # exactly 16: not small
    assert t.small_reassembled is False
    assert t.handle(TcbInput.RECV_DATA, 1001, b"AAA") is False  # a short retransmission
    assert t.small_reassembled is False
    assert t.handle(TcbInput.RECV_DATA, 1017, b"BBB") is True  # short and new
    assert t.small_reassembled is True
