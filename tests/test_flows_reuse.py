"""A new connection on the 5-tuple of a bypassed flow is judged anew (Flow.opened_anew_by).

A flow whose verdict is final (BYPASSED: judged clean) is kept for ``engine.tcp_timeout_s``. A
client that reuses its source port toward the same server (load tools that wrap their ports;
Linux after TIME_WAIT or with ``tcp_tw_reuse``) sends a bare SYN with a new initial sequence
number: the GFW makes a TCB on a client's SYN (spec §9, §3, §4a), and the engine keeps no TCB for
a bypassed flow, so the new connection is inspected as a fresh one would be, residual blocks on
its key included. A retransmitted SYN (the same ISN) stays with its flow. A SYN on a flow still
being inspected is left to the TCB table (``resync_on_syn``, spec §9).
"""

from __future__ import annotations

import pytest

from gfwlab.engine import Censor
from gfwlab.engine.flows import Flow, FlowState, open_flow
from gfwlab.offline.synth import http_get, tcp_conversation
from gfwlab.packet.ip import ACK, SYN, addr_bytes, build_tcp, parse
from gfwlab.profiles import build_censor
from gfwlab.proto.tls import build_client_hello
from gfwlab.rules.schema import Prefixes
from helpers import Run, profile, run

CLIENT, SERVER = "198.18.0.2", "198.19.2.7"
SURE = ("http_keyword.probability=1", "http_keyword.residual_probability=1")
REQUESTS = {
    # kind: (server port, clean first flight, blocked first flight, mechanism)
    "http": (80, http_get(SERVER, "/"), http_get(SERVER, "/?q=ultrasurf"), "http_keyword"),
    "tls": (
        443,
        build_client_hello("example.org"),
        build_client_hello("www.facebook.com"),
        "tls_sni",
    ),
}


Packets = list[tuple[float, bytes]]


def _conn(kind: str, cport: int, isn: int, t0: float, *, blocked: bool) -> Packets:
    """One whole connection (handshake, first flight, answer, FIN exchange)."""
    sport, clean, bad, _ = REQUESTS[kind]
    return tcp_conversation(
        CLIENT, SERVER, cport, sport, bad if blocked else clean,
        t0=t0, isn_c=isn, isn_s=isn + 77_000, response=b"ok",
    )  # fmt: skip


def _censor(*sets: str) -> Censor:
    return build_censor(profile(*SURE, *sets), 1)


def _resets(result: Run, mechanism: str, cport: int) -> int:
    return sum(1 for e in result.acted("rst", mechanism) if e.flow.sport == cport)


@pytest.mark.parametrize("kind", ["http", "tls"])
@pytest.mark.parametrize(
    ("second_isn", "gap", "judged"),
    [
        (900_000, 10.0, True),  # a new connection within the timeout: judged anew
        (1000, 10.0, False),  # the same ISN: a retransmission, it stays bypassed
        (900_000, 130.0, True),  # after the timeout the flow is forgotten anyway
        (1000, 130.0, True),
    ],
    ids=["new-isn-within", "same-isn-within", "new-isn-after", "same-isn-after"],
)
def test_a_new_connection_after_a_clean_one_on_its_5_tuple_is_judged_anew(
    kind: str, second_isn: int, gap: float, judged: bool
) -> None:
    mechanism = REQUESTS[kind][3]
    censor = _censor()
    first = _conn(kind, 40001, 1000, 0.0, blocked=False)
    second = _conn(kind, 40001, second_isn, gap, blocked=True)
    result = run(censor, first + second)
    assert _resets(result, mechanism, 40001) == int(judged)
    # A fresh connection on another port is what the reused one must look like.
    fresh = run(_censor(), _conn(kind, 40002, second_isn, gap, blocked=True))
    assert _resets(fresh, mechanism, 40002) == 1
    assert censor.stats.flows == (2 if judged else 1)


@pytest.mark.parametrize("kind", ["http", "tls"])
def test_with_reopen_bypassed_off_the_new_connection_inherits_the_bypass(kind: str) -> None:
    """The parameter restores the other reading: a judged connection's TCB ignores the SYN."""
    censor = _censor("tcb.reopen_bypassed=false")
    packets = _conn(kind, 40001, 1000, 0.0, blocked=False)
    packets += _conn(kind, 40001, 900_000, 10.0, blocked=True)
    assert _resets(run(censor, packets), REQUESTS[kind][3], 40001) == 0
    assert censor.stats.flows == 1


def test_a_retransmitted_syn_in_the_middle_of_a_bypassed_flow_stays_with_it() -> None:
    """A late duplicate of the first SYN (same ISN) after the request was judged clean."""
    censor = _censor()
    packets = _conn("http", 40001, 1000, 0.0, blocked=False)
    c, s = addr_bytes(CLIENT), addr_bytes(SERVER)
    packets.insert(5, (packets[4][0] + 0.0001, build_tcp(c, s, 40001, 80, seq=1000, flags=SYN)))
    result = run(censor, packets)
    assert censor.stats.flows == 1 and not result.acted("rst")


def test_residual_blocks_on_its_key_apply_to_the_new_connection() -> None:
    """Port P: a clean connection (bypassed). Port Q: a keyword, so a 90 s residual block on
    (client, server, 80). Port P again with a new ISN and a clean request: the residual block
    hits it, as it hits any new connection on that key (spec §3)."""
    censor = _censor()
    packets = _conn("http", 40001, 1000, 0.0, blocked=False)
    packets += _conn("http", 40005, 5000, 1.0, blocked=True)
    packets += _conn("http", 40001, 900_000, 2.0, blocked=False)
    result = run(censor, sorted(packets, key=lambda tp: tp[0]))
    assert _resets(result, "http_keyword", 40005) == 1
    hits = [e for e in result.acted("rst", "http_keyword") if e.flow.sport == 40001]
    assert len(hits) == 1 and hits[0].ts >= 2.0


def test_a_new_connection_after_a_blocked_one_is_still_judged_anew() -> None:
    """Blocked, then a clean new connection, then a blocked one: two resets, three flows."""
    censor = _censor("http_keyword.residual_s=0")
    packets = _conn("http", 40001, 1000, 0.0, blocked=True)
    packets += _conn("http", 40001, 900_000, 5.0, blocked=False)
    packets += _conn("http", 40001, 1_800_000, 10.0, blocked=True)
    assert _resets(run(censor, packets), "http_keyword", 40001) == 2
    assert censor.stats.flows == 3


def test_which_syns_open_a_flow_anew() -> None:
    """The rule itself, per flow state: only a judged flow is replaced, only by a bare SYN from
    its client with a new ISN (any bare SYN after a synless let-go)."""
    c, s = addr_bytes(CLIENT), addr_bytes(SERVER)
    syn = parse(build_tcp(c, s, 40001, 80, seq=1000, flags=SYN))

    def flow(state: FlowState, *, synless: bool = False) -> Flow:
        f = open_flow(syn, 0.0, turnaround=False, udp_ports=frozenset(), inside=Prefixes())
        f.state, f.synless = state, synless
        return f

    new_syn = parse(build_tcp(c, s, 40001, 80, seq=77, flags=SYN))
    server_syn = parse(build_tcp(s, c, 80, 40001, seq=77, flags=SYN))
    syn_ack = parse(build_tcp(c, s, 40001, 80, seq=77, ack=5, flags=SYN | ACK))
    for state in (FlowState.BYPASSED, FlowState.BLOCKED):
        assert flow(state).opened_anew_by(new_syn)
        assert not flow(state).opened_anew_by(syn)  # a retransmission
        assert not flow(state).opened_anew_by(server_syn)
        assert not flow(state).opened_anew_by(syn_ack)
    # A flow still being inspected keeps its TCB: the TCB table decides what a SYN does.
    assert not flow(FlowState.CLEAN).opened_anew_by(new_syn)
    assert not flow(FlowState.BYPASSED).opened_anew_by(new_syn, bypassed=False)
    assert flow(FlowState.BLOCKED).opened_anew_by(new_syn, bypassed=False)
    assert flow(FlowState.BYPASSED, synless=True).opened_anew_by(server_syn)
