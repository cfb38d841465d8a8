"""The same engine live and offline: a recorded lab session, analysed, gives the same verdicts."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gfwlab.lab.lifecycle import UpOptions, lab_sets
from gfwlab.lab.netns import in_ns
from gfwlab.live.chains import jump_rule
from gfwlab.live.kernel import Kernel
from gfwlab.live.topology import CENSOR_NS
from testenv import (
    LAB_MARKS,
    SETS,
    UP,
    _verdicts,
    client,
    curl,
    engine_packets,
    gfwlab,
    leftovers,
)

pytestmark = LAB_MARKS


ENGINES = pytest.mark.parametrize("engines", [1, pytest.param(2, marks=pytest.mark.slow)])
"""One engine, and two (``lab up --engines``, ``live/engines.py``; the matrix stage): the lab's
addresses are shared between them by their low bit, so each session below reaches both."""


@ENGINES
def test_recorded_session_analysed_offline_gives_the_live_verdicts(
    tmp_path: Path, engines: int
) -> None:
    gfwlab("lab", "down")
    up = gfwlab("lab", "up", *UP, "--engines", str(engines))
    assert up.returncode == 0, up.stderr
    try:
        rec = tmp_path / "session.pcap"
        recorder = subprocess.Popen(
            [sys.executable, "-m", "gfwlab", "lab", "record", str(rec)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        time.sleep(1.0)
        curl("https://example.org/", "--resolve", "example.org:443:198.19.0.3")
        curl("https://www.facebook.com/", "--resolve", "www.facebook.com:443:198.19.0.4")
        curl("https://example.org/", "--resolve", "example.org:443:198.19.0.4")  # residual
        curl("http://198.19.0.6/?q=falun")
        client("dig", "+time=2", "+tries=1", "www.google.com", "A")
        client("dig", "+time=2", "+tries=1", "example.org", "A")
        time.sleep(1.0)
        recorder.send_signal(signal.SIGINT)
        _out, err = recorder.communicate(timeout=30)
        assert recorder.returncode == 0, err
        assert rec.stat().st_size > 24
        live = [json.loads(x) for x in gfwlab("lab", "events").stdout.splitlines()]
        judged = engine_packets()
    finally:
        gfwlab("lab", "down")
    assert leftovers() == []
    assert all(judged), judged  # every engine had its share
    opts = UpOptions(sets=list(SETS))
    args = [
        "analyze",
        str(rec),
        "--date",
        "2024-06-01",
        "--seed",
        "3",
        "--events",
        str(tmp_path / "offline.jsonl"),
    ]
    for item in lab_sets(opts):
        args += ["--set", item]
    res = gfwlab(*args)
    assert res.returncode == 0, res.stderr
    offline = [json.loads(x) for x in (tmp_path / "offline.jsonl").read_text().splitlines()]
    assert _verdicts(live)
    assert _verdicts(offline) == _verdicts(live)


SESSION = r'''
import json, random, socket, sys, time
from gfwlab.proto.tls import build_client_hello

GET = b"GET / HTTP/1.1\r\nHost: example.org\r\n\r\n"


def ask(sock):
    """Send a GET on a kept-alive connection; the bytes answered, or -1 if none within 2 s."""
    sock.sendall(GET)
    try:
        return len(sock.recv(65536))
    except TimeoutError:
        return -1


def connect(addr, port):
    sock = socket.create_connection((addr, port), timeout=2)
    return sock, sock.getsockname()[1]


out = {}
# A connection established and bypassed before a residual drop block starts on its key...
a1, out["a1_port"] = connect("198.19.0.5", 80)
out["a1_first"] = ask(a1)
# ...started by another connection (ESNI: drop client-to-server, 3-tuple key).
b, out["b_port"] = connect("198.19.0.5", 80)
b.sendall(build_client_hello("example.org", esni=True))
time.sleep(0.3)
out["a1_second"] = ask(a1)
# The same over IPv6.
a6, out["a6_port"] = connect("2001:db8:5::2", 80)
out["a6_first"] = ask(a6)
b6, out["b6_port"] = connect("2001:db8:5::2", 80)
b6.sendall(build_client_hello("example.org", esni=True))
time.sleep(0.3)
out["a6_second"] = ask(a6)
# The same for a static block (a null route: server-to-client packets of the server dropped),
# which starts a second after the FET drop that decided it.
a2, out["a2_port"] = connect("198.19.0.8", 80)
out["a2_first"] = ask(a2)
f, out["f_port"] = connect("198.19.0.8", 443)
f.sendall(random.Random(7).randbytes(300))
time.sleep(1.5)
out["a2_second"] = ask(a2)
print(json.dumps(out))
'''

SESSION_SETS = [
    "esni.residual_s=30",
    "fet.active={start='2021-11-01'}",
    "fet.probability=1.0",
    "fet.targets=['198.19.0.8/32']",
    "fet.static_block=true",
    "fet.static_delay_s=1.0",
    "fet.static_block_s=30",
    "ss_probing.enabled=false",
    "quic_sni.block_latency_ms=[]",  # blocked from the Initial on, before the request is sent
]


@ENGINES
def test_residual_blocks_reach_bypassed_flows_as_offline(tmp_path: Path, engines: int) -> None:
    """Residual drop blocks (ESNI's, FET's and its static null route) reach connections the
    kernel bypassed before they started, QUIC's drop holds, and the analysis of the recording
    gives the live verdicts (spec §4b, §5, §6, §10b)."""
    extra = [x for s in SESSION_SETS for x in ("--set", s)]
    gfwlab("lab", "down")
    up = gfwlab("lab", "up", *UP, *extra, "--engines", str(engines))
    assert up.returncode == 0, up.stderr
    try:
        rec = tmp_path / "session.pcap"
        recorder = subprocess.Popen(
            [sys.executable, "-m", "gfwlab", "lab", "record", str(rec)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        time.sleep(1.0)
        script = tmp_path / "session.py"
        script.write_text(SESSION)
        res = client(sys.executable, str(script), timeout=60)
        assert res.returncode == 0, res.stderr
        seen = json.loads(res.stdout.strip().splitlines()[-1])
        h3 = client(
            sys.executable,
            "-m",
            "gfwlab.lab.h3",
            "get",
            "https://www.google.com/",
            "--connect-ip",
            "198.19.0.6",
            "--timeout",
            "3",
        )
        time.sleep(0.5)
        recorder.send_signal(signal.SIGINT)
        _out, err = recorder.communicate(timeout=30)
        assert recorder.returncode == 0, err
        live = [json.loads(x) for x in gfwlab("lab", "events").stdout.splitlines()]
        stats = json.loads(gfwlab("lab", "status", "--json").stdout)["stats"]
        judged = engine_packets()
        kernel = Kernel(in_ns(CENSOR_NS))
        held = {(name, elem) for name, elem, left in kernel.residuals() if 0 < left <= 180}
        check = ["iptables", "-w", "-t", "mangle", "-C", "GFWLAB", *jump_rule()]
        jumped = subprocess.run(in_ns(CENSOR_NS, *check), capture_output=True, check=False)
        kernel.armed = True
        kernel.flush()  # the blocks and the jump to their sets go
        assert kernel.residuals() == []
        gone = subprocess.run(in_ns(CENSOR_NS, *check), capture_output=True, check=False)
        assert gone.returncode != 0
    finally:
        gfwlab("lab", "down")
    assert leftovers() == []
    assert all(judged) and stats["engines"] == engines, (judged, stats)
    # Live: answered before the block, nothing after it; the QUIC request fails.
    assert seen["a1_first"] > 0 and seen["a1_second"] == -1, seen
    assert seen["a2_first"] > 0 and seen["a2_second"] == -1, seen
    assert seen["a6_first"] > 0 and seen["a6_second"] == -1, seen
    assert h3.returncode != 0
    assert stats["kernel_residuals"] >= 3
    assert stats["kernel_skipped"] >= 1  # handshake ACKs before the first block: not queued
    assert jumped.returncode == 0  # bypassed packets cross the sets while blocks are in force
    assert held >= {
        ("gfwlab-tuple-c2s4", "198.18.0.2,tcp:80,198.19.0.5"),  # ESNI's 3-tuple
        ("gfwlab-tuple-c2s4", "198.18.0.2,tcp:443,198.19.0.8"),  # FET's
        ("gfwlab-addr-s2c4", "198.19.0.8"),  # FET's static block
        ("gfwlab-tuple-c2s6", "2001:db8:c::2,tcp:80,2001:db8:5::2"),  # ESNI's, over IPv6
    }, held

    def acted(events: list[dict[str, object]], mech: str, action: str, port: int) -> bool:
        return any(
            e["mechanism"] == mech and e["action"] == action and e["flow"]["sport"] == port  # type: ignore[index]
            for e in events
        )

    assert acted(live, "esni", "drop", seen["b_port"])
    assert acted(live, "esni", "drop", seen["a1_port"])  # the residual reached the bypassed flow
    assert acted(live, "esni", "drop", seen["a6_port"])
    assert acted(live, "fet", "drop", seen["f_port"])
    assert acted(live, "fet", "null-route", seen["a2_port"])
    assert any(e["mechanism"] == "quic_sni" and e["action"] == "drop" for e in live)
    opts = UpOptions(sets=[*SETS, *SESSION_SETS])
    args = ["analyze", str(rec), "--date", "2024-06-01", "--seed", "3"]
    args += ["--events", str(tmp_path / "offline.jsonl")]
    for item in lab_sets(opts):
        args += ["--set", item]
    res = gfwlab(*args)
    assert res.returncode == 0, res.stderr
    offline = [json.loads(x) for x in (tmp_path / "offline.jsonl").read_text().splitlines()]
    assert _verdicts(offline) == _verdicts(live)
