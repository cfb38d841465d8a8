"""Blocked flows held by the kernel (``live/blocked.py``): which packets hand a flow to the
kernel, the chain's rules, and how the engine's flows follow the kernel's entries.

The engine and the live censor are the real ones; the NFQUEUE packets are stand-ins
(``helpers.QueuedPacket``) and the kernel's ipset is a small model of its commands
(``FakeIpset``), whose timeouts count down with the test's clock. The live test
``tests/test_lab_blocked.py`` runs the same with the real kernel."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gfwlab.errors import GfwlabError, MalformedPacket
from gfwlab.live import blocked, daemon, kernel
from gfwlab.live.blocked import HeldFlows, chain_rules, entry_timeout
from gfwlab.live.daemon import LiveCensor
from gfwlab.live.ipset import CommandEntries
from gfwlab.packet.ip import (
    ACK,
    PSH,
    RST,
    SYN,
    addr_bytes,
    build_tcp,
    build_udp,
    is_tcp_data,
    parse,
    peek_tcp_flags,
)
from gfwlab.packet.pcap import PcapWriter
from gfwlab.profiles import build_censor
from gfwlab.proto.quic_build import build_initial
from gfwlab.proto.tls import build_client_hello
from helpers import Links, QueuedPacket, profile

C, S = addr_bytes("198.18.0.2"), addr_bytes("198.19.0.6")
C6, S6 = addr_bytes("2001:db8:c::2"), addr_bytes("2001:db8:5::2")


class FakeIpset:
    """ipset's add, del, test, flush and list, with timeouts that run down on ``now``."""

    def __init__(self) -> None:
        self.now = 0.0
        self.sets: dict[str, dict[str, float]] = {n: {} for n in blocked.set_names()}
        self.commands: list[list[str]] = []

    def __call__(self, argv: list[str]) -> str:
        self.commands.append(argv)
        if argv[0] != "ipset":
            return ""  # iptables: the rules are checked on their own (test_chain_rules)
        args = [a for a in argv[1:] if a != "-exist"]
        entries = self.sets[args[1]]
        for elem in [e for e, until in entries.items() if until <= self.now]:
            del entries[elem]
        if args[0] == "add":
            entries[args[2]] = self.now + int(args[4])
        elif args[0] == "del":
            entries.pop(args[2], None)
        elif args[0] == "flush":
            entries.clear()
        elif args[0] == "list":
            return "".join(
                f"add {args[1]} {e} timeout {int(until - self.now)}\n"
                for e, until in entries.items()
            )
        return ""

    def refresh(self, name: str, elem: str) -> None:
        """What the chain's SET rule does for a packet it drops."""
        if elem in self.sets[name]:
            timeout = entry_timeout(4.0) if ",udp:" in elem else entry_timeout(120.0)
            self.sets[name][elem] = self.now + timeout


def held_censor(tmp_path: Path, *sets: str) -> tuple[LiveCensor, HeldFlows, FakeIpset]:
    prof = profile("quic_sni.block_latency_ms=[]", "engine.udp_timeout_s=4", *sets)
    censor = build_censor(prof, 0)
    live = LiveCensor(censor, str(tmp_path), Links(), 0)  # type: ignore[arg-type]
    ipset = FakeIpset()
    held = HeldFlows(censor.flows, ipset, 120.0, 4.0)
    held.install()
    live.kernel_held = held
    return live, held, ipset


NOW = [0.0]
"""The clock the censor reads in these tests (``frozen_clock``)."""


def send(live: LiveCensor, ipset: FakeIpset, packet: bytes, now: float) -> str | None:
    """Queue ``packet`` at ``now`` (the kernel's clock and the engine's); its verdict."""
    ipset.now = NOW[0] = now
    queued = QueuedPacket(packet)
    live.on_packet(queued)
    return queued.verdict


@pytest.fixture(autouse=True)
def frozen_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    """The censor reads ``time.monotonic``; here it reads ``NOW``."""

    class Clock:
        @staticmethod
        def monotonic() -> float:
            return NOW[0]

        @staticmethod
        def time() -> float:
            return 1_700_000_000.0 + NOW[0]

    NOW[0] = 0.0
    monkeypatch.setattr(daemon, "time", Clock)


def quic_flow(sport: int = 50000) -> tuple[bytes, bytes]:
    """A QUIC Initial for a blocked name, and a later datagram of the same flow."""
    first = build_udp(C, S, sport, 443, build_initial("www.google.com"))
    return first, build_udp(C, S, sport, 443, b"\x40" + bytes(1199))


def test_a_dropped_packet_hands_its_direction_to_the_kernel(tmp_path: Path) -> None:
    live, held, ipset = held_censor(tmp_path)
    first, later = quic_flow()
    assert send(live, ipset, first, 10.0) == "accept"  # the Initial passes (spec §5)
    assert not ipset.sets["gfwlab-blocked-c2s4"]
    assert send(live, ipset, later, 10.1) == "drop"
    assert ipset.sets["gfwlab-blocked-c2s4"] == {"198.18.0.2,udp:50000,198.19.0.6": 10.1 + 5}
    assert not ipset.sets["gfwlab-blocked-s2c4"]  # one-way: the server's answers still pass
    assert held.added == 1
    # A packet queued before the entry was in place is dropped by the engine, not added twice.
    assert send(live, ipset, later, 10.2) == "drop"
    assert held.added == 1


def test_the_engine_keeps_a_held_flow_as_long_as_the_kernel_drops_its_packets(
    tmp_path: Path,
) -> None:
    live, held, ipset = held_censor(tmp_path)
    first, later = quic_flow()
    send(live, ipset, first, 10.0)
    send(live, ipset, later, 10.1)
    key = next(iter(held.held))[0]
    flow = live.censor.flows.flows[key]  # type: ignore[union-attr]
    # The kernel drops a datagram every second for 20 s (the engine's idle timeout is 4 s).
    for t in range(11, 31):
        ipset.now = float(t)
        ipset.refresh("gfwlab-blocked-c2s4", "198.18.0.2,udp:50000,198.19.0.6")
        held.check(float(t) + 0.5)
    assert live.censor.flows.flows.get(key) is flow  # type: ignore[union-attr]
    assert 29.0 <= flow.last_seen <= 30.5  # the last drop, to the second
    # Silence: the entry expires 5 s after the last drop, and the engine forgets the flow as
    # it would have seen every packet: its next datagram is judged anew (the residual block on
    # (client, server, port) still drops it, and hands the new flow to the kernel).
    assert send(live, ipset, later, 36.0) == "drop"
    assert live.censor.flows.flows.get(key) is not flow  # type: ignore[union-attr]
    assert held.added == 2


def test_a_flow_the_kernel_forgot_is_judged_anew_without_its_entry(tmp_path: Path) -> None:
    live, held, ipset = held_censor(tmp_path, "quic_sni.residual_s=0")
    first, later = quic_flow()
    send(live, ipset, first, 10.0)
    send(live, ipset, later, 10.1)
    assert send(live, ipset, later, 16.0) == "accept"  # idle past 4 s, no residual: a new flow
    held.check(16.5)
    assert held.held == {}
    assert not ipset.sets["gfwlab-blocked-c2s4"]


def test_a_new_connection_on_a_held_5_tuple_takes_the_old_entry_out(tmp_path: Path) -> None:
    live, held, ipset = held_censor(tmp_path, "esni.residual_s=0")

    syn = build_tcp(C, S, 40000, 443, seq=100, flags=SYN)
    hello = build_client_hello("example.org", esni=True)
    data = build_tcp(C, S, 40000, 443, seq=101, ack=1, flags=ACK | PSH, payload=hello)
    assert send(live, ipset, syn, 1.0) == "accept"
    assert send(live, ipset, data, 1.1) == "drop"  # ESNI: client-to-server drop (spec §4b)
    assert send(live, ipset, data, 1.3) == "drop"  # queued before the entry was in place
    assert ipset.sets["gfwlab-blocked-c2s4"]
    # The client opens a new connection from the same port (a new initial sequence number):
    # the chain lets the SYN through, the engine makes a new flow, and the entry goes.
    again = build_tcp(C, S, 40000, 443, seq=90000, flags=SYN)
    assert send(live, ipset, again, 2.0) == "accept"
    assert not ipset.sets["gfwlab-blocked-c2s4"]
    assert held.held == {}


def test_ipv6_flows_go_to_the_ipv6_sets(tmp_path: Path) -> None:
    live, _held, ipset = held_censor(tmp_path)
    first = build_udp(C6, S6, 50001, 443, build_initial("www.google.com"))
    later = build_udp(C6, S6, 50001, 443, b"\x40" + bytes(1199))
    send(live, ipset, first, 1.0)
    assert send(live, ipset, later, 1.1) == "drop"
    assert list(ipset.sets["gfwlab-blocked-c2s6"]) == ["2001:db8:c::2,udp:50001,2001:db8:5::2"]


def test_nothing_is_held_while_recording(tmp_path: Path) -> None:
    live, held, ipset = held_censor(tmp_path)
    live.recorder = PcapWriter(str(tmp_path / "rec.pcap"))  # what "lab record" starts
    first, later = quic_flow()
    send(live, ipset, first, 1.0)
    assert send(live, ipset, later, 1.1) == "drop"
    assert held.added == 0 and not ipset.sets["gfwlab-blocked-c2s4"]
    live.stop_recording()


def test_a_kernel_that_refuses_costs_nothing_but_a_count(tmp_path: Path) -> None:
    live, held, ipset = held_censor(tmp_path)

    def refuse(argv: list[str]) -> str:
        raise GfwlabError("ipset: refused")

    held.entries = CommandEntries(refuse)
    first, later = quic_flow()
    send(live, ipset, first, 1.0)
    assert send(live, ipset, later, 1.1) == "drop"  # the engine's verdict stands
    assert held.errors == 1 and held.held == {}


def test_chain_rules() -> None:
    rules = chain_rules(False, entry_timeout(120.0), entry_timeout(60.0))
    assert rules[0] == ["-p", "tcp", "--tcp-flags", "SYN", "SYN", "-j", "RETURN"]  # SYNs go on
    text = [" ".join(r) for r in rules]
    assert (
        "-p tcp -m set --match-set gfwlab-blocked-c2s4 src,src,dst -j SET --add-set "
        "gfwlab-blocked-c2s4 src,src,dst --exist --timeout 121" in text
    )
    assert (
        "-p udp -m set --match-set gfwlab-blocked-s2c4 dst,dst,src -j SET --add-set "
        "gfwlab-blocked-s2c4 dst,dst,src --exist --timeout 61" in text
    )
    assert "-m set --match-set gfwlab-blocked-s2c4 dst,dst,src -j DROP" in text
    assert all(
        "blocked-c2s6" in t or "blocked-s2c6" in t
        for t in map(" ".join, chain_rules(True, 2, 2)[1:])
    )
    assert entry_timeout(0.2) == 2 and entry_timeout(60.0) == 61


def test_the_drop_rules_counters_are_read_as_the_queue_rules_are() -> None:
    listing = (
        "Chain GFWLAB_BLOCKED (1 references)\n"
        "    pkts      bytes target     prot opt in     out     source               destination\n"
        "       3      180 RETURN     6    --  *      *       0.0.0.0/0            0.0.0.0/0\n"
        "     200   240000 SET        17   --  *      *       0.0.0.0/0            0.0.0.0/0\n"
        "     200   240000 DROP       0    --  *      *       0.0.0.0/0            0.0.0.0/0\n"
        "       7      420 DROP       0    --  *      *       0.0.0.0/0            0.0.0.0/0\n"
    )
    assert kernel.queue_rule_packets(listing, "DROP") == 207


@settings(max_examples=300, deadline=None)
@given(
    flags=st.integers(0, 0xFF),
    v6=st.booleans(),
    payload=st.binary(max_size=40),
)
def test_peek_tcp_flags_reads_what_parse_reads(flags: int, v6: bool, payload: bytes) -> None:
    c, s = (C6, S6) if v6 else (C, S)
    packet = build_tcp(c, s, 1234, 80, flags=flags, payload=payload)
    assert peek_tcp_flags(packet) == parse(packet).flags
    assert peek_tcp_flags(build_udp(c, s, 1234, 53, payload)) == -1


@given(raw=st.binary(max_size=80))
def test_peek_tcp_flags_takes_any_bytes(raw: bytes) -> None:
    assert -1 <= peek_tcp_flags(raw) <= 0xFF


def _parsed_tcp_data(raw: bytes) -> bool | None:
    """Whether parse reads ``raw`` as TCP data without SYN or RST (None: it raises)."""
    try:
        pkt = parse(raw)
    except MalformedPacket:
        return None
    return pkt.proto == 6 and not pkt.fragment and bool(pkt.payload) and not pkt.flags & (SYN | RST)


@settings(max_examples=300, deadline=None)
@given(flags=st.integers(0, 0xFF), v6=st.booleans(), payload=st.binary(max_size=40))
def test_tcp_data_read_from_the_bytes_as_parse_reads_it(
    flags: int, v6: bool, payload: bytes
) -> None:
    c, s = (C6, S6) if v6 else (C, S)
    packet = build_tcp(c, s, 1234, 80, flags=flags, payload=payload)
    assert is_tcp_data(packet) == (not v6 and bool(_parsed_tcp_data(packet)))
    assert not is_tcp_data(build_udp(c, s, 1234, 53, payload))


@settings(max_examples=2000)
@given(
    raw=st.one_of(
        st.binary(max_size=80),
        # a real segment with its header bytes (lengths, fragment bits, data offset) drawn
        st.tuples(
            st.integers(0, 0xFF), st.integers(0, 0xFFFF), st.integers(0, 0xFF), st.integers(0, 8)
        ).map(
            lambda t: (
                bytes([0x40 | t[0] & 15, 0])
                + t[1].to_bytes(2, "big")
                + bytes([0, 0, t[2] & 0x7F, 0, 64, 6, 0, 0])
                + C
                + S
                + build_tcp(C, S, 1, 80, flags=ACK, payload=b"x" * t[3])[20:]
            )
        ),
    )
)
def test_tcp_data_only_where_parse_agrees_or_refuses(raw: bytes) -> None:
    if is_tcp_data(raw):
        assert _parsed_tcp_data(raw) in (True, None)
