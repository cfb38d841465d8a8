"""Random draws are keyed by (seed, mechanism, flow), so a flow's verdict and draws do not depend
on how its packets interleave with other flows' or on which packets of other flows are seen.

This is what lets a fast path feed the engine only some packets, and lets flows be analysed on
different workers, with verdicts identical to one engine that saw everything in time order.
"""

from __future__ import annotations

import datetime as dt
import random
from collections import defaultdict

import pytest

from gfwlab.engine import Accept, Censor, Drop, Inject, Probe, Report, draws
from gfwlab.engine.flows import flow_key
from gfwlab.engine.stream import Stream
from gfwlab.offline.synth import (
    dns_exchange,
    http_conversation,
    https_conversation,
    tcp_conversation,
)
from gfwlab.packet.ip import addr_bytes, build_udp, parse
from gfwlab.profiles import build_censor, load_profile
from gfwlab.proto.quic_build import build_initial

DAY = dt.date(2022, 6, 1)  # FET and Shadowsocks probing active; the draws of every kind matter
SETS = [
    "tls_sni.injector='mixed'",
    "http_keyword.probability=0.5",
    "fet.probability=0.5",
    "ss_probing.probability=0.5",
    "quic_sni.probability=0.5",
    "quic_sni.active={start='2022-01-01'}",
    "dns_injection.injectors=[{name='random-id', ip_id='random', coverage=1.0}]",
]

Packets = list[tuple[float, bytes]]


def _flows() -> dict[str, Packets]:
    """Flows that each draw: every client/server pair is its own, so no residual crosses."""
    rnd = random.Random(7)
    flows: dict[str, Packets] = {}
    for i in range(6):
        c, s, t = f"198.18.1.{i + 1}", f"198.19.0.{i + 2}", 0.003 * i
        flows[f"tls{i}"] = https_conversation(c, s, 40000 + i, "www.facebook.com", t0=t)
    for i in range(6):
        c, s, t = f"198.18.2.{i + 1}", f"198.19.1.{i + 1}", 0.005 * i + 0.001
        flows[f"http{i}"] = http_conversation(c, s, 41000 + i, "example.org", "/falun", t0=t)
    for i in range(6):
        c, s, t = f"198.18.3.{i + 1}", "198.19.0.53", 0.002 * i + 0.002
        name, answer = "www.google.com", "198.19.0.1"
        flows[f"dns{i}"] = dns_exchange(c, s, 42000 + i, name, answer=answer, t0=t)
    for i in range(6):  # fully random first packets toward the FET's targets
        c, s, t = f"198.18.4.{i + 1}", f"198.19.0.{20 + i}", 0.004 * i + 0.0015
        payload = rnd.randbytes(300)
        flows[f"fet{i}"] = tcp_conversation(c, s, 43000 + i, 8388, [payload], t0=t)
    for i in range(6):
        c, s, t = addr_bytes(f"198.18.5.{i + 1}"), addr_bytes(f"198.19.2.{i + 1}"), 0.006 * i
        initial = build_initial("www.google.com", dcid=bytes([i]) * 8)
        flows[f"quic{i}"] = [
            (t + 0.0005, build_udp(c, s, 50000 + i, 443, initial)),
            (t + 0.0105, build_udp(c, s, 50000 + i, 443, b"\x40" + rnd.randbytes(40))),
        ]
    return flows


def _noise() -> Packets:
    """A flow that shares no key with the others (its packets are thinned in one run)."""
    return http_conversation("198.18.9.1", "198.19.9.1", 44444, "example.org", "/falun", t0=0.0007)


def _key(pkt: bytes) -> tuple[object, ...]:
    p = parse(pkt)
    return flow_key(p.proto, p.src, p.sport, p.dst, p.dport)


def _per_flow(censor: Censor, packets: Packets) -> dict[tuple[object, ...], list[object]]:
    """Feed ``packets`` in the given order; what happened, grouped by flow, in each flow's order."""
    got: dict[tuple[object, ...], list[object]] = defaultdict(list)

    def take(key: tuple[object, ...], actions: list[object]) -> None:
        for a in actions:
            if isinstance(a, Inject):
                got[_key(a.packet)].append(("inject", a.packet, round(a.at, 9), a.toward))
            elif isinstance(a, Report):
                e = a.event.as_dict()
                got[key].append(("event", e))
            elif isinstance(a, Probe):
                got[key].append(("probe", a.payload, round(a.at, 9), a.ttl, a.sport))

    for ts, pkt in packets:
        key = _key(pkt)
        actions = censor.feed(pkt, ts)
        assert isinstance(actions[0], Accept | Drop)
        got[key].append(("verdict", isinstance(actions[0], Accept)))
        take(key, actions[1:])
    for a in censor.flush():
        if isinstance(a, Probe):
            got[("probe", a.server, a.port)].append(("probe", a.payload, a.ttl, a.sport))
        elif isinstance(a, Inject):
            got[_key(a.packet)].append(("inject", a.packet, round(a.at, 9), a.toward))
    return got


def _censor() -> Censor:
    return build_censor(load_profile("gfw", date=DAY, overrides=SETS), 11)


def test_verdicts_and_draws_do_not_depend_on_interleaving() -> None:
    flows = _flows()
    noise = _noise()
    in_time = sorted((p for f in [*flows.values(), noise] for p in f), key=lambda tp: tp[0])
    # Flow by flow, in reverse order of the flows, each flow's packets in its own order; and the
    # noise flow with every other packet removed.
    by_flow = [p for f in reversed([*flows.values(), noise[::2]]) for p in f]
    a = _per_flow(_censor(), in_time)
    b = _per_flow(_censor(), by_flow)
    noise_key = _key(noise[0][1])
    keys = {_key(f[0][1]) for f in flows.values()}
    for key in keys:
        assert a[key] == b[key], key
    # The comparison is not vacuous: flows drew, and the draws went both ways.
    events = [e for key in keys for kind, *rest in a[key] if kind == "event" for e in rest]
    acted = {(e["mechanism"], e["action"]) for e in events}  # type: ignore[index]
    assert {("tls_sni", "rst"), ("http_keyword", "rst"), ("http_keyword", "pass")} <= acted
    assert {("fet", "drop"), ("fet", "pass"), ("quic_sni", "drop"), ("quic_sni", "pass")} <= acted
    assert ("dns_injection", "dns-inject") in acted
    assert noise_key not in keys


def test_a_different_seed_changes_the_draws() -> None:
    flows = _flows()
    packets = sorted((p for f in flows.values() for p in f), key=lambda tp: tp[0])
    a = _per_flow(_censor(), packets)
    other = build_censor(load_profile("gfw", date=DAY, overrides=SETS), 12)
    b = _per_flow(other, packets)
    assert a != b


PerFlow = dict[tuple[object, ...], list[object]]


def _timeless(got: PerFlow) -> PerFlow:
    """Per flow, what happened without the times (events' ts, at, residual_until; inject times)."""
    out: PerFlow = {}
    for key, items in got.items():
        kept: list[object] = []
        for item in items:
            kind = item[0]  # type: ignore[index]
            if kind == "event":
                e = {k: v for k, v in item[1].items() if k not in ("ts", "at", "residual_until")}  # type: ignore[index]
                kept.append(("event", e))
            elif kind == "inject":
                kept.append(("inject", item[1], item[3]))  # type: ignore[index]
            else:
                kept.append(item)
        out[key] = kept
    return out


def test_draws_do_not_depend_on_the_clock() -> None:
    """Live, the censor's clock is monotonic; a recording of the same session is analysed on
    wall-clock time: the same packets at shifted times draw alike."""
    flows = _flows()
    packets = sorted((p for f in flows.values() for p in f), key=lambda tp: tp[0])
    shifted = [(t + 1_733_000_000.123457, p) for t, p in packets]
    a = _timeless(_per_flow(_censor(), packets))
    b = _timeless(_per_flow(_censor(), shifted))
    assert a == b


# ------------------------------------------------------------------ compiled draws


class _RandomOver(random.Random):
    """``random.Random``'s own methods (``random.py``) over a stream's bits: what it defines
    ``getrandbits`` and ``random`` of, it draws the rest from."""

    def __init__(self, stream: Stream) -> None:
        self.stream = stream
        super().__init__(0)

    def random(self) -> float:
        return self.stream.random()

    def getrandbits(self, k: int) -> int:
        return self.stream.getrandbits(k)


def test_compiled_draws_are_random_py_draws() -> None:
    """``engine/draws.py`` gives the values ``random.Random``'s methods give from the same bits,
    and leaves the stream where they leave it."""
    spans = [(0, 0), (0, 1), (1, 5), (0, 0xFFFF), (30, 128), (-7, 3), (1, 2**40), (5, 2**70)]
    for seed in range(200):
        ours = Stream(f"draws:{seed}".encode())
        theirs = _RandomOver(Stream(f"draws:{seed}".encode()))
        for lo, hi in spans:
            assert draws.randint(ours, lo, hi) == theirs.randint(lo, hi)
            assert draws.randrange(ours, hi - lo + 1) == theirs.randrange(hi - lo + 1)
            assert draws.uniform(ours, lo, hi) == theirs.uniform(lo, hi)
        for seq in [(1,), (3, 4, 5), tuple(range(21))]:
            assert draws.choice(ours, seq) == theirs.choice(seq)
        for weights in [(60.66, 38.69, 0.65), (1, 0, 0), (0, 0, 2), (0.5, 0.5, 1e-9)]:
            picked = draws.weighted(ours, ("a", "b", "c"), weights)
            assert picked == theirs.choices(("a", "b", "c"), weights=weights)[0]
        assert ours.word() == theirs.stream.word()


def test_compiled_draws_refuse_what_random_py_refuses() -> None:
    rng = Stream(b"1")
    for call in (
        lambda: draws.randint(rng, 3, 2),
        lambda: draws.randrange(rng, 0),
        lambda: draws.weighted(rng, ("a", "b"), (0.0, 0.0)),
        lambda: draws.weighted(rng, ("a", "b"), (1.0,)),
        lambda: draws.weighted(rng, ("a",), (float("inf"),)),
    ):
        with pytest.raises(ValueError):
            call()
    with pytest.raises(IndexError):
        draws.choice(rng, ())
