"""What the engine costs within a whole run: loaded by a Python process that a benchmark starts
with this folder first on ``PYTHONPATH`` (``bench_lab.py --null-engine``,
``offline.py``), and inert unless ``GFWLAB_FLOOR`` says what to do:

- ``GFWLAB_FLOOR=null``: the engine answers each packet at once: the packet is parsed, a TCP
  packet with data gets its flow bypassed, everything is accepted; no mechanism runs, no event
  is written. A lab censor so changed costs only its queue, its kernel rules and its adapter:
  the most any faster engine could give the lab. (Offline, only ``analyze --exact`` runs with
  it: the fast path reads the engine's flow table, which this engine does not keep.)
- ``GFWLAB_FLOOR=time:PATH``: the process appends to ``PATH``, at exit, the seconds it spent
  inside the engine (``Censor.feed`` and ``Censor.on_timer``), so a run's time splits into the
  engine's and everything else's (reading the capture, the fast path, writing the outputs).

Benchmarks only: nothing in ``src/`` reads ``GFWLAB_FLOOR``.
"""

from __future__ import annotations

import atexit
import os
import time
from typing import Any


def _null() -> None:
    from gfwlab.engine import censor  # noqa: PLC0415 - only when asked for
    from gfwlab.engine.actions import Accept, Bypass, FlowId  # noqa: PLC0415
    from gfwlab.packet.ip import PROTO_TCP, addr_text, parse  # noqa: PLC0415

    accept = Accept()

    def feed(self: censor.Censor, packet: bytes, now: float) -> list[Any]:
        self.stats.packets += 1
        pkt = parse(packet)
        if pkt.proto == PROTO_TCP and pkt.payload:
            flow = FlowId(
                proto="tcp",
                src=addr_text(pkt.src),
                sport=pkt.sport,
                dst=addr_text(pkt.dst),
                dport=pkt.dport,
            )
            return [accept, Bypass(flow=flow)]
        return [accept]

    censor.Censor.feed = feed  # type: ignore[method-assign]


def _timed(path: str) -> None:
    from gfwlab.engine import censor  # noqa: PLC0415 - only when asked for

    spent = [0.0]
    clock = time.perf_counter

    def timed(method: Any) -> Any:
        def wrapper(*args: Any) -> Any:
            start = clock()
            try:
                return method(*args)
            finally:
                spent[0] += clock() - start

        return wrapper

    censor.Censor.feed = timed(censor.Censor.feed)  # type: ignore[method-assign]
    censor.Censor.on_timer = timed(censor.Censor.on_timer)  # type: ignore[method-assign]

    def write() -> None:
        with open(path, "a", encoding="utf-8") as fh:
            fh.write(f"{spent[0]:.6f}\n")

    atexit.register(write)


_MODE = os.environ.get("GFWLAB_FLOOR", "")
try:
    if _MODE == "null":
        _null()
    elif _MODE.startswith("time:"):
        _timed(_MODE.removeprefix("time:"))
except ImportError:  # a Python without gfwlab (a lab service's own interpreter): nothing to do
    pass
