"""The live censor without the server's SYN/ACK (live/chains.py ``skip_rules``): the kernel
forwards a clean connection's SYN/ACK unqueued and marks the connection's next queued packet;
the censor then tells the engine's TCP view what it missed (``LiveCensor.missed_syn_ack``), so
Geneva's teardown insertions (spec §9, §14c) get the same verdicts as with every packet queued.

The NFQUEUE packets here are stand-ins for the binding's (payload, mark, verdict:
``helpers.QueuedPacket``); the engine is the real one."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from gfwlab.engine.residual import ResidualEntry
from gfwlab.live import chains
from gfwlab.live.daemon import LiveCensor, _bare_syn
from gfwlab.live.topology import (
    CT_INVALID_MARK,
    SEEN_ORIGINAL_MARK,
    SEEN_REPLY_MARK,
    SYN_CLEAN_MARK,
)
from gfwlab.packet.ip import ACK, FIN, PSH, RST, SYN, addr_bytes, build_tcp
from gfwlab.profiles import build_censor
from helpers import Links, QueuedPacket, profile

C, S = addr_bytes("198.18.0.2"), addr_bytes("198.19.0.9")
CISN, SISN = 1000, 5000
REQ = b"GET /?q=ultrasurf HTTP/1.1\r\nHost: example.com\r\nAccept: */*\r\n\r\n"


def live(tmp_path: Path, *sets: str) -> tuple[LiveCensor, Links]:
    prof = profile("http_keyword.probability=1", "tcb.rst_probability=1", *sets)
    links = Links()
    out = LiveCensor(build_censor(prof, 0), str(tmp_path), links, 0)  # type: ignore[arg-type]
    out.skip_syn_ack = True
    return out, links


def reset(censor: LiveCensor) -> bool:
    """Whether http_keyword reset a connection (the engine's event counts)."""
    return any(k.startswith("http_keyword/") for k in censor.censor.stats.events)


def c2s(port: int, flags: int, seq: int, payload: bytes = b"", **kw: Any) -> bytes:
    return build_tcp(C, S, port, 80, seq=seq, ack=SISN + 1, flags=flags, payload=payload, **kw)


@pytest.mark.parametrize("rebuilt", [True, False])
def test_a_teardown_insertion_after_a_skipped_synack_evades_as_with_it(
    tmp_path: Path, rebuilt: bool
) -> None:
    """Geneva's "teardown: RST + bad checksum" (spec §14c): after the handshake a RST tears the
    TCB down, and the request passes. The kernel skipped the SYN/ACK and the handshake ACK; the
    RST is the first packet queued since, and carries the kernel's mark. Without the rebuilt
    SYN/ACK the TCB would still be at SYN-seen, where a RST does nothing
    (``rst_before_synack`` off), and the request would be reset."""
    censor, _ = live(tmp_path)
    syn = QueuedPacket(build_tcp(C, S, 40000, 80, seq=CISN, flags=SYN))
    censor.on_packet(syn)
    assert syn.verdict == "accept" and syn.set_to == SYN_CLEAN_MARK
    mark = SEEN_ORIGINAL_MARK if rebuilt else 0
    rst = QueuedPacket(c2s(40000, RST | ACK, CISN + 1, bad_checksum=True), mark)
    censor.on_packet(rst)
    request = QueuedPacket(c2s(40000, PSH | ACK, CISN + 1, REQ))
    censor.on_packet(request)
    # Passed, or held until the forged resets are out (a censor nearer than the peer).
    assert request.verdict == "accept" or request in [h[2] for h in censor.held]
    assert censor.synacks_fed == (1 if rebuilt else 0)
    assert (not reset(censor)) is rebuilt  # reset by http_keyword only without the SYN/ACK


@pytest.mark.parametrize("covered", [True, False])
def test_a_drop_block_holds_the_rebuilt_synack_only_for_the_flows_it_covers(
    tmp_path: Path, covered: bool
) -> None:
    """A drop block that starts after the kernel skipped a SYN/ACK: on the flow's own server the
    engine would judge the rebuilt SYN/ACK now, and the real one passed before, so none is fed;
    a block on another server holds nothing here (the kernel goes on skipping this server's
    SYN/ACKs: ``chains.hold_rules``), and the teardown insertion is judged as with every packet
    queued."""
    censor, _ = live(tmp_path)
    censor.on_packet(QueuedPacket(build_tcp(C, S, 40010, 80, seq=CISN, flags=SYN)))
    other = addr_bytes("198.19.0.7")
    censor.on_packet(QueuedPacket(build_tcp(C, other, 40011, 443, seq=CISN, flags=SYN)))
    flows = censor.censor.flows.flows.values()
    keyed = next(f for f in flows if f.server == (S if covered else other))
    block = ResidualEntry("esni", "test", until=1e12, policy="drop-c2s", probability=1.0)
    censor.censor.residual.add(keyed, "server-ip", block)
    censor.on_packet(QueuedPacket(c2s(40010, RST | ACK, CISN + 1, bad_checksum=True),
                                  SEEN_ORIGINAL_MARK))  # fmt: skip
    assert censor.synacks_fed == (0 if covered else 1)


def test_the_first_client_data_needs_no_rebuilt_synack(tmp_path: Path) -> None:
    """Client data moves the TCB to established by itself: the common case costs nothing, and
    the request is judged as with every packet queued (reset: the keyword is there)."""
    censor, _ = live(tmp_path)
    censor.on_packet(QueuedPacket(build_tcp(C, S, 40001, 80, seq=CISN, flags=SYN)))
    censor.on_packet(QueuedPacket(c2s(40001, PSH | ACK, CISN + 1, REQ), SEEN_ORIGINAL_MARK))
    assert censor.synacks_fed == 0
    assert reset(censor), "the keyword request is reset"


def test_a_server_packet_first_gets_the_synack_rebuilt_from_its_own_sequence(
    tmp_path: Path,
) -> None:
    """A server that speaks first (or resets): its packet is the first queued one; the rebuilt
    SYN/ACK goes the same way, one sequence number before it."""
    censor, _ = live(tmp_path)
    censor.on_packet(QueuedPacket(build_tcp(C, S, 40002, 80, seq=CISN, flags=SYN)))
    banner = build_tcp(S, C, 80, 40002, seq=SISN + 1, ack=CISN + 1, flags=PSH | ACK, payload=b"hi")
    pkt = QueuedPacket(banner, SEEN_REPLY_MARK)
    censor.on_packet(pkt)
    assert pkt.verdict == "accept" and censor.synacks_fed == 1


def test_a_syn_with_anything_to_do_keeps_its_synack_queued(tmp_path: Path) -> None:
    """A SYN the engine acts on (here a null route, spec §7a) is not marked clean: its
    connection's SYN/ACK still reaches the engine."""
    censor, _ = live(tmp_path, "null_route.targets=['198.19.0.9/32']")
    syn = QueuedPacket(build_tcp(C, S, 40003, 80, seq=CISN, flags=SYN))
    censor.on_packet(syn)
    assert syn.set_to != SYN_CLEAN_MARK


@pytest.mark.parametrize("after", [True, False])
def test_a_conntrack_invalid_insertion_gets_the_synack_first_if_it_passed_before(
    tmp_path: Path, after: bool
) -> None:
    """A RST with a bad checksum is INVALID to conntrack: it carries no connection mark. The
    kernel marks it CT_INVALID_MARK if it reached the queue after the SYN/ACK went by unqueued
    (chains.seen_rules); the censor then feeds the rebuilt SYN/ACK first, and the teardown
    evades. Unmarked (it came before the SYN/ACK), the RST is seen at syn-seen, as with every
    packet queued. The connection's next packet marked seen gets no second SYN/ACK."""
    censor, _ = live(tmp_path)
    censor.on_packet(QueuedPacket(build_tcp(C, S, 40004, 80, seq=CISN, flags=SYN)))
    mark = CT_INVALID_MARK if after else 0
    censor.on_packet(QueuedPacket(c2s(40004, RST | ACK, CISN + 1, bad_checksum=True), mark))
    censor.on_packet(QueuedPacket(c2s(40004, ACK, CISN + 1), SEEN_ORIGINAL_MARK))
    censor.on_packet(QueuedPacket(c2s(40004, PSH | ACK, CISN + 1, REQ)))
    assert censor.synacks_fed == 1  # before the RST, or before the packet marked seen
    assert (not reset(censor)) is after


def test_an_invalid_packet_gets_no_synack_once_the_tcb_is_established(tmp_path: Path) -> None:
    """After client data (the TCB is established) a marked INVALID packet needs nothing."""
    censor, _ = live(tmp_path)
    censor.on_packet(QueuedPacket(build_tcp(C, S, 40005, 80, seq=CISN, flags=SYN)))
    censor.on_packet(QueuedPacket(c2s(40005, PSH | ACK, CISN + 1, b"GET / HTTP/1.1\r\n")))
    censor.on_packet(QueuedPacket(c2s(40005, RST | ACK | FIN, CISN + 1), CT_INVALID_MARK))
    assert censor.synacks_fed == 0


def test_bare_syn() -> None:
    assert _bare_syn(build_tcp(C, S, 1, 2, flags=SYN))
    assert not _bare_syn(build_tcp(C, S, 1, 2, flags=SYN | ACK))
    assert not _bare_syn(build_tcp(C, S, 1, 2, flags=ACK))
    c6, s6 = addr_bytes("2001:db8:c::2"), addr_bytes("2001:db8:5::2")
    assert _bare_syn(build_tcp(c6, s6, 1, 2, flags=SYN))
    assert not _bare_syn(build_tcp(c6, s6, 1, 2, flags=SYN | RST))


def test_skip_rules_with_and_without_the_synack() -> None:
    for v6 in (False, True):
        name = chains.synack_set(v6)
        plain = chains.skip_rules(v6)
        assert len(plain) == 2 and plain[-1] == ["-g", chains.SEEN_CHAIN]
        both = chains.skip_rules(v6, syn_ack=True)
        assert len(both) == 5 and both[-1] == ["-g", chains.SEEN_CHAIN]
        add, mark, accept = both[1:4]
        # Only the first answer, a SYN/ACK, of a connection whose SYN the censor passed clean.
        for rule in (add, mark, accept):
            assert rule[rule.index("--ctdir") + 1] == "REPLY"
            assert rule[rule.index("--connbytes") + 1] == "1:1"
        assert add[add.index("--mark") + 1] == "0x4/0x6"
        assert add[-5:] == ["SET", "--add-set", name, "dst,dst,src", "--exist"]
        assert mark[mark.index("--mark") + 1] == "0x4/0x6" and mark[-3:] == [
            "CONNMARK",
            "--or-mark",
            "0x2",
        ]
        assert accept[accept.index("--mark") + 1] == "0x6/0x6" and accept[-1] == "ACCEPT"
        assert chains.skip_rules(v6, handshake_ack=False) == [["-g", chains.SEEN_CHAIN]]
        assert chains.seen_rules(v6, syn_ack=False) == []  # nothing is skipped, nothing to mark
        seen = chains.seen_rules(v6)
        # INVALID packets after a skipped SYN/ACK (either direction), then the seen marks, the
        # set entry taken out, the connection mark taken off.
        assert [r[-1] for r in seen] == [
            "0x10",
            "0x10",
            "0x2",
            "0x8",
            "src,src,dst",
            "dst,dst,src",
            "0x0/0x2",
        ]
        for rule, flags in zip(seen[:2], ("src,src,dst", "dst,dst,src"), strict=True):
            assert rule[rule.index("--ctstate") + 1] == "INVALID" and "connmark" not in rule
            assert rule[rule.index("--match-set") + 1 :][:2] == [name, flags]
        assert [r[r.index("--del-set") + 1] for r in seen[4:6]] == [name, name]
    assert (
        f"create {chains.synack_set(False)} hash:ip,port,ip family inet "
        in chains.create_commands()
    )


def test_dns_answers_skip_the_queue_where_every_censor_watches_their_port() -> None:
    """``chains.udp_replies``: answers from a port every censor of the chain watches, to a port
    none watches (a client resolving from port 53 keeps its answers queued)."""
    assert chains.udp_replies([frozenset({53})]) == (frozenset({53}), frozenset({53}))
    assert chains.udp_replies([frozenset({53}), frozenset({53, 5353})]) == (
        frozenset({53}),
        frozenset({53, 5353}),
    )
    assert chains.udp_replies([frozenset({53}), frozenset()]) is None  # one watches none
    assert chains.udp_replies([]) is None
    assert chains.udp_replies([frozenset(range(1, 17))]) is None  # more than multiport takes
    censor = build_censor(profile(), 1)
    replies = chains.udp_replies([censor.plan.ports])
    for v6 in (False, True):
        rules = chains.skip_rules(v6, udp_replies=replies)
        assert rules[-1] == ["-g", chains.SEEN_CHAIN] and len(rules) == 3
        rule = rules[1]
        assert rule[rule.index("--sports") + 1] == "53"
        assert rule[rule.index("--dports") - 1] == "!" and rule[rule.index("--dports") + 1] == "53"
        assert rule[rule.index("--ctdir") + 1] == "REPLY" and rule[-1] == "ACCEPT"
        assert chains.skip_rules(v6) == chains.skip_rules(v6, udp_replies=None)
