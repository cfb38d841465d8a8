"""The dated RST events of spec §14a: active only inside their windows (to the minute), with the
published fingerprints, inside-out and outside-in; ``--at`` shifts a capture's clock; tshark
reads the fingerprints off the censored capture."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import subprocess
import sys
from pathlib import Path

import pytest

from gfwlab.offline.synth import https_conversation, tcp_conversation
from gfwlab.packet.ip import ACK, RST, Packet
from gfwlab.packet.pcap import PcapWriter
from gfwlab.profiles import Profile, build_censor, load_profile
from helpers import Run, run
from testenv import needs_tools

C, S = "198.18.0.2", "198.19.0.2"
ISN_C, ISN_S = 1000, 5000
EVENT_START = dt.datetime(2025, 8, 19, 16, 34, tzinfo=dt.UTC)
CF = "1.1.1.1"


def _at(moment: dt.datetime, *sets: str) -> Profile:
    """The built-in profile at ``moment``, for packets stamped from time 0."""
    prof = load_profile("gfw", date=moment.date(), overrides=list(sets))
    return dataclasses.replace(prof, epoch_offset_s=moment.timestamp())


def _handshake(server: str = S, sport: int = 443, cport: int = 40000) -> list[tuple[float, bytes]]:
    return tcp_conversation(
        C, server, cport, sport, [b"GET / HTTP/1.1\r\n\r\n"], isn_c=ISN_C, isn_s=ISN_S
    )


def _go(prof: Profile, packets: list[tuple[float, bytes]]) -> Run:
    return run(build_censor(prof), packets)


def _mine(r: Run, mechanism: str, toward: str) -> list[Packet]:
    return [
        p
        for i, p in zip(r.injected, r.forged(), strict=True)
        if i.mechanism == mechanism and i.toward == toward
    ]


def test_port_443_event_inside_out_fingerprint() -> None:
    r = _go(_at(EVENT_START + dt.timedelta(minutes=30)), _handshake())
    events = r.acted("rst", "unconditional_rst_443")
    assert [e.as_dict()["trigger"] for e in events] == ["syn", "syn-ack"]
    to_client = _mine(r, "unconditional_rst_443", "client")
    assert [p.window for p in to_client] == [1980, 1981, 1982, 3293, 3294, 3295]
    assert all(p.flags & (RST | ACK) == RST | ACK and not p.payload for p in to_client)
    # Relative seq 0 on the SYN (the SYN's ACK field), 1 on the SYN+ACK (server ISN + 1).
    assert [p.seq for p in to_client] == [0, 0, 0, ISN_S + 1, ISN_S + 1, ISN_S + 1]
    assert {p.ack for p in to_client} == {ISN_C + 1}
    ttls = [p.ttl for p in to_client[:3]]
    assert ttls == [ttls[0], ttls[0] + 1, ttls[0] + 2]  # rises by 1 per packet (V2)
    assert len(_mine(r, "unconditional_rst_443", "server")) == 6


def test_port_443_event_outside_in_only_the_syn_ack() -> None:
    # The client (198.18.0.2) is outside: only the inside server is listed as inside.
    prof = _at(EVENT_START + dt.timedelta(minutes=1), "engine.inside=['198.19.0.0/24']")
    r = _go(prof, _handshake())
    events = r.acted("rst", "unconditional_rst_443")
    assert [e.as_dict()["trigger"] for e in events] == ["syn-ack"]
    assert events[0].direction == "outside-in"
    to_client = _mine(r, "unconditional_rst_443", "client")
    assert [p.window for p in to_client] == [3293, 3294, 3295]
    assert {p.seq for p in to_client} == {ISN_S + 1}
    # A SYN to a closed address (no SYN+ACK) triggers nothing.
    syn_only = _handshake()[:1]
    assert not _go(prof, syn_only).acted("rst", "unconditional_rst_443")


@pytest.mark.parametrize(
    ("minutes", "hit"),
    [(-1, False), (0, True), (73, True), (74, False), (60 * 24, False)],
)
def test_port_443_event_window_to_the_minute(minutes: int, hit: bool) -> None:
    r = _go(_at(EVENT_START + dt.timedelta(minutes=minutes)), _handshake())
    assert bool(r.acted("rst", "unconditional_rst_443")) is hit


@pytest.mark.parametrize("port", [22, 80, 444, 8443])
def test_port_443_event_spares_other_ports(port: int) -> None:
    r = _go(_at(EVENT_START + dt.timedelta(minutes=10)), _handshake(sport=port))
    assert not r.acted("rst", "unconditional_rst_443")


def test_port_443_event_needs_no_moment_shift_for_a_capture_taken_then() -> None:
    # The capture's own clock is inside the window: the profile's offset is 0.
    t0 = (EVENT_START + dt.timedelta(minutes=5)).timestamp()
    packets = [(t0 + t, p) for t, p in _handshake()]
    prof = load_profile("gfw", date=EVENT_START.date())
    assert _go(prof, packets).acted("rst", "unconditional_rst_443")
    # And today's clock (no date at all) is outside it.
    assert not _go(load_profile("gfw"), _handshake()).acted("rst", "unconditional_rst_443")


def test_one_one_one_one_reset_in_its_window_only() -> None:
    inside = dt.datetime(2023, 9, 10, 12, 0, tzinfo=dt.UTC)
    r = _go(_at(inside), _handshake(server=CF))
    events = r.acted("rst", "ip_port_rst")
    assert [e.as_dict()["trigger"] for e in events] == ["syn", "syn-ack"]
    to_client = _mine(r, "ip_port_rst", "client")
    assert len(to_client) == 6
    assert len({p.seq for p in to_client[:3]}) == 1  # three with the same sequence number
    for moment in (
        dt.datetime(2023, 9, 5, 5, 59, tzinfo=dt.UTC),
        dt.datetime(2023, 9, 20, 0, 0, tzinfo=dt.UTC),
    ):
        assert not _go(_at(moment), _handshake(server=CF)).acted("rst", "ip_port_rst")
    assert _go(_at(dt.datetime(2023, 9, 5, 6, 0, tzinfo=dt.UTC)), _handshake(server=CF)).acted(
        "rst"
    )
    # Only that address and port.
    assert not _go(_at(inside), _handshake(server="1.0.0.1")).acted("rst", "ip_port_rst")
    assert not _go(_at(inside), _handshake(server=CF, sport=80)).acted("rst", "ip_port_rst")


# --- gfwlab analyze --at, checked with tshark -------------------------------------------------


def _capture(path: Path, t0: float, packets: list[tuple[float, bytes]]) -> Path:
    with PcapWriter(str(path)) as w:
        for t, p in packets:
            w.write(t0 + t, p)
    return path


def _analyze(*args: str) -> dict[str, object]:
    got = subprocess.run(
        [sys.executable, "-m", "gfwlab", "analyze", *args, "--json"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert got.returncode == 0, got.stderr
    out: dict[str, object] = json.loads(got.stdout)
    return out


def _tshark_resets(path: Path) -> list[tuple[str, str, int, int, int, int]]:
    """(src, dst, raw seq, relative seq, window, ttl) of every RST+ACK in ``path``, as tshark
    reads them."""
    got = subprocess.run(
        [
            "tshark",
            "-r",
            str(path),
            "-Y",
            "tcp.flags.reset == 1 && tcp.flags.ack == 1",
            "-T",
            "fields",
            "-E",
            "separator=|",
            "-e",
            "ip.src",
            "-e",
            "ip.dst",
            "-e",
            "tcp.seq",
            "-e",
            "tcp.seq_raw",
            "-e",
            "tcp.window_size_value",
            "-e",
            "ip.ttl",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    rows = []
    for line in got.stdout.splitlines():
        src, dst, seq, raw, win, ttl = line.split("|")
        rows.append((src, dst, int(raw), int(seq), int(win), int(ttl)))
    return rows


@needs_tools("tshark")
def test_analyze_at_gives_and_withholds_the_443_resets(tmp_path: Path) -> None:
    cap = _capture(
        tmp_path / "in.pcap", 1_700_000_000.0, https_conversation(C, S, 40000, "example.org")
    )
    out = tmp_path / "out.pcap"
    res = _analyze(str(cap), "--at", "2025-08-19T17:00", "--out", str(out))
    assert res["date"] == "2025-08-19" and res["date_source"] == "--at"
    assert res["events"] == {"unconditional_rst_443/rst": 2}  # type: ignore[comparison-overlap]
    to_client = [r for r in _tshark_resets(out) if r[1] == C]
    # As tcpdump showed them in the GFW Report: "seq 0" on the SYN's resets (sent before the
    # server's ISN is known; tshark, which numbers relative to the SYN+ACK, calls them 1), and
    # relative seq 1 on the SYN+ACK's.
    assert [(r[2], r[4]) for r in to_client[:3]] == [(0, 1980), (0, 1981), (0, 1982)]
    assert [(r[3], r[4]) for r in to_client[3:]] == [(1, 3293), (1, 3294), (1, 3295)]
    assert [r[5] for r in to_client[:3]] == [to_client[0][5] + i for i in range(3)]
    after = tmp_path / "after.pcap"
    res = _analyze(str(cap), "--at", "2025-08-19T17:48", "--out", str(after))
    assert "unconditional_rst_443/rst" not in res["events"]  # type: ignore[operator]
    assert _tshark_resets(after) == []


@needs_tools("tshark")
def test_analyze_at_one_one_one_one(tmp_path: Path) -> None:
    cap = _capture(tmp_path / "in.pcap", 1_700_000_000.0, https_conversation(C, CF, 40000, None))
    out = tmp_path / "out.pcap"
    res = _analyze(str(cap), "--at", "2023-09-10T08:00", "--out", str(out))
    assert res["events"] == {"ip_port_rst/rst": 2}  # type: ignore[comparison-overlap]
    to_client = [r for r in _tshark_resets(out) if r[1] == C]
    assert len(to_client) == 6 and len({r[2] for r in to_client[:3]}) == 1  # same seq
    res = _analyze(str(cap), "--at", "2023-10-10T08:00")
    assert "ip_port_rst/rst" not in res["events"]  # type: ignore[operator]


def test_analyze_rejects_at_with_date(tmp_path: Path) -> None:
    cap = _capture(tmp_path / "in.pcap", 0.0, _handshake())
    got = subprocess.run(
        [
            sys.executable,
            "-m",
            "gfwlab",
            "analyze",
            str(cap),
            "--at",
            "2025-08-19T17:00",
            "--date",
            "2025-08-19",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert got.returncode == 2 and "--at" in got.stderr
    got = subprocess.run(
        [sys.executable, "-m", "gfwlab", "analyze", str(cap), "--at", "2025-08-19"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert got.returncode == 2 and "YYYY-MM-DDTHH:MM" in got.stderr
