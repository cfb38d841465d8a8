"""A capture too large to index whole, split by server address a window at a time: the same
outputs as one process, which analyses it a window at a time with one censor.

The windows here are a few packets long (``max_index``), so that flows, residual blocks, timers
and resolvers cross many of them; ``no_gain`` above 1 keeps one process on the fast path for
such small first windows."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest
from test_fastpath import _pcapng as pcapng_of
from test_scan import _rss_file as rss_file
from test_shard import (
    SERVER_KEYED,
    _plain,
    _profile,
    _server_keyed_capture,
    _write,
    interrupted,
)
from test_shard import _same as same

from gfwlab.offline.analyze import Summary, analyze
from gfwlab.offline.index import build_index
from gfwlab.offline.scale import ProfileSpec, connect, part_runner, window_runner
from gfwlab.offline.shard import table_fills
from gfwlab.offline.shard_windows import analyze_sharded
from gfwlab.offline.synth import dns_exchange, generate, http_get, tcp_conversation
from gfwlab.packet.ip import addr_bytes, build_udp, fragment
from gfwlab.profiles import Profile, build_censor
from gfwlab.proto.tls import build_client_hello
from helpers import EXACT_DELAY, keyword_resets_due_at_packets
from testenv import SHARED_PCAPS, needs_shared, shared_pcaps

NEVER = 2.0  # no_gain: one process never leaves the fast path for the every-packet one


def _same(
    tmp_path: Path, capture: str, prof: Profile, parts: int, per: int, seed: int = 3
) -> Summary:
    """Analyse ``capture`` in windows of ``per`` packets, in one process and in ``parts``;
    assert identical outputs; return the split run's summary."""
    return same(
        tmp_path, capture, prof, parts, seed, split=analyze_sharded, max_index=per,
        no_gain=NEVER,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("mix", "flows", "per", "parts"),
    [
        ("realistic", 400, 500, 2),
        ("realistic", 30, 1, 2),
        ("flow-heavy", 400, 97, 3),
        ("flow-heavy", 80, 2, 2),
    ],
)
def test_generated_capture_split_in_windows_is_identical(
    tmp_path: Path, mix: str, flows: int, per: int, parts: int
) -> None:
    cap = tmp_path / "cap.pcap"
    generate(str(cap), flows=flows, seed=7, mix=mix)
    many = _same(tmp_path, str(cap), _profile(*SERVER_KEYED), parts, per)
    assert not many.warnings and many.parts == parts
    assert "fet/drop" in many.events
    assert flows < 400 or "dns_injection/dns-inject" in many.events


@needs_shared(SHARED_PCAPS)
@pytest.mark.parametrize("capture", shared_pcaps("*.pcap"), ids=lambda p: Path(p).name)
def test_real_captures_split_in_windows_is_identical(tmp_path: Path, capture: str) -> None:
    many = _same(tmp_path, capture, _profile(), 2, 5)
    assert not many.warnings


def test_server_keyed_blocks_cross_windows_and_parts(tmp_path: Path) -> None:
    cap = _server_keyed_capture(tmp_path)
    many = _same(tmp_path, cap, _profile(*SERVER_KEYED), 3, 4)
    assert not many.warnings
    events = [json.loads(line) for line in (tmp_path / "ev3.jsonl").read_text().splitlines()]
    blocked = {(e["flow"]["src"], e["flow"]["dst"]) for e in events if e["action"] == "drop"}
    assert len({src for src, _ in blocked}) > 6 and many.dropped > 0


def test_timers_due_together_across_windows_keep_one_engines_order(tmp_path: Path) -> None:
    cap = _write(tmp_path / "ties.pcap", keyword_resets_due_at_packets(40))
    many = _same(tmp_path, cap, _profile(*EXACT_DELAY), 3, 3)
    assert not many.warnings and many.events.get("http_keyword/rst", 0) >= 20


def test_a_flow_that_goes_on_in_the_next_window_keeps_its_server(tmp_path: Path) -> None:
    """Each window starts with the server's answer: taken alone, its first packet (from port
    80 to a high port) would make the client the server. Windows of one packet, and a flow
    idle past its timeout whose next datagram comes from the other side: a new flow, whose
    server is the first one's client."""
    packets = []
    for j in range(12):
        conv = tcp_conversation(
            f"198.18.5.{j}", f"198.19.5.{j % 4}", 40000 + j, 80, http_get("a.example"), t0=0.2 * j
        )
        packets += conv
    a, b = addr_bytes("198.18.6.1"), addr_bytes("198.19.6.1")
    packets += [
        (0.0, build_udp(a, b, 5000, 6000, b"x" * 40)),
        (0.1, build_udp(b, a, 6000, 5000, b"y" * 40)),
        (200.0, build_udp(b, a, 6000, 5000, b"z" * 40)),  # past the UDP idle timeout
        (200.1, build_udp(a, b, 5000, 6000, b"w" * 40)),
    ]
    cap = _write(tmp_path / "goes-on.pcap", packets)
    many = _same(tmp_path, cap, _profile(), 2, 1)
    assert not many.warnings and many.flows == 14


def _dns_and_web(resolvers_first_on_tcp: bool) -> list[tuple[float, bytes]]:
    """Web connections, then DNS queries to two resolvers; with ``resolvers_first_on_tcp``,
    the first window (14 packets) holds one web connection to each resolver alone, so that
    each resolver's address goes to its own part."""
    packets = []
    if resolvers_first_on_tcp:
        for r in (1, 2):
            packets += tcp_conversation(
                f"198.18.2.{r}", f"198.19.3.{r}", 50000 + r, 80, http_get("a.example"),
                t0=0.001 * r,
            )  # fmt: skip
    for j in range(16):
        packets += tcp_conversation(
            f"198.18.4.{j}", f"198.19.5.{j}", 45000 + j, 443,
            build_client_hello("www.facebook.com" if j % 2 else "example.org"), t0=1.0 + 0.01 * j,
        )  # fmt: skip
    for j in range(24):
        packets += dns_exchange(
            f"198.18.2.{j % 16}", f"198.19.3.{1 + j % 2}", 30000 + j,
            ["www.facebook.com", "example.org"][j % 2], t0=5.0 + 0.05 * j, qid=j,
            answer="198.19.9.9",
        )  # fmt: skip
    return packets


def test_resolvers_stay_with_one_part_across_windows(tmp_path: Path) -> None:
    cap = _write(tmp_path / "dns.pcap", _dns_and_web(False))
    many = _same(tmp_path, cap, _profile(), 3, 16)
    assert not many.warnings and many.events.get("dns_injection/dns-inject", 0) >= 12


def test_resolvers_held_by_two_parts_stop_the_split(tmp_path: Path) -> None:
    """Two addresses took web connections in early windows (each went to its own part), then
    both answer DNS: DNS injection's shared cursors would need both in one part."""
    cap = _write(tmp_path / "dns.pcap", _dns_and_web(True))
    many = _same(tmp_path, cap, _profile(), 2, 14)
    assert many.warnings[0].endswith("its resolvers would be held by more than one part")
    assert many.parts == 1


def test_a_window_that_cannot_be_split_leaves_it_to_one_process(tmp_path: Path) -> None:
    packets = []
    for j in range(10):
        packets += tcp_conversation(
            f"198.18.8.{j}", f"198.19.8.{j}", 41000 + j, 80, http_get("a.example"), t0=0.1 * j
        )
    conv = tcp_conversation(
        "198.18.6.1", "198.19.6.1", 40000, 443, build_client_hello("www.facebook.com"), t0=5.0
    )
    for ts, pkt in conv:
        packets += [(ts, f) for f in fragment(pkt, 96)] if len(pkt) > 200 else [(ts, pkt)]
    cap = _write(tmp_path / "late-fragment.pcap", packets)
    many = _same(tmp_path, cap, _profile(), 2, 8)
    assert "not split into 2 parts: window at packet" in many.warnings[0]
    assert "IP fragment" in many.warnings[0] and many.parts == 1


def test_a_window_earlier_than_the_last_leaves_it_to_one_process(tmp_path: Path) -> None:
    late = tcp_conversation("198.18.9.1", "198.19.9.1", 40000, 80, http_get("a.example"), t0=9.0)
    early = tcp_conversation("198.18.9.2", "198.19.9.2", 40001, 80, http_get("b.example"))
    cap = tmp_path / "back.pcap"
    from gfwlab.packet.pcap import PcapWriter  # noqa: PLC0415

    with PcapWriter(str(cap)) as w:
        for ts, pkt in [*late, *early]:  # each window in order; the second earlier
            w.write(ts, pkt)
    many = analyze_sharded(str(cap), _profile(), parts=2, max_index=len(late), no_gain=NEVER)
    assert many.warnings[0].endswith("not split into 2 parts: its timestamps go backwards")
    assert many.parts == 1


def test_dask_actors_keep_each_parts_censor_across_windows(tmp_path: Path) -> None:
    """A real local cluster of two worker processes: each part's censor is an actor on one."""
    cap = tmp_path / "cap.pcap"
    generate(str(cap), flows=300, seed=9, mix="realistic")
    spec = ProfileSpec("gfw", _profile().date, ())
    prof = spec.build()
    seen: list[tuple[int, int]] = []
    with connect(None, 2) as client:
        many = analyze_sharded(
            str(cap), prof, parts=2, seed=5, events_path=str(tmp_path / "dask.jsonl"),
            out_path=str(tmp_path / "dask.pcap"), runner=part_runner(client),
            windows_runner=window_runner(client), rebuild=spec.build, max_index=700,
            no_gain=NEVER, progress=lambda done, total: seen.append((done, total)),
        )  # fmt: skip
        assert len(client.scheduler_info()["workers"]) == 2
    one = analyze(
        str(cap), prof, seed=5, events_path=str(tmp_path / "one.jsonl"),
        out_path=str(tmp_path / "one.pcap"), max_index=700, no_gain=NEVER,
    )  # fmt: skip
    assert not many.warnings and many.parts == 2
    assert (tmp_path / "dask.jsonl").read_bytes() == (tmp_path / "one.jsonl").read_bytes()
    assert (tmp_path / "dask.pcap").read_bytes() == (tmp_path / "one.pcap").read_bytes()
    assert _plain(many) == _plain(one)
    assert len(seen) > 5 and seen[-1][0] < seen[-1][1] == cap.stat().st_size
    assert [d for d, _ in seen] == sorted(d for d, _ in seen)


def test_a_flow_table_that_could_fill_in_a_later_window_is_not_split(tmp_path: Path) -> None:
    """Each window alone holds fewer flows than the table takes; with those of the windows
    before it, still in the table, one could fill it."""
    cap = tmp_path / "cap.pcap"
    generate(str(cap), flows=200, seed=8, mix="realistic", pps=40_000.0)
    many = _same(tmp_path, str(cap), _profile("engine.max_flows=40"), 2, 60)
    assert "could fill" in many.warnings[0] and many.parts == 1


INTERRUPTED = """
import sys
from gfwlab.offline.scale import starting
from gfwlab.offline.shard_windows import analyze_sharded
from gfwlab.profiles import load_profile

if __name__ == "__main__":
    cap, out = sys.argv[1], sys.argv[2]
    prof = load_profile("gfw")
    with starting(None, 2) as (runner, windows):
        analyze_sharded(
            cap, prof, parts=2, events_path=out + ".jsonl", out_path=out + ".pcap",
            runner=runner, windows_runner=windows, max_index=2_000, no_gain=2.0,
        )
"""


@pytest.fixture(scope="module")
def long_capture(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A capture whose windowed split runs several seconds after its workers are up (60,000
    flows: about 6 s here, against 2 s of settling before Ctrl-C; 20,000 flows once took that
    long, and a faster engine finished them before the signal)."""
    cap = tmp_path_factory.mktemp("long") / "big.pcap"
    generate(str(cap), flows=60_000, seed=2, mix="flow-heavy")
    return cap


@pytest.mark.slow  # its capture takes 7 s to make, and each run 3 s
@pytest.mark.parametrize("group", [False, True], ids=["command", "process-group"])
def test_interrupted_windowed_split_leaves_nothing_behind(
    tmp_path: Path, long_capture: Path, group: bool
) -> None:
    """Ctrl-C while the parts' actors analyse windows: no output, no worker left."""
    script = tmp_path / "run.py"
    script.write_text(INTERRUPTED)
    cmd = [sys.executable, str(script), str(long_capture), str(tmp_path / "out")]
    code, err = interrupted(cmd, 2.0, group=group)
    assert code != 0 and "KeyboardInterrupt" in err, err
    assert sorted(os.listdir(tmp_path)) == ["run.py"]


def test_a_pcapng_split_in_windows_is_identical(tmp_path: Path) -> None:
    """A pcapng's windows are cut from the walk of its blocks that found it too large."""
    cap = tmp_path / "cap.pcap"
    generate(str(cap), flows=200, seed=5, mix="realistic")
    ng = tmp_path / "cap.pcapng"
    pcapng_of(cap, ng)
    many = _same(tmp_path, str(ng), _profile(*SERVER_KEYED), 2, 300)
    assert not many.warnings and many.parts == 2


def test_the_driver_lets_go_of_each_window_it_has_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Writing a window's censored capture reads its pages back after the walk released them:
    the driver releases them again once written, so it never holds the capture (33 MiB here,
    windows of about 3 MiB)."""
    monkeypatch.setattr("gfwlab.packet.scan.RELEASE", 1 << 20)
    cap = tmp_path / "cap.pcap"
    generate(str(cap), flows=1_100, seed=4, mix="realistic")
    assert cap.stat().st_size > 30 << 20
    base = rss_file()
    most = 0

    def progress(_done: int, _total: int) -> None:
        nonlocal most
        most = max(most, rss_file() - base)

    many = analyze_sharded(
        str(cap), _profile(), parts=2, out_path=str(tmp_path / "out.pcap"), max_index=3_000,
        no_gain=NEVER, progress=progress,
    )  # fmt: skip
    assert not many.warnings and many.parts == 2
    assert 0 < most < 12 << 20, most


def test_the_table_bound_counts_flows_held_from_earlier_windows(tmp_path: Path) -> None:
    """The bound starts from the flows earlier windows left in the table: 40 of them fill a
    40-flow table, whenever they leave (here, given directly, even before the window's first
    packet; the split passes only those that leave after it)."""
    cap = _write(
        tmp_path / "one.pcap",
        tcp_conversation("198.18.9.1", "198.19.9.1", 40000, 80, http_get("a.example"), t0=5.0),
    )
    index = build_index(cap)
    assert index is not None
    censor = build_censor(_profile("engine.max_flows=40"), 0)
    eng = censor.profile.engine
    lives = index.lives(eng.tcp_timeout_s, eng.udp_timeout_s)
    gone_before = np.full(40, 4.0)  # they leave before the window's first packet (5.0)
    assert table_fills(index, lives, censor, gone_before)
    assert not table_fills(index, lives, censor, gone_before[:39])
    assert not table_fills(index, lives, censor)
    index.close()
