"""Blocked flows held by the kernel, live (``live/blocked.py``): after the engine drops a packet
of a flow, the kernel drops the flow's later packets in that direction without queueing them,
the engine's flow lives as long as the kernel keeps dropping, and once the flow has been idle
for the engine's timeout both forget it and its next packet is judged anew (spec §5: QUIC SNI,
client-to-server datagrams dropped)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from gfwlab.lab.netns import in_ns
from gfwlab.live.topology import CENSOR_NS, CLIENT_NS
from testenv import LAB_MARKS, UP, client, gfwlab, leftovers

pytestmark = LAB_MARKS

SEND = r"""
import json, socket, sys, time
from gfwlab.proto.quic_build import build_initial

port, count, initial = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3] == "1"
gap = float(sys.argv[4]) if len(sys.argv) > 4 else 0.002
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("198.18.0.2", port))
if initial:
    s.sendto(build_initial("www.google.com"), ("198.19.0.6", 443))
    time.sleep(0.3)
for _ in range(count):
    s.sendto(b"\x40" + bytes(1199), ("198.19.0.6", 443))
    time.sleep(gap)
print(json.dumps({"port": s.getsockname()[1]}))
"""

HELD_SETS = [
    "quic_sni.block_latency_ms=[]",  # dropped from the first datagram after the Initial
    "quic_sni.residual_s=0",  # so that, once forgotten, the flow is judged anew and passes
    "engine.udp_timeout_s=3",
    "ss_probing.enabled=false",
]


def stats() -> dict[str, int]:
    st: dict[str, int] = json.loads(gfwlab("lab", "status", "--json").stdout)["stats"]
    return st


def held_entries() -> str:
    return subprocess.run(
        in_ns(CENSOR_NS, "ipset", "list", "gfwlab-blocked-c2s4", "-output", "save"),
        capture_output=True,
        text=True,
        check=True,
    ).stdout


def test_a_blocked_flows_later_packets_never_reach_the_queue(tmp_path: Path) -> None:
    script = tmp_path / "send.py"
    script.write_text(SEND)
    gfwlab("lab", "down")
    up = gfwlab("lab", "up", *UP, *[x for s in HELD_SETS for x in ("--set", s)])
    assert up.returncode == 0, up.stderr
    try:
        before = stats()
        res = client(sys.executable, str(script), "0", "300", "1")
        assert res.returncode == 0, res.stderr
        port = json.loads(res.stdout)["port"]
        time.sleep(1.0)
        during = stats()
        entries = held_entries()
        events = [json.loads(x) for x in gfwlab("lab", "events").stdout.splitlines()]
        # Silence: past the engine's idle timeout (3 s) and the entry's (4 s), both forget.
        time.sleep(6.0)
        after_idle = held_entries()
        again = client(sys.executable, str(script), str(port), "1", "0")
        assert again.returncode == 0, again.stderr
        time.sleep(1.0)
        last = stats()
        later = [json.loads(x) for x in gfwlab("lab", "events").stdout.splitlines()]
    finally:
        gfwlab("lab", "down")
    assert leftovers() == []
    queued = during["queued_packets"] - before["queued_packets"]
    dropped = during["kernel_dropped"] - before["kernel_dropped"]
    # The Initial and the first datagram after it reach the engine (and the few sent before
    # the entry was in place); the other ~290 of 300 are dropped by the kernel.
    assert queued <= 20, during
    assert dropped >= 280, during
    assert during["kernel_blocked_flows"] >= 1
    assert f"198.18.0.2,udp:{port},198.19.0.6" in entries, entries
    drops = [
        e
        for e in events
        if e["mechanism"] == "quic_sni" and e["action"] == "drop" and e["flow"]["sport"] == port
    ]
    assert len(drops) == 1, drops  # the engine decided once, and still reports it once
    assert f"udp:{port}," not in after_idle, after_idle
    # Judged anew: it reached the queue and passed (no residual block, not an Initial).
    assert last["queued_packets"] - during["queued_packets"] >= 1
    assert last["kernel_dropped"] == during["kernel_dropped"]
    assert [e for e in later if e not in events and e["action"] == "drop"] == []


def test_a_held_flow_lives_while_the_kernel_drops_its_packets(tmp_path: Path) -> None:
    """The engine sees none of the packets the kernel drops for it, so every few seconds the
    censor reads from the kernel's sets (a netlink dump, ``HeldFlows.check``) when each held flow
    last had one dropped: a sender that keeps going for twice the engine's idle timeout keeps its
    flow in the engine, blocked, as offline, where the engine sees every packet; its packets never
    come back to the queue."""
    script = tmp_path / "send.py"
    script.write_text(SEND)
    gfwlab("lab", "down")
    sets = [*HELD_SETS, "engine.sweep_s=1"]  # idle flows forgotten within a second of it
    up = gfwlab("lab", "up", *UP, *[x for s in sets for x in ("--set", s)])
    assert up.returncode == 0, up.stderr
    try:
        before = stats()
        sender = subprocess.Popen(  # 300 datagrams 20 ms apart: 6 s; the idle timeout is 3 s
            in_ns(CLIENT_NS, sys.executable, str(script), "0", "300", "1", "0.02"),
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            time.sleep(5.0)
            during = stats()
            out, _ = sender.communicate(timeout=30)
        finally:
            sender.kill()
        assert sender.returncode == 0
        port = json.loads(out)["port"]
        time.sleep(0.5)
        after = stats()
        events = [json.loads(x) for x in gfwlab("lab", "events").stdout.splitlines()]
    finally:
        gfwlab("lab", "down")
    assert leftovers() == []
    assert before["flows_tracked"] == 0, before
    # 4.7 s after the engine last saw a packet of it, the flow is still the engine's.
    assert during["flows_tracked"] == 1 and during["kernel_blocked_now"] == 1, during
    mine = [e for e in events if e["flow"]["sport"] == port]
    assert [e["action"] for e in mine] == ["drop"], mine  # judged once, never anew
    assert after["queued_packets"] - before["queued_packets"] <= 20, after
    assert after["kernel_dropped"] - before["kernel_dropped"] >= 280, after
    assert after["kernel_errors"] == 0, after
