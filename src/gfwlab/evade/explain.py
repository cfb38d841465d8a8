"""``evade run --explain`` in the lab: the censor's view of a failed trial, packet by packet.

How: the run records what the censor sees (the daemon's ``record`` control command, the same as
``lab record``), and afterwards the failed trial's connection is cut out of the recording by its
server address, port and time span and **replayed offline through the same engine**, built from
the running censor's own command line (its profiles, date, ``--set`` values, network and seed).
The trace is the censor's TCP view (:func:`gfwlab.evade.simulate.view`) after each packet.

Why a replay and not a trace from the daemon: the daemon stays what it is, a censor with no
channel from ``evade`` (issue 8: the verdict depends only on packets on the wire), and needs no
per-flow debug state; the engine is deterministic given the packets, their times and the seed
(every probabilistic draw is keyed by seed, mechanism and flow, engine/mechanism.py), so the
replay reaches the live censor's decision, and says so: the trace ends with whether the replay
censored the connection too, which the live fetch's failure can be checked against. The
censor's own forged packets are in the recording; a recorded packet the replayed censor also
forged (same addresses, ports, flags, sequence and acknowledgement numbers) is marked as such
and not fed back.
"""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass, field

from gfwlab.engine import Action, Censor, Inject, Report
from gfwlab.engine.flows import flow_key
from gfwlab.errors import LabError, MalformedPacket
from gfwlab.evade.interp import flags_text
from gfwlab.evade.simulate import describe
from gfwlab.lab.state import LabState
from gfwlab.offline.chain import Chain
from gfwlab.packet.ip import PROTO_TCP, PROTO_UDP, SYN, Packet, parse
from gfwlab.packet.pcap import CaptureReader
from gfwlab.profiles import build_censor, load_profiles, parse_date

SLACK_S = 0.05
"""Recorded packets this long before a trial's start still belong to it (clock granularity)."""
TAIL_S = 0.6
"""And this long after its end (forged packets land ~20 ms late; the fetch's last packets)."""
TIMER_SLACK_S = 0.005


@dataclass
class Explained:
    verdict: str
    """What the replayed censor did to the connection (its events), or that it let it be."""
    trace: list[tuple[str, str]] = field(default_factory=list)
    censored: bool = False


def lab_censor() -> Censor | Chain:
    """A fresh censor configured as the lab's running one (from its recorded command line)."""
    st = LabState.load()
    argv = next((p["argv"] for p in st.processes() if p.get("name") == "censor"), None)
    if argv is None:
        raise LabError("the lab has no censor process on record")
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--profile", action="append", dest="profiles")
    parser.add_argument("--date")
    parser.add_argument("--set", action="append", default=[], dest="sets")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--network", default="national")
    parser.add_argument("--clock-offset", type=float, default=0.0)
    args, _ = parser.parse_known_args(argv[3:])
    profiles = load_profiles(
        args.profiles or ["gfw"],
        date=parse_date(args.date) if args.date else None,
        overrides=args.sets,
        network=args.network,
    )
    # Recorded times are wall-clock; the daemon's emulated moment is the wall clock plus --at.
    profiles = [dataclasses.replace(p, epoch_offset_s=args.clock_offset) for p in profiles]
    if len(profiles) == 1:
        return build_censor(profiles[0], args.seed)
    return Chain([(p.name, build_censor(p, args.seed)) for p in profiles])


def summary(pkt: Packet, client: bytes) -> str:
    who = "client" if pkt.src == client else "server"
    if pkt.proto == PROTO_TCP:
        return (
            f"{who} {flags_text(pkt.flags) or '-'} seq {pkt.seq} len {len(pkt.payload)} "
            f"ttl {pkt.ttl}"
        )
    return f"{who} UDP {pkt.sport}->{pkt.dport} len {len(pkt.payload)} ttl {pkt.ttl}"


def view(censor: Censor | Chain, key: tuple[int, bytes, int, bytes, int]) -> str:
    """The censor's view of one flow: its TCB state, or let go, blocked, or none."""
    first = censor.censors[0][1] if isinstance(censor, Chain) else censor
    return describe(first.flows.flows.get(flow_key(*key)))


def _sig(pkt: Packet) -> tuple[object, ...]:
    return (pkt.src, pkt.dst, pkt.sport, pkt.dport, pkt.proto, pkt.flags, pkt.seq, pkt.ack)


def replay(
    capture: str, addr: bytes, proto: int, port: int, start: float, end: float, mechanism: str
) -> Explained:
    """Replay one trial's connection (the first to ``addr``:``port`` in [start, end]) offline."""
    packets: list[tuple[float, bytes, Packet]] = []
    with CaptureReader(capture) as reader:
        for ts, raw in reader:
            if not start - SLACK_S <= ts <= end + TAIL_S:
                continue
            try:
                pkt = parse(raw)
            except MalformedPacket:
                continue
            if pkt.proto == proto and addr in (pkt.src, pkt.dst) and port in (pkt.sport, pkt.dport):
                packets.append((ts, raw, pkt))
    first = next(
        (p for _, _, p in packets if p.dst == addr and p.dport == port
         and (proto == PROTO_UDP or p.flags & SYN)), None,
    )  # fmt: skip
    if first is None:
        return Explained("the recording has no connection of this trial")
    key = (proto, first.src, first.sport, addr, port)
    censor = lab_censor()
    out = Explained(
        "the replayed censor let the connection be (it starts fresh: a failure it does not "
        "reproduce came from state older than the trial, such as a residual block, or from "
        "the endpoints)"
    )
    forged: set[tuple[object, ...]] = set()
    events: list[str] = []

    def note(actions: list[Action]) -> None:
        for a in actions:
            if isinstance(a, Inject):
                forged.add(_sig(parse(a.packet)))
            elif isinstance(a, Report) and a.event.action != "pass":
                events.append(f"{a.event.mechanism} {a.event.action} ({a.event.rule})")
                out.censored = out.censored or a.event.mechanism == mechanism

    for ts, raw, pkt in packets:
        if {pkt.sport, pkt.dport} != {first.sport, port}:
            continue
        # Forged packets due by now (delayed injections leave on the censor's timer); a little
        # ahead, as the recording stamps a forged packet when it leaves, not when it was due.
        while (due := censor.next_deadline()) is not None and due <= ts + TIMER_SLACK_S:
            note(censor.on_timer(due))
        if _sig(pkt) in forged:
            out.trace.append((summary(pkt, first.src) + " (forged by the censor)", "-"))
            continue
        note(censor.feed(raw, ts))
        out.trace.append((summary(pkt, first.src), view(censor, key)))
    if events:
        out.verdict = "the replayed censor acted: " + "; ".join(dict.fromkeys(events))
    return out
