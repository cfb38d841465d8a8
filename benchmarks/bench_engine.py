#!/usr/bin/env python3
"""The engine's per-flow cost: the packets that reach it, fed through ``Censor`` in-process.

    python benchmarks/bench_engine.py                       # both mixes, 100,000 packets each
    python benchmarks/bench_engine.py --packets 300000 --keep /tmp/gfwlab-bench-engine
    python benchmarks/bench_engine.py --profile 20          # also the top 20 functions (cProfile)
    python benchmarks/bench_engine.py --lists               # the real 2024 lists loaded

For each mix (``realistic`` and ``flow-heavy``, made with ``gfwlab synth`` from the 2024 lists,
or reused from ``--keep DIR``) it runs the fast path of ``gfwlab analyze`` once with the full
``gfw`` profile on 2024-06-01 with every mechanism active (FET's dynamic blocking kept on, as
``benchmarks/offline.py`` does) and records the packets it hands the engine, with their times.
Then, in the same process, it times (best of ``--repeat``):

Times are the process's CPU time (``time.process_time``), the best of the runs. With ``--lists``
the profile loads the real 2024 DNS, HTTP, HTTPS and QUIC lists, as ``offline.py``'s "2024
lists" row does: far more of the flows are blocked, so this times the blocked flows' work (the
forged answers and resets, their draws and events).

* the baseline: ``packet.ip.parse`` alone over the recorded packets;
* the engine: a fresh ``Censor`` fed the recorded packets in order, its timers run as the
  every-packet path runs them.

It prints µs per flow and packets per second for both, and the engine's cost as a multiple of the
baseline (the ratio carries over between machines and loads; the absolute times do not: the
development machine is shared). It reports; it never asserts.
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import importlib
import pstats
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from gfwlab import _build

# The fast path and its drop watch run from their sources: compiled, they would refuse the
# recording wrapper (record). Before anything imports them (gfwlab.offline does).
_build.interpret(["gfwlab.offline.fast", "gfwlab.offline.dropwatch"])

from offline import REAL_LISTS  # noqa: E402

from gfwlab.engine.censor import Censor  # noqa: E402
from gfwlab.errors import MalformedPacket  # noqa: E402
from gfwlab.offline.index import build_index  # noqa: E402
from gfwlab.packet.ip import parse  # noqa: E402
from gfwlab.profiles import load_profile, parse_date  # noqa: E402
from gfwlab.profiles.loader import build_censor  # noqa: E402
from gfwlab.rules.profile import Profile  # noqa: E402

HERE = Path(__file__).resolve().parent
LISTS = HERE.parent.parent / "shared" / "data" / "blocklists"
DATE = "2024-06-01"
SETS = ["fet.active={start='2021-11-01'}"]

Fed = list[tuple[bytes, float]]


def capture(folder: Path, mix: str, packets: int, seed: int) -> Path:
    path = folder / f"{mix}-{packets}-{seed}.pcap"
    if not path.exists():
        cmd = [sys.executable, "-m", "gfwlab", "synth", str(path), "--packets", str(packets)]
        cmd += ["--seed", str(seed), "--mix", mix]
        if LISTS.is_dir():
            cmd += ["--lists", str(LISTS)]
        subprocess.run(cmd, check=True, capture_output=True)
    return path


def record(path: Path, profile: Profile) -> tuple[Fed, int]:
    """The packets the fast path feeds the engine, in order, and the flows it saw."""
    fast = importlib.import_module("gfwlab.offline.fast")
    index = build_index(str(path), 10_000_000)
    assert index is not None
    real = build_censor(profile, 0)
    fed: Fed = []

    class Recording:
        """The censor, with every packet it is fed recorded (the compiled ``Censor`` cannot
        have its ``feed`` replaced, so the fast path is handed this instead)."""

        def __getattr__(self, name: str) -> Any:
            return getattr(real, name)

        def feed(self, packet: bytes, now: float) -> Any:
            fed.append((packet, now))
            return real.feed(packet, now)

    censor: Any = Recording()
    fast.run(index, censor, lambda _event: None, keep=False)
    index.close()
    return fed, real.stats.flows


def replay(profile: Profile, fed: Fed) -> Censor:
    censor = build_censor(profile, 0)
    feed, deadline, on_timer = censor.feed, censor.next_deadline, censor.on_timer
    for packet, now in fed:
        due = deadline()
        if due is not None and due <= now:
            on_timer(now)
        feed(packet, now)
    censor.flush()
    return censor


def parse_only(fed: Fed) -> None:
    for packet, _now in fed:
        try:
            parse(packet)
        except MalformedPacket:  # costs what it costs; the engine makes it an anomaly
            continue


def best(fn: object, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        gc.collect()
        start = time.process_time()  # CPU time: the machine is shared, wall time is noisier
        fn()  # type: ignore[operator]
        times.append(time.process_time() - start)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--packets", type=int, default=100_000, help="packets per capture")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--repeat", type=int, default=3, help="timed runs each; the best is kept")
    ap.add_argument("--keep", help="reuse / keep the captures in this folder")
    ap.add_argument("--mix", action="append", help="realistic, flow-heavy (default: both)")
    ap.add_argument("--profile", type=int, default=0, help="print the top N functions")
    ap.add_argument("--lists", action="store_true", help="load the real 2024 lists")
    args = ap.parse_args()
    sets = (
        [*SETS, *(f"{key}={LISTS / name}" for key, name in REAL_LISTS.items())]
        if args.lists
        else SETS
    )
    profile = load_profile("gfw", date=parse_date(DATE), overrides=sets)
    with tempfile.TemporaryDirectory(prefix="gfwlab-bench-engine-") as tmp:
        folder = Path(args.keep) if args.keep else Path(tmp)
        folder.mkdir(parents=True, exist_ok=True)
        for mix in args.mix or ["realistic", "flow-heavy"]:
            path = capture(folder, mix, args.packets, args.seed)
            fed, flows = record(path, profile)
            base = best(lambda fed=fed: parse_only(fed), args.repeat)
            engine = best(lambda fed=fed: replay(profile, fed), args.repeat)
            n = len(fed)
            print(
                f"{mix:10} {args.packets:,} packets, {n:,} to the engine, {flows:,} flows "
                f"({n / flows:.1f} engine packets per flow)"
            )
            print(
                f"  parse only: {base * 1e6 / flows:8.1f} µs/flow {n / base:11,.0f} packets/s\n"
                f"  Censor.feed:{engine * 1e6 / flows:8.1f} µs/flow {n / engine:11,.0f} packets/s"
                f"  ({engine / base:.1f}× parse)"
            )
            if args.profile:
                prof = cProfile.Profile()
                prof.runcall(replay, profile, fed)
                pstats.Stats(prof).sort_stats("tottime").print_stats(args.profile)


if __name__ == "__main__":
    main()
