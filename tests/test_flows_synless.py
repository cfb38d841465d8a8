"""A flow let go for want of a client SYN is opened anew by a SYN on its 5-tuple (Flow.synless).

Geneva's "no effect" row ``[TCP:flags:S]-duplicate(tamper{TCP:flags:replace:SA},)-|`` (3% in
China, spec §14c) sends a SYN/ACK copy before the client's SYN. The server answers that SYN/ACK
with a RST; when the RST reached the censor before the SYN (a race the lab's sub-millisecond
path allows), the RST let the flow go (no client SYN, no TCB: S&P'25) and the SYN that followed
on the same 5-tuple was never inspected: 12 of 50 live trials got through. The GFW creates its
TCB on the client's SYN; so does the engine now, in either order.
"""

from __future__ import annotations

import datetime as dt

import pytest

from gfwlab.engine import Report
from gfwlab.packet.ip import ACK, PSH, RST, SYN, addr_bytes, build_tcp
from gfwlab.profiles import build_censor, load_profile

C, S = addr_bytes("198.18.0.2"), addr_bytes("198.19.0.2")
REQ = b"GET /?q=ultrasurf HTTP/1.1\r\nHost: 198.19.0.2\r\nAccept: */*\r\n\r\n"


def packets(cport: int, order: str) -> list[bytes]:
    isn, sisn = 1000, 5000
    copy = build_tcp(C, S, cport, 80, seq=isn, flags=SYN | ACK)
    syn = build_tcp(C, S, cport, 80, seq=isn, flags=SYN)
    rst = build_tcp(S, C, 80, cport, seq=0, flags=RST)  # the server's answer to the SYN/ACK
    rest = [
        build_tcp(S, C, 80, cport, seq=sisn, ack=isn + 1, flags=SYN | ACK),
        build_tcp(C, S, cport, 80, seq=isn + 1, ack=sisn + 1, flags=ACK),
        build_tcp(C, S, cport, 80, seq=isn + 1, ack=sisn + 1, flags=PSH | ACK, payload=REQ),
    ]
    head = {"rst first": [copy, rst, syn], "syn first": [copy, syn, rst], "no rst": [copy, syn]}
    return head[order] + rest


@pytest.mark.parametrize("order", ["rst first", "syn first", "no rst"])
def test_a_syn_after_a_synless_flow_was_let_go_is_inspected(order: str) -> None:
    prof = load_profile("gfw", date=dt.date(2020, 1, 15), overrides=["http_keyword.probability=1"])
    censor = build_censor(prof, 1)
    acted = []
    for i, raw in enumerate(packets(40001, order)):
        for a in censor.feed(raw, 0.001 * (i + 1)):
            if isinstance(a, Report) and a.event.action != "pass":
                acted.append((a.event.mechanism, a.event.action))
    assert acted == [("http_keyword", "rst")]


def test_a_synless_flow_stays_let_go_without_a_syn() -> None:
    censor = build_censor(load_profile("gfw", date=dt.date(2020, 1, 15)), 1)
    mid = [build_tcp(C, S, 40002, 80, seq=7, ack=9, flags=ACK),
           build_tcp(C, S, 40002, 80, seq=7, ack=9, flags=PSH | ACK, payload=REQ)]  # fmt: skip
    for i, raw in enumerate(mid):
        actions = censor.feed(raw, float(i))
        assert not any(isinstance(a, Report) and a.event.action != "pass" for a in actions)


def _conversation(cport: int, isn: int, host: str = "198.19.0.2") -> list[bytes]:
    """A client connection to port 80 that asks for a forbidden keyword (handshake, request)."""
    sisn = isn + 77_000
    req = REQ.replace(b"198.19.0.2", host.encode())
    return [
        build_tcp(C, S, cport, 80, seq=isn, flags=SYN),
        build_tcp(S, C, 80, cport, seq=sisn, ack=isn + 1, flags=SYN | ACK),
        build_tcp(C, S, cport, 80, seq=isn + 1, ack=sisn + 1, flags=ACK),
        build_tcp(C, S, cport, 80, seq=isn + 1, ack=sisn + 1, flags=PSH | ACK, payload=req),
    ]


@pytest.mark.parametrize(("second_isn", "judged"), [(900_000, 2), (1000, 1)])
def test_a_new_connection_on_a_blocked_flows_5_tuple_is_judged_anew(
    second_isn: int, judged: int
) -> None:
    """A client that reuses its source port after the reset (no TIME_WAIT follows a RST) opens a
    new connection: the engine judges it anew, as the GFW makes a TCB on each client SYN. A
    retransmission of the first SYN (same ISN) stays with the blocked flow."""
    prof = load_profile(
        "gfw",
        date=dt.date(2020, 1, 15),
        overrides=["http_keyword.probability=1", "http_keyword.residual_s=0"],
    )
    censor = build_censor(prof, 1)
    resets = 0
    stream = _conversation(40003, 1000) + _conversation(40003, second_isn)
    for i, raw in enumerate(stream):
        for a in censor.feed(raw, 10.0 * (i // 4) + 0.001 * (i + 1)):
            resets += isinstance(a, Report) and a.event.action == "rst"
    assert resets == judged
