"""live/kernel.py and live/chains.py without the kernel: residual keys as set elements, which set
each block goes in, the bypassed chain's rules; and the engine's side of it: the residual journal
and re-bypass (spec §10b "Residual tables")."""

from __future__ import annotations

import datetime as dt
import re

import pytest

from gfwlab.engine import Accept, Bypass, Drop
from gfwlab.errors import LabError
from gfwlab.live import chains, kernel
from gfwlab.offline.synth import https_conversation
from gfwlab.packet.ip import PROTO_TCP, PROTO_UDP, addr_bytes, build_tcp
from gfwlab.profiles import build_censor
from helpers import profile

C, S = addr_bytes("198.18.0.2"), addr_bytes("198.19.0.5")
C6, S6 = addr_bytes("2001:db8:c::2"), addr_bytes("2001:db8:5::2")


@pytest.mark.parametrize(
    ("kind", "key", "elem", "v6"),
    [
        ("3-tuple", (PROTO_TCP, C, S, 443), "198.18.0.2,tcp:443,198.19.0.5", False),
        ("3-tuple", (PROTO_UDP, C6, S6, 443), "2001:db8:c::2,udp:443,2001:db8:5::2", True),
        ("5-tuple", (PROTO_TCP, C, 40000, S, 443), "198.18.0.2,tcp:443,198.19.0.5", False),
        ("server", (PROTO_TCP, S, 8388), "198.19.0.5,tcp:8388", False),
        ("server", (PROTO_UDP, S6, 53), "2001:db8:5::2,udp:53", True),
        ("server-ip", (S,), "198.19.0.5", False),
        ("2-tuple", (C6, S6), "2001:db8:5::2", True),  # covers more than the key: the server
    ],
)
def test_elements(kind: str, key: tuple[object, ...], elem: str, v6: bool) -> None:
    assert chains.element(kind, key) == (elem, v6)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kind", "policy", "v6", "name"),
    [
        ("3-tuple", "drop-c2s", False, "gfwlab-tuple-c2s4"),
        ("5-tuple", "drop-s2c", True, "gfwlab-tuple-s2c6"),
        ("server", "drop-s2c", False, "gfwlab-port-s2c4"),
        ("server-ip", "drop-s2c", True, "gfwlab-addr-s2c6"),
        ("2-tuple", "drop-c2s", False, "gfwlab-addr-c2s4"),
        ("3-tuple", "rst", False, None),  # drawn per new connection: the engine's alone
    ],
)
def test_set_of_each_block(kind: str, policy: str, v6: bool, name: str | None) -> None:
    assert chains.set_name(kind, policy, v6) == name  # type: ignore[arg-type]
    if name is not None:
        assert name in {s.name for s in chains.kernel_sets()}


def test_sets_and_rules() -> None:
    sets = chains.kernel_sets()
    assert len({s.name for s in sets}) == len(sets) == 12
    assert all(len(s.name) <= 31 for s in sets)  # ipset's limit
    made = chains.create_commands().splitlines()
    assert made[0] == "create gfwlab-tuple-c2s4 hash:ip,port,ip family inet timeout 1073741"
    for v6 in (False, True):
        rules = chains.bypassed_chain_rules(0x1, v6=v6)
        assert len(rules) == 7
        assert chains.jump_rule(0x1)[-2:] == ["-j", chains.BYPASSED_CHAIN]
        assert rules[-1] == ["-m", "connmark", "--mark", "0x1/0x1", "-j", "ACCEPT"]
        # A block's set is matched on the packets it blocks, and only takes the bypass off.
        first = rules[0]
        assert first[:5] == [
            "-m",
            "set",
            "--match-set",
            f"gfwlab-tuple-c2s{6 if v6 else 4}",
            "src,dst,dst",
        ]
        assert first[5:] == ["-j", "CONNMARK", "--set-xmark", "0x0/0x1"]


def test_engine_journals_the_blocks_it_starts() -> None:
    censor = build_censor(profile(date=dt.date(2021, 1, 1)), 1)
    censor.residual.journal = []
    for t, pkt in https_conversation("198.18.0.2", "198.19.0.5", 40000, None, esni=True):
        censor.feed(pkt, t)
    ((kind, key, entry),) = censor.residual.journal
    assert (kind, entry.mechanism, entry.policy) == ("3-tuple", "esni", "drop-c2s")
    assert chains.element(kind, key) == ("198.18.0.2,tcp:443,198.19.0.5", False)
    assert entry.until - entry.start == 180.0


def test_rebypass_bypasses_again_unless_a_block_covers_the_flow() -> None:
    """A packet the kernel shows again: bypassed again if no block covers it, dropped if one
    does; without ``rebypass`` the engine bypasses a flow once (tests/test_engine.py)."""
    censor = build_censor(profile(date=dt.date(2021, 1, 1)), 1)
    censor.rebypass = True
    conv = https_conversation("198.18.0.2", "198.19.0.5", 40000, "example.org")
    for t, pkt in conv:
        censor.feed(pkt, t)
    late = build_tcp(C, S, 40000, 443, seq=90000, ack=1, flags=0x18, payload=b"x" * 10)
    out = censor.feed(late, 2.0)
    assert isinstance(out[0], Accept) and any(isinstance(a, Bypass) for a in out)
    for t, pkt in https_conversation("198.18.0.2", "198.19.0.5", 40001, None, esni=True, t0=3.0):
        censor.feed(pkt, t)
    out = censor.feed(late, 5.0)  # the ESNI block now covers the 3-tuple
    assert isinstance(out[0], Drop) and not any(isinstance(a, Bypass) for a in out)


def test_queue_rule_packets_reads_the_nfqueue_counters() -> None:
    listing = """Chain GFWLAB (2 references)
    pkts      bytes target     prot opt in     out     source               destination
  431000  571000000 ACCEPT     0    --  *      *       0.0.0.0/0   0.0.0.0/0  connmark match 0x1/0x1
       0          0 ACCEPT     0    --  *      *       0.0.0.0/0            198.18.1.0/24
   14444    1006000 NFQUEUE    0    --  *      *       0.0.0.0/0   0.0.0.0/0  NFQUEUE num 7 bypass
"""
    assert kernel.queue_rule_packets(listing) == 14444
    assert kernel.queue_rule_packets("") == 0


def test_every_failed_kernel_write_is_counted_once() -> None:
    """``Kernel.errors`` (``kernel_errors`` in the censor's counters, a note in ``lab status``)
    counts each write that failed once, whether a command or an entry failed: here every command
    fails (the namespace prefix is ``false``)."""
    k = kernel.Kernel(["false"])
    k.armed = True  # the jump is taken to be in place: only the entries are written
    with pytest.raises(
        LabError,
        match=re.escape("ipset -exist add gfwlab-tuple-c2s4 198.18.0.2,tcp:443,198.19.0.5 "),
    ):
        k.add_residual("3-tuple", "drop-c2s", (6, b"\xc6\x12\0\2", b"\xc6\x13\0\5", 443), 0, 9, 0)
    assert k.errors == 2  # the server's SYN hold, then the block (whose error is raised)
    with pytest.raises(LabError, match=re.escape("ipset -exist add gfwlab-synoff4 198.19.0.5 ")):
        k.add_residual("3-tuple", "rst", (6, b"\xc6\x12\0\2", b"\xc6\x13\0\5", 80), 0, 9, 0)
    assert k.errors == 3
    with pytest.raises(
        LabError, match=re.escape("ipset -exist add gfwlab-synoff4 0.0.0.0/1 timeout 0: exit 1")
    ):
        k.pause_syns(True)
    assert k.errors == 4 and k.syn_paused is None
    with pytest.raises(LabError, match=re.escape("iptables -w -t mangle -N GFWLAB_SEEN: exit 1")):
        k.set_skip(True)
    assert k.errors == 5
    with pytest.raises(LabError, match=re.escape("ipset list: exit 1")):
        k.command(["ipset", "list"])  # run for another (HeldFlows), which counts its own
    assert k.errors == 5


def _run_cbpf(program: str, packet: bytes) -> int:
    """A classic BPF interpreter for the instructions the skip programs use (what xt_bpf runs
    on the packet from its IP header)."""
    insns = [tuple(int(x) for x in ins.split()) for ins in program.split(",")[1:]]
    assert len(insns) == int(program.split(",", maxsplit=1)[0])
    a = x = pc = 0
    while True:
        code, jt, jf, k = insns[pc]
        pc += 1
        if code == 48:  # ldb [k]
            a = packet[k]
        elif code == 80:  # ldb [x+k]
            a = packet[x + k]
        elif code == 40:  # ldh [k]
            a = int.from_bytes(packet[k : k + 2], "big")
        elif code == 84:  # and #k
            a &= k
        elif code == 100:  # lsh #k
            a = (a << k) & 0xFFFFFFFF
        elif code == 116:  # rsh #k
            a >>= k
        elif code == 12:  # add x
            a = (a + x) & 0xFFFFFFFF
        elif code == 7:  # tax
            x = a
        elif code == 21:  # jeq #k
            pc += jt if a == k else jf
        elif code == 29:  # jeq x
            pc += jt if a == x else jf
        elif code == 6:  # ret #k
            return k
        else:
            raise AssertionError(f"instruction {code} not expected")


@pytest.mark.parametrize("v6", [False, True])
def test_the_skip_program_matches_tcp_segments_without_payload(v6: bool) -> None:
    c, s = (C6, S6) if v6 else (C, S)
    program = chains.skip_rules(v6)[0][-3]
    ts = bytes([8, 10]) + bytes(8) + bytes([1, 1])  # timestamps + padding: a 32-byte header
    for payload, options, match in (
        (b"", b"", True),
        (b"", ts, True),
        (b"x", b"", False),
        (b"GET / HTTP/1.1\r\n\r\n", ts, False),
    ):
        pkt = build_tcp(c, s, 40000, 80, seq=1, ack=1, options=options, payload=payload)
        assert bool(_run_cbpf(program, pkt)) is match, (payload, options)
