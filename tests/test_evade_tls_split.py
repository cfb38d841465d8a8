"""``fragment{tls:size:in_order}``: the ClientHello's TLS record re-framed as two records (spec
§4a: the GFW reassembles TCP but not TLS records, S&P'25, confirmed 2024-04-04; §14d: CERNET and
China Mobile reset record-split ClientHellos from Dec 2025), offline, with its expected result
per date and network. Live: tests/test_lab_evade_targets.py."""

from __future__ import annotations

import datetime as dt
import subprocess
import sys

import pytest

from gfwlab.evade.interp import Interpreter, Pkt
from gfwlab.evade.simulate import CLIENT, SERVER, run
from gfwlab.evade.strategy import StrategyError, parse_strategy
from gfwlab.packet.ip import ACK, PSH, addr_bytes, build_tcp, parse
from gfwlab.profiles import load_profiles
from gfwlab.proto.tls import build_client_hello

SPLIT = "[TCP:flags:PA]-fragment{tls:20:True}-|"
HELLO = build_client_hello("www.facebook.com")
C, S = addr_bytes(CLIENT), addr_bytes(SERVER)


def segment(seq: int, payload: bytes, ack: int = 7) -> bytes:
    return build_tcp(C, S, 40000, 443, payload=payload, seq=seq, ack=ack, flags=PSH | ACK)


def test_the_record_is_reframed_in_two_segments_and_later_sequence_numbers_shift() -> None:
    interp = Interpreter(parse_strategy(SPLIT))
    one, two = (parse(p) for p in interp.outbound(segment(1000, HELLO)))
    body = HELLO[5:]
    assert one.payload == HELLO[:3] + (20).to_bytes(2, "big") + body[:20]
    assert two.payload == HELLO[:3] + (len(body) - 20).to_bytes(2, "big") + body[20:]
    assert (one.seq, two.seq) == (1000, 1000 + 25)
    assert all(Pkt.parse(p.raw).build() == p.raw for p in (one, two))  # valid checksums
    # The endpoint's next segment moves 5 bytes up; a retransmitted ClientHello adds nothing.
    (later,) = interp.outbound(segment(1000 + len(HELLO), b"\x17\x03\x03\x00\x01x"))
    assert parse(later).seq == 1000 + len(HELLO) + 5
    again = [parse(p) for p in interp.outbound(segment(1000, HELLO))]
    assert [p.seq for p in again] == [1000, 1025]
    # The peer's acknowledgements come back into the endpoint's sequence space.
    reply = build_tcp(S, C, 443, 40000, seq=7, ack=1000 + len(HELLO) + 5, flags=ACK)
    (fixed,) = interp.inbound(reply)
    assert parse(fixed).ack == 1000 + len(HELLO)
    early = build_tcp(S, C, 443, 40000, seq=7, ack=1000, flags=ACK)
    assert interp.inbound(early) == [early]


def test_only_a_clienthello_record_is_cut() -> None:
    interp = Interpreter(parse_strategy(SPLIT))
    app = segment(1000, b"\x17\x03\x03\x00\x05hello")  # encrypted records carry their own MAC
    assert interp.outbound(app) == [app]
    http = segment(1000, b"GET / HTTP/1.1\r\n\r\n")
    assert interp.outbound(http) == [http]
    out = Interpreter(parse_strategy("[TCP:flags:PA]-fragment{tls:-1:False}-|")).outbound(
        segment(1000, HELLO)
    )
    first, second = (parse(p) for p in out)  # out of order: the second record first
    half = (len(HELLO) - 5) // 2
    assert (first.seq, second.seq) == (1000 + 5 + half, 1000)


def test_a_tls_fragment_takes_no_overlap() -> None:
    with pytest.raises(StrategyError, match="column 37: expected no overlap"):
        parse_strategy("[TCP:flags:PA]-fragment{tls:20:True:4}-|")


@pytest.mark.parametrize(
    ("day", "network", "evades"),
    [
        (dt.date(2020, 1, 15), "national", True),  # no record reassembly, ever, nationally
        (dt.date(2024, 6, 1), "national", True),  # S&P'25: TCP reassembled, records not
        (dt.date(2026, 1, 15), "national", True),
        (dt.date(2026, 1, 15), "cernet", False),  # net4people #550: records joined, Dec 2025
        (dt.date(2025, 6, 1), "cernet", True),  # before the change
    ],
)
def test_expected_result_per_date_and_network(day: dt.date, network: str, evades: bool) -> None:
    prof = load_profiles(["gfw"], date=day, overrides=["tls_sni.residual_s=0"], network=network)[0]
    assert run("\\/", "tls_sni", prof, 3).successes == 0  # the baseline is censored
    assert run(SPLIT, "tls_sni", prof, 5).successes == (5 if evades else 0)
    # TCP segmentation of the same ClientHello: evades only before the reassembly fix (2022).
    seg = run("[TCP:flags:PA]-fragment{tcp:8:True}(,fragment{tcp:4:True})-|", "tls_sni", prof, 3)
    assert seg.successes == (3 if day.year < 2022 else 0)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--against", "smtp"], "--against: expected http_keyword or tls_sni or dns_injection "
         "or quic_sni live"),
        (["--side", "middle"], "--side: expected client or server, got 'middle'"),
    ],
)  # fmt: skip
def test_live_run_rejects_a_bad_target_or_side_before_touching_the_lab(
    args: list[str], message: str
) -> None:
    res = subprocess.run(
        [sys.executable, "-m", "gfwlab", "evade", "run", "-s", "\\/", *args],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert res.returncode == 2
    assert res.stderr.strip().splitlines() == [f"gfwlab: error: {message}"]
