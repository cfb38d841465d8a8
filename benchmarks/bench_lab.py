"""Forwarding cost of the live censor, against plain kernel forwarding in the same lab.

    python benchmarks/bench_lab.py [--seconds 5] [--connections 300]

Brings the lab up with the full ``gfw`` profile, then measures, once with every forwarded packet
going through the censor's queue rules and once with them skipped (one ACCEPT rule put first in
the censor namespace's mangle PREROUTING, so the kernel forwards everything itself):

- iperf3 bulk throughput, client → server, one TCP stream;
- new HTTP connections per second: wrk with ``Connection: close`` against nginx;
- the delay the censor adds to a flow's first data packet: the time between the packet leaving
  the client's veth and arriving at the server's, from tcpdump on both (same kernel clock),
  p50 and p99 over ``--connections`` new connections.

Prints a table with the ratios (censor / plain) and takes the lab down, also on Ctrl-C.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time

from rich.console import Console
from rich.table import Table

from gfwlab.lab import lifecycle
from gfwlab.lab.netns import in_ns
from gfwlab.live.topology import CENSOR_NS, CLIENT_NS, SERVER_NS, SERVER_V4
from gfwlab.packet.ip import PSH, parse
from gfwlab.packet.pcap import CaptureReader

SKIP_ON = ["-t", "mangle", "-I", "PREROUTING", "1", "-j", "ACCEPT"]
SKIP_OFF = ["-t", "mangle", "-D", "PREROUTING", "-j", "ACCEPT"]


def sh(argv: list[str], timeout: float = 120) -> str:
    res = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    if res.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: {res.stderr.strip() or res.stdout.strip()}")
    return res.stdout


def censor_off(off: bool) -> None:
    for tool in ("iptables", "ip6tables"):
        sh(in_ns(CENSOR_NS, tool, "-w", *(SKIP_ON if off else SKIP_OFF)))


def iperf(seconds: float) -> float:
    server = subprocess.Popen(
        in_ns(SERVER_NS, "iperf3", "-s", "-1", "-B", SERVER_V4),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        time.sleep(0.5)
        out = sh(
            in_ns(CLIENT_NS, "iperf3", "-c", SERVER_V4, "-t", str(seconds), "-J"),
            timeout=seconds + 30,
        )
        return float(json.loads(out)["end"]["sum_received"]["bits_per_second"])
    finally:
        server.kill()
        server.wait()


def wrk(seconds: float) -> float:
    out = sh(
        in_ns(
            CLIENT_NS,
            "wrk",
            "-t2",
            "-c32",
            f"-d{int(seconds)}s",
            "-H",
            "Connection: close",
            f"http://{SERVER_V4}/",
        ),
        timeout=seconds + 30,
    )
    match = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if match is None:
        raise RuntimeError(f"wrk printed no rate: {out}")
    return float(match.group(1))


CLIENT_SCRIPT = """
import socket, sys, time
for i in range(int(sys.argv[1])):
    s = socket.create_connection((sys.argv[2], 80))
    s.sendall(b"GET / HTTP/1.0\\r\\nHost: example.org\\r\\n\\r\\n")
    while s.recv(65536):
        pass
    s.close()
"""


def first_packet_delays(n: int) -> list[float]:
    """Seconds from client veth to server veth for the first data packet of ``n`` connections."""
    with tempfile.TemporaryDirectory() as tmp:
        caps = {}
        procs = []
        for ns, dev in ((CLIENT_NS, "gfwc0"), (SERVER_NS, "gfws0")):
            path = os.path.join(tmp, f"{dev}.pcap")
            caps[dev] = path
            procs.append(
                subprocess.Popen(
                    in_ns(
                        ns,
                        "tcpdump",
                        "--immediate-mode",
                        "-i",
                        dev,
                        "-n",
                        "-U",
                        "-w",
                        path,
                        "-j",
                        "adapter_unsynced",
                        "tcp dst port 80 and tcp[tcpflags] & tcp-push != 0",
                    ),
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )
        time.sleep(1.0)
        sh(in_ns(CLIENT_NS, sys.executable, "-c", CLIENT_SCRIPT, str(n), SERVER_V4), timeout=300)
        time.sleep(1.0)
        for proc in procs:
            proc.send_signal(signal.SIGINT)
            proc.wait(timeout=10)
        seen: dict[str, dict[tuple[int, int], float]] = {}
        for dev, path in caps.items():
            seen[dev] = {}
            with CaptureReader(path) as reader:
                for ts, raw in reader:
                    pkt = parse(raw)
                    if pkt.flags & PSH:
                        seen[dev].setdefault((pkt.sport, pkt.seq), ts)
    sent, got = seen["gfwc0"], seen["gfws0"]
    return [got[k] - t for k, t in sent.items() if k in got]


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--connections", type=int, default=300)
    args = parser.parse_args()
    console = Console()
    lifecycle.down()
    lifecycle.up(lifecycle.UpOptions(date="2024-06-01"), log=lambda _m: None)
    results: dict[str, dict[str, float]] = {}
    try:
        for mode in ("plain", "censor"):
            if mode == "plain":
                censor_off(True)
            try:
                console.print(f"[bold]{mode}[/]: iperf3, wrk, first-packet delay…")
                delays = first_packet_delays(args.connections)
                results[mode] = {
                    "iperf3 Gbit/s": iperf(args.seconds) / 1e9,
                    "wrk conn/s": wrk(args.seconds),
                    "first data packet p50 µs": pct(delays, 0.50) * 1e6,
                    "first data packet p99 µs": pct(delays, 0.99) * 1e6,
                    "samples": float(len(delays)),
                }
            finally:
                if mode == "plain":
                    censor_off(False)
    finally:
        lifecycle.down()
    table = Table(title=f"gfwlab lab forwarding ({os.cpu_count()} cores, {sys.version.split()[0]})")
    for col in ("measure", "plain kernel", "through the censor", "censor / plain"):
        table.add_column(col, justify="right")
    for key in results["plain"]:
        plain, cens = results["plain"][key], results["censor"][key]
        ratio = f"{cens / plain:.2f}" if plain and key != "samples" else ""
        table.add_row(key, f"{plain:,.2f}", f"{cens:,.2f}", ratio)
    console.print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
