"""What the engine costs within a whole run: loaded by a Python process that a benchmark starts
with this folder first on ``PYTHONPATH`` (``bench_lab.py --null-engine``,
``offline.py``), and inert unless ``GFWLAB_FLOOR`` says what to do:

- ``GFWLAB_FLOOR=null``: the engine answers each packet at once: the packet is parsed, a TCP
  packet with data gets its flow bypassed, everything is accepted; no mechanism runs, no event
  is written. A lab censor so changed costs only its queue, its kernel rules and its adapter:
  the most any faster engine could give the lab. (Offline, only ``analyze --exact`` runs with
  it: the fast path reads the engine's flow table, which this engine does not keep.)
- ``GFWLAB_FLOOR=time:PATH``: the process appends to ``PATH``, at exit, the seconds it spent
  inside the engine (``feed`` and ``on_timer`` of every censor ``build_censor`` makes), so a
  run's time splits into the engine's and everything else's (reading the capture, the fast
  path, writing the outputs).

Benchmarks only: nothing in ``src/`` reads ``GFWLAB_FLOOR``.
"""

from __future__ import annotations

import atexit
import os
import time
from typing import Any


class _Wrapped:
    """A censor whose ``feed`` and ``on_timer`` this file replaces, everything else the
    censor's own. The compiled engine's classes cannot be changed (gfwlab._build), so the
    censor ``build_censor`` makes is wrapped instead; it still passes for a ``Censor``."""

    def __init__(self, inner: Any) -> None:
        object.__setattr__(self, "_inner", inner)

    @property  # type: ignore[misc]
    def __class__(self) -> type:  # isinstance(wrapped, Censor) holds (live/daemon.py asks)
        return type(self._inner)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def __setattr__(self, name: str, value: Any) -> None:
        setattr(self._inner, name, value)


def _wrap_censors(make: Any) -> None:
    """Every censor ``gfwlab.profiles.build_censor`` makes from now on is ``make(it)``.

    The fast path (``gfwlab.offline.fast``, with its ``dropwatch``) is then run from its
    source: compiled, it calls the compiled engine directly and refuses a wrapper
    (``gfwlab._build``). The engine stays compiled; only its caller is slower, which a time
    taken inside the wrapper does not count.
    """
    from gfwlab import _build  # noqa: PLC0415 - only when asked for

    _build.interpret(["gfwlab.offline.fast", "gfwlab.offline.dropwatch"])
    import gfwlab.profiles  # noqa: PLC0415
    from gfwlab.profiles import loader  # noqa: PLC0415

    build = loader.build_censor

    def build_censor(*args: Any, **kwargs: Any) -> Any:
        return make(build(*args, **kwargs))

    loader.build_censor = build_censor  # type: ignore[assignment]
    gfwlab.profiles.build_censor = build_censor  # type: ignore[assignment]  # re-exported there


def _null() -> None:
    from gfwlab.engine.actions import Accept, Bypass, FlowId  # noqa: PLC0415
    from gfwlab.packet.ip import PROTO_TCP, addr_text, parse  # noqa: PLC0415

    accept = Accept()

    class Null(_Wrapped):
        def feed(self, packet: bytes, now: float) -> list[Any]:
            self._inner.stats.packets += 1
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

    _wrap_censors(Null)


def _timed(path: str) -> None:
    spent = [0.0]
    clock = time.perf_counter

    def clocked(call: Any, *args: Any) -> Any:
        start = clock()
        try:
            return call(*args)
        finally:
            spent[0] += clock() - start

    class Timed(_Wrapped):
        def feed(self, packet: bytes, now: float) -> Any:
            return clocked(self._inner.feed, packet, now)

        def on_timer(self, now: float) -> Any:
            return clocked(self._inner.on_timer, now)

    _wrap_censors(Timed)

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
