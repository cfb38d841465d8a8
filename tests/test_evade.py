"""gfwlab evade, offline: Geneva's strategy language parsed and run, and its verdicts equal to
those of the same strategies' packets built independently (tests/test_tcb_geneva.py builds them
by hand from the published descriptions)."""

from __future__ import annotations

import datetime as dt
import random
import subprocess
import sys
from pathlib import Path

import pytest

from gfwlab.evade.interp import Interpreter, Pkt, flags_value
from gfwlab.evade.library import CHINA
from gfwlab.evade.live import residual_left
from gfwlab.evade.simulate import binomial_counts, run, wilson
from gfwlab.evade.strategy import StrategyError, parse_strategy
from gfwlab.offline.synth import http_conversation
from gfwlab.packet.ip import ACK, PSH, parse
from gfwlab.packet.pcap import CaptureReader, PcapWriter
from tests.helpers import binomial_counts as helper_counts
from tests.helpers import profile
from tests.test_tcb_geneva import FAMILIES, play

OLD = dt.date(2020, 1, 15)


@pytest.mark.parametrize("entry", CHINA, ids=[e.strategy for e in CHINA])
def test_every_published_strategy_parses_and_prints_back(entry: object) -> None:
    text = entry.strategy  # type: ignore[attr-defined]
    parsed = parse_strategy(text)
    assert parse_strategy(str(parsed)) == parsed


@pytest.mark.parametrize(
    ("text", "column", "expected"),
    [
        ("[TCP:flags:PA]-duplicat(,)-|", 16, "an action"),
        ("[TCP:flagz:PA]-drop-|", 6, "a TCP field"),
        ("[TCX:flags:PA]-drop-|", 2, "a protocol"),
        ("[TCP:flags:PA]-tamper{TCP:ttl:replace}-|", 27, "a TCP field"),
        ("[TCP:flags:PA]-tamper{TCP:window:rplace:3}-|", 34, "'replace:value' or 'corrupt'"),
        ("[TCP:flags:PA]-fragment{tcp:x:True}-|", 29, "a whole number"),
        ("[TCP:flags:PA]-fragment{tcp:8:Tru}-|", 31, "True (in order)"),
        ("[TCP:flags:PA-drop", 19, "']' closing the trigger"),
        ("[TCP:flags:PA]-tamper-|", 22, "'{' and the parameters"),
        ("[TCP:flags:PA]-drop{x}-|", 21, "no parameters"),
        ("[TCP:flags:PA]-tamper{TCP:seq:corrupt}(drop,drop)-|", 45, "')': tamper has one"),
        ("[TCP:flags:PA]-duplicate(drop,drop", 35, "',' or ')' closing"),
        ("[TCP:flags:PA]-drop-| junk", 23, "a tree starting with '['"),
        ("[TCP:flags:PA:x]-drop-|", 2 + len("TCP:flags:PA:"), "a whole number of times"),
    ],
)
def test_a_bad_strategy_is_one_line_naming_the_column(
    text: str, column: int, expected: str
) -> None:
    with pytest.raises(StrategyError) as info:
        parse_strategy(text)
    msg = str(info.value)
    assert "\n" not in msg
    assert msg.startswith(f"strategy, column {column}: expected {expected}"), msg


def test_the_cli_reports_a_bad_strategy_with_exit_2() -> None:
    res = subprocess.run(
        [sys.executable, "-m", "gfwlab", "evade", "run", "--offline", "-s", "[TCP:flags:PA]-x-|"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert res.returncode == 2
    assert res.stderr.strip().splitlines() == [
        "gfwlab: error: strategy, column 16: expected an action (duplicate, fragment, tamper, "
        "drop, send, sleep), got 'x-|'"
    ]


def _request() -> bytes:
    pkts = http_conversation("198.18.0.2", "198.19.0.2", 40000, "example.org", "/?q=ultrasurf")
    return next(raw for _, raw in pkts if parse(raw).payload)


def test_duplicate_sends_the_tampered_copy_first_and_the_original_intact() -> None:
    raw = _request()
    interp = Interpreter(parse_strategy("[TCP:flags:PA]-duplicate(tamper{IP:ttl:replace:10},)-|"))
    first, second = interp.outbound(raw)
    assert parse(first).ttl == 10 and second == raw


def test_fragment_segments_in_and_out_of_order_with_fresh_checksums() -> None:
    raw = _request()
    payload, seq = parse(raw).payload, parse(raw).seq
    for order, want in (("True", [0, 8]), ("False", [8, 0])):
        out = Interpreter(parse_strategy(f"[TCP:flags:PA]-fragment{{tcp:8:{order}}}-|")).outbound(
            raw
        )
        got = [parse(p) for p in out]
        assert [p.seq - seq for p in got] == want
        assert b"".join(p.payload for p in sorted(got, key=lambda p: p.seq)) == payload
        assert all(Pkt.parse(p).build() == p for p in out)  # checksums and lengths recomputed


def test_ip_fragmentation_marks_more_fragments_and_offsets() -> None:
    raw = _request()
    a, b = Interpreter(parse_strategy("[TCP:flags:PA]-fragment{ip:2:True}-|")).outbound(raw)
    pa, pb = parse(a), parse(b)
    assert pa.fragment and pb.fragment
    assert (a[6] >> 5) & 1 == 1 and int.from_bytes(b[6:8], "big") & 0x1FFF == 2


def test_tamper_corrupt_checksum_and_flags_replace_and_options() -> None:
    raw = _request()
    s = "[TCP:flags:PA]-tamper{TCP:flags:replace:FRAPUEN}(tamper{TCP:options-md5header:corrupt},)-|"
    (out,) = Interpreter(parse_strategy(s), random.Random(1)).outbound(raw)
    pkt = Pkt.parse(out)
    assert pkt is not None and pkt.l4["flags"] == flags_value("FRAPUEN")
    assert any(kind == 19 and len(v) == 16 for kind, v in pkt.options)
    (bad,) = Interpreter(parse_strategy("[TCP:flags:PA]-tamper{TCP:chksum:corrupt}-|")).outbound(
        raw
    )
    assert bad[36:38] != raw[36:38] and (bad[:36], bad[38:]) == (raw[:36], raw[38:])


def test_gas_limits_how_often_a_trigger_fires_and_drop_removes() -> None:
    raw = _request()
    interp = Interpreter(parse_strategy("[TCP:flags:PA:1]-drop-|"))
    assert interp.outbound(raw) == [] and interp.outbound(raw) == [raw]


def test_a_trigger_compares_flags_exactly() -> None:
    raw = _request()
    assert parse(raw).flags == PSH | ACK
    assert Interpreter(parse_strategy("[TCP:flags:A]-drop-|")).outbound(raw) == [raw]


# ------------------------------------------------------------------ same packets, same verdicts

# The hand-built families of test_tcb_geneva.py next to the published strategy they describe.
SAME = {
    "baseline (no strategy)": 0,
    "desync: data offset 10 + bad checksum": 1,
    "desync: data offset 10 + TTL 10": 2,
    "desync: data offset 10 + corrupted ACK": 3,
    "desync: corrupted window scale + data offset 8": 4,
    "desync: corrupted payload + bad checksum": 5,
    "desync: corrupted payload + TTL 8": 6,
    "desync: corrupted payload + corrupted ACK": 7,
    "teardown: RST + bad checksum": 8,
    "teardown: RST + TTL 10": 9,
    "teardown: RST + corrupted MD5 option": 10,
    "teardown: RST+ACK + bad checksum": 12,
    "teardown: RST+ACK + TTL 10": 13,
    "teardown: FRAPUEN + bad checksum": 14,
    "teardown: FREACN + TTL 10": 15,
    "teardown: FRAPUN + corrupted MD5 option": 16,
    "segmentation: out of order at 8, corrupted-seq ACK": 17,
    "segmentation: in order at 8, then 4": 18,
    "segmentation: cut in half": 19,
    "FIN with IP length 78 before the request": 20,
    "SYN duplicate with a payload": 21,
    "request copy with IP length 64": 22,
    "client SYN/ACK before its SYN (TCB turnaround)": 23,
    "request with a corrupted UTO option": 24,
}
SIMULTANEOUS_OPEN = (
    "[TCP:flags:SA]-duplicate(tamper{TCP:flags:replace:FREC}(duplicate,),"
    "tamper{TCP:flags:replace:FSEC})-| \\/"
)
SERVER_SIDE = {"server side: simultaneous open": SIMULTANEOUS_OPEN}


@pytest.mark.parametrize("day", [OLD, dt.date(2024, 6, 1)])
@pytest.mark.parametrize("fam", FAMILIES, ids=[f.name for f in FAMILIES])
def test_independently_built_packets_get_the_same_verdict(fam: object, day: dt.date) -> None:
    """The censor has no channel from evade: packets built by hand from the published
    description and packets made by the interpreter from the strategy get the same verdict."""
    name = fam.name  # type: ignore[attr-defined]
    sets = (
        "http_keyword.probability=1", "tcb.rst_probability=1", "tcb.fin_probability=1",
        "tcb.simultaneous_open_probability=1",
    )  # fmt: skip
    _, by_hand = play(fam, *sets[1:], day=day)  # type: ignore[arg-type]
    prof = profile(*sets, "http_keyword.residual_s=0", date=day)
    if name in SERVER_SIDE:
        res = run(SERVER_SIDE[name], "http_keyword", prof, 3, side="server")
    else:
        res = run(CHINA[SAME[name]].strategy, "http_keyword", prof, 3)
    assert {not t.evaded for t in res.trials} == {by_hand}, name


def test_every_family_has_its_strategy() -> None:
    assert set(SAME) | set(SERVER_SIDE) == {f.name for f in FAMILIES}


# ------------------------------------------------------------------ the matrix, offline


def test_library_matrix_offline_matches_every_published_row_in_2020() -> None:
    """Every China row's successes in 50 seeded trials lie in the two-sided 99.9% binomial
    interval of its published rate (the live criterion, offline: 2020-01-15, keyword 0.97)."""
    prof = profile("http_keyword.probability=0.97", "http_keyword.residual_s=0", date=OLD)
    for entry in CHINA:
        res = run(entry.strategy, "http_keyword", prof, 50, seed=0)
        lo, hi = entry.bounds(50)
        print(f"{entry.strategy}: {res.successes}/50, seeds 0..49, interval {lo}..{hi}")
        assert lo <= res.successes <= hi, entry.strategy


def test_server_side_simultaneous_open_gets_its_published_rate() -> None:
    """Come as You Are's simultaneous open (43% on HTTP in China, spec §9): the scripted client
    answers the server's FIN+SYN with its own SYN/ACK, the server's TCP acknowledges it, and
    the censor turns its TCB around in the fitted share of flows."""
    prof = profile("http_keyword.probability=0.97", "http_keyword.residual_s=0", date=OLD)
    res = run(SIMULTANEOUS_OPEN, "http_keyword", prof, 50, seed=0, side="server")
    lo, hi = binomial_counts(50, 0.43)
    print(f"simultaneous open: {res.successes}/50, seeds 0..49, interval {lo}..{hi}")
    assert lo <= res.successes <= hi
    wire = [summary for summary, _ in res.trials[0].trace]
    assert [w.split(" seq")[0] for w in wire[:7]] == [
        "client S", "server FREC", "server FREC", "server FSEC", "client SA", "server A",
        "client A",
    ]  # fmt: skip
    turned = [t for t in res.trials if "roles swapped" in t.trace[3][1]]
    assert turned and all(t.evaded for t in turned)  # the rest: the 3% baseline


def test_segmentation_fails_in_2024_with_the_citation() -> None:
    prof = profile("http_keyword.probability=1", "http_keyword.residual_s=0")
    for idx in (17, 18):
        assert run(CHINA[idx].strategy, "http_keyword", prof, 5).successes == 0


def test_interval_helpers_agree() -> None:
    assert binomial_counts(50, 0.53) == helper_counts(50, 0.53) == (15, 38)
    lo, hi = wilson(45, 50)
    assert 0.7 < lo < 0.9 < hi < 1.0


def test_apply_rewrites_one_side_of_a_capture(tmp_path: Path) -> None:
    src, dst = tmp_path / "in.pcap", tmp_path / "out.pcap"
    pkts = http_conversation("198.18.0.2", "198.19.0.2", 40000, "example.org", "/?q=ultrasurf")
    with PcapWriter(str(src)) as w:
        for ts, raw in pkts:
            w.write(ts, raw)
    res = subprocess.run(
        [sys.executable, "-m", "gfwlab", "evade", "apply", "-s",
         "[TCP:flags:PA]-fragment{tcp:8:True}-|", str(src), "-o", str(dst)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    out = [parse(raw) for _, raw in CaptureReader(str(dst))]
    assert len(out) == len(pkts) + 1
    assert next(len(p.payload) for p in out if p.payload and p.src == out[0].src) == 8


def test_residual_wait_is_never_negative() -> None:
    """A trial waits for its address's residual block from one reading of the clock: reading it
    twice let the end pass between the check and the sleep (``time.sleep`` of a negative
    number raises), which stopped a live matrix run."""
    last = {"198.19.0.2": 100.0}
    assert residual_left(last, "198.19.0.3", 90.0, 150.0) == 0.0  # never used
    assert residual_left(last, "198.19.0.2", 90.0, 150.0) == 40.0
    assert residual_left(last, "198.19.0.2", 90.0, 190.0) == 0.0  # exactly at the end
    assert residual_left(last, "198.19.0.2", 90.0, 190.000001) == 0.0  # just past it
