"""The live censor's order of forged packets and the trigger's verdict (live/daemon.py).

The engine holds a trigger packet until the forged packets it triggered are due
(``Accept.hold_until``): the GFW is nearer to both ends than they are to each other, so its
resets arrive first (spec §3, §12.6). When feeding the packet takes longer than the delay drawn
for the first reset (a loaded machine), the resets are overdue in the engine's timers when the
verdict is given: they must still leave before the trigger, or the server's answer (which the
kernel then forwards without the queue) reaches the client before them and the request gets
through.
"""

from __future__ import annotations

import time
from typing import Any

from gfwlab.engine import Censor
from gfwlab.live.daemon import LiveCensor
from gfwlab.offline.synth import http_conversation
from gfwlab.profiles import build_censor
from helpers import profile

C, S = "198.18.0.2", "198.19.0.2"
# A first reset due 1 µs after the request: always overdue once the engine has fed it.
TINY = "[[0.0, 0.001], [1.0, 0.001]]"


class Wire:
    """What leaves the censor, in order: forged packets and the verdicts of queued ones."""

    def __init__(self) -> None:
        self.out: list[tuple[str, bytes]] = []
        self.sent = 0

    def send(self, packet: bytes) -> None:
        self.out.append(("inject", packet))
        self.sent += 1


class Queued:
    """A packet from the queue (netfilterqueue's Packet interface the daemon uses)."""

    def __init__(self, wire: Wire, payload: bytes) -> None:
        self.wire, self.payload = wire, payload

    def get_payload(self) -> bytes:
        return self.payload

    def get_mark(self) -> int:
        return 0  # not the first queued packet after a SYN/ACK the kernel let through

    def set_mark(self, mark: int) -> None:
        pass

    def accept(self) -> None:
        self.wire.out.append(("accept", self.payload))

    def drop(self) -> None:
        self.wire.out.append(("drop", self.payload))


def _up_to_the_request(tmp_path: Any, delay: str) -> tuple[LiveCensor, Wire, bytes]:
    """A live censor fed a connection up to its blocked request, the resets drawn from the
    one-step delay table ``delay`` (ms)."""
    censor: Censor = build_censor(
        profile(
            "http_keyword.probability=1.0",
            "http_keyword.residual_s=0",
            *(f"http_keyword.delay_ms_{k}={delay}" for k in ("type1", "type2", "type3", "other")),
        ),
        1,
    )
    wire = Wire()
    live = LiveCensor(censor, str(tmp_path), wire, seed=1)  # type: ignore[arg-type]
    packets = http_conversation(C, S, 40000, "example.org", "/falun")
    request = next(p for _, p in packets if b"GET /falun" in p)
    for _, payload in packets:
        live.on_packet(Queued(wire, payload))
        if payload == request:
            break
    return live, wire, request


def test_overdue_resets_leave_before_the_request(tmp_path: Any) -> None:
    live, wire, request = _up_to_the_request(tmp_path, TINY)
    live.timers()
    order = [kind for kind, p in wire.out if kind == "inject" or p == request]
    assert order.count("inject") >= 2, order  # resets toward both ends
    assert order[-1] == "accept", order  # the request leaves after every reset


def test_a_retransmitted_trigger_waits_for_the_held_one(tmp_path: Any) -> None:
    """The first reset drawn late (the delay table's tail, beyond the client's RTO): the
    client retransmits the held request, and the copy must not overtake the resets."""
    live, wire, request = _up_to_the_request(tmp_path, "[[0.0, 300.0], [1.0, 300.0]]")
    live.on_packet(Queued(wire, request))  # the client's retransmission
    order = [kind for kind, p in wire.out if kind == "inject" or p == request]
    assert order == [], order  # neither copy leaves before the resets are due
    deadline = time.monotonic() + 5.0  # a bound, never reached: the hold is 0.3 s
    while live.held and time.monotonic() < deadline:
        time.sleep(0.01)
        live.timers()
    order = [kind for kind, p in wire.out if kind == "inject" or p == request]
    assert order.count("inject") >= 2 and order[-2:] == ["accept", "accept"], order
