"""engine/flows.py and engine/residual.py as pieces: the flow-state table, block directions, flow
ids, keys, idle expiry, and residual entries' keys, windows and expiry (spec §1, §10b)."""

from __future__ import annotations

import ipaddress
import math
import random
import zlib

import pytest

import gfwlab
from gfwlab.engine.actions import FlowId
from gfwlab.engine.flows import (
    _TRANSITIONS,
    Flow,
    FlowInput,
    FlowState,
    FlowTable,
    flow_key,
    open_flow,
)
from gfwlab.engine.residual import ResidualEntry, ResidualTable, residual_key
from gfwlab.engine.tcb import Tcb, transition_table
from gfwlab.packet.ip import (
    ACK,
    PROTO_TCP,
    PROTO_UDP,
    SYN,
    Packet,
    addr_bytes,
    build_tcp,
    build_udp,
    parse,
)
from gfwlab.profiles import build_censor
from gfwlab.rules import Prefixes, TcbParams
from helpers import profile

C, S = addr_bytes("198.18.0.2"), addr_bytes("198.19.0.2")
C6 = addr_bytes("2001:db8::2")
F, In = FlowState, FlowInput


def flow(proto: int = PROTO_TCP, client: bytes = C, cport: int = 40000, **kw: object) -> Flow:
    fields: dict = {
        "server": S,
        "sport": 443,
        "direction": "inside-out",
        "crossing": True,
        "first_seen": 0.0,
        "last_seen": 0.0,
    }
    fields.update(kw)
    return Flow(proto=proto, client=client, cport=cport, **fields)


# ------------------------------------------------------------------ flows

FLOW_TABLE = {
    (F.CLEAN, In.RECV_BLOCK): F.BLOCKED,
    (F.CLEAN, In.RECV_DONE): F.BYPASSED,
    (F.BLOCKED, In.RECV_BLOCK): F.BLOCKED,
    (F.BLOCKED, In.RECV_DONE): F.BLOCKED,
    (F.BYPASSED, In.RECV_DONE): F.BYPASSED,
    (F.BYPASSED, In.RECV_BLOCK): F.BLOCKED,
}


def test_flow_table_is_total_and_exact() -> None:
    assert _TRANSITIONS == FLOW_TABLE
    assert set(_TRANSITIONS) == {(s, i) for s in F for i in In}


@pytest.mark.parametrize(("start", "inp"), list(FLOW_TABLE))
def test_flow_step(start: FlowState, inp: FlowInput) -> None:
    f = flow(state=start)
    f.step(inp)
    assert f.state is FLOW_TABLE[(start, inp)]


def test_flow_step_without_a_transition_raises() -> None:
    f = flow()
    if gfwlab.ENGINE_BUILD == "compiled":  # a compiled Flow refuses a state of another type
        with pytest.raises(TypeError):
            f.state = "bogus"  # type: ignore[assignment]
        return
    f.state = "bogus"  # type: ignore[assignment]
    with pytest.raises(
        RuntimeError, match=r"^flow: no transition from bogus on FlowInput\.RECV_DONE$"
    ):
        f.step(In.RECV_DONE)


def test_first_block_names_direction_and_mechanism() -> None:
    f = flow()
    f.block_flow("c2s", "http")
    assert (f.state, f.block, f.blocked_by) == (F.BLOCKED, "c2s", "http")


@pytest.mark.parametrize(
    ("first", "second", "result"),
    [
        ("c2s", "c2s", "c2s"),
        ("c2s", "s2c", "both"),
        ("s2c", "c2s", "both"),
        ("c2s", "none", "c2s"),
        ("both", "c2s", "both"),
        ("s2c", "both", "both"),
    ],
)
def test_second_block_widens_the_direction(first: str, second: str, result: str) -> None:
    f = flow()
    f.block_flow(first, "one")  # type: ignore[arg-type]
    f.block_flow(second, "two")  # type: ignore[arg-type]
    assert (f.state, f.block, f.blocked_by) == (F.BLOCKED, result, "one")


def test_a_none_block_leaves_the_direction_open_for_the_next() -> None:
    f = flow()
    f.block_flow("none", "one")
    assert (f.state, f.block, f.blocked_by) == (F.BLOCKED, "none", "one")
    f.block_flow("s2c", "two")  # the first block that drops names the direction and mechanism
    assert (f.block, f.blocked_by) == ("s2c", "two")


def test_finish_bypasses_a_clean_flow_and_frees_its_tcb() -> None:
    p = TcbParams()
    f = flow(tcb=Tcb(p, transition_table(p), 1))
    f.finish()
    assert f.state is F.BYPASSED
    assert f.tcb is None
    g = flow(state=F.BLOCKED)
    g.finish()
    assert g.state is F.BLOCKED


@pytest.mark.parametrize(
    ("proto", "client", "name", "src"),
    [
        (PROTO_TCP, C, "tcp", "198.18.0.2"),
        (PROTO_UDP, C, "udp", "198.18.0.2"),
        (1, C, "ip", "198.18.0.2"),
        (PROTO_TCP, C6, "tcp", "2001:db8::2"),
    ],
)
def test_flow_id(proto: int, client: bytes, name: str, src: str) -> None:
    f = flow(proto, client, 40000)
    ident = f.id()
    assert ident == FlowId(proto=name, src=src, sport=40000, dst="198.19.0.2", dport=443)  # type: ignore[arg-type]
    assert f.id() is ident  # computed once


@pytest.mark.parametrize(
    ("src", "sport", "c2s"),
    [(C, 40000, True), (S, 443, False), (C, 443, False), (S, 40000, False)],
)
def test_is_c2s_needs_address_and_port(src: bytes, sport: int, c2s: bool) -> None:
    assert flow().is_c2s(src, sport) is c2s


def test_flow_key_is_direction_independent() -> None:
    fwd = flow_key(PROTO_TCP, C, 40000, S, 443)
    assert fwd == flow_key(PROTO_TCP, S, 443, C, 40000) == (PROTO_TCP, C, 40000, S, 443)
    # the same address on both sides: the port orders them
    assert (
        flow_key(PROTO_UDP, C, 9, C, 5)
        == flow_key(PROTO_UDP, C, 5, C, 9)
        == (PROTO_UDP, C, 5, C, 9)
    )


def test_flow_table_expires_idle_flows_at_their_timeout() -> None:
    table = FlowTable(tcp_timeout=60.0, udp_timeout=30.0)
    assert (len(table), table.expired) == (0, 0)
    tcp = flow(PROTO_TCP, cport=1, sport=2, last_seen=10.0)
    udp = flow(PROTO_UDP, cport=1, sport=2, last_seen=10.0)
    table.add(flow_key(PROTO_TCP, C, 1, S, 2), tcp)
    table.add(flow_key(PROTO_UDP, C, 1, S, 2), udp)
    assert (table.timeout(tcp), table.timeout(udp)) == (60.0, 30.0)
    assert table.expire(39.9) == 0
    assert table.expire(40.0) == 1  # idle for exactly the UDP timeout
    assert (len(table), table.expired) == (1, 1)
    assert table.expire(69.9) == 0
    assert table.expire(70.0) == 1
    assert (len(table), table.expired) == (0, 2)  # counted across sweeps


@pytest.mark.parametrize("in_order", [True, False])
@pytest.mark.parametrize("seed", range(6))
def test_flow_table_sweep_forgets_what_reading_every_flow_forgets(
    in_order: bool, seed: int
) -> None:
    """In time order a sweep reads only the flows that may be due (each once it is old enough
    to be idle, then again when its timeout could end); out of order it reads them all. Either
    way it forgets exactly the flows idle past their timeout, also as flows go on (last_seen
    moving forward), are evicted by a full table, or are replaced by a new flow on their key."""
    rng = random.Random(seed)
    table = FlowTable(tcp_timeout=60.0, udp_timeout=30.0, max_flows=rng.choice([50, 300, 10_000]))
    table.evicted_log = evicted = []
    made = sorted(rng.uniform(0.0, 200.0) for _ in range(400))
    if not in_order:
        rng.shuffle(made)
    now = 0.0
    sweeps = iter(sorted(rng.uniform(0.0, 400.0) for _ in range(40)))
    at = next(sweeps)
    for i, t in enumerate(made):
        while in_order and at <= t:  # sweeps between the adds, as the engine's timer runs them
            now = at
            idle = [k for k, f in table.flows.items() if now - f.last_seen >= table.timeout(f)]
            assert table.expire(now) == len(idle)
            assert not set(idle) & set(table.flows)
            for f in table.flows.values():  # traffic goes on: last_seen only moves forward
                if rng.random() < 0.3:
                    f.last_seen = max(f.last_seen, rng.uniform(f.last_seen, now))
            at = next(sweeps, math.inf)
        proto = PROTO_TCP if i % 3 else PROTO_UDP
        port = 1000 + (i if rng.random() < 0.9 else rng.randrange(i + 1))  # some keys again
        key = flow_key(proto, C, port, S, 2)
        f = flow(proto, cport=port, sport=2, first_seen=t)
        f.last_seen = t + rng.choice([0.0, rng.uniform(0.0, 50.0)])
        if key in table.flows:  # a new connection on a key replaces its flow (Censor._flow)
            gone = table.flows[key]
            table.remove(key)
            assert not gone.held
        table.add(key, f)
        assert f.held
    for now in (max(now, x) for x in (50.0, 80.0, 100.0, 130.0, 160.0, 161.5, 200.0, 260.0, 310.0)):
        idle = [k for k, f in table.flows.items() if now - f.last_seen >= table.timeout(f)]
        assert table.expire(now) == len(idle)
        assert not set(idle) & set(table.flows)
    table.expire(10_000.0)
    assert not table.flows
    assert not any(f.held for f in evicted)


def test_a_packet_earlier_than_the_last_makes_the_sweep_read_every_flow() -> None:
    """A flow's last_seen moves back only when time does: the censor then has its table read
    every flow at each sweep, and a flow whose last packet came earlier still goes on time."""
    censor = build_censor(profile(), 1)
    table = censor.flows
    censor.feed(build_udp(C, S, 5000, 9999, b"x"), 100.0)
    assert table._in_order
    censor.feed(build_udp(C, S, 5000, 9999, b"y"), 50.0)  # out of order: last_seen 100 -> 50
    assert not table._in_order
    assert table.expire(50.0 + table.udp_timeout) == 1


# ------------------------------------------------------------------ residual


def entry(
    policy: str = "rst", until: float = 100.0, start: float = 0.0, rule: str = "r"
) -> ResidualEntry:
    return ResidualEntry("m", rule, until, policy, 1.0, start)


@pytest.mark.parametrize(
    ("kind", "key"),
    [
        ("3-tuple", (PROTO_TCP, C, S, 443)),
        ("2-tuple", (C, S)),
        ("server", (PROTO_TCP, S, 443)),
        ("server-ip", (S,)),
        ("5-tuple", (PROTO_TCP, C, 40000, S, 443)),
    ],
)
def test_residual_keys(kind: str, key: tuple) -> None:
    assert residual_key(flow(), kind) == key  # type: ignore[arg-type]


def test_residual_drops_flag_tracks_drop_entries() -> None:
    t = ResidualTable()
    assert t.drops is False
    t.add(flow(), "3-tuple", entry("rst"))
    assert t.drops is False
    assert t.kinds == {("m", "3-tuple", "rst"): None}
    t.add(flow(), "2-tuple", entry("drop-c2s", until=50.0))
    assert t.drops is True
    t.add(flow(), "server", entry("rst"))
    assert t.drops is True
    assert t.expire(50.0) == 1  # an entry ending now is gone
    assert t.drops is False
    assert len(t) == 2


def test_residual_add_keeps_the_longest_entry() -> None:
    t = ResidualTable()
    f = flow()
    t.add(f, "3-tuple", entry(until=100.0, rule="first"))
    t.add(f, "3-tuple", entry(until=90.0, rule="shorter"))
    t.add(f, "3-tuple", entry(until=100.0, rule="as long"))
    assert [e.rule for e in t.entries.values()] == ["first"]
    t.add(f, "3-tuple", entry(until=120.0, rule="longer"))
    assert [e.rule for e in t.entries.values()] == ["longer"]


def test_residual_lookup_window_and_policy() -> None:
    t = ResidualTable()
    f = flow()
    t.add(f, "3-tuple", entry("drop-c2s", start=10.0, until=20.0))
    assert t.lookup(f, "drop-c2s", 9.9) is None
    assert t.lookup(f, "drop-c2s", 10.0) is not None  # starts now
    assert t.lookup(f, "drop-c2s", 19.9) is not None
    assert t.lookup(f, "drop-c2s", 20.0) is None  # ended now
    assert t.lookup(f, "rst", 15.0) is None
    other = flow(cport=40001)  # same 3-tuple, other source port: hit
    assert t.lookup(other, "drop-c2s", 15.0) is not None
    assert t.lookup(flow(sport=80), "drop-c2s", 15.0) is None


@pytest.mark.parametrize("kind", ["3-tuple", "2-tuple", "server", "server-ip", "5-tuple"])
def test_residual_servers_name_every_entrys_server_and_only_them(kind: str) -> None:
    """lookup answers None at once for a flow whose server no entry names (most flows):
    every kind of key names its server, and the set is made again when entries end."""
    t = ResidualTable()
    s2 = addr_bytes("198.19.0.9")
    t.add(flow(), kind, entry(until=50.0))  # type: ignore[arg-type]
    t.add(flow(server=s2), kind, entry(until=30.0))  # type: ignore[arg-type]
    again = "5-tuple" if kind == "server-ip" else "server-ip"
    t.add(flow(), again, entry(until=80.0))  # S again, on another key, longer
    assert t.servers == {S, s2}
    assert t.lookup(flow(server=s2), "rst", 10.0) is not None
    assert t.lookup(flow(server=addr_bytes("198.19.0.10")), "rst", 10.0) is None
    assert t.expire(30.0) == 1
    assert t.servers == {S}  # s2's one entry ended
    assert t.lookup(flow(server=s2), "rst", 31.0) is None
    assert t.expire(50.0) == 1
    assert t.servers == {S}  # S still has its other entry
    assert t.lookup(flow(), "rst", 60.0) is not None
    t.put(kind, residual_key(flow(server=s2), kind), entry(until=99.0), journal=False)  # type: ignore[arg-type]
    assert t.servers == {S, s2} and t.lookup(flow(server=s2), "rst", 60.0) is not None


def test_a_flows_stream_goes_on_across_calls_and_differs_by_key_and_salt() -> None:
    f = flow()
    first = [f.draws("1:tls_sni").random() for _ in range(3)]
    again = flow()
    whole = again.draws("1:tls_sni")
    assert first == [whole.random() for _ in range(3)]  # one stream, not restarted per call
    assert f.draws("1:tls_sni") is f.draws("1:tls_sni")
    assert flow().draws("1:fet").random() != flow().draws("1:tls_sni").random()
    assert flow(salt=7).draws("1:fet").random() != flow(salt=8).draws("1:fet").random()


def test_probe_ids_are_unique_per_flow_and_fit_in_63_bits() -> None:
    a, b = flow(), flow(cport=40001)
    ids = [a.probe_id() for _ in range(50)] + [b.probe_id() for _ in range(50)]
    assert len(set(ids)) == len(ids)
    assert all(0 <= i < 1 << 63 for i in ids)
    assert max(ids) >= 1 << 61  # the whole 63-bit range is used, not a small counter
    assert flow().probe_id() == flow().probe_id()  # from the flow's identity alone


# --- open_flow: who is the client, which way the flow crosses ------------------------------

IN_C, OUT_S = "198.18.0.2", "198.19.0.2"
INSIDE = Prefixes((ipaddress.ip_network("198.18.0.0/24"),))
NONE = Prefixes()


def _tcp(src: str, dst: str, sport: int, dport: int, flags: int) -> Packet:
    return parse(build_tcp(addr_bytes(src), addr_bytes(dst), sport, dport, seq=7, flags=flags))


def _open(pkt: Packet, *, turnaround: bool = False, ports: frozenset[int] = frozenset(),
          inside: Prefixes = NONE) -> Flow:  # fmt: skip
    return open_flow(pkt, 1.5, turnaround=turnaround, udp_ports=ports, inside=inside)


@pytest.mark.parametrize(
    ("pkt", "turnaround", "client", "cport"),
    [
        (_tcp(IN_C, OUT_S, 40000, 443, SYN), False, IN_C, 40000),  # the SYN's sender
        (_tcp(OUT_S, IN_C, 443, 40000, SYN | ACK), True, IN_C, 40000),  # turnaround: receiver
        (_tcp(OUT_S, IN_C, 443, 40000, SYN | ACK), False, OUT_S, 443),  # else its sender
        (_tcp(OUT_S, IN_C, 443, 40000, ACK), False, IN_C, 40000),  # mid-stream: higher port
        (_tcp(IN_C, OUT_S, 40000, 443, ACK), False, IN_C, 40000),
        (_tcp(IN_C, OUT_S, 8080, 8080, ACK), False, IN_C, 8080),  # equal ports: the sender
    ],
)
def test_open_flow_tcp_client(pkt: Packet, turnaround: bool, client: str, cport: int) -> None:
    f = _open(pkt, turnaround=turnaround)
    assert (f.client, f.cport) == (addr_bytes(client), cport)
    assert f.first_seen == f.last_seen == 1.5 and f.salt == 7 and f.proto == PROTO_TCP


def test_open_flow_udp_response_seen_first_comes_from_the_server() -> None:
    ports = frozenset({53})
    answer = parse(build_udp(addr_bytes(OUT_S), addr_bytes(IN_C), 53, 40000, b"x"))
    query = parse(build_udp(addr_bytes(IN_C), addr_bytes(OUT_S), 40000, 53, b"y"))
    both = parse(build_udp(addr_bytes(OUT_S), addr_bytes(IN_C), 53, 53, b"z"))
    for pkt, client in ((answer, IN_C), (query, IN_C), (both, OUT_S)):
        assert _open(pkt, ports=ports).client == addr_bytes(client)
    assert _open(query, ports=ports).salt == zlib.crc32(b"y")
    assert _open(answer).client == addr_bytes(OUT_S)  # no watched port: the sender


@pytest.mark.parametrize(
    ("src", "dst", "crossing", "direction", "state"),
    [
        (IN_C, OUT_S, True, "inside-out", FlowState.CLEAN),
        (OUT_S, IN_C, True, "outside-in", FlowState.CLEAN),
        (IN_C, "198.18.0.9", False, "inside-out", FlowState.BYPASSED),  # domestic: not seen
        (OUT_S, "198.19.0.9", False, "inside-out", FlowState.BYPASSED),
    ],
)
def test_open_flow_border(
    src: str, dst: str, crossing: bool, direction: str, state: FlowState
) -> None:
    f = _open(_tcp(src, dst, 40000, 443, SYN), inside=INSIDE)
    assert (f.crossing, f.direction, f.state) == (crossing, direction, state)
    empty = _open(_tcp(src, dst, 40000, 443, SYN))
    assert (empty.crossing, empty.direction, empty.state) == (True, "inside-out", FlowState.CLEAN)
