"""The probe at scale through the lab's censor, against the same run with a censor that passes
everything (the ``gfw`` profile with every mechanism's ``enabled=false``).

    python benchmarks/bench_probe.py [--sites 60000] [--dns 60000] [--concurrency 64] [--h3]

For each censor, in the same run: brings the lab up (2024-06-01), serves the names (each its own
address, DNS and certificate: ``gfwlab.measure.sites``), then times

- the DNS-only scan (``gfwlab probe --dns-only``): every name once, 128 queries unanswered at a
  time, a lost one sent again after 0.5 s, through the censor (queries per second);
- the full probe (``gfwlab probe --lab``: DNS with control, TCP, TLS with the SNI, HTTP, the
  control beside each; HTTP/3 only with ``--h3``) of ``--sites`` names (sites per second).

The names are the first names of the 2024 DNS blocklist (``../shared/data/blocklists``, spec §2),
then made-up ``.lab.test`` names; the censor's lists are the built-in samples. Prints a JSON
summary with the ratios (gfw / pass-all), the CPU seconds each lab service (censor, nginx,
dnsmasq, HTTP/3 server) and the probe process used in each phase, and the load average (the
machine may be shared), and takes the lab down, also on Ctrl-C. It reports; it never asserts.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from gfwlab.lab import lifecycle
from gfwlab.lab.services import in_netns
from gfwlab.lab.state import LabState
from gfwlab.live.topology import CLIENT_NS, SERVER_V4
from gfwlab.measure import dnscheck, session, sites
from gfwlab.measure.lists import Entry, check_host, synthetic
from gfwlab.profiles import load_profile

BLOCKLIST = os.path.join(
    os.path.dirname(__file__),
    "..",
    "..",
    "shared",
    "data",
    "blocklists",
    "gfw-2024-dns-blocklist.txt",
)
err = Console(stderr=True)


def names(count: int) -> list[str]:
    out: list[str] = []
    path = os.environ.get("GFWLAB_BENCH_NAMES", BLOCKLIST)
    if os.path.exists(path):
        with open(path, encoding="utf-8") as fh:
            for line in fh:
                host = line.strip().lower()
                if host and check_host(host) is None and len(host) < 100:
                    out.append(host)
                if len(out) >= count // 2:
                    break
    out += [e.host for e in synthetic(count - len(out))]
    return list(dict.fromkeys(out))[:count]


def bar(label: str, total: int) -> Progress:
    return Progress(
        TextColumn(f"[bold]{label}[/]"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=err,
        transient=True,
    )


def _ticks(pid: int) -> tuple[int, int]:
    """(parent pid, user + system clock ticks) of a process, (0, 0) if it is gone."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0, 0
    return int(fields[1]), int(fields[11]) + int(fields[12])


def cpu_seconds() -> dict[str, float]:
    """CPU seconds (user + system) used so far by each of the lab's services (with their
    children: nginx's worker) and by this process (the probe's threads)."""
    tick = os.sysconf("SC_CLK_TCK")
    parents: dict[int, int] = {}
    used: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            parents[int(entry)], used[int(entry)] = _ticks(int(entry))
    out: dict[str, float] = {}
    for proc in LabState.load().processes():
        pid = proc.get("pid")
        if not isinstance(pid, int):
            continue
        family = {pid}
        for child, parent in parents.items():  # nginx: master and its worker
            if parent in family:
                family.add(child)
        out[str(proc.get("name"))] = sum(used.get(p, 0) for p in family) / tick
    me = resource.getrusage(resource.RUSAGE_SELF)
    out["probe"] = me.ru_utime + me.ru_stime
    return out


def cpu_delta(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    return {k: round(after[k] - before.get(k, 0.0), 1) for k in after}


def one(kind: str, hosts: list[str], sites_n: int, concurrency: int, h3: bool) -> dict[str, object]:
    sets = []
    if kind == "pass-all":
        sets = [f"{m}.enabled=false" for m in load_profile("gfw").mechanisms]
    lifecycle.down()
    lifecycle.up(
        lifecycle.UpOptions(profile="gfw", date="2024-06-01", seed=1, sets=sets),
        log=lambda _m: None,
    )
    try:
        t0 = time.monotonic()
        sites.install(hosts)
        install_s = time.monotonic() - t0
        cpu0 = cpu_seconds()
        with bar(f"{kind}: DNS scan", len(hosts)) as b:
            task = b.add_task("scan", total=len(hosts))
            scan = in_netns(
                CLIENT_NS,
                lambda: dnscheck.scan(
                    hosts, SERVER_V4, progress=lambda n: b.update(task, completed=n)
                ),
            )
        cpu1 = cpu_seconds()
        answered = sum(1 for v in scan.answers.values() if v)
        entries = [Entry(f"https://{h}/", "MISC") for h in hosts[:sites_n]]
        with bar(f"{kind}: probe", len(entries)) as b:
            task = b.add_task("probe", total=len(entries))
            t0 = time.monotonic()
            run = session.probe_lab(
                entries,
                concurrency=concurrency,
                h3=h3,
                progress=lambda n: b.update(task, completed=n),
            )
            probe_s = time.monotonic() - t0
        cpu2 = cpu_seconds()
        blocked = sum(1 for m in run.measurements if m["test_keys"]["blocking"] not in (False,))
        return {
            "censor": kind,
            "names": len(hosts),
            "install_s": round(install_s, 1),
            "dns_scan_s": round(scan.elapsed_s, 2),
            "dns_qps": round(scan.rate),
            "dns_answered": answered,
            "dns_injected": len(scan.injected()),
            "sites": len(entries),
            "probe_s": round(probe_s, 1),
            "sites_per_s": round(len(entries) / probe_s, 1),
            "not_accessible_or_no_verdict": blocked,
            "graded_right": run.grade.right if run.grade else None,
            "graded_wrong": run.grade.wrong if run.grade else None,
            "dns_scan_cpu_s": cpu_delta(cpu0, cpu1),
            "probe_cpu_s": cpu_delta(cpu1, cpu2),
            "load_avg": [round(x, 1) for x in os.getloadavg()],
        }
    finally:
        lifecycle.down()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sites", type=int, default=60000)
    ap.add_argument("--dns", type=int, default=60000, help="names served and DNS-scanned")
    ap.add_argument("--concurrency", type=int, default=64)
    ap.add_argument("--h3", action="store_true")
    args = ap.parse_args()
    hosts = names(max(args.dns, args.sites))
    out = []
    for kind in ("gfw", "pass-all"):
        out.append(one(kind, hosts, args.sites, args.concurrency, args.h3))
        print(json.dumps(out[-1]), flush=True)  # each run as soon as it ends
    gfw, plain = out
    summary = {
        "runs": out,
        "dns_qps_ratio": round(float(gfw["dns_qps"]) / max(1.0, float(plain["dns_qps"])), 3),
        "probe_time_ratio": round(float(gfw["probe_s"]) / max(0.1, float(plain["probe_s"])), 3),
        "python": sys.version.split()[0],
        "cpus": os.cpu_count(),
    }
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        lifecycle.down()
        sys.exit(130)
