"""ss_probing against spec §7a (IMC'20): trigger, probe types, delays, staging, blocking."""

from __future__ import annotations

import gc
import random
from pathlib import Path

import pytest

from gfwlab.engine import Censor, Event, Probe
from gfwlab.engine.flows import Flow
from gfwlab.mechanisms.ss_probing import (
    FIRST_REPLAY_S,
    LATER_REPLAY_S,
    NR1_LENGTHS,
    NR2_LENGTH,
    entropy,
    mutate,
)
from gfwlab.offline.analyze import analyze
from gfwlab.offline.stats import ks_distance
from gfwlab.offline.synth import tcp_conversation
from gfwlab.packet.ip import addr_bytes, build_tcp
from gfwlab.packet.pcap import PcapWriter
from gfwlab.profiles import build_censor
from gfwlab.rules import quantiles
from helpers import binomial_interval, profile, run

C, S = "198.18.0.2", "198.19.0.2"
ALWAYS = "ss_probing.probability=1.0"
TWO_REPLAYS = ("ss_probing.replays_mean=1000", "ss_probing.max_replays=2")  # exactly R1 and R2


def first_packet(n: int, seed: int = 1) -> bytes:
    return random.Random(seed).randbytes(n)


def trigger(
    censor: Censor, payload: bytes, *, cport: int = 40000, sport: int = 8388, t0: float = 0.0
):
    return run(censor, tcp_conversation(C, S, cport, sport, payload, t0=t0, close=False))


def probes_of(r) -> list[dict]:
    return [e.extra for e in r.acted("probe") if "probe_id" in e.extra]


@pytest.mark.parametrize(
    ("length", "probed"),
    [(159, False), (160, True), (500, True), (999, True), (1000, False), (50, False)],
)
def test_length_window(length: int, probed: bool) -> None:
    # Entropy and the rarity of long candidates taken out: only the window decides here.
    sets = (ALWAYS, "ss_probing.entropy_ratio=1.0", "ss_probing.long_weight=1.0")
    r = trigger(build_censor(profile(*sets), 1), first_packet(length))
    assert bool(probes_of(r)) is probed


def test_probe_types_lengths_and_fingerprint() -> None:
    payload = first_packet(400)
    kinds: dict[str, int] = {}
    censor = build_censor(profile(ALWAYS, "ss_probing.random_probes=3"), 4)
    for i in range(200):
        r = trigger(censor, payload, cport=20000 + i, sport=10000 + i, t0=i)
        for p in probes_of(r):
            kinds[p["probe"]] = kinds.get(p["probe"], 0) + 1
            assert 46 <= p["ttl"] <= 50 and 32768 <= p["prober_sport"] <= 60999
            if p["probe"] in ("R1", "R2"):
                assert p["length"] == 400
            elif p["probe"] == "NR2":
                assert p["length"] == NR2_LENGTH
            else:
                assert p["probe"] == "NR1" and p["length"] in NR1_LENGTHS
    assert set(kinds) == {"R1", "R2", "NR1", "NR2"}
    # NR2 was about three times as frequent as all NR1 probes together (IMC'20).
    share = kinds["NR2"] / (kinds["NR1"] + kinds["NR2"])
    lo, hi = binomial_interval(kinds["NR1"] + kinds["NR2"], 0.75)
    assert lo <= share <= hi


def test_replay_byte_changes() -> None:
    base = bytes(range(80))
    noise = bytes(range(1, 11))
    diff = {
        k: [i for i, (a, b) in enumerate(zip(base, mutate(k, base, noise), strict=True)) if a != b]
        for k in ("R1", "R2", "R3", "R4", "R5")
    }
    assert diff == {
        "R1": [],
        "R2": [0],
        "R3": [0, 1, 2, 3, 4, 5, 6, 7, 62, 63],
        "R4": [16],
        "R5": [6, 16],
    }


def test_entropy_weighting_about_four_to_one() -> None:
    low = bytes([0x41, 0x42, 0x43, 0x44, 0x45, 0x46, 0x47, 0x48] * 50)  # 3.0 bits/byte
    assert abs(entropy(low) - 3.0) < 1e-9
    high = first_packet(400)
    censor = build_censor(profile(ALWAYS, "ss_probing.skip_protocols=false"), 1)
    mech = censor.mechanisms["ss_probing"]
    p_low, _ = mech.chance(low)  # type: ignore[attr-defined]
    p_high, h = mech.chance(high)  # type: ignore[attr-defined]
    assert h > 7.2 - 0.8
    assert p_low == pytest.approx(0.25)
    assert p_high / p_low > 3.0


def test_tls_and_http_first_packets_are_not_candidates() -> None:
    tls_like = b"\x16\x03\x01" + first_packet(400)
    http_like = b"GET /" + first_packet(300)
    for payload in (tls_like, http_like):
        assert not probes_of(trigger(build_censor(profile(ALWAYS), 1), payload))


def test_trigger_probability_binomial() -> None:
    n, hits = 400, 0
    censor = build_censor(profile("ss_probing.probability=0.4"), 9)
    for i in range(n):
        r = trigger(censor, first_packet(400, i), cport=20000 + i, sport=10000 + i, t0=i)
        hits += bool(probes_of(r))
    mech = censor.mechanisms["ss_probing"]
    expected = sum(mech.chance(first_packet(400, i))[0] for i in range(n)) / n  # type: ignore[attr-defined]
    lo, hi = binomial_interval(n, expected)
    assert lo <= hits / n <= hi


def _replays(n: int, seed: int = 3) -> list[list[float]]:
    """Per probed connection, its replays' delays after the trigger, in the order planned."""
    censor = build_censor(profile(ALWAYS), seed)
    out = []
    for i in range(n):
        conv = tcp_conversation(
            f"198.18.{i // 250}.{i % 250 + 1}", S, 40000, 8388, first_packet(400, i), t0=i * 10.0
        )
        r = run(censor, conv)
        trig = next(t for t, pkt in conv if len(pkt) > 400)
        out.append([p["at"] - trig for p in probes_of(r) if p["probe"] in ("R1", "R2")])
    return out


def test_replay_delays_and_counts_follow_the_measured_distributions() -> None:
    # Spec §14j (IMC'20 artifact): first replays (5,844) and later replays (14,184) against the
    # published quantiles by KS distance, and 3.43 replays per replayed connection.
    conns = _replays(2000)
    first = [c[0] for c in conns]
    later = [d for c in conns for d in c[1:]]
    assert len(later) >= 2000
    assert ks_distance(first, lambda x: quantiles.cdf(FIRST_REPLAY_S, x)) <= 0.05
    assert ks_distance(later, lambda x: quantiles.cdf(LATER_REPLAY_S, x)) <= 0.05
    assert min(first) >= 0.28
    mean = sum(len(c) for c in conns) / len(conns)
    # 1 + geometric with mean 3.43: sd = sqrt(2.43 * 3.43); 99% of the sample mean.
    sd = (2.43 * 3.43) ** 0.5 / len(conns) ** 0.5
    assert abs(mean - 3.43) <= 2.576 * sd
    beyond = sum(d > 2.3 * 3600 for d in first) / len(first)
    assert beyond <= 0.027  # "at most 2.7% beyond 2.3 h in any experiment"


def test_offline_reports_when_probes_would_be_sent() -> None:
    censor = build_censor(profile(ALWAYS, "ss_probing.delay_scale=0.001"), 2)
    r = trigger(censor, first_packet(400), t0=10.0)
    planned = probes_of(r)
    assert planned and all(10.0 <= p["at"] <= 10.0 + 570 * 3.6 + 1 for p in planned)
    sent = [a for a in censor.flush() if isinstance(a, Probe)]
    assert sent == []  # run() already released them: the Probe actions came from the timers


def test_a_censor_that_runs_no_probes_holds_none() -> None:
    # An analysis of a capture sends no probe and reports no result: its censor plans and
    # reports the same probes, as events, and holds none: no timer for a Probe action that
    # nobody sends, no entry (with its flow) for a result that cannot come.
    sets = (ALWAYS, "ss_probing.delay_scale=0.001")
    packets = [
        p
        for i in range(40)
        for p in tcp_conversation(C, S, 20000 + i, 8388, first_packet(400, i), t0=3.0 * i)
    ]
    runs = build_censor(profile(*sets), 6)
    runs_none = build_censor(profile(*sets), 6, runs_probes=False)
    r, r_none = run(runs, packets), run(runs_none, packets)
    planned = probes_of(r)
    assert [e.as_dict() for e in r_none.events] == [e.as_dict() for e in r.events]
    assert len(planned) >= 40 and len(r.probes) == len(planned) == len(runs.verdicts.probes)
    assert r_none.probes == [] and runs_none.verdicts.probes == {}
    # A result it is given anyway is an unknown probe's: ignored.
    assert runs_none.on_probe_result(r.probes[0].probe_id, "data", 500.0, 32) == []


@pytest.mark.parametrize("exact", [False, True])
def test_an_analysis_keeps_no_probed_flow_alive(tmp_path: Path, exact: bool) -> None:
    # 600 probed connections, one every 2 s. The flow table forgets each 120 s after its last
    # packet, so about 60 flows are alive in it at a time; the fast path keeps the flows of its
    # window (here 1,000 records, about 110 connections) until the window is done. Held for
    # their probes' results, nearly all were alive by the end (572 in the last sample).
    cap = tmp_path / "probed.pcap"
    with PcapWriter(str(cap)) as writer:
        packets = [
            p
            for i in range(600)
            for p in tcp_conversation(C, S, 20000 + i, 8388, first_packet(400, i), t0=2.0 * i)
        ]
        for ts, pkt in sorted(packets, key=lambda p: p[0]):
            writer.write(1.7e9 + ts, pkt)
    alive: list[int] = []
    seen = [0]

    def count(event: Event) -> None:
        seen[0] += 1
        if seen[0] % 200 == 0:
            alive.append(sum(1 for o in gc.get_objects() if type(o) is Flow))

    summary = analyze(
        str(cap), profile(ALWAYS), seed=1, on_event=count, exact=exact, max_index=1000, no_gain=2.0
    )
    assert summary.events.get("ss_probing/probe", 0) > 600 and len(alive) >= 5
    assert max(alive) <= 250, alive


def _probe_actions(censor: Censor, payload: bytes) -> list[Probe]:
    out: list[Probe] = []
    for t, pkt in tcp_conversation(C, S, 40000, 8388, payload, close=False):
        censor.feed(pkt, t)
    while (deadline := censor.next_deadline()) is not None and deadline < 1e6:
        out += [a for a in censor.on_timer(deadline) if isinstance(a, Probe)]
        if not censor.verdicts.timers:
            break
    return out


def test_staging_and_blocking_after_a_replay_is_answered() -> None:
    censor = build_censor(
        profile(
            ALWAYS, "ss_probing.delay_scale=0.0001", "ss_probing.random_probes=0", *TWO_REPLAYS
        ),
        5,
    )
    probes = _probe_actions(censor, first_packet(400))
    assert {p.kind for p in probes} == {"R1", "R2"}
    r1 = next(p for p in probes if p.kind == "R1")
    assert r1.server == S and r1.port == 8388 and r1.payload == first_packet(400)
    # R1 answered with data: R3-R5 follow (staged) and the server's port is null-routed.
    actions = censor.on_probe_result(r1.probe_id, "data", 100.0, response_len=32)
    reports = [a.event for a in actions if hasattr(a, "event")]
    assert any(e.action == "null-route" for e in reports)
    c, s = addr_bytes(C), addr_bytes(S)
    new_syn = build_tcp(c, s, 41000, 8388, seq=1, flags=0x02)
    assert type(censor.feed(new_syn, 101.0)[0]).__name__ == "Accept"  # SYN reaches the server
    synack = build_tcp(s, c, 8388, 41000, seq=9, ack=2, flags=0x12)
    assert type(censor.feed(synack, 101.001)[0]).__name__ == "Drop"  # server-to-client dropped
    other = build_tcp(s, c, 443, 41001, seq=9, ack=2, flags=0x12)
    assert type(censor.feed(other, 101.002)[0]).__name__ == "Accept"  # another port is fine


def test_staged_probes_need_an_answer_and_never_blocks() -> None:
    sets = (
        ALWAYS,
        "ss_probing.delay_scale=0.0001",
        "ss_probing.random_probes=0",
        "ss_probing.block_on='never'",
        *TWO_REPLAYS,
    )
    censor = build_censor(profile(*sets), 5)
    probes = _probe_actions(censor, first_packet(400))
    r2 = next(p for p in probes if p.kind == "R2")
    assert censor.on_probe_result(r2.probe_id, "timeout", 50.0)
    later = _probe_actions(censor, b"")  # nothing new was planned
    assert later == []
    actions = censor.on_probe_result(
        next(p for p in probes if p.kind == "R1").probe_id, "data", 60.0
    )
    events = [a.event for a in actions if hasattr(a, "event")]
    assert not any(e.action == "null-route" for e in events)
    staged = [e.extra["probe"] for e in events if e.action == "probe" and "at" in e.extra]
    assert sorted(staged) == ["R3", "R4", "R5"]
