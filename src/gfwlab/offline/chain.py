"""Censors in series (``--profile henan --profile gfw``), in path order from the client.

A packet from a flow's client crosses the censors in the order given, a packet from its server
in the reverse order; a censor that drops it stops it there, so the censors after it never see
it. Each censor keeps its own flows, TCBs, draws and residual blocks. Every event names the
censor that reported it (its profile's name) in its ``censor`` field. Forged packets are sent
toward their endpoint without crossing the other censors (whether one censor's forgeries
trigger another's is not modelled). The client of a flow is the sender of its first TCP SYN
(without ACK), or of its first packet.
"""

from __future__ import annotations

import dataclasses

from gfwlab.engine import Accept, Action, Censor, Drop, Report
from gfwlab.engine.verdicts import Stats
from gfwlab.errors import MalformedPacket
from gfwlab.packet.ip import ACK, PROTO_TCP, SYN, parse

_Key = tuple[bytes, int, bytes, int, int]


class Chain:
    """Several named censors in path order, with the Censor's feed/timer interface."""

    def __init__(self, censors: list[tuple[str, Censor]]) -> None:
        self.censors = censors
        self._clients: dict[_Key, bytes] = {}

    def _from_client(self, packet: bytes) -> bool:
        try:
            pkt = parse(packet)
        except MalformedPacket:
            return True
        a, b = (pkt.src, pkt.sport), (pkt.dst, pkt.dport)
        key = (*min(a, b), *max(a, b), pkt.proto)
        if pkt.proto == PROTO_TCP and pkt.flags & (SYN | ACK) == SYN:
            self._clients[key] = pkt.src
        return self._clients.setdefault(key, pkt.src) == pkt.src

    def feed(self, packet: bytes, now: float) -> list[Action]:
        order = self.censors if self._from_client(packet) else self.censors[::-1]
        verdict: Action = Accept()
        rest: list[Action] = []
        for name, censor in order:
            actions = censor.feed(packet, now)
            rest += [_named(a, name) for a in actions[1:]]
            if isinstance(actions[0], Drop):
                verdict = actions[0]
                break
            hold = actions[0].hold_until if isinstance(actions[0], Accept) else None
            if hold is not None:
                old = verdict.hold_until if isinstance(verdict, Accept) else None
                verdict = Accept(hold_until=max(hold, old or hold))
        return [verdict, *rest]

    def next_deadline(self) -> float | None:
        times = [t for _, c in self.censors if (t := c.next_deadline()) is not None]
        return min(times) if times else None

    def on_timer(self, now: float) -> list[Action]:
        return [_named(a, n) for n, c in self.censors for a in c.on_timer(now)]

    def on_probe_result(
        self, probe_id: int, reaction: str, now: float, response_len: int = 0
    ) -> list[Action]:
        """Every censor is told; one that did not plan the probe ignores its id."""
        return [
            _named(a, n)
            for n, c in self.censors
            for a in c.on_probe_result(probe_id, reaction, now, response_len)
        ]

    def flush(self) -> list[Action]:
        return [_named(a, n) for n, c in self.censors for a in c.flush()]

    @property
    def stats(self) -> Stats:
        """The censors' counters added up (packets and flows are counted by each censor)."""
        total = Stats()
        for _, c in self.censors:
            for f in dataclasses.fields(Stats):
                mine, theirs = getattr(total, f.name), getattr(c.stats, f.name)
                if isinstance(theirs, dict):
                    for k, v in theirs.items():
                        mine[f"{_name_of(c)}:{k}" if len(self.censors) > 1 else k] = v
                elif f.name in ("packets", "bytes"):
                    setattr(total, f.name, max(mine, theirs))
                else:
                    setattr(total, f.name, mine + theirs)
        return total


def _name_of(censor: Censor) -> str:
    return censor.profile.name


def _named(action: Action, name: str) -> Action:
    if isinstance(action, Report):
        return Report(event=dataclasses.replace(action.event, censor=name))
    return action
