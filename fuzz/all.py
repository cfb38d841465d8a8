"""Run every fuzz target (or those named) under atheris, one process each, and tabulate.

    python fuzz/all.py [--runs N | --seconds S] [--json PATH] [--artifacts DIR] [TARGET...]

For each target: executions, coverage (libFuzzer's ``cov``: edges of gfwlab's code reached; and
``ft``: features), the size of the corpus at the end, and whether it found a crash, a contract
violation or a hang (the input is then in ``--artifacts``). Exits 1 if any target failed.
``scripts/fuzz`` runs this; the ``fuzz`` stage of ``scripts/test`` runs it with a small
``--runs``.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
TARGETS = ("tls", "http", "dns", "quic", "capture", "feed")
DONE = re.compile(r"#(\d+)\s+DONE\s+cov: (\d+) ft: (\d+) corp: (\d+)/")
STATUS = re.compile(r"#(\d+)\s+\w+\s+cov: (\d+) ft: (\d+) corp: (\d+)/")


def run(target: str, runs: int, seconds: int, artifacts: Path, timeout: int) -> dict[str, object]:
    argv = [sys.executable, str(HERE / "run.py"), target, "--artifacts", str(artifacts)]
    argv += ["--runs", str(runs), "--seconds", str(seconds), "--timeout", str(timeout)]
    start = time.monotonic()
    proc = subprocess.run(argv, capture_output=True, text=True, check=False)
    took = time.monotonic() - start
    err = proc.stderr
    done = DONE.findall(err) or STATUS.findall(err)
    execs, cov, ft, corp = (int(x) for x in done[-1]) if done else (0, 0, 0, 0)
    found = [line for line in err.splitlines() if "artifact_prefix" in line or "Test unit" in line]
    ok = proc.returncode == 0
    if not ok:
        tail = [line for line in err.splitlines() if line.strip()][-25:]
        print(f"--- {target} failed (exit {proc.returncode}):\n" + "\n".join(tail), file=sys.stderr)
    return {
        "target": target,
        "executions": execs,
        "coverage_edges": cov,
        "features": ft,
        "corpus": corp,
        "seconds": round(took, 1),
        "ok": ok,
        "artifacts": found,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("targets", nargs="*", default=list(TARGETS))
    parser.add_argument("--runs", type=int, default=-1)
    parser.add_argument("--seconds", type=int, default=0)
    parser.add_argument("--timeout", type=int, default=10)
    parser.add_argument("--artifacts", type=Path, default=Path("fuzz-artifacts"))
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    if args.runs < 0 and args.seconds <= 0:
        parser.error("give --runs or --seconds: a run must be bounded")
    unknown = sorted(set(args.targets) - set(TARGETS))
    if unknown:
        parser.error(f"unknown targets: {', '.join(unknown)} (known: {', '.join(TARGETS)})")
    rows = [run(t, args.runs, args.seconds, args.artifacts, args.timeout) for t in args.targets]
    print(f"{'target':8} {'executions':>11} {'cov':>6} {'ft':>6} {'corpus':>7} {'s':>6}  result")
    for r in rows:
        print(
            f"{r['target']:8} {r['executions']:>11} {r['coverage_edges']:>6} {r['features']:>6} "
            f"{r['corpus']:>7} {r['seconds']:>6}  {'ok' if r['ok'] else 'FAILED'}"
        )
    total = sum(int(str(r["executions"])) for r in rows)
    print(f"total executions: {total}")
    if args.json is not None:
        args.json.write_text(json.dumps(rows, indent=1) + "\n", encoding="utf-8")
    if args.artifacts.exists() and not any(args.artifacts.iterdir()):
        args.artifacts.rmdir()  # nothing found: leave no empty folder
    return 0 if all(r["ok"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
