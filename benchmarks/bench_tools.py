"""The circumvention-tool matrix's cost: one full run's time and the time per cell.

    sudo flock /tmp/gfwlab-lab.lock python benchmarks/bench_tools.py  # all tools, 3 dates
    sudo flock /tmp/gfwlab-lab.lock python benchmarks/bench_tools.py --trials 10 --date 2022-06-01

The baseline, measured in the same run: one bare ``lab up`` + ``lab down`` cycle (what every
date costs whatever the tools do). It prints the whole run's time, its ratio to the baseline,
and per cell the seconds, trials and seconds per trial. It reports; it never asserts.
"""

from __future__ import annotations

import argparse
import time

from gfwlab.lab import lifecycle
from gfwlab.tools.matrix import parse_when
from gfwlab.tools.recipes import RECIPES
from gfwlab.tools.run import Plan, run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=50)
    parser.add_argument("--date", action="append")
    parser.add_argument("--tool", action="append")
    parser.add_argument("--timeout", type=float, default=2.0)
    args = parser.parse_args()
    dates = args.date or ["2020-06-01", "2022-06-01", "2024-06-01"]
    tools = [RECIPES[t] for t in (args.tool or list(RECIPES))]

    lifecycle.down()
    t0 = time.monotonic()
    lifecycle.up(lifecycle.UpOptions(date=dates[0]), log=lambda _m: None)
    lifecycle.down()
    baseline = time.monotonic() - t0

    plan = Plan(tools, [parse_when(d) for d in dates], trials=args.trials, timeout=args.timeout)
    t0 = time.monotonic()
    cells, _ = run(plan)
    total = time.monotonic() - t0
    print(f"baseline (lab up + down, no tools): {baseline:.1f} s")
    print(
        f"matrix: {len(cells)} cells ({len(tools)} tools x {len(dates)} dates, "
        f"{args.trials} trials each): {total:.1f} s = {total / baseline:.1f} x baseline, "
        f"{total / len(cells):.1f} s per cell on average (lab up/down included)"
    )
    print(f"{'tool':<16} {'date':<17} {'s':>6} {'trials':>6} {'ms/trial':>9}  outcome")
    for c in cells:
        per = 1000 * c.seconds / c.trials if c.trials else 0.0
        print(f"{c.tool:<16} {c.date:<17} {c.seconds:6.1f} {c.trials:6d} {per:9.0f}  {c.outcome}")


if __name__ == "__main__":
    main()
