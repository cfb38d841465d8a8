"""The engine: never raises on traffic, deterministic, timers, expiry, fast path."""

from __future__ import annotations

import json
import pickle
from typing import Any

import hypothesis.strategies as st
from hypothesis import HealthCheck, given, settings

from gfwlab._json import json_line, json_line_bytes
from gfwlab.engine import Accept, Bypass, Drop, Inject, Report
from gfwlab.engine.actions import FlowId
from gfwlab.offline.synth import dns_exchange, http_conversation, https_conversation, merge
from gfwlab.packet.ip import addr_bytes, build_tcp, build_udp
from gfwlab.profiles import build_censor
from gfwlab.proto.tls import build_client_hello
from helpers import profile, run

C, S = "198.18.0.2", "198.19.0.2"
CENSOR = build_censor(profile(), 1)


def _valid_packets() -> list[bytes]:
    conv = merge(
        https_conversation(C, S, 40000, "youtube.com"),
        http_conversation(C, S, 40001, "example.org", "/falun"),
        dns_exchange(C, "198.19.0.53", 40002, "google.com", answer="198.19.0.1"),
        https_conversation("2001:db8::2", "2001:db8:1::2", 40003, "youtube.com"),
    )
    return [p for _t, p in conv]


VALID = _valid_packets()


@settings(max_examples=1000, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=1600))
def test_feed_never_raises_on_arbitrary_bytes(data: bytes) -> None:
    actions = CENSOR.feed(data, 1.0)
    assert isinstance(actions[0], Accept | Drop)


@settings(max_examples=1000, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(VALID), st.data())
def test_feed_never_raises_on_mutated_packets(pkt: bytes, data: st.DataObject) -> None:
    buf = bytearray(pkt)
    for _ in range(data.draw(st.integers(1, 8))):
        i = data.draw(st.integers(0, len(buf) - 1))
        buf[i] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(buf)))
    actions = CENSOR.feed(bytes(buf[:cut] if data.draw(st.booleans()) else buf), 2.0)
    assert isinstance(actions[0], Accept | Drop)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(min_size=0, max_size=600))
def test_arbitrary_tcp_payloads_after_a_handshake(payload: bytes) -> None:
    c, s = addr_bytes(C), addr_bytes(S)
    censor = build_censor(profile(), 1)
    censor.feed(build_tcp(c, s, 1234, 443, seq=10, flags=0x02), 0.0)
    actions = censor.feed(build_tcp(c, s, 1234, 443, seq=11, flags=0x18, payload=payload), 0.1)
    assert isinstance(actions[0], Accept | Drop)
    udp = censor.feed(build_udp(c, s, 1234, 53, payload), 0.2)
    assert isinstance(udp[0], Accept | Drop)


def test_malformed_ip_is_an_anomaly_event() -> None:
    censor = build_censor(profile(), 1)
    actions = censor.feed(b"\x45\x00\x00", 0.0)
    assert isinstance(actions[0], Accept)
    (report,) = [a for a in actions if isinstance(a, Report)]
    assert report.event.action == "anomaly" and report.event.rule == "ip.truncated"
    assert censor.stats.anomalies == 1


def _trace(seed: int) -> list[tuple[str, float, bytes]]:
    censor = build_censor(profile(), seed)
    out: list[tuple[str, float, bytes]] = []
    conv = merge(
        *(https_conversation(C, S, 40000 + i, "youtube.com", t0=i * 0.01) for i in range(20)),
        *(
            http_conversation(C, S, 41000 + i, "example.org", "/falun", t0=i * 0.01)
            for i in range(20)
        ),
    )
    for t, pkt in conv:
        for a in censor.feed(pkt, t):
            if isinstance(a, Inject):
                out.append(("inject", a.at, a.packet))
            elif isinstance(a, Report):
                out.append(("event", a.event.ts, repr(a.event.as_dict()).encode()))
    out.extend(("inject", a.at, a.packet) for a in censor.flush() if isinstance(a, Inject))
    return out


def test_same_seed_same_actions_different_seed_different_draws() -> None:
    assert _trace(5) == _trace(5)
    assert _trace(5) != _trace(6)


def test_delayed_injections_come_from_timers() -> None:
    censor = build_censor(profile("tls_sni.injector='type3'"), 1)
    conv = https_conversation(C, S, 40000, "youtube.com")
    hello_t = conv[3][0]
    for t, pkt in conv[:4]:
        actions = censor.feed(pkt, t)
        assert not any(isinstance(a, Inject) for a in actions)
    deadline = censor.next_deadline()
    assert deadline is not None and deadline > hello_t
    assert censor.on_timer(deadline - 1e-6) == []
    injected = [a for a in censor.on_timer(deadline) if isinstance(a, Inject)]
    assert {a.toward for a in injected} == {"client", "server"}
    assert all(a.at == deadline for a in injected)


def test_idle_flows_expire_and_state_is_freed() -> None:
    censor = build_censor(profile("engine.tcp_timeout_s=30", "engine.udp_timeout_s=10"), 1)
    run(censor, https_conversation(C, S, 40000, "example.org"))
    run(censor, dns_exchange(C, "198.19.0.53", 40001, "example.org", t0=1.0))
    assert len(censor.flows) == 2
    censor.on_timer(12.0)
    assert len(censor.flows) == 1  # the UDP flow went first
    censor.on_timer(45.0)
    assert len(censor.flows) == 0
    assert censor.next_deadline() is None


def test_the_last_packets_flow_and_direction_are_those_the_engine_used() -> None:
    censor = build_censor(profile(), 1)
    c, s = addr_bytes(C), addr_bytes(S)
    censor.feed(build_tcp(c, s, 40000, 443, seq=10, flags=0x02), 0.0)
    assert censor.last is not None
    flow, c2s = censor.last
    assert c2s and (flow.client, flow.cport, flow.server, flow.sport) == (c, 40000, s, 443)
    censor.feed(build_tcp(s, c, 443, 40000, seq=99, ack=11, flags=0x12), 0.01)
    assert censor.last == (flow, False)
    censor.feed(build_udp(c, s, 40001, 9999, b"x"), 0.02)
    assert censor.last is not None and censor.last[0] is not flow and censor.last[1]
    censor.feed(b"\x45\x00", 0.03)  # unreadable: in no flow
    assert censor.last is None
    censor.feed(build_tcp(s, c, 443, 40000, seq=100, ack=11, flags=0x10), 0.04)
    assert censor.last == (flow, False)


def test_a_bypass_names_its_flow_when_asked() -> None:
    """The engine makes ``Bypass`` with the flow itself: it reads as the flow's name, and
    compares, hashes, shows and pickles as one made with the name."""
    censor = build_censor(profile(), 1)
    bypasses = []
    for t, pkt in https_conversation(C, S, 40000, "example.org", t0=0.0):
        bypasses += [a for a in censor.feed(pkt, t) if isinstance(a, Bypass)]
    assert len(bypasses) == 1 and censor.last is not None
    flow = censor.last[0]
    lazy, named = bypasses[0], Bypass(flow=flow.id())
    assert lazy.flow == flow.id() == named.flow
    assert flow.id().src == C and flow.id().dport == 443
    assert lazy == named and hash(lazy) == hash(named)
    assert repr(lazy) == repr(named) == f"Bypass(flow={flow.id()!r})"
    again = pickle.loads(pickle.dumps(lazy))
    assert type(again) is Bypass and again == named
    other = Bypass(flow=FlowId(proto="tcp", src=C, sport=40001, dst=S, dport=443))
    assert lazy != other and lazy != flow.id()


def test_fast_path_bypasses_a_decided_flow_once() -> None:
    censor = build_censor(profile(), 1)
    c, s = addr_bytes(C), addr_bytes(S)
    conv = https_conversation(C, S, 40000, "example.org", t0=0.0)
    bypasses = 0
    for t, pkt in conv:
        bypasses += sum(isinstance(a, Bypass) for a in censor.feed(pkt, t))
    bulk = [
        build_tcp(s, c, 443, 40000, seq=9000 + i * 1000, flags=0x10, payload=bytes(1000))
        for i in range(50)
    ]
    for i, pkt in enumerate(bulk):
        bypasses += sum(isinstance(a, Bypass) for a in censor.feed(pkt, 1.0 + i * 0.001))
    assert bypasses == 1
    assert censor.stats.bypassed_pkts >= 50


def test_mid_stream_flow_without_syn_is_never_inspected() -> None:
    c, s = addr_bytes(C), addr_bytes(S)
    pkt = build_tcp(c, s, 40000, 443, seq=5, flags=0x18, payload=build_client_hello("youtube.com"))
    r = run(build_censor(profile(), 1), [(0.0, pkt)])
    assert not r.acted("rst") and r.bypassed == 1


def _nested(inner: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    # A named function: hypothesis reads the source of ``extend`` to check that it uses its
    # argument, and the source of a lambda inside a call is not always found whole.
    return st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4)


_JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    _nested,
    max_leaves=20,
)


@given(event=st.dictionaries(st.text(), _JSON_VALUES, max_size=6))
@settings(max_examples=300, deadline=None)
def test_an_event_line_is_the_json_of_the_event(event: dict[str, object]) -> None:
    """The events' writer (orjson, the standard library for integers wider than 64 bits)
    writes one line that reads back as the event, non-ASCII text unescaped."""
    line = json_line(event)
    assert line.endswith("\n") and "\n" not in line[:-1]
    assert json.loads(line) == event
    assert line.isascii() == json.dumps(event, ensure_ascii=False).isascii()
    assert json_line_bytes(event) == line.encode()  # the live censor's binary events file
