#!/usr/bin/env python3
"""The flow table's idle sweep with many long-lived flows, against reading every flow.

    python benchmarks/bench_sweep.py                    # 300,000 TCP flows, 40 sweeps
    python benchmarks/bench_sweep.py --flows 1000000 --sweeps 60

A table (``gfwlab.engine.flows.FlowTable``, the engine's, with the ``gfw`` profile's timeouts:
TCP 120 s, UDP 60 s) holds ``--flows`` TCP flows made within a few seconds, every one of them
active: before each sweep (ten seconds of packet time apart, the profile's ``sweep_s``) each
flow's ``last_seen`` moves to a second before it, so no flow is ever forgotten. The same is run
twice in this process:

* the table as the engine keeps it while time moves forward: a sweep reads a flow once it is old
  enough to be idle, then again only when its timeout could end;
* the baseline: the same table told that time moved back (``FlowTable.unordered``), which makes
  every sweep read every flow, as every sweep did before 2026-12-06.

It prints the time spent in sweeps (CPU time; the collector paused, as ``gfwlab analyze``
pauses it, and running, as the live censor runs), the worst single sweep, and the ratio of the
two tables' totals. It reports; it asserts no speed (only that no flow was forgotten, which
the scenario is built for).
"""

from __future__ import annotations

import argparse
import gc
import time

from gfwlab.engine.flows import Flow, FlowTable, flow_key
from gfwlab.packet.ip import PROTO_TCP

TCP_TIMEOUT, UDP_TIMEOUT, SWEEP_S = 120.0, 60.0, 10.0
SERVER = bytes([198, 19, 0, 1])


def _table(n: int, ordered: bool) -> tuple[FlowTable, list[Flow]]:
    table = FlowTable(TCP_TIMEOUT, UDP_TIMEOUT, max_flows=n + 1)
    flows = []
    for i in range(n):
        client = bytes([198, 18, (i >> 8) & 0xFF, i & 0xFF])
        cport = 1024 + (i >> 16)
        f = Flow(
            proto=PROTO_TCP, client=client, cport=cport, server=SERVER, sport=443,
            direction="inside-out", crossing=True, first_seen=i * 1e-5, last_seen=i * 1e-5,
        )  # fmt: skip
        table.add(flow_key(PROTO_TCP, client, cport, SERVER, 443), f)
        flows.append(f)
    if not ordered:
        table.unordered()
    return table, flows


def _sweeps(n: int, sweeps: int, ordered: bool, collect: bool) -> tuple[float, float]:
    """Total and worst CPU seconds of ``sweeps`` sweeps over ``n`` active flows."""
    table, flows = _table(n, ordered)
    if collect:
        gc.enable()
    else:
        gc.disable()
    total = worst = 0.0
    try:
        for k in range(1, sweeps + 1):
            now = TCP_TIMEOUT / 2 + SWEEP_S * k
            for f in flows:  # every flow active: a packet a second ago
                f.last_seen = now - 1.0
            start = time.process_time()
            gone = table.expire(now)
            took = time.process_time() - start
            assert gone == 0
            total += took
            worst = max(worst, took)
    finally:
        gc.enable()
    return total, worst


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--flows", type=int, default=300_000)
    ap.add_argument("--sweeps", type=int, default=40)
    args = ap.parse_args()
    print(f"{args.flows:,} active TCP flows, {args.sweeps} sweeps {SWEEP_S:.0f} s apart")
    for collect in (False, True):
        mode = "collector running" if collect else "collector paused"
        new, new_worst = _sweeps(args.flows, args.sweeps, True, collect)
        old, old_worst = _sweeps(args.flows, args.sweeps, False, collect)
        print(
            f"  {mode}: in time order {new * 1e3:,.0f} ms (worst sweep {new_worst * 1e3:.0f} ms);"
            f" reading every flow {old * 1e3:,.0f} ms (worst {old_worst * 1e3:.0f} ms);"
            f" {old / new:.1f}x less time sweeping"
        )


if __name__ == "__main__":
    main()
