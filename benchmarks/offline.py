#!/usr/bin/env python3
"""Offline analysis against reading the file and against tshark, on two mixes, in one run.

    python benchmarks/offline.py --keep /tmp/gfwlab-bench          # 1,300,000 packets per mix
    python benchmarks/offline.py --keep /tmp/gfwlab-bench --rounds 3   # ratios paired by round
    python benchmarks/offline.py --packets 100000                  # a quick run
    python benchmarks/offline.py --keep DIR --exact                # also the every-packet path

Generates with ``gfwlab synth`` (or reuses from ``--keep DIR``) a ``realistic`` capture (25-40
packets per flow) and a ``flow-heavy`` one (about 130,000 flows per million packets), names from
the 2024 lists in ``../shared/data/blocklists``, then times over each file, each as its own
process (wall clock, process start included), and prints the peak memory of each:

* ``cat FILE > /dev/null`` (reading the file: the floor);
* ``gfwlab analyze --json --events`` with the full ``gfw`` profile on 2024-06-01 with every
  mechanism active (FET's dynamic blocking, which ended in 2023, kept on) and the built-in lists;
  the same with the real 2024 lists (DNS, HTTP, HTTPS, QUIC), and with a generated
  1,000,000-name list for every domain rule; how many packets reached the engine;
* the same with only the rules of the 2024 lists that the capture's names match (found in a
  run with the whole lists, its events' ``rule``): the same blocks, the same events byte for
  byte (checked), from lists a few thousand rules long. Against it the 2024 lists' run says
  what the lists' size costs with the work held equal, and the built-in lists' run what the
  blocks cost (the captures' names are a quarter drawn from the 2024 lists, so with them
  loaded many more flows are blocked than with the built-in ones);
* ``gfwlab analyze --shards 2`` with the built-in lists: the capture split by server address
  over a local cluster of two worker processes (``--shards N``; 0: not timed), against the
  one-process time;
* ``gfwlab analyze --exact`` with the built-in lists (with ``--exact``);
* the built-in-list run with the engine's sources interpreted (``GFWLAB_PURE=1``), when the
  installed engine is compiled (``gfwlab._build``): what the compilation gives, paired;
* ``tshark -r FILE -T fields`` with the DNS, HTTP Host and TLS SNI fields (and addresses).

Each analyze command is also timed on a one-flow capture, five times, taking turns: its fixed
cost (process start, imports, loading the lists; the median and range), which is how long
loading a list takes. The goals are those of issue 12; the benchmark reports the gap to them
and never asserts.

With ``--rounds N`` every command runs N times, one of each per round, one after the other:
the table shows medians (``cat``: its best), and each ratio (to tshark, of the lists, of
``--shards``) is worked out within each round, where the commands ran seconds apart, and
reported as the median with its range. On a machine whose speed moves (a shared one), those
paired ratios move much less than single runs do.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

HERE = Path(__file__).resolve().parent
LISTS = HERE.parent.parent / "shared" / "data" / "blocklists"
FLOOR = HERE / "floor"
"""``sitecustomize.py`` that times the engine inside an ``analyze`` run (its docstring)."""
REAL_LISTS = {
    "dns_injection.domains": "gfw-2024-dns-blocklist.txt",
    "http_keyword.domains": "gfw-2024-http-blocklist.txt",
    "tls_sni.domains": "gfw-2024-https-blocklist.txt",
    "quic_sni.domains": "gfw-2024-quic-blocklist.txt",
}
EVERY_MECHANISM = ["--date", "2024-06-01", "--set", "fet.active={start='2021-11-01'}"]

FIXED_RUNS = 5
"""Runs of each variant on the one-flow capture, for its fixed cost (their median and range)."""
TSHARK_FIELDS = (
    "ip.src", "ip.dst", "tcp.srcport", "tcp.dstport", "udp.srcport", "udp.dstport",
    "dns.qry.name", "http.host", "tls.handshake.extensions_server_name",
)  # fmt: skip
GOALS = {  # mix: (packets/s, times tshark, times cat at most)
    "realistic": (1_500_000, 30.0, 10.0),
    "flow-heavy": (500_000, 10.0, None),
}
console = Console() if sys.stdout.isatty() else Console(width=140)


@dataclass
class Timed:
    seconds: float
    rss_mib: float
    cpu: float
    """User + system CPU seconds: on a shared, loaded machine steadier than wall clock."""
    sys_s: float
    """System CPU seconds: where a virtual machine's first use of memory shows (page faults
    that moved a run's system time by 0.1-0.5 s from run to run on the development machine)."""
    code: int
    stdout: str
    stderr: str


@dataclass(frozen=True)
class Job:
    """One command a mix is timed with: ``stdout`` None keeps its output (the JSON summary)."""

    name: str
    cmd: list[str]
    stdout: str | None = None
    env: dict[str, str] | None = None


def timed(
    cmd: list[str], stdout_path: str | None = None, env: dict[str, str] | None = None
) -> Timed:
    """Run ``cmd``: wall seconds, the child's own peak resident memory, its outputs."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        sink = open(stdout_path, "wb") if stdout_path else out  # noqa: SIM115
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=sink, stderr=err, env=env)
        _pid, status, usage = os.wait4(proc.pid, 0)
        seconds = time.perf_counter() - start
        proc.returncode = code = os.waitstatus_to_exitcode(status)
        if stdout_path:
            sink.close()
        out.seek(0)
        err.seek(0)
        return Timed(seconds, usage.ru_maxrss / 1024, usage.ru_utime + usage.ru_stime,
                     usage.ru_stime, code, out.read().decode(), err.read().decode())  # fmt: skip


INTERPRETED = "gfwlab analyze, interpreted engine"
"""The built-in-list run with the engine's sources interpreted (GFWLAB_PURE=1)."""


def gfwlab_build() -> str:
    """How the engine runs in the gfwlab this benchmark starts (gfwlab.ENGINE_BUILD)."""
    code = "import gfwlab; print(gfwlab.ENGINE_BUILD)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return out.stdout.strip()


def gfwlab() -> list[str]:
    exe = shutil.which("gfwlab", path=str(Path(sys.executable).parent))
    return [exe] if exe else [sys.executable, "-m", "gfwlab"]


def ensure_capture(
    directory: Path, mix: str, packets: int, seed: int
) -> tuple[Path, dict[str, Any]]:
    cap = directory / f"{mix}-{packets}-s{seed}.pcap"
    meta = directory / f"{mix}-{packets}-s{seed}.json"
    if cap.exists() and meta.exists():
        console.print(f"reusing {cap}")
        return cap, json.loads(meta.read_text())
    console.print(f"generating {cap} ...")
    lists = ["--lists", str(LISTS)] if LISTS.is_dir() else []
    cmd = [*gfwlab(), "synth", str(cap), "--packets", str(packets), "--seed", str(seed),
           "--mix", mix, *lists]  # fmt: skip
    run = timed(cmd, str(meta))
    if run.code:
        raise SystemExit(f"gfwlab synth failed: {run.stderr.strip()}")
    return cap, json.loads(meta.read_text())


def million_names(directory: Path) -> Path:
    """A 1,000,000-entry domain list (deterministic names, a few real blocked ones)."""
    path = directory / "generated-1000000.txt"
    if not path.exists():
        tlds = ("com", "net", "org", "cn", "io", "info", "de", "jp")
        with open(path, "w", encoding="utf-8") as fh:
            for i in range(1_000_000):
                fh.write(f"host{i:x}.site{i % 9973}.{tlds[i % len(tlds)]}\n")
    return path


SAME_BLOCKS = "2024 lists' matched rules"
"""The variant with only the rules of the 2024 lists that a capture's names match."""


def compared_events(directory: Path, mix: str) -> dict[str, Path]:
    """Where the 2024 lists' run and the matched rules' run write their events (compared)."""
    return {"2024 lists": directory / f"events-{mix}-2024.jsonl",
            SAME_BLOCKS: directory / f"events-{mix}-matched.jsonl"}  # fmt: skip


def matched_lists(directory: Path, mix: str, cap: Path, sets: list[str]) -> list[str]:
    """``--set`` arguments for lists of only the rules of the 2024 lists (``sets``) that the
    capture's names match: run the analysis once with the whole lists and keep each event's
    ``rule`` under the list of its mechanism."""
    events = compared_events(directory, mix)["2024 lists"]
    run = timed([*gfwlab(), "analyze", str(cap), *EVERY_MECHANISM, *sets, "--json", "--events",
                 str(events)])  # fmt: skip
    if run.code:
        raise SystemExit(f"gfwlab analyze failed: {run.stderr.strip()}")
    rules: dict[str, set[str]] = {key: set() for key in REAL_LISTS}
    with open(events, encoding="utf-8") as fh:
        for line in fh:
            event = json.loads(line)
            key = f"{event['mechanism']}.domains"
            if key in rules:
                rules[key].add(event["rule"])
    out = []
    for key, names in rules.items():
        path = directory / f"matched-{mix}-{key.split('.')[0]}.txt"
        path.write_text("".join(f"{n}\n" for n in sorted(names)) or "# none\n")
        out += ["--set", f"{key}={path}"]
    return out


def one_flow(directory: Path) -> Path:
    path = directory / "one-flow.pcap"
    if not path.exists():
        timed([*gfwlab(), "synth", str(path), "--flows", "1", "--mix", "flow-heavy"])
    return path


def huge_pages() -> str:
    """The kernel's transparent huge page mode (``madvise``, ``always``, ``never``) and whether
    the commands' NumPy asks for them (``gfwlab`` turns that off unless
    ``NUMPY_MADVISE_HUGEPAGE`` is set): zeroing fresh huge pages moved whole runs here."""
    try:
        text = Path("/sys/kernel/mm/transparent_hugepage/enabled").read_text()
        mode = text[text.index("[") + 1 : text.index("]")]
    except (OSError, ValueError):
        mode = "unknown"
    numpy = os.environ.get("NUMPY_MADVISE_HUGEPAGE", "0 (gfwlab's default)")
    return f"kernel {mode}; NUMPY_MADVISE_HUGEPAGE {numpy}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    ap.add_argument("--packets", type=int, default=1_300_000)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--keep", type=Path, help="keep (and reuse) captures and lists here")
    ap.add_argument("--mix", action="append", choices=sorted(GOALS), help="default: both")
    ap.add_argument("--exact", action="store_true", help="also time the every-packet path")
    ap.add_argument("--no-tshark", action="store_true")
    ap.add_argument("--rounds", type=int, default=1,
                    help="run every command this many times, one of each per round; figures "
                    "are medians, ratios the median (and range) of each round's")  # fmt: skip
    ap.add_argument("--shards", type=int, default=2,
                    help="also time analyze --shards N on a local cluster of N workers "
                    "(built-in lists; 0: not)")  # fmt: skip
    args = ap.parse_args(argv)
    if args.rounds < 1:
        ap.error("--rounds must be at least 1")
    tmp = None
    if args.keep:
        args.keep.mkdir(parents=True, exist_ok=True)
        directory = args.keep
    else:
        tmp = tempfile.TemporaryDirectory(prefix="gfwlab-bench-")
        directory = Path(tmp.name)
    tshark = None if args.no_tshark else shutil.which("tshark")
    big = million_names(directory)
    variants: dict[str, list[str]] = {"built-in lists": []}
    if LISTS.is_dir():
        variants["2024 lists"] = [
            a for key, name in REAL_LISTS.items() for a in ("--set", f"{key}={LISTS / name}")
        ]
    variants["1M-name list"] = [a for key in REAL_LISTS for a in ("--set", f"{key}={big}")]
    tiny = one_flow(directory)
    # A single run of a fraction of a second moves by a tenth of it here: the median of a few,
    # the variants taking turns.
    samples: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(FIXED_RUNS):
        for name, sets in variants.items():
            run = timed([*gfwlab(), "analyze", str(tiny), *EVERY_MECHANISM, *sets, "--json"])
            samples[name].append(run.seconds)
    fixed = {name: statistics.median(runs) for name, runs in samples.items()}
    report: dict[str, Any] = {
        "huge_pages": huge_pages(),
        "fixed_cost_s": fixed,
        "fixed_cost_runs_s": samples,
        "mixes": {},
        "rounds": args.rounds,
    }
    console.print(f"huge pages: {report['huge_pages']}")
    for mix in args.mix or ["realistic", "flow-heavy"]:
        cap, info = ensure_capture(directory, mix, args.packets, args.seed)
        jobs: list[Job] = [Job("cat > /dev/null", ["cat", str(cap)], os.devnull)]
        mine = dict(variants)
        if "2024 lists" in variants:
            mine[SAME_BLOCKS] = matched_lists(directory, mix, cap, variants["2024 lists"])
        compared = compared_events(directory, mix)
        for name, sets in mine.items():
            events = str(compared.get(name, directory / f"events-{mix}.jsonl"))
            cmd = [*gfwlab(), "analyze", str(cap), *EVERY_MECHANISM, *sets, "--json",
                   "--events", events]  # fmt: skip
            jobs.append(Job(f"gfwlab analyze, {name}", cmd))
        if gfwlab_build() == "compiled":  # the same run on the engine's sources, interpreted
            cmd = [*gfwlab(), "analyze", str(cap), *EVERY_MECHANISM, "--json"]
            jobs.append(Job(INTERPRETED, cmd, env={**os.environ, "GFWLAB_PURE": "1"}))
        if args.shards > 1:
            events = str(directory / f"events-{mix}-shards.jsonl")
            cmd = [*gfwlab(), "analyze", str(cap), *EVERY_MECHANISM, "--json", "--events", events,
                   "--shards", str(args.shards), "--workers", str(args.shards)]  # fmt: skip
            jobs.append(Job(f"gfwlab analyze --shards {args.shards} (built-in)", cmd))
        if args.exact:
            cmd = [*gfwlab(), "analyze", str(cap), *EVERY_MECHANISM, "--json", "--exact"]
            jobs.append(Job("gfwlab analyze --exact, built-in", cmd))
        if tshark:
            fields = [a for f in TSHARK_FIELDS for a in ("-e", f)]
            cmd = [tshark, "-n", "-r", str(cap), "-T", "fields", *fields]
            jobs.append(Job("tshark -T fields", cmd, os.devnull))
        timed(["cat", str(cap)], os.devnull)  # the file in the page cache for every round
        runs: dict[str, list[Timed]] = {job.name: [] for job in jobs}
        for r in range(args.rounds):
            if args.rounds > 1:
                console.print(f"{mix}: round {r + 1} of {args.rounds}")
            for job in jobs:  # one round runs every command once: pairs within a round
                runs[job.name].append(timed(job.cmd, job.stdout, job.env))
        rows: list[tuple[str, list[Timed], int | None]] = []
        for job in jobs:
            first = runs[job.name][0]
            summary = json.loads(first.stdout) if first.code == 0 and job.stdout is None else {}
            if "--shards" in job.name and summary.get("warnings"):
                console.print(f"  --shards: {summary['warnings'][0]}")
            rows.append((job.name, runs[job.name], summary.get("engine_packets")))
        report["mixes"][mix] = show(mix, info, rows, samples)
        if SAME_BLOCKS in mine:
            same = compared["2024 lists"].read_bytes() == compared[SAME_BLOCKS].read_bytes()
            console.print(f"  {SAME_BLOCKS} and the whole 2024 lists: events byte-identical: "
                          f"{'yes' if same else 'NO: the comparison does not hold'}")  # fmt: skip
            report["mixes"][mix]["same_blocks_events_identical"] = same
        base = next(job.cmd for job in jobs if job.name.endswith("built-in lists"))
        whole = seconds(next(r for n, r, _ in rows if n.endswith("built-in lists")))
        report["mixes"][mix]["engine_share"] = engine_share(mix, base, info["packets"], whole)
    if args.keep:
        (directory / "report.json").write_text(json.dumps(report, indent=2))
    if tmp is not None:
        tmp.cleanup()
    return 0


def engine_share(mix: str, cmd: list[str], packets: int, whole: float) -> dict[str, float]:
    """Run ``cmd`` once more, timing the engine from inside (``floor/sitecustomize.py``): its
    seconds against ``whole`` (the same command's seconds in the table), and the throughput the
    rest allows, which no faster engine can pass. (The timed run is slower than ``whole``: its
    fast path runs interpreted, so that the engine's calls can be timed.)"""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "engine-seconds"
        env = dict(os.environ, GFWLAB_FLOOR=f"time:{path}")
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(FLOOR), env.get("PYTHONPATH")]))
        run = timed(cmd, env=env)
        spent = sum(float(x) for x in path.read_text().split()) if path.exists() else 0.0
    if run.code or not spent:
        console.print(f"  engine share: not measured (exit {run.code})")
        return {}
    rest = whole - spent
    goal = GOALS[mix][0]
    console.print(
        f"  engine share (built-in lists): Censor.feed and on_timer {spent:.2f} s of "
        f"{whole:.2f} s ({spent / whole:.0%}); everything else {rest:.2f} s, so "
        f"with an engine that cost nothing at most {packets / rest:,.0f} packets/s "
        f"({packets / rest / goal:.0%} of the goal)"
    )
    return {"engine_s": round(spent, 3), "run_s": round(whole, 3), "rest_s": round(rest, 3),
            "pps_without_engine": round(packets / rest)}  # fmt: skip


Rows = list[tuple[str, list[Timed], int | None]]
"""Each command's name, its runs (one a round) and how many packets reached the engine."""


def seconds(runs: list[Timed], *, best: bool = False) -> float:
    """The median of the runs' wall-clock seconds (``best``: the least, for ``cat``, whose
    first reads may still come from disk)."""
    values = [t.seconds for t in runs]
    return min(values) if best else statistics.median(values)


def paired(num: list[Timed], den: list[Timed]) -> str:
    """The ratio of two commands' seconds, round by round: its median, and its range over the
    rounds when there are several."""
    return spread([a.seconds / b.seconds for a, b in zip(num, den, strict=True) if b.seconds])


def spread(ratios: list[float]) -> str:
    """Ratios of several rounds as their median, with their range when there are several (also
    ``bench_lab.py``'s)."""
    mid = statistics.median(ratios)
    if len(ratios) == 1:
        return f"{mid:.2f}"
    return f"{mid:.2f} ({min(ratios):.2f}-{max(ratios):.2f})"


def show(
    mix: str, info: dict[str, Any], rows: Rows, fixed: dict[str, list[float]]
) -> dict[str, Any]:
    n = info["packets"]
    cat = seconds(rows[0][1], best=True)
    tshark_runs = next((runs for name, runs, _ in rows if name.startswith("tshark")), None)
    tshark = seconds(tshark_runs) if tshark_runs else None
    rounds = len(rows[0][1])
    table = Table(
        title=f"{mix}: {n:,} packets, {info['flows_started']:,} flows "
        f"({info['packets_per_flow']} per flow), {info['bytes_ip'] / 2**30:.2f} GiB"
        + (f"; medians of {rounds} rounds" if rounds > 1 else "")
    )
    for col in ("tool", "seconds", "CPU s", "sys s", "packets/s", "× cat", "tshark ×",
                "to engine", "peak MiB", "ok"):  # fmt: skip
        table.add_column(col, justify="left" if col == "tool" else "right")
    out: dict[str, Any] = {"packets": n, "flows": info["flows_started"], "rows": {}}
    for name, runs, fed in rows:
        secs = cat if name.startswith("cat") else seconds(runs)
        cpu = statistics.median(t.cpu for t in runs)
        sys_s = statistics.median(t.sys_s for t in runs)
        rss = max(t.rss_mib for t in runs)
        pps = n / secs if secs else 0.0
        codes = sorted({t.code for t in runs if t.code})
        table.add_row(
            name, f"{secs:.2f}", f"{cpu:.2f}", f"{sys_s:.2f}", f"{pps:,.0f}", f"{secs / cat:.1f}",
            f"{tshark / secs:.1f}" if tshark else "-",
            f"{fed:,} ({fed / n:.1%})" if fed is not None else "-",
            f"{rss:.0f}", "yes" if not codes else "exit " + ",".join(map(str, codes)),
        )  # fmt: skip
        out["rows"][name] = {"seconds": round(secs, 3), "cpu_s": round(cpu, 3),
                             "sys_s": round(sys_s, 3),
                             "pps": round(pps), "engine_packets": fed,
                             "peak_rss_mib": round(rss),
                             "rounds_s": [round(t.seconds, 3) for t in runs]}  # fmt: skip
    console.print(table)
    goal_pps, goal_tshark, goal_cat = GOALS[mix]
    base_runs = next(runs for name, runs, _ in rows if name.endswith("built-in lists"))
    base = seconds(base_runs)
    pps = n / base
    gaps = [f"goal ≥ {goal_pps:,} packets/s: {pps:,.0f} ({pps / goal_pps:.0%} of it)"]
    if tshark_runs:
        gaps.append(f"goal ≥ {goal_tshark:.0f}× tshark: {paired(tshark_runs, base_runs)}×")
    if goal_cat:
        gaps.append(f"goal within {goal_cat:.0f}× cat: {base / cat:.0f}×")
    for name, runs, _ in rows:
        if name == INTERPRETED:
            gaps.append(f"compiled engine (gfwlab._build): {paired(runs, base_runs)}× the "
                        "throughput of the same run interpreted (GFWLAB_PURE=1)")  # fmt: skip
            continue
        if "--shards" in name:
            gaps.append(f"{name}: {paired(runs, base_runs)} of the one-process time")
            continue
        if ("analyze" in name and "list" not in name.split(", ")[-1]) or "built-in" in name:
            continue
        if name.endswith(SAME_BLOCKS):  # not one of the goal's lists: see below
            continue
        if "analyze" in name:
            gaps.append(f"{name.split(', ')[-1]}: {paired(base_runs, runs)} of the built-in "
                        "throughput (goal ≥ 0.80)")  # fmt: skip
    by_name = {name: runs for name, runs, _ in rows}
    whole, same = (
        by_name.get("gfwlab analyze, 2024 lists"),
        by_name.get(f"gfwlab analyze, {SAME_BLOCKS}"),
    )
    if whole and same:
        gaps.append(f"the 2024 lists against their matched rules alone (the same blocks and "
                    f"events): {paired(same, whole)} of its throughput, what the lists' size "
                    f"costs; the matched rules against the built-in lists: "
                    f"{paired(base_runs, same)}, what the blocks cost")  # fmt: skip
    gaps.append(f"fixed cost per run (one-flow capture, median of {FIXED_RUNS}): "
                + ", ".join(f"{k} {spread(v)} s" for k, v in fixed.items()))  # fmt: skip
    for line in gaps:
        console.print(f"  {line}")
    out["gaps"] = gaps
    return out


if __name__ == "__main__":
    sys.exit(main())
