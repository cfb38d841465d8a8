"""Forwarding cost of the live censor, against plain kernel forwarding in the same lab.

    python benchmarks/bench_lab.py [--seconds 5] [--connections 300] [--idle 10000]

Brings the lab up with the full ``gfw`` profile on 2022-06-01 (every mechanism of the profile
active: FET's dynamic blocking and Shadowsocks probing included), then measures, once with every
forwarded packet going through the censor's queue rules and once with them skipped (one ACCEPT
rule put first in the censor namespace's mangle PREROUTING, so the kernel forwards everything
itself), and then both again with ``--idle`` idle TCP connections held open through the lab
(opened, never used: each is a flow the censor tracks and the kernel's conntrack holds):

- iperf3 bulk throughput, client → server, one TCP stream;
- new HTTP connections per second: wrk with ``Connection: close`` against nginx, and the CPU
  time the censor process spent per new connection meanwhile (user + system, from /proc: on a
  machine shared with other work it moves less than the rates do), how often per new connection
  the censor went to sleep waiting for packets (each a wake-up later), and how busy the whole
  machine was: with wrk's 32 connections each waiting for its request's verdict, the machine is
  not saturated even without the censor, and the rate follows a request's latency as well as
  the CPU (``benchmarks/README.md``, "Latest on 2026-12-04");
- the delay the censor adds to a flow's first data packet: the time between the packet leaving
  the client's veth and arriving at the server's, from tcpdump on both (same kernel clock),
  p50 and p99 over ``--connections`` new connections.

With ``--null-engine`` it then brings the lab up again with the engine replaced by a constant
verdict (``floor/sitecustomize.py``: each queued packet parsed and accepted, a TCP flow bypassed
at its first data, no mechanism, no event) and measures the same at no idle connections: what
the queue, the kernel rules and the adapter cost alone, the most any faster engine can give.

With ``--engines N`` the censor runs as N engines, one per queue (``lab up --engines``,
``live/engines.py``), each judging the sites whose addresses end in its number's bits; with
``--sites N`` wrk's connections are split between N site addresses (one wrk each, at once,
their rates summed), so that several engines share the work. The censor's CPU is then that of
all its engines.

With ``--rounds N`` each phase runs N times, plain then censor in each round, seconds apart:
the table shows medians, and each ratio is taken within each round and given as its median and
range over the rounds (the null engine's, which runs in a lab of its own afterwards, against the
plain runs' median). The machine's speed moves between minutes; these paired ratios move less.

Prints a table with the ratios (censor / plain) and takes the lab down, also on Ctrl-C.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time

from offline import spread
from rich.console import Console
from rich.table import Table

from gfwlab.lab import lifecycle
from gfwlab.lab.netns import in_ns
from gfwlab.lab.state import LabState
from gfwlab.live.engines import COUNTS
from gfwlab.live.topology import CENSOR_NS, CLIENT_NS, SERVER_EXTRA_V4, SERVER_NS, SERVER_V4
from gfwlab.packet.ip import PSH, parse
from gfwlab.packet.pcap import CaptureReader

FLOOR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "floor")
"""``sitecustomize.py`` that replaces the engine with a constant verdict (``--null-engine``)."""
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


def censor_pids() -> list[int]:
    """The censor process and its other engines (its children, ``lab up --engines``)."""
    st = LabState.load()
    first = int(next(p["pid"] for p in st.processes() if p["name"] == "censor"))
    try:
        with open(f"/proc/{first}/task/{first}/children", encoding="ascii") as fh:
            return [first, *(int(x) for x in fh.read().split())]
    except OSError:
        return [first]


def censor_cpu() -> float:
    """CPU seconds (user + system) the censor's processes have used so far."""
    total = 0
    for pid in censor_pids():
        with open(f"/proc/{pid}/stat", encoding="ascii") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def censor_sleeps() -> int:
    """How many times the censor's threads have gone to sleep so far (voluntary context
    switches: each a wait for packets, so a wake-up later)."""
    total = 0
    for pid in censor_pids():
        tasks = f"/proc/{pid}/task"
        for task in os.listdir(tasks):
            with open(f"{tasks}/{task}/status", encoding="ascii") as fh:
                for line in fh:
                    if line.startswith("voluntary_ctxt_switches:"):
                        total += int(line.split()[1])
    return total


def machine_times() -> tuple[int, int]:
    """The whole machine's CPU time so far, and the idle part of it (/proc/stat, in ticks)."""
    with open("/proc/stat", encoding="ascii") as fh:
        ticks = [int(v) for v in fh.readline().split()[1:]]
    return sum(ticks), ticks[3] + ticks[4]  # idle and iowait


def wrk(seconds: float, sites: int = 1) -> float:
    """New connections per second: wrk's 32 connections (two threads) against nginx, at one
    site address or split between ``sites`` of them (one wrk each, run at once; the rates
    summed), ``Connection: close``."""
    addresses = [SERVER_V4, *SERVER_EXTRA_V4][:sites]
    threads, conns = (2, 32) if sites == 1 else (1, max(1, 32 // sites))
    procs = [
        subprocess.Popen(
            in_ns(
                CLIENT_NS,
                "wrk",
                f"-t{threads}",
                f"-c{conns}",
                f"-d{int(seconds)}s",
                "-H",
                "Connection: close",
                f"http://{address}/",
            ),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for address in addresses
    ]
    total = 0.0
    for proc in procs:
        out, _ = proc.communicate(timeout=seconds + 30)
        match = re.search(r"Requests/sec:\s+([\d.]+)", out)
        if match is None:
            raise RuntimeError(f"wrk printed no rate: {out}")
        total += float(match.group(1))
    return total


IDLE_PORT = 9000
IDLE_SERVER = """
import resource, socket, sys, time
hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
srv = socket.socket(socket.AF_INET6 if ":" in sys.argv[1] else socket.AF_INET)
srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind((sys.argv[1], int(sys.argv[2])))
srv.listen(4096)
held = []
print("ready", flush=True)
while True:
    held.append(srv.accept()[0])
"""
IDLE_CLIENT = """
import resource, socket, sys, time
hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
held = []
for i in range(int(sys.argv[3])):
    held.append(socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=10))
print("held", len(held), flush=True)
sys.stdin.read()
"""


class Idle:
    """``n`` idle TCP connections from the client to the server, held open while in use."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.procs: list[subprocess.Popen[str]] = []

    def __enter__(self) -> Idle:
        if not self.n:
            return self
        server = subprocess.Popen(
            in_ns(SERVER_NS, sys.executable, "-c", IDLE_SERVER, SERVER_V4, str(IDLE_PORT)),
            stdout=subprocess.PIPE,
            text=True,
        )
        self.procs.append(server)
        assert server.stdout is not None
        server.stdout.readline()
        client = subprocess.Popen(
            in_ns(
                CLIENT_NS, sys.executable, "-c", IDLE_CLIENT, SERVER_V4, str(IDLE_PORT), str(self.n)
            ),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        self.procs.append(client)
        assert client.stdout is not None
        line = client.stdout.readline().split()
        if line[:1] != ["held"] or int(line[1]) != self.n:
            raise RuntimeError(f"could not hold {self.n} idle connections: {line}")
        return self

    def __exit__(self, *_exc: object) -> None:
        for proc in reversed(self.procs):
            proc.kill()
            proc.wait()
        self.procs.clear()


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
    parser.add_argument("--idle", type=int, default=10000, help="idle connections (0: none)")
    parser.add_argument("--date", default="2022-06-01")
    parser.add_argument("--rounds", type=int, default=1, help="plain and censor, N times each")
    parser.add_argument(
        "--engines", type=int, default=1, help="censor engines (lab up --engines), 1-16"
    )
    parser.add_argument(
        "--sites",
        type=int,
        default=1,
        help="site addresses wrk's connections are split between (1-8): with several engines, "
        "each judges the sites of its share",
    )
    parser.add_argument(
        "--null-engine",
        action="store_true",
        help="also measure with the engine replaced by a constant verdict (no idle connections)",
    )
    args = parser.parse_args()
    if args.rounds < 1:
        print("bench_lab: --rounds must be at least 1", file=sys.stderr)
        return 2
    if args.engines not in COUNTS or not 1 <= args.sites <= 8:
        print("bench_lab: --engines must be 1, 2, 4, 8 or 16, --sites 1 to 8", file=sys.stderr)
        return 2
    console = Console() if sys.stdout.isatty() else Console(width=140)  # whole ratios in a file
    lifecycle.down()
    lifecycle.up(lifecycle.UpOptions(date=args.date, engines=args.engines), log=lambda _m: None)
    results: dict[tuple[int, str], list[dict[str, float]]] = {}
    loads = [0, args.idle] if args.idle else [0]
    try:
        for idle in loads:
            with Idle(idle):
                for n in range(args.rounds):
                    for mode in ("plain", "censor"):
                        run = measure(console, args, idle, mode, f" (round {n + 1})" * (n > 0))
                        results.setdefault((idle, mode), []).append(run)
            show(console, results, idle, args.date, args.engines, args.sites)
        if args.null_engine:
            lifecycle.down()
            saved = {k: os.environ.get(k) for k in ("GFWLAB_FLOOR", "PYTHONPATH")}
            os.environ["GFWLAB_FLOOR"] = "null"  # the censor process inherits the environment
            os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [FLOOR, saved["PYTHONPATH"]]))
            try:
                lifecycle.up(lifecycle.UpOptions(date=args.date), log=lambda _m: None)
            finally:
                for key, value in saved.items():
                    if value is None:
                        os.environ.pop(key, None)
                    else:
                        os.environ[key] = value
            results[(0, "null engine")] = [
                measure(console, args, 0, "null engine", f" (round {n + 1})" * (n > 0))
                for n in range(args.rounds)
            ]
            show(console, results, 0, args.date, args.engines, args.sites)
    finally:
        lifecycle.down()
    return 0


def measure(
    console: Console, args: argparse.Namespace, idle: int, mode: str, label: str = ""
) -> dict[str, float]:
    """One phase: first-data delays, iperf3, wrk and the censor's CPU per new connection."""
    if mode == "plain":
        censor_off(True)
    try:
        console.print(f"[bold]{mode}[/], {idle} idle{label}: iperf3, wrk, first data…")
        delays = first_packet_delays(args.connections)
        bulk = iperf(args.seconds) / 1e9
        cpu0, sleeps0, (all0, idle0) = censor_cpu(), censor_sleeps(), machine_times()
        rate = wrk(args.seconds, args.sites)
        all1, idle1 = machine_times()
        conns = max(1.0, rate * args.seconds)
        cpu = (censor_cpu() - cpu0) / conns
        return {
            "iperf3 Gbit/s": bulk,
            "wrk conn/s": rate,
            "censor CPU per new connection µs": cpu * 1e6,
            "censor wake-ups per new connection": (censor_sleeps() - sleeps0) / conns,
            "machine busy during wrk %": 100.0 * (1 - (idle1 - idle0) / max(1, all1 - all0)),
            "first data packet p50 µs": pct(delays, 0.50) * 1e6,
            "first data packet p99 µs": pct(delays, 0.99) * 1e6,
            "samples": float(len(delays)),
        }
    finally:
        if mode == "plain":
            censor_off(False)


NO_RATIO = (
    "samples",
    "censor CPU per new connection µs",
    "censor wake-ups per new connection",
    "machine busy during wrk %",
)
"""Rows whose censor / plain ratio means nothing (the plain run's censor sees no packet)."""


def show(
    console: Console,
    results: dict[tuple[int, str], list[dict[str, float]]],
    idle: int,
    date: str,
    engines: int = 1,
    sites: int = 1,
) -> None:
    """The table of one load: medians over the rounds, and each ratio's median and range over
    the rounds (each round's own plain run; the null engine's against the plain median)."""
    load = os.getloadavg()[0]
    rounds = len(results[(idle, "plain")])
    table = Table(
        title=f"gfwlab lab forwarding, gfw profile on {date}, {idle:,} idle connections"
        + (f", {engines} engines" if engines > 1 else "")
        + (f", wrk to {sites} sites" if sites > 1 else "")
        + " "
        f"({os.cpu_count()} cores, load average {load:.1f}, {sys.version.split()[0]}"
        + (f"; medians of {rounds} rounds)" if rounds > 1 else ")")
    )
    modes = [m for m in ("censor", "null engine") if (idle, m) in results]
    cols = ["measure", "plain kernel", *(f"through the {m}" for m in modes)]
    cols += [f"{m} / plain" for m in modes]
    for col in cols:
        table.add_column(col, justify="right")
    plains = results[(idle, "plain")]
    for key in plains[0]:
        plain = statistics.median(r[key] for r in plains)
        values, ratios = [], []
        for m in modes:
            runs = results[(idle, m)]
            values.append(statistics.median(r[key] for r in runs))
            if key in NO_RATIO or not plain:
                ratios.append("")
                continue
            if m == "null engine":
                each = [r[key] / plain for r in runs]
            else:
                each = [r[key] / p[key] for r, p in zip(runs, plains, strict=True) if p[key]]
            ratios.append(spread(each))
        table.add_row(key, f"{plain:,.2f}", *(f"{v:,.2f}" for v in values), *ratios)
    console.print(table)


if __name__ == "__main__":
    sys.exit(main())
