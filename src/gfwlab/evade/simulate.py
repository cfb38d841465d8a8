"""Strategies against the censor engine, offline: scripted connections, the strategy applied to
one side's packets, every packet on the wire fed to a fresh Censor per trial.

This is the sans-I/O half of ``gfwlab evade``: no namespace, no socket. The endpoints are
scripted (a TCP handshake, the request, the server's answer), so what the server would do with
an insertion packet is not modelled: the verdict is the censor's alone, from the packets it
sees. Each trial has its own censor (no residual block carries over) and its own seed, printed.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterable
from dataclasses import dataclass, field

from gfwlab.engine import Censor, Inject, Report
from gfwlab.engine.flows import Flow, FlowState, flow_key
from gfwlab.errors import MalformedPacket
from gfwlab.evade.interp import Interpreter, Pkt, flags_text
from gfwlab.evade.strategy import Strategy, parse_strategy
from gfwlab.offline.synth import tcp_conversation
from gfwlab.packet.ip import ACK, PROTO_TCP, RST, SYN, addr_bytes, build_tcp, parse
from gfwlab.profiles import build_censor
from gfwlab.proto.tls import build_client_hello
from gfwlab.rules.profile import Profile

CLIENT, SERVER = "198.18.0.2", "198.19.0.2"
HTTP_REQUEST = b"GET /?q=ultrasurf HTTP/1.1\r\nHost: example.com\r\nAccept: */*\r\n\r\n"
"""Geneva's test request (its evaluator: an HTTP GET containing ``?q=ultrasurf``)."""
TARGETS = {"http_keyword": 80, "tls_sni": 443}
_TS = b"\x01\x01\x08\x0a\x00\x00\x00\x01\x00\x00\x00\x02"  # NOP NOP timestamps, as Linux sends


@dataclass
class Trial:
    seed: int
    evaded: bool
    trace: list[tuple[str, str]] = field(default_factory=list)
    """Per packet on the wire: its summary and the censor's view of the flow after it."""


@dataclass
class Result:
    strategy: str
    against: str
    side: str
    trials: list[Trial]

    @property
    def successes(self) -> int:
        return sum(t.evaded for t in self.trials)

    def interval(self, confidence: float = 0.99) -> tuple[float, float]:
        return wilson(self.successes, len(self.trials), confidence)


def wilson(k: int, n: int, confidence: float = 0.99) -> tuple[float, float]:
    """The Wilson score interval of a success rate k/n."""
    if n == 0:
        return 0.0, 1.0
    z = {0.95: 1.959964, 0.99: 2.575829, 0.999: 3.290527}[confidence]
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def binomial_counts(n: int, p: float, confidence: float = 0.999) -> tuple[int, int]:
    """The two-sided ``confidence`` interval of a Binomial(n, p) count, exactly."""
    alpha = (1 - confidence) / 2
    pmf = [math.comb(n, k) * p**k * (1 - p) ** (n - k) for k in range(n + 1)]
    lo, below = 0, 0.0
    while below + pmf[lo] <= alpha:
        below += pmf[lo]
        lo += 1
    hi, above = n, 0.0
    while above + pmf[hi] <= alpha:
        above += pmf[hi]
        hi -= 1
    return lo, hi


def conversation(against: str, cport: int) -> list[tuple[float, bytes]]:
    """The scripted connection of one trial: handshake, request, the server's answer."""
    if against not in TARGETS:
        raise ValueError(f"--against: expected one of {', '.join(TARGETS)} offline")
    payload = HTTP_REQUEST if against == "http_keyword" else build_client_hello("www.facebook.com")
    packets = tcp_conversation(
        CLIENT, SERVER, cport, TARGETS[against], payload, response=b"HTTP/1.1 200 OK\r\n\r\n",
        close=False,
    )  # fmt: skip
    out = []
    for ts, raw in packets:
        pkt = Pkt.parse(raw)
        if pkt is not None and pkt.load and pkt.src == addr_bytes(CLIENT):
            pkt.options = [(1, b""), (1, b""), (8, _TS[4:])]  # Linux sends timestamps
            out.append((ts, pkt.build()))
        else:
            out.append((ts, raw))
    return out


def summary(raw: bytes) -> str:
    pkt = Pkt.parse(raw)
    if pkt is None:
        return f"{len(raw)} bytes (not IPv4)"
    who = "client" if pkt.src == addr_bytes(CLIENT) else "server"
    if not pkt.l4:
        return f"{who} IP fragment offset {pkt.frag * 8}, {len(pkt.raw_l4)} bytes, ttl {pkt.ttl}"
    p = parse(raw)
    extra = f" dataofs {(raw[20 + 12] >> 4)}" if len(raw) > 33 else ""
    return (
        f"{who} {flags_text(pkt.l4['flags']) or '-'} seq {pkt.l4['seq']} "
        f"len {len(p.payload)} ttl {pkt.ttl}{extra}"
    )


def view(censor: Censor, cport: int, sport: int) -> str:
    """The censor's view of the trial's flow: its TCB state, or let go, blocked, or none."""
    key = flow_key(PROTO_TCP, addr_bytes(CLIENT), cport, addr_bytes(SERVER), sport)
    return describe(censor.flows.flows.get(key))


def describe(flow: Flow | None) -> str:
    """A flow as the censor sees it: its TCB state, or let go, blocked, or none (the trace of
    offline trials here and of ``evade run --explain``)."""
    if flow is None:
        return "no flow"
    if flow.state is FlowState.BLOCKED:
        return "blocked"
    if flow.state is FlowState.BYPASSED:
        return "let go (no more inspection)"
    if flow.tcb is None:
        return "no TCB"
    t = flow.tcb
    turned = ", roles swapped" if flow.turned else ""
    return f"{t.state.value}{turned}, stream {len(t.stream)} bytes, {len(t.ooo)} held"


def trial(
    strategy: Strategy, against: str, profile: Profile, seed: int, side: str = "client"
) -> Trial:
    """One connection with the strategy on ``side``; evaded if the censor did not reset it."""
    cport = 40000 + seed % 20000
    censor = build_censor(profile, seed)
    interp = Interpreter(strategy, random.Random(f"evade:{seed}"))
    out = Trial(seed, True)
    me = addr_bytes(CLIENT if side == "client" else SERVER)
    script = conversation(against, cport)
    while script:
        ts, raw = script.pop(0)
        pkt = parse(raw)
        wire = interp.outbound(raw) if pkt.src == me else [raw]
        for sent in wire:
            actions = censor.feed(sent, ts)
            out.trace.append((summary(sent), view(censor, cport, TARGETS[against])))
            if _reset(actions, against):
                out.evaded = False
        if pkt.flags & (SYN | ACK) == SYN | ACK and pkt.src == addr_bytes(SERVER):
            script[:0] = simultaneous_open(wire, ts, (pkt.ack - 1) & 0xFFFFFFFF)
    for a in censor.flush():
        if isinstance(a, Inject) and a.mechanism == against:
            out.evaded = False
    return out


def simultaneous_open(wire: list[bytes], ts: float, isn_c: int) -> list[tuple[float, bytes]]:
    """What the endpoints add when the server's SYN/ACK went out as a bare SYN (and no SYN/ACK):
    the client, in SYN-SENT, takes it for a simultaneous open and sends a SYN/ACK of its own ISN
    (RFC 9293 §3.10.7.3); the server's TCP, still holding the client's SYN, finds that segment
    outside its window and answers with an ACK, which completes the client's handshake. The
    scripted ACK and data that follow are then the connection's own. ``isn_c``: the client's
    ISN."""
    sent = []
    for raw in wire:
        try:
            sent.append(parse(raw))
        except MalformedPacket:
            continue  # a packet the client's TCP drops
    if any(p.flags & (SYN | ACK) == SYN | ACK for p in sent):
        return []
    syn = next((p for p in sent if p.flags & (SYN | ACK | RST) == SYN), None)
    if syn is None:
        return []
    c, s = addr_bytes(CLIENT), addr_bytes(SERVER)
    synack = build_tcp(c, s, syn.dport, syn.sport, seq=isn_c, ack=syn.seq + 1, flags=SYN | ACK)
    ack = build_tcp(s, c, syn.sport, syn.dport, seq=syn.seq + 1, ack=isn_c + 1, flags=ACK)
    return [(ts, synack), (ts, ack)]


def _reset(actions: Iterable[object], against: str) -> bool:
    for a in actions:
        if isinstance(a, Report) and a.event.mechanism == against and a.event.action != "pass":
            return True
    return False


def run(
    strategy: str, against: str, profile: Profile, trials: int, seed: int = 0, side: str = "client"
) -> Result:
    parsed = parse_strategy(strategy)
    done = [trial(parsed, against, profile, seed + i, side) for i in range(trials)]
    return Result(strategy, against, side, done)
