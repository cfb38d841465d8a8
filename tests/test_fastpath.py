"""The fast path of ``gfwlab analyze`` against the every-packet path: byte-identical events,
censored captures and summaries, on generated and real captures, with every mechanism on."""

from __future__ import annotations

import datetime as dt
import gc
import json
import random
import struct
from pathlib import Path
from typing import Any

import pytest

from gfwlab.engine.actions import Event
from gfwlab.errors import AdapterError
from gfwlab.offline.analyze import Summary, analyze
from gfwlab.offline.index import MAX_PACKETS, Lives, build_index
from gfwlab.offline.scale import ProfileSpec, analyze_many, outputs_for
from gfwlab.offline.synth import (
    dns_exchange,
    generate,
    http_get,
    load_names,
    tcp_conversation,
)
from gfwlab.offline.synth.flood import write as write_synth
from gfwlab.packet.ip import ACK, PSH, SYN, addr_bytes, build_tcp
from gfwlab.packet.pcap import CaptureReader, PcapWriter
from gfwlab.profiles import Profile, build_censor, load_profile
from gfwlab.proto.tls import build_client_hello
from helpers import EXACT_DELAY, assert_no_cycles, keyword_resets_due_at_packets, mangled
from testenv import REAL_LIST_SETS, SHARED_BLOCKLISTS, SHARED_PCAPS, needs_shared, shared_pcaps

DAY = dt.date(2024, 6, 1)
EVERY_MECHANISM = (
    "fet.active={start='2021-11-01'}",  # FET's dynamic blocking ended in 2023: keep it on
    "null_route.targets=['198.19.0.0/26', '2001:db8:5::/80']",
)


def _profile(*sets: str, date: dt.date | None = DAY) -> Profile:
    prof = load_profile("gfw", date=date, overrides=[*EVERY_MECHANISM, *sets])
    assert set(prof.active()) == {
        "dns_injection", "esni", "fet", "http_keyword", "null_route", "quic_sni", "ss_probing",
        "tls_sni",
    }  # fmt: skip
    return prof


WINDOW = 61
"""Records per window for the fast path a window at a time (``max_index``): small, so that
flows, timers and blocks cross many windows."""


def _both(tmp_path: Path, capture: str, prof: Profile, seed: int = 3) -> tuple[Summary, Summary]:
    """Analyse ``capture`` both ways, and the fast way ``WINDOW`` records at a time; assert
    identical outputs; return the every-packet and the fast summaries."""
    runs: dict[str, tuple[Summary, bytes, bytes]] = {}
    for how in ("exact", "fast", "windows"):
        ev, out = tmp_path / f"ev-{how == 'exact'}.jsonl", tmp_path / f"out-{how}.pcap"
        s = analyze(
            capture, prof, seed=seed, events_path=str(ev), out_path=str(out),
            exact=how == "exact", max_index=WINDOW if how == "windows" else MAX_PACKETS,
            no_gain=2.0,  # windows however many packets reach the engine
        )  # fmt: skip
        runs[how] = (s, ev.read_bytes(), out.read_bytes())
    (se, ev_e, out_e), (sf, ev_f, out_f) = runs["exact"], runs["fast"]
    sw, ev_w, out_w = runs["windows"]
    assert ev_f == ev_e
    assert out_f == out_e
    assert _plain(sf) == _plain(se)
    assert ev_w == ev_e
    assert out_w == out_e
    assert _plain(sw) == _plain(se)
    assert se.engine_packets == se.packets
    return se, sf


def _plain(s: Summary) -> dict[str, Any]:
    d = s.as_dict()
    for key in ("engine_packets", "outputs", "warnings"):
        d.pop(key)
    return d


@pytest.mark.parametrize("mix", ["realistic", "flow-heavy"])
def test_generated_capture_identical(tmp_path: Path, mix: str) -> None:
    cap = tmp_path / "cap.pcap"
    generate(str(cap), flows=400, seed=7, mix=mix)
    se, sf = _both(tmp_path, str(cap), _profile())
    assert se.events and sf.dropped == se.dropped > 0
    assert sf.engine_packets < se.packets


@needs_shared(SHARED_BLOCKLISTS)
def test_generated_capture_real_lists_identical(tmp_path: Path) -> None:
    """The 2024 lists block about a quarter of the names: many blocked flows and residuals."""
    cap = tmp_path / "cap.pcap"
    generate(str(cap), flows=300, seed=11, mix="realistic", names=load_names(SHARED_BLOCKLISTS))
    prof = _profile(*REAL_LIST_SETS)
    se, _sf = _both(tmp_path, str(cap), prof)
    assert {"tls_sni/rst", "quic_sni/drop", "dns_injection/dns-inject"} <= set(se.events)


def test_null_route_everything_identical(tmp_path: Path) -> None:
    """A drop block held all along: every packet is looked up against it."""
    cap = tmp_path / "cap.pcap"
    generate(str(cap), flows=150, seed=5, mix="realistic")
    prof = _profile("null_route.targets=['0.0.0.0/0', '::/0']")
    se, _ = _both(tmp_path, str(cap), prof)
    assert se.dropped > 0


@needs_shared(SHARED_PCAPS)
@pytest.mark.parametrize("capture", shared_pcaps("*.pcap"), ids=lambda p: Path(p).name)
def test_real_captures_identical(tmp_path: Path, capture: str) -> None:
    _both(tmp_path, capture, _profile(date=dt.date(2024, 6, 1)))
    _both(tmp_path, capture, _profile("null_route.targets=['0.0.0.0/0', '::/0']"))


def _pcapng(src: Path, dst: Path) -> None:
    """``src`` (raw-IP pcap) as a little-endian pcapng with one raw-IP interface (ns)."""

    def block(btype: int, body: bytes) -> bytes:
        body += b"\0" * (-len(body) % 4)
        n = len(body) + 12
        return struct.pack("<II", btype, n) + body + struct.pack("<I", n)

    opts = struct.pack("<HHB3x", 9, 1, 9) + struct.pack("<HH", 0, 0)  # if_tsresol = 10^-9
    out = [block(0x0A0D0D0A, struct.pack("<IHHq", 0x1A2B3C4D, 1, 0, -1))]
    out.append(block(1, struct.pack("<HHI", 101, 0, 0) + opts))
    with CaptureReader(str(src)) as reader:
        for ts, pkt in reader:
            units = round(ts * 1e9)
            head = struct.pack("<IIIII", 0, units >> 32, units & 0xFFFFFFFF, len(pkt), len(pkt))
            out.append(block(6, head + pkt))
    dst.write_bytes(b"".join(out))


def test_pcapng_identical(tmp_path: Path) -> None:
    cap = tmp_path / "cap.pcap"
    generate(str(cap), flows=120, seed=9, mix="realistic")
    ng = tmp_path / "cap.pcapng"
    _pcapng(cap, ng)
    se, sf = _both(tmp_path, str(ng), _profile())
    assert sf.engine_packets < se.packets


def test_truncated_capture_identical(tmp_path: Path) -> None:
    cap = tmp_path / "cap.pcap"
    generate(str(cap), flows=80, seed=4, mix="realistic")
    cut = tmp_path / "cut.pcap"
    data = cap.read_bytes()
    cut.write_bytes(data[: len(data) * 2 // 3])
    se, sf = _both(tmp_path, str(cut), _profile())
    assert se.truncated_at is not None and sf.truncated_at == se.truncated_at


def test_out_of_order_capture_warns_and_matches(tmp_path: Path) -> None:
    cap = tmp_path / "cap.pcap"
    generate(str(cap), flows=60, seed=4, mix="realistic")
    with CaptureReader(str(cap)) as reader:
        packets = list(reader)
    packets[10], packets[20] = packets[20], packets[10]
    shuffled = tmp_path / "shuffled.pcap"
    with PcapWriter(str(shuffled)) as writer:
        for ts, pkt in packets:
            writer.write(ts, pkt)
    se, sf = _both(tmp_path, str(shuffled), _profile())
    assert sf.warnings and "file order" in sf.warnings[0]
    assert not se.warnings  # --exact reads in file order without looking


def test_windows_fall_back_where_time_goes_back_between_them(tmp_path: Path) -> None:
    """Each window in order, but the second starts before the first ends: every packet through
    the engine in file order, with the warning, as for a capture indexed whole."""
    cap = tmp_path / "cap.pcap"
    generate(str(cap), flows=60, seed=4, mix="realistic")
    with CaptureReader(str(cap)) as reader:
        packets = list(reader)
    before, after = packets[WINDOW - 2][0], packets[WINDOW - 1][0]
    assert before < after
    packets[WINDOW] = ((before + after) / 2, packets[WINDOW][1])
    back = tmp_path / "back.pcap"
    with PcapWriter(str(back)) as writer:
        for ts, pkt in packets:
            writer.write(ts, pkt)
    se, _sf = _both(tmp_path, str(back), _profile())
    windows = analyze(str(back), _profile(), seed=3, max_index=WINDOW, no_gain=2.0)
    assert windows.warnings and "file order" in windows.warnings[0]
    assert windows.engine_packets == windows.packets == se.packets


def test_tls_in_tls_identical(tmp_path: Path) -> None:
    """TLS-in-TLS counts each flow's first packets (``Needs.watch_packets``): whole, and where
    a flow's packets fall in several windows."""
    cap = tmp_path / "cap.pcap"
    generate(str(cap), flows=300, seed=8, mix="realistic")
    prof = load_profile("gfw", date=DAY, overrides=[*EVERY_MECHANISM, "tls_in_tls.enabled=true"])
    assert "tls_in_tls" in prof.active()
    se, _sf = _both(tmp_path, str(cap), prof)
    assert any(k.startswith("tls_in_tls/") for k in se.events), se.events


def test_a_flood_too_large_to_index_goes_streaming(tmp_path: Path) -> None:
    """A capture too large to index whole whose first window's packets nearly all reached the
    engine (spoofed SYNs, each a new flow): the rest streams, every packet through the engine,
    with a warning; the same outputs either way."""
    cap = tmp_path / "flood.pcap"
    write_synth(str(cap), "syn-flood", 3000, seed=2)
    runs = []
    for limit in (10**9, 500):
        ev, out = tmp_path / "ev.jsonl", tmp_path / "out.pcap"
        s = analyze(str(cap), _profile(), events_path=str(ev), out_path=str(out), max_index=limit)
        runs.append((s, ev.read_bytes(), out.read_bytes()))
    (whole, *outputs), (streamed, *again) = runs
    assert again == outputs and _plain(streamed) == _plain(whole)
    assert streamed.engine_packets == streamed.packets == 3000
    assert streamed.warnings and "flood" in streamed.warnings[0]
    assert not whole.warnings


def test_a_flood_gone_streaming_has_let_go_of_its_first_window(tmp_path: Path) -> None:
    """With the collector off, the abandoned first window's fast-path state (a flood's flows,
    held in a reference cycle) is freed before the every-packet run goes on."""
    cap = tmp_path / "flood.pcap"
    write_synth(str(cap), "syn-flood", 3000, seed=2)
    gc.collect()  # earlier tests' garbage is not this run's (it counts every Lives in the process)
    seen: list[int] = []

    def progress(_done: int, _total: int) -> None:
        seen.append(sum(type(o) is Lives for o in gc.get_objects()))

    streamed = analyze(str(cap), _profile(), max_index=500, progress=progress)
    assert streamed.warnings and "flood" in streamed.warnings[0]
    assert seen and seen[-1] == 0, seen


def test_index_groups_flows_both_ways(tmp_path: Path) -> None:
    cap = tmp_path / "cap.pcap"
    info = generate(str(cap), flows=50, seed=2, mix="flow-heavy")
    index = build_index(str(cap))
    try:
        lives = index.lives(3600.0, 3600.0)
        assert len(index) == info["packets"]
        assert int(lives.keyed.sum()) == info["flows_started"]
        assert lives.count.sum() == len(index)
    finally:
        index.close()


def test_synth_is_deterministic(tmp_path: Path) -> None:
    a, b, c = tmp_path / "a.pcap", tmp_path / "b.pcap", tmp_path / "c.pcap"
    ia = generate(str(a), flows=200, seed=1, mix="realistic")
    generate(str(b), flows=200, seed=1, mix="realistic")
    generate(str(c), flows=200, seed=2, mix="realistic")
    assert a.read_bytes() == b.read_bytes() != c.read_bytes()
    assert ia["flows_started"] == 200
    assert 20 <= ia["packets_per_flow"] <= 45
    heavy = generate(str(c), packets=20_000, seed=1, mix="flow-heavy")
    assert 100_000 <= heavy["flows_started"] * 1_000_000 / heavy["packets"] <= 160_000


@pytest.mark.parametrize("max_flows", [5, 40])
def test_full_flow_table_evicts_identically(tmp_path: Path, max_flows: int) -> None:
    """A table smaller than the capture's concurrent flows: the oldest flows are evicted, the
    count is in the summary, and the fast path follows the engine's new flows exactly."""
    cap = tmp_path / "cap.pcap"
    generate(str(cap), flows=200, seed=8, mix="realistic", pps=40_000.0)
    se, sf = _both(tmp_path, str(cap), _profile(f"engine.max_flows={max_flows}"))
    assert se.flows_evicted > 0 and sf.flows_evicted == se.flows_evicted
    assert se.flows > 200  # evicted flows seen again are new flows


def test_dask_two_workers_match_single_process(tmp_path: Path) -> None:
    """A real local cluster of two worker processes, one task per capture: the same events and
    censored captures as analysing each file alone."""
    caps = []
    for seed, mix in ((1, "realistic"), (2, "flow-heavy"), (3, "realistic")):
        cap = tmp_path / f"cap{seed}.pcap"
        generate(str(cap), flows=60, seed=seed, mix=mix)
        caps.append(str(cap))
    spec = ProfileSpec("gfw", DAY, EVERY_MECHANISM)
    seen: list[int] = []
    out_dir = tmp_path / "dask"
    summaries = analyze_many(
        caps, spec, seed=5, out_dir=str(out_dir), workers=2,
        progress=lambda done, total: seen.append(done),
    )  # fmt: skip
    assert seen[-1] == len(caps)
    for cap, summary in zip(caps, summaries, strict=True):
        ev, out = tmp_path / "one.jsonl", tmp_path / "one.pcap"
        alone = analyze(cap, _profile(), seed=5, events_path=str(ev), out_path=str(out))
        dask_ev, dask_out = outputs_for(cap, str(out_dir))
        assert Path(dask_ev).read_bytes() == ev.read_bytes()
        assert Path(dask_out).read_bytes() == out.read_bytes()
        assert _plain(summary) == _plain(alone)


def test_capture_beyond_the_index_limit_goes_in_windows(tmp_path: Path) -> None:
    """More packets than the index may hold: a classic pcap (counted in records) and a pcapng
    (in IP packets) are analysed a window at a time, with the same outputs and nothing said."""
    cap = tmp_path / "cap.pcap"
    generate(str(cap), flows=40, seed=6, mix="realistic")
    ng = tmp_path / "cap.pcapng"
    _pcapng(cap, ng)
    prof = _profile()
    runs = []
    for capture, limit in ((cap, 10**9), (cap, 100), (cap, 1), (ng, 10**9), (ng, 100), (ng, 1)):
        ev, out = tmp_path / "ev.jsonl", tmp_path / "out.pcap"
        s = analyze(
            str(capture), prof, events_path=str(ev), out_path=str(out), max_index=limit,
            no_gain=2.0,
        )  # fmt: skip
        runs.append((s, ev.read_bytes(), out.read_bytes()))
    for first, then in ((0, 1), (0, 2), (3, 4), (3, 5)):  # (pcapng times are in ns)
        assert runs[then][1:] == runs[first][1:], then
        assert _plain(runs[then][0]) == _plain(runs[first][0]), then
    whole, windows, single = (r[0] for r in runs[:3])
    assert not any(r[0].warnings for r in runs)
    # Each window feeds the engine the first packet of every flow in it: one record, every one.
    assert whole.engine_packets < windows.engine_packets < single.engine_packets == whole.packets
    assert runs[5][0].engine_packets == whole.packets  # a pcapng's windows are cut elsewhere


def test_pcapng_windows_carry_sections_and_interfaces(tmp_path: Path) -> None:
    """A pcapng whose packets come from two interfaces (raw IP in nanoseconds, Ethernet in
    microseconds) and a second section, with non-IP frames between them and a cut last block,
    analysed in windows of one to seven packets: the outputs of the whole index."""
    cap = tmp_path / "cap.pcap"
    generate(str(cap), flows=30, seed=8, mix="realistic")
    with CaptureReader(str(cap)) as reader:
        packets = list(reader)

    def block(btype: int, body: bytes) -> bytes:
        body += b"\0" * (-len(body) % 4)
        return struct.pack("<II", btype, len(body) + 12) + body + struct.pack("<I", len(body) + 12)

    def section() -> list[bytes]:
        ns = struct.pack("<HHB3x", 9, 1, 9) + struct.pack("<HH", 0, 0)  # if_tsresol = 10^-9
        return [
            block(0x0A0D0D0A, struct.pack("<IHHq", 0x1A2B3C4D, 1, 0, -1)),
            block(1, struct.pack("<HHI", 101, 0, 0) + ns),  # raw IP, nanoseconds
            block(1, struct.pack("<HHI", 1, 0, 0)),  # Ethernet, microseconds (the default)
        ]

    out = section()
    for n, (ts, pkt) in enumerate(packets):
        if n == len(packets) // 2:
            out += section()
        iface, units = (0, round(ts * 1e9)) if n % 3 else (1, round(ts * 1e6))
        frame = pkt if iface == 0 else b"\x02" * 12 + b"\x08\x00" + pkt
        head = struct.pack("<IIIII", iface, units >> 32, units & 0xFFFFFFFF, len(frame), len(frame))
        out.append(block(6, head + frame))
        if n % 17 == 5:  # an ARP frame on the Ethernet interface: no IP packet
            arp = b"\x02" * 12 + b"\x08\x06" + b"\0" * 28
            out.append(block(6, struct.pack("<IIIII", 1, 0, 0, len(arp), len(arp)) + arp))
    ng = tmp_path / "cap.pcapng"
    ng.write_bytes(b"".join(out)[:-9])  # the last block cut short
    prof = _profile()
    runs = []
    for limit in (0, 10**9, 7, 2, 1):  # 0: every packet through the engine
        ev, o = tmp_path / "ev.jsonl", tmp_path / "out.pcap"
        s = analyze(
            str(ng), prof, events_path=str(ev), out_path=str(o), max_index=limit or 10**9,
            exact=not limit, no_gain=2.0,
        )  # fmt: skip
        runs.append((_plain(s), ev.read_bytes(), o.read_bytes()))
    assert runs[0][0]["skipped_frames"] > 0 and runs[0][0]["truncated_at"] is not None
    assert runs[0][0]["packets"] == len(packets) - 1
    for r in runs[1:]:
        assert r == runs[0]


def _port_reuse(t: float) -> list[tuple[float, bytes]]:
    """Connections that reuse a 5-tuple (a client's bare SYN with a new ISN, or the same ISN)
    after the first connection on it was bypassed, blocked, let go without a SYN, dropped by a
    residual block, null-routed or forgotten; each scenario from its own client (addresses in
    198.18.0.0/24 and 198.19.0.0/24, which the generated traffic never uses but for resolvers)."""
    out: list[tuple[float, bytes]] = []
    server, fet_server, null_server = "198.19.0.200", "198.19.0.77", "198.19.0.9"
    clean, bad = http_get("a.example", "/"), http_get("a.example", "/search?q=falun")
    hello, hello_bad = build_client_hello("example.org"), build_client_hello("www.facebook.com")
    ok = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"

    def conn(n: int, dst: str, cport: int, sport: int, flight: bytes, at: float, isn: int,
             close: bool = True) -> None:  # fmt: skip
        out.extend(tcp_conversation(
            f"198.18.0.{100 + n}", dst, cport, sport, flight, t0=t + at, isn_c=isn,
            isn_s=isn ^ 0x5A5A5A5A, response=ok, close=close,
        ))  # fmt: skip

    def raw(n: int, dst: str, at: float, *args: int, flags: int, payload: bytes = b"") -> None:
        c, s = addr_bytes(f"198.18.0.{100 + n}"), addr_bytes(dst)
        cport, sport, seq, ack = args
        out.append((t + at, build_tcp(c, s, cport, sport, seq=seq, ack=ack, flags=flags,
                                      payload=payload)))  # fmt: skip

    conn(1, server, 41001, 80, clean, 0.2, 1000)  # bypassed, then a keyword: judged anew
    conn(1, server, 41001, 80, bad, 2.0, 2000)
    conn(2, server, 41002, 443, hello, 0.3, 3000)  # the same with a blocked SNI
    conn(2, server, 41002, 443, hello_bad, 2.5, 4000)
    conn(3, server, 41003, 80, clean, 0.4, 5000)  # the same ISN again: stays bypassed
    raw(3, server, 0.41, 41003, 80, 5000, 0, flags=SYN)  # a late retransmitted SYN
    conn(3, server, 41003, 80, bad, 3.0, 5000)
    for j, flight in enumerate((bad, clean, bad, clean)):  # blocked, clean, blocked, clean
        conn(4, server, 41004, 80, flight, 0.5 + j, 6000 + 1000 * j)
    raw(5, server, 0.6, 41005, 80, 9, 9, flags=PSH | ACK, payload=bad)  # let go: no SYN
    conn(5, server, 41005, 80, bad, 1.6, 9000)
    conn(6, server, 41006, 80, clean, 0.7, 10000)  # after the idle timeout
    conn(6, server, 41006, 80, bad, 125.0, 11000)
    conn(7, null_server, 41007, 80, clean, 0.8, 12000)  # null-routed (blocked from the SYN)
    conn(7, null_server, 41007, 80, clean, 2.8, 13000)
    # A TLS connection left open and bypassed; another port's ESNI starts a drop block on
    # (client, server, 443) that covers its later packets; then its port is reused.
    conn(8, server, 41008, 443, hello, 0.9, 14000, close=False)
    conn(8, server, 41009, 443, build_client_hello("example.org", esni=True), 1.0, 15000)
    raw(8, server, 1.5, 41008, 443, 14001 + len(hello), 14000 ^ 0x5A5A5A5A, flags=PSH | ACK,
        payload=b"\x17\x03\x03\x00\x02hi")  # fmt: skip
    conn(8, server, 41008, 443, hello, 3.0, 16000)
    conn(9, server, 41010, 80, clean, 1.1, 17000, close=False)  # a server's bare SYN: no reuse
    raw(9, server, 1.3, 41010, 80, 777, 0, flags=SYN)
    out.append((t + 1.31, build_tcp(addr_bytes(server), addr_bytes("198.18.0.109"), 80, 41010,
                                    seq=4242, flags=SYN)))  # fmt: skip
    rng = random.Random(5)
    for j in range(10):  # random first packets to a FET target, one port: some blocked
        conn(10, fet_server, 41011, 8443, rng.randbytes(400), 0.5 + 3 * j, 20000 + 1000 * j)
    for j, flight in enumerate((clean, clean, bad)):  # three connections, one port
        conn(11, server, 41012, 8080, flight, 1.2 + 0.5 * j, 40000 + 1000 * j)
    conn(12, "198.19.0.150", 41013, 443, hello, 0.25, 50000)  # ip_port_rst's target, if on
    conn(12, "198.19.0.150", 41013, 443, hello, 1.25, 51000)
    return out


def _quiet(t: float) -> list[tuple[float, bytes]]:
    """Packets the fast path counts in bulk while their flows are inspected (``fast._quiet``),
    where they must still reach the engine: a connection's handshake ACK and ClientHello after
    another connection of its client to the same server started a drop block on (client,
    server, 443) (ESNI); a second query on one DNS flow after the first one's answer, also
    between two resolvers (port 53 to port 53); and a connection whose client's ACK arrives
    before any SYN of it was seen (no TCB)."""
    out: list[tuple[float, bytes]] = []
    client, server, resolver = "198.18.0.120", "198.19.0.201", "198.18.0.53"
    c, s = addr_bytes(client), addr_bytes(server)

    def seg(at: float, to_server: bool, cport: int, seq: int, ack: int, flags: int,
            payload: bytes = b"") -> None:  # fmt: skip
        src, dst, sp, dp = (c, s, cport, 443) if to_server else (s, c, 443, cport)
        out.append((t + at, build_tcp(src, dst, sp, dp, seq=seq, ack=ack, flags=flags,
                                      payload=payload)))  # fmt: skip

    hello = build_client_hello("example.org")
    seg(0.20, True, 41020, 1000, 0, SYN)
    seg(0.201, False, 41020, 5000, 1001, SYN | ACK)
    out.extend(tcp_conversation(
        client, server, 41021, 443, build_client_hello("example.org", esni=True), t0=t + 0.3,
        isn_c=2000, isn_s=6000,
    ))  # fmt: skip
    seg(0.6, True, 41020, 1001, 5001, ACK)  # under the drop block: dropped
    seg(0.61, False, 41020, 5001, 1001, ACK)
    seg(0.7, True, 41020, 1001, 5001, PSH | ACK, hello)
    # No SYN seen: the server's SYN/ACK, then the client's ACK (the flow is let go there).
    seg(0.8, False, 41022, 7000, 3001, SYN | ACK)
    seg(0.81, True, 41022, 3001, 7001, ACK)
    seg(0.82, True, 41022, 3001, 7001, PSH | ACK, http_get("a.example", "/search?q=falun"))
    first = dns_exchange(client, resolver, 53001, "example.org", t0=t + 0.4, answer="198.18.9.9")
    second = dns_exchange(client, resolver, 53001, "www.facebook.com", t0=t + 0.5, qid=0x4321,
                          answer="198.18.9.10")  # fmt: skip
    out.extend([*first, *second])
    # The same between two resolvers (port 53 both ways): every datagram is a query to it.
    for j, name in enumerate(("example.org", "www.facebook.com")):
        out.extend(dns_exchange(resolver, "198.18.0.54", 53, name, t0=t + 0.9 + j / 10,
                                qid=j, answer="198.18.9.11"))  # fmt: skip
    return out


def test_quiet_packets_identical(tmp_path: Path) -> None:
    """Packets that change nothing but counters are counted in bulk, unless a residual drop
    block covers them or they are more than an answer: the same outputs as every packet fed."""
    packets = _quiet(1_700_000_000.0)
    packets.sort(key=lambda tp: tp[0])
    cap = tmp_path / "quiet.pcap"
    with PcapWriter(str(cap)) as writer:
        for ts, pkt in packets:
            writer.write(ts, pkt)
    se, sf = _both(tmp_path, str(cap), _profile())
    assert sf.engine_packets < se.packets  # the first DNS answer and a server's ACK: not fed
    events = [json.loads(line) for line in (tmp_path / "ev-True.jsonl").read_text().splitlines()]
    seen = {(e["mechanism"], e["action"], e["flow"]["sport"]) for e in events}
    assert ("esni", "drop", 41020) in seen  # the handshake ACK, dropped by the block
    assert ("dns_injection", "dns-inject", 53001) in seen  # the second query
    assert sum(e["flow"]["dport"] == e["flow"]["sport"] == 53 for e in events) == 1


def test_timer_due_at_a_packets_time_is_written_before_it(tmp_path: Path) -> None:
    cap = tmp_path / "due.pcap"
    with PcapWriter(str(cap)) as writer:
        for ts, pkt in sorted(keyword_resets_due_at_packets(4), key=lambda tp: tp[0]):
            writer.write(ts, pkt)
    se, _sf = _both(tmp_path, str(cap), _profile(*EXACT_DELAY))
    assert se.events.get("http_keyword/rst") == 4


@pytest.mark.parametrize(
    "sets",
    [
        (),
        ("ip_port_rst.active={start=2024-01-01}", "ip_port_rst.targets=['198.19.0.150/32']"),
        ("engine.max_flows=40",),
        ("tcb.reopen_bypassed=false",),
    ],
    ids=["every-mechanism", "on-syn-ack-hook", "full-table", "reopen-off"],
)
def test_port_reuse_identical(tmp_path: Path, sets: tuple[str, ...]) -> None:
    """A capture where clients reuse 5-tuples (Flow.opened_anew_by): the fast path feeds the
    bare SYNs of judged flows and follows the engine's new flows exactly."""
    base = tmp_path / "base.pcap"
    generate(str(base), flows=150, seed=12, mix="realistic")
    with CaptureReader(str(base)) as reader:
        packets = list(reader)
    packets += _port_reuse(packets[0][0])
    packets.sort(key=lambda tp: tp[0])
    cap = tmp_path / "reuse.pcap"
    with PcapWriter(str(cap)) as writer:
        for ts, pkt in packets:
            writer.write(ts, pkt)
    sure = "http_keyword.probability=1"
    prof = load_profile("gfw", date=DAY, overrides=[*EVERY_MECHANISM, sure, *sets])
    se, sf = _both(tmp_path, str(cap), prof)
    assert sf.engine_packets < se.packets
    events = [json.loads(line) for line in (tmp_path / "ev-True.jsonl").read_text().splitlines()]
    reset = {(e["mechanism"], e["flow"]["sport"]) for e in events if e["action"] == "rst"}
    # The second connections on ports 41001 (keyword) and 41002 (SNI) were judged anew.
    reopened = {("http_keyword", 41001), ("tls_sni", 41002)}
    if "engine.max_flows=40" in sets:  # a full table forgets flows: any SYN then opens one
        assert se.flows_evicted > 0 and reopened <= reset
    elif "tcb.reopen_bypassed=false" in sets:
        assert not reopened & reset
    else:
        assert reopened <= reset
        assert ("http_keyword", 41003) not in reset  # the same ISN: a retransmission
    if "engine.max_flows=40" not in sets:
        # Port 41008: the ESNI block drops the open connection's packet, then the new one's SYN.
        esni = [e["ts"] for e in events if e["mechanism"] == "esni" and e["flow"]["sport"] == 41008]
        assert len(esni) == 2


def test_a_bad_block_deep_in_a_windowed_pcapng_publishes_nothing(tmp_path: Path) -> None:
    """An interface of a link type that cannot be read, described after many packets of a
    pcapng analysed in windows: the same one-line error as the every-packet path gives, and no
    output left behind."""
    cap = tmp_path / "cap.pcap"
    generate(str(cap), flows=20, seed=2, mix="realistic")
    ng = tmp_path / "cap.pcapng"
    _pcapng(cap, ng)
    bad = struct.pack("<HHI", 147, 0, 0)  # LINKTYPE_USER0: nothing to strip
    ng.write_bytes(ng.read_bytes() + struct.pack("<II", 1, 20) + bad + struct.pack("<I", 20))
    errors = []
    for limit, exact in ((10**9, True), (10**9, False), (3, False)):
        ev, out = tmp_path / "ev.jsonl", tmp_path / "out.pcap"
        with pytest.raises(AdapterError) as caught:
            analyze(
                str(ng), _profile(), events_path=str(ev), out_path=str(out), max_index=limit,
                exact=exact, no_gain=2.0,
            )  # fmt: skip
        errors.append(str(caught.value))
        assert sorted(p.name for p in tmp_path.iterdir()) == ["cap.pcap", "cap.pcapng"]
    assert len(set(errors)) == 1 and "unsupported link type 147" in errors[0]
    assert "\n" not in errors[0]


def test_analysis_runs_with_the_collector_off_and_restores_it(tmp_path: Path) -> None:
    """The cyclic collector is off while a capture is analysed (``collector_off``), and as the
    caller had it afterwards, also after an error."""
    cap = tmp_path / "cap.pcap"
    generate(str(cap), flows=30, seed=5, mix="realistic")
    assert gc.isenabled()
    during: set[bool] = set()
    analyze(str(cap), _profile(), on_event=lambda _e: during.add(gc.isenabled()))
    assert during == {False}
    assert gc.isenabled()
    cut = tmp_path / "bad.pcap"
    cut.write_bytes(b"\x00" * 40)
    with pytest.raises(AdapterError):
        analyze(str(cut), _profile())
    assert gc.isenabled()
    gc.disable()
    try:
        analyze(str(cap), _profile())
        assert not gc.isenabled()  # a caller's choice is kept
    finally:
        gc.enable()


def test_a_window_analysed_leaves_nothing_behind_with_the_collector_off(tmp_path: Path) -> None:
    """Analysed a window at a time with the collector off, each window's index and the fast
    path's state for it (held in a reference cycle by its compiled helpers) are freed before
    the next window: their number stays flat however many windows the capture has."""
    cap = tmp_path / "cap.pcap"
    generate(str(cap), flows=120, seed=9, mix="realistic")
    seen: list[int] = []

    def count(_event: Event) -> None:
        if len(seen) < 400:
            seen.append(sum(type(o) is Lives for o in gc.get_objects()))

    summary = analyze(str(cap), _profile(), max_index=WINDOW, no_gain=2.0, on_event=count)
    assert summary.packets > 20 * WINDOW  # many windows
    assert seen and max(seen) <= 2, seen


@pytest.mark.parametrize("mix", ["realistic", "flow-heavy"])
def test_the_engine_leaves_no_garbage_for_the_collector(tmp_path: Path, mix: str) -> None:
    """What ``collector_off`` stands on: the engine makes no reference cycles per packet or
    flow. A capture whose names come from the 2024 lists (DNS injections, resets, residual
    blocks, probes), then the same packets mutated and cut (anomalies), run through one engine
    with the collector off; once every flow and residual block has expired, nothing the run
    made is left for the collector to find (a few objects of other threads aside)."""
    cap = tmp_path / "cap.pcap"
    names = load_names(SHARED_BLOCKLISTS if SHARED_BLOCKLISTS.is_dir() else None)
    generate(str(cap), flows=400, seed=21, mix=mix, names=names)
    sets = REAL_LIST_SETS if SHARED_BLOCKLISTS.is_dir() else ()
    censor = build_censor(_profile(*sets), 3)
    rng = random.Random(8)
    with CaptureReader(str(cap)) as reader:
        packets = list(reader)
    mutated = []
    for ts, pkt in packets:
        mutated.append((ts + 1_000.0, mangled(pkt, rng)))
    gc.collect()
    gc.disable()
    try:
        last = 0.0
        for ts, pkt in [*packets, *mutated]:
            while (deadline := censor.next_deadline()) is not None and deadline <= ts:
                censor.on_timer(deadline)
            censor.feed(pkt, ts)
            last = ts
        censor.flush()
        for later in (1e4, 2e4, 4e4):
            censor.on_timer(last + later)
        assert len(censor.flows) == 0 and not censor.residual.entries
        assert censor.stats.anomalies > 0 and censor.stats.injected > 0
        assert_no_cycles(censor.stats.flows)
    finally:
        gc.enable()
