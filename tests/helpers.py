"""Scenario helpers: run packets through a Censor the way the offline adapter does."""

from __future__ import annotations

import datetime as dt
import gc
import math
import random
from dataclasses import dataclass, field

from gfwlab.engine import Accept, Bypass, Censor, Drop, Event, Inject, Probe, Report
from gfwlab.evade.simulate import binomial_counts  # noqa: F401 - the tests' one
from gfwlab.offline.synth import http_get
from gfwlab.packet.ip import ACK, PSH, SYN, Packet, addr_bytes, build_tcp, build_udp, parse
from gfwlab.profiles import Profile, load_profile

DAY = dt.date(2024, 6, 1)


def mangled(packet: bytes, rng: random.Random) -> bytes:
    """``packet`` with up to two bytes changed, then cut short at a random length: malformed
    input for a censor (anomalies)."""
    buf = bytearray(packet)
    for _ in range(rng.randrange(3)):
        buf[rng.randrange(len(buf))] = rng.randrange(256)
    return bytes(buf[: rng.randrange(len(buf) + 1)])


def assert_no_cycles(flows: int) -> None:
    """Ask the collector what is unreachable now: none of it may be per packet or flow (a
    cycle per flow leaves at least one object per flow), though the suite's other threads, if
    any are still running, may leave a few objects of their own."""
    gc.set_debug(gc.DEBUG_SAVEALL)
    found = gc.collect()
    kinds = sorted({type(o).__name__ for o in gc.garbage})
    gc.set_debug(0)
    gc.garbage.clear()
    assert found * 10 < flows, (found, flows, kinds[:30])


def profile(*sets: str, date: dt.date | None = DAY, name: str = "gfw") -> Profile:
    return load_profile(name, date=date, overrides=list(sets))


@dataclass
class Run:
    """What a censor did to a sequence of packets."""

    verdicts: list[bool] = field(default_factory=list)
    """Per fed packet: True if accepted."""
    injected: list[Inject] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)
    bypassed: int = 0
    probes: list[Probe] = field(default_factory=list)
    """The Probe actions released (the probes the adapter is to send)."""

    def acted(self, action: str | None = None, mechanism: str | None = None) -> list[Event]:
        return [
            e
            for e in self.events
            if (action is None or e.action == action)
            and (mechanism is None or e.mechanism == mechanism)
        ]

    def forged(self, toward: str | None = None) -> list[Packet]:
        return [parse(i.packet) for i in self.injected if toward is None or i.toward == toward]


def run(censor: Censor, packets: list[tuple[float, bytes]], result: Run | None = None) -> Run:
    """Feed ``packets`` in order, releasing timers up to each packet's time, then flush."""
    out = result or Run()

    def take(actions: list) -> None:  # type: ignore[type-arg]
        for a in actions:
            if isinstance(a, Inject):
                out.injected.append(a)
            elif isinstance(a, Report):
                out.events.append(a.event)
            elif isinstance(a, Bypass):
                out.bypassed += 1
            elif isinstance(a, Probe):
                out.probes.append(a)

    for ts, pkt in packets:
        deadline = censor.next_deadline()
        while deadline is not None and deadline <= ts:
            take(censor.on_timer(deadline))
            deadline = censor.next_deadline()
        actions = censor.feed(pkt, ts)
        assert isinstance(actions[0], Accept | Drop)
        out.verdicts.append(isinstance(actions[0], Accept))
        take(actions[1:])
    take(censor.flush())
    return out


def binomial_interval(n: int, p: float, z: float = 2.576) -> tuple[float, float]:
    """The interval a binomial proportion falls in with ~99% probability (normal approximation)."""
    sd = math.sqrt(p * (1 - p) / n)
    return p - z * sd, p + z * sd


class QueuedPacket:
    """What the live censor uses of a netfilterqueue packet."""

    def __init__(self, payload: bytes, mark: int = 0) -> None:
        self.payload, self.mark = payload, mark
        self.verdict: str | None = None
        self.set_to: int | None = None

    def get_payload(self) -> bytes:
        return self.payload

    def get_mark(self) -> int:
        return self.mark

    def set_mark(self, mark: int) -> None:
        self.set_to = mark

    def accept(self) -> None:
        self.verdict = "accept"

    def drop(self) -> None:
        self.verdict = "drop"


class Links:
    """Forged packets, kept instead of sent on the lab's links."""

    def __init__(self) -> None:
        self.sent: list[bytes] = []

    def send(self, packet: bytes) -> None:
        self.sent.append(packet)


EXACT_DELAY = [
    f"http_keyword.delay_ms_{kind}=[[0.0, 62.5], [1.0, 62.5]]"
    for kind in ("type1", "type2", "type3", "other")
] + ["http_keyword.injector='type1'", "http_keyword.probability=1"]
"""Keyword resets 62.5 ms (1/16 s, exact in binary and in microseconds) after the request."""


def keyword_resets_due_at_packets(n: int) -> list[tuple[float, bytes]]:
    """``n`` keyword requests, two at a time on whole seconds (to ``n`` servers), each reset
    ``EXACT_DELAY`` later, where a datagram of another flow was captured at that very time (a
    release due at a packet's time comes before it, as the every-packet path writes it)."""
    out: list[tuple[float, bytes]] = []
    request = http_get("a.example", "/?q=falun")
    for j in range(n):
        c, s = addr_bytes(f"198.18.10.{j}"), addr_bytes(f"198.19.10.{j}")
        t, cport = 1.0 + j // 2, 40000 + j
        for at, src, dst, sp, dp, seq, ack, flags, payload in (
            (t, c, s, cport, 80, 1000, 0, SYN, b""),
            (t + 0.125, s, c, 80, cport, 5000, 1001, SYN | ACK, b""),
            (t + 0.1875, c, s, cport, 80, 1001, 5001, ACK, b""),
            (t + 0.25, c, s, cport, 80, 1001, 5001, PSH | ACK, request),
        ):
            out.append((at, build_tcp(src, dst, sp, dp, seq=seq, ack=ack, flags=flags,
                                      payload=payload)))  # fmt: skip
        other = addr_bytes(f"198.18.11.{j}"), addr_bytes(f"198.19.11.{j}")
        out.append((t + 0.3125, build_udp(*other, 5000 + j, 6000, b"at the reset's time")))
    return out
