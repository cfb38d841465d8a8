#!/usr/bin/env python3
"""How fast ``gfwlab analyze`` is, next to tshark extracting the same fields from the same file.

    python benchmarks/bench_analyze.py                      # 1,000,000 packets
    python benchmarks/bench_analyze.py --packets 100000     # a quick run
    python benchmarks/bench_analyze.py --keep /tmp/bench    # keep (and later reuse) the capture

Generates a mixed capture with ``benchmarks/gen_capture.py`` (or reuses
``DIR/mixed-N-sSEED.pcap`` from ``--keep DIR``), then times, each over that one file and each as
its own process (wall clock, process start included):

* ``gfwlab analyze`` with the ``gfw`` profile on 2024-06-01 and the real 2024 lists loaded with
  ``--set`` (DNS, HTTP and HTTPS blocklists, about 100k names each);
* the same with the profile's built-in lists (a handful of names);
* ``tshark -r FILE -T fields`` with the fields the censor reads (addresses, ports, DNS QNAME,
  HTTP Host and URI, TLS SNI), output to /dev/null;
* plain iteration of :class:`gfwlab.packet.pcap.CaptureReader` (the I/O floor), and the same
  plus :func:`gfwlab.packet.ip.parse` on every packet.

Each command is also timed on a one-packet capture (its fixed cost: process start, imports,
list loading), so the table shows both the end-to-end rate and the rate net of that cost; list
loading is also timed in-process (``load_profile`` and building the ``Censor``). Exits 1 if any
tool fails or a gfwlab run or reader does not see every packet.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
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
REPO = HERE.parent
LISTS = REPO.parent / "shared" / "data" / "blocklists"
BIG_LISTS = {
    "dns_injection.domains": "gfw-2024-dns-blocklist.txt",
    "http_keyword.domains": "gfw-2024-http-blocklist.txt",
    "tls_sni.domains": "gfw-2024-https-blocklist.txt",
}
DATE = "2024-06-01"
TSHARK_FIELDS = (
    "ip.src", "ip.dst", "tcp.srcport", "tcp.dstport", "udp.srcport", "udp.dstport",
    "dns.qry.name", "http.host", "http.request.uri", "tls.handshake.extensions_server_name",
)  # fmt: skip

READER_ONLY = """
import sys
from gfwlab.profiles import build_censor
from gfwlab.packet.pcap import CaptureReader
n = 0
with CaptureReader(sys.argv[1]) as reader:
    for _ts, _pkt in reader:
        n += 1
print(n)
"""

READER_PARSE = """
import sys
from gfwlab.packet.ip import parse
from gfwlab.packet.pcap import CaptureReader
n = 0
with CaptureReader(sys.argv[1]) as reader:
    for _ts, pkt in reader:
        parse(pkt)
        n += 1
print(n)
"""

LOAD_LISTS = """
import datetime, json, sys, time
from gfwlab.profiles import load_profile
sets = sys.argv[1:]
t0 = time.perf_counter()
profile = load_profile("gfw", date=datetime.date(2024, 6, 1), overrides=sets)
t1 = time.perf_counter()
build_censor(profile, 0)
t2 = time.perf_counter()
print(json.dumps({"load_profile": t1 - t0, "censor": t2 - t1}))
"""

console = Console() if sys.stdout.isatty() else Console(width=132)


@dataclass
class Run:
    """One timed tool."""

    tool: str
    command: list[str]
    seconds: float = 0.0
    startup: float = 0.0
    ok: bool = True
    note: str = ""


Result = subprocess.CompletedProcess[str]


def timed(cmd: list[str], *, stdout: int | None = subprocess.PIPE) -> tuple[float, Result]:
    """Run ``cmd``; the wall-clock seconds (process start included) and the result."""
    start = time.perf_counter()
    proc = subprocess.run(cmd, stdout=stdout, stderr=subprocess.PIPE, text=True, check=False)
    return time.perf_counter() - start, proc


def first_line(text: str | None) -> str:
    """The first line of ``text`` that is not tshark's running-as-root warning."""
    for line in (text or "").splitlines():
        if line.strip() and "dangerous" not in line:
            return line.strip()
    return ""


def gfwlab_cmd() -> list[str]:
    exe = shutil.which("gfwlab")
    return [exe] if exe else [sys.executable, "-m", "gfwlab.cli"]


def ensure_capture(directory: Path, packets: int, seed: int) -> tuple[Path, dict[str, Any]]:
    """The capture for ``packets``/``seed`` in ``directory``, generated unless already there."""
    capture = directory / f"mixed-{packets}-s{seed}.pcap"
    meta = directory / f"mixed-{packets}-s{seed}.json"
    if capture.exists() and meta.exists():
        info = json.loads(meta.read_text(encoding="utf-8"))
        if info.get("packets") == packets:
            console.print(f"reusing {capture}")
            return capture, info
    console.print(f"generating {capture} ({packets:,} packets) ...")
    cmd = [sys.executable, str(HERE / "gen_capture.py"), str(capture), "--packets", str(packets),
           "--seed", str(seed), "--meta", str(meta)]
    seconds, proc = timed(cmd)
    if proc.returncode != 0:
        console.print(proc.stderr, markup=False)
        raise SystemExit(f"gen_capture.py failed (exit {proc.returncode})")
    console.print(f"  {first_line(proc.stderr)} [{seconds:.1f} s wall]", markup=False)
    return capture, json.loads(meta.read_text(encoding="utf-8"))


def machine(tshark: str | None) -> dict[str, str]:
    cpu = ""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
        ram = f"{mem:.1f} GiB"
    except (ValueError, OSError):
        ram = "?"
    tver = "not installed"
    if tshark:
        proc = subprocess.run([tshark, "--version"], capture_output=True, text=True, check=False)
        tver = first_line(proc.stdout)
    from gfwlab import __version__  # noqa: PLC0415

    return {
        "cpus (nproc)": str(len(os.sched_getaffinity(0))),
        "cpu": cpu or platform.processor() or "?",
        "memory": ram,
        "os": platform.platform(),
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "gfwlab": __version__,
        "tshark": tver,
    }


def list_sets(lists: Path) -> list[str]:
    return [f"{key}={lists / name}" for key, name in BIG_LISTS.items()]


def check_analyze(run: Run, proc: Result, packets: int) -> None:
    if proc.returncode != 0:
        run.ok = False
        run.note = f"exit {proc.returncode}: {first_line(proc.stderr)}"
        return
    try:
        summary = json.loads(proc.stdout)
    except json.JSONDecodeError:
        run.ok = False
        run.note = "no JSON summary on stdout"
        return
    if summary.get("packets") != packets:
        run.ok = False
        run.note = f"saw {summary.get('packets')} packets, not {packets}"
        return
    events = summary.get("events", {})
    acted = sum(n for k, n in events.items() if not k.endswith(("/pass", "/anomaly")))
    run.note = (f"{summary.get('flows', 0):,} flows, {acted:,} censor actions, "
                f"{summary.get('injected', 0):,} forged packets")


def check_count(run: Run, proc: Result, packets: int) -> None:
    if proc.returncode != 0:
        run.ok = False
        run.note = f"exit {proc.returncode}: {first_line(proc.stderr)}"
    elif proc.stdout.strip() != str(packets):
        run.ok = False
        run.note = f"read {proc.stdout.strip()} packets, not {packets}"


def execute(run: Run, cmd: list[str], packets: int, tshark_run: Run | None,
            counters: tuple[Run, ...]) -> tuple[float, Result]:
    """Time one run of ``cmd`` and check its result into ``run``."""
    if run is tshark_run:
        with open(os.devnull, "w") as null:
            seconds, proc = timed(cmd, stdout=null.fileno())
        if proc.returncode != 0:
            run.ok = False
            run.note = f"exit {proc.returncode}: {first_line(proc.stderr)}"
        return seconds, proc
    seconds, proc = timed(cmd)
    if run in counters:
        check_count(run, proc, packets)
    elif packets > 1 or proc.returncode != 0:
        check_analyze(run, proc, packets)
    return seconds, proc


def tshark_malformed(tshark: str, capture: Path) -> int:
    """How many packets tshark marks malformed (an untimed extra pass)."""
    proc = subprocess.run([tshark, "-r", str(capture), "-Y", "_ws.malformed", "-T", "fields",
                           "-e", "frame.number"], capture_output=True, text=True, check=False)
    return len(proc.stdout.split())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--packets", type=int, default=1_000_000, help="capture size (default 1M)")
    ap.add_argument("--seed", type=int, default=1, help="generator seed")
    ap.add_argument("--keep", type=Path, help="keep the capture in this directory, reuse it")
    ap.add_argument("--lists", type=Path, default=LISTS, help="directory of gfw-2024-*.txt")
    ap.add_argument("--repeat", type=int, default=1, help="runs per tool; the fastest counts")
    ap.add_argument("--check", action="store_true",
                    help="also count packets tshark marks malformed (an extra untimed pass)")
    args = ap.parse_args(argv)
    if args.packets < 1 or args.repeat < 1:
        ap.error("--packets and --repeat must be at least 1")

    tshark = shutil.which("tshark")
    info = machine(tshark)
    mtable = Table(title="Machine", title_justify="left", show_header=False)
    for k, v in info.items():
        mtable.add_row(k, v)
    console.print(mtable)

    real_lists = all((args.lists / name).is_file() for name in BIG_LISTS.values())
    if not real_lists:
        console.print(f"[yellow]{args.lists} lacks the 2024 blocklists: the 'full lists' run "
                      "uses the built-in lists too[/]")

    with tempfile.TemporaryDirectory(prefix="gfwlab-bench-") as tmp:
        workdir = args.keep or Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        capture, gen = ensure_capture(workdir, args.packets, args.seed)
        size_mb = capture.stat().st_size / 1e6
        shares = gen.get("share_by_kind", {})
        console.print(
            f"capture: {capture} ({size_mb:,.0f} MB, {args.packets:,} packets, "
            f"{gen.get('flows_started', 0):,} flows, {gen.get('ipv6_packets', 0):,} IPv6; "
            + ", ".join(f"{k} {v:.1%}" for k, v in shares.items())
            + f"; {gen.get('capture_seconds')} s of traffic)",
            markup=False, highlight=False,
        )

        events = Path(tmp) / "events.jsonl"
        gfw = gfwlab_cmd()
        base = [*gfw, "analyze", str(capture), "--date", DATE, "--json", "--events", str(events)]
        big = [a for s in list_sets(args.lists) for a in ("--set", s)] if real_lists else []
        runs = [
            Run("gfwlab analyze, 2024 lists (~100k names each)", [*base, *big]),
            Run("gfwlab analyze, built-in lists", base),
        ]
        fields = [a for f in TSHARK_FIELDS for a in ("-e", f)]
        tshark_run: Run | None = None
        if tshark:
            tshark_run = Run("tshark -T fields (same fields)",
                             [tshark, "-r", str(capture), "-T", "fields", *fields])
            runs.append(tshark_run)
        else:
            console.print("[red]tshark is not installed: no comparison[/]")
        reader = Run("CaptureReader iteration (floor)", [sys.executable, "-c", READER_ONLY,
                                                          str(capture)])
        parser = Run("CaptureReader + ip.parse", [sys.executable, "-c", READER_PARSE,
                                                  str(capture)])
        runs += [reader, parser]

        tiny = Path(tmp) / "one.pcap"
        from gfwlab.packet.pcap import CaptureReader, PcapWriter  # noqa: PLC0415

        with CaptureReader(str(capture)) as cap, PcapWriter(str(tiny)) as writer:
            ts, pkt = next(iter(cap))
            writer.write(ts, bytes(pkt))

        for run in runs:
            for target, count in ((capture, args.packets), (tiny, 1)):
                cmd = [str(target) if a == str(capture) else a for a in run.command]
                best = float("inf")
                for _ in range(args.repeat):
                    if target is capture:
                        console.print(f"running: {run.tool} ...")
                    seconds, proc = execute(run, cmd, count, tshark_run, (reader, parser))
                    best = min(best, seconds)
                if target is capture:
                    run.seconds = best
                else:
                    run.startup = best

        # List loading, in-process: part of every gfwlab run's fixed cost.
        load_rows: list[tuple[str, str]] = []
        for label, sets in (("2024 lists", list_sets(args.lists) if real_lists else []),
                            ("built-in lists", [])):
            proc = subprocess.run([sys.executable, "-c", LOAD_LISTS, *sets],
                                  capture_output=True, text=True, check=False)
            if proc.returncode != 0:
                console.print(f"[red]list load failed: {first_line(proc.stderr)}[/]")
                return 1
            t = json.loads(proc.stdout)
            load_rows.append((f"load_profile, {label}", f"{t['load_profile']:.3f}"))
            load_rows.append((f"build_censor(profile), {label}", f"{t['censor']:.3f}"))

        malformed = tshark_malformed(tshark, capture) if args.check and tshark else None

    ref = tshark_run.seconds if tshark_run and tshark_run.ok else None
    table = Table(title=f"{args.packets:,} packets, best of {args.repeat}, wall clock with "
                        "process start", title_justify="left")
    table.add_column("tool")
    table.add_column("seconds", justify="right")
    table.add_column("packets/s", justify="right")
    table.add_column("vs tshark", justify="right")
    table.add_column("1-packet run s", justify="right")
    table.add_column("net packets/s", justify="right")
    table.add_column("notes")
    for run in runs:
        pps = args.packets / run.seconds
        net = args.packets / (run.seconds - run.startup) if run.seconds > run.startup else 0.0
        ratio = f"{ref / run.seconds:.2f}x" if ref else "-"
        status = "" if run.ok else "[red]FAILED[/] "
        table.add_row(run.tool, f"{run.seconds:.2f}", f"{pps:,.0f}", ratio, f"{run.startup:.2f}",
                      f"{net:,.0f}", status + run.note)
    console.print(table)
    ltable = Table(title="List loading, in-process (seconds)", title_justify="left")
    ltable.add_column("what")
    ltable.add_column("seconds", justify="right")
    for what, sec in load_rows:
        ltable.add_row(what, sec)
    console.print(ltable)
    console.print("'vs tshark': tshark's time divided by the tool's (above 1 is faster). "
                  "'1-packet run': the same command on a one-packet capture (process start, "
                  "imports, list loading); 'net packets/s' leaves it out.")
    if malformed is not None:
        console.print(f"tshark marks {malformed} packets of the capture malformed")
    return 0 if all(r.ok for r in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
