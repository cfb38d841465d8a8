"""A fast sender into a blocked flow: what it costs the live censor, with the flow held by the
kernel (``live/blocked.py``) and with its packets queued as before.

    python benchmarks/bench_blocked.py [--datagrams 200000] [--rounds 2]   # root; makes the lab

Brings the lab up on 2024-06-01 with QUIC SNI blocking from the first datagram after the Initial
(``quic_sni.block_latency_ms=[]``, spec §5), then, in each round and each mode, a client sends a
QUIC Initial for a blocked name and ``--datagrams`` datagrams of 1,200 bytes on the same flow as
fast as Python sends them (a fixed-rate UDP tunnel into a QUIC drop). Modes: ``held`` (the lab as
it is) and ``queued`` (the chain that drops held flows emptied, so every datagram goes through the
queue to be dropped by the engine, as before the kernel held blocked flows). For each it prints
the datagrams queued, those the kernel dropped for the engine, those that passed uninspected
(the queue full: its fail-open flag lets them through, to the server), and the censor's CPU
time. It reports; it never asserts.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time

from bench_lab import censor_cpu
from rich.console import Console
from rich.table import Table

from gfwlab.lab import lifecycle
from gfwlab.lab.netns import in_ns
from gfwlab.live import blocked
from gfwlab.live.topology import CENSOR_NS, CLIENT_NS

SETS = ["quic_sni.block_latency_ms=[]", "ss_probing.enabled=false"]
SEND = r"""
import json, socket, sys, time
from gfwlab.proto.quic_build import build_initial

s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("198.18.0.2", 0))
s.sendto(build_initial("www.google.com"), ("198.19.0.6", 443))
time.sleep(0.3)
datagram = b"\x40" + bytes(1199)
start = time.perf_counter()
for _ in range(int(sys.argv[1])):
    s.sendto(datagram, ("198.19.0.6", 443))
print(json.dumps({"seconds": time.perf_counter() - start}))
"""


def counters() -> dict[str, int]:
    st = lifecycle.status().stats
    keys = ("queued_packets", "uninspected", "queue_dropped", "kernel_dropped")
    return {k: int(st.get(k, 0)) for k in keys}


def censor_rules() -> dict[str, list[str]]:
    """The held flows' chain as the censor filled it, per tool (``iptables -S`` lines)."""
    out = {}
    for tool in ("iptables", "ip6tables"):
        listing = subprocess.run(
            in_ns(CENSOR_NS, tool, "-w", "-t", "mangle", "-S", blocked.CHAIN),
            capture_output=True, text=True, check=True,
        ).stdout  # fmt: skip
        out[tool] = [line for line in listing.splitlines() if line.startswith("-A ")]
    return out


def chain(rules: dict[str, list[str]], held: bool) -> None:
    """Put the censor's rules back in the held flows' chain, or empty it (``queued``)."""
    for tool, lines in rules.items():
        ipt = in_ns(CENSOR_NS, tool, "-w", "-t", "mangle")
        subprocess.run([*ipt, "-F", blocked.CHAIN], check=True)
        for line in lines if held else []:
            subprocess.run([*ipt, *shlex.split(line)], check=True)


def one(script: str, datagrams: int) -> dict[str, float]:
    time.sleep(0.6)  # the censor's counters are at most half a second old
    before, cpu0 = counters(), censor_cpu()
    res = subprocess.run(
        in_ns(CLIENT_NS, sys.executable, script, str(datagrams)),
        capture_output=True, text=True, timeout=300, check=True,
    )  # fmt: skip
    time.sleep(2.0)  # the queue drains, the counters are written (twice a second)
    after, cpu1 = counters(), censor_cpu()
    out: dict[str, float] = {k: after[k] - before[k] for k in after}
    out["send seconds"] = json.loads(res.stdout)["seconds"]
    out["censor CPU s"] = cpu1 - cpu0
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--datagrams", type=int, default=200_000)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    console = Console()
    lifecycle.down()
    opts = lifecycle.UpOptions(date="2024-06-01", sets=SETS)
    lifecycle.up(opts, log=lambda _m: None)
    rows: list[tuple[str, dict[str, float]]] = []
    try:
        with tempfile.NamedTemporaryFile("w", suffix=".py", delete=False) as fh:
            fh.write(SEND)
        os.chmod(fh.name, 0o644)
        rules = censor_rules()
        for r in range(args.rounds):
            for mode in ("held", "queued"):
                chain(rules, mode == "held")
                console.print(f"round {r + 1}, {mode}: {args.datagrams:,} datagrams…")
                rows.append((mode, one(fh.name, args.datagrams)))
        os.unlink(fh.name)
    finally:
        lifecycle.down()
    table = Table(title=f"{args.datagrams:,} datagrams into a QUIC SNI drop, per round and mode")
    cols = ["mode", "send seconds", "queued_packets", "kernel_dropped", "uninspected",
            "queue_dropped", "censor CPU s"]  # fmt: skip
    for col in cols:
        name = col.replace("_packets", "").replace("_", " ")
        table.add_column(name, justify="left" if col == "mode" else "right")
    for mode, got in rows:
        seconds = ("send seconds", "censor CPU s")
        table.add_row(
            mode, *(f"{got[c]:,.2f}" if c in seconds else f"{got[c]:,.0f}" for c in cols[1:])
        )
    console.print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
