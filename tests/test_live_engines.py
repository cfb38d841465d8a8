"""The censor's engines (``live/engines.py``): how packets are shared out, and what the first
engine does for the others (counters, recordings, their lives)."""

from __future__ import annotations

import ipaddress
import json
import os
import signal
import time
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gfwlab.live import engines
from gfwlab.live.chains import syn_rules
from gfwlab.live.topology import CLIENT_LINK, NFLOG_GROUP, QUEUE_NUM, SERVER_LINK
from gfwlab.packet.pcap import CaptureReader, PcapWriter
from gfwlab.profiles import build_censor
from helpers import profile


def matches(mask: str, address: str) -> bool:
    """Whether iptables' ``-d``/``-s`` ``mask`` (``value/mask``, a mask of any bits) takes
    ``address``."""
    value, bits = (int(ipaddress.ip_address(x)) for x in mask.split("/"))
    return int(ipaddress.ip_address(address)) & bits == value


@given(st.sampled_from(engines.COUNTS), st.integers(0, 2**32 - 1), st.integers(0, 2**128 - 1))
def test_every_address_is_one_engines(n: int, v4: int, v6: int) -> None:
    for address, is_v6 in (
        (str(ipaddress.IPv4Address(v4)), False),
        (str(ipaddress.IPv6Address(v6)), True),
    ):
        takers = [i for i in range(n) if matches(engines.share(i, n, is_v6), address)]
        assert takers == [int(ipaddress.ip_address(address)) % n], (n, address, takers)


def test_the_lab_sites_are_shared_out_evenly() -> None:
    sites = [f"198.19.{k >> 8}.{k & 255}" for k in range(256, 256 + 64)]
    for n in engines.COUNTS:
        counts = [sum(matches(engines.share(i, n, False), a) for a in sites) for i in range(n)]
        assert counts == [64 // n] * n


def test_dispatch_rules_share_by_the_outside_address_and_pin_the_resolvers() -> None:
    rules = engines.dispatch_rules(2, False, QUEUE_NUM, frozenset({53, 5353}), fail_open=True)
    assert rules[0] == ["-p", "udp", "-m", "multiport", "--ports", "53,5353", "-j", "NFQUEUE",
                        "--queue-num", str(QUEUE_NUM), "--queue-bypass"]  # fmt: skip
    # Connections opened from outside (their server is inside) are the first engine's.
    first = ["-j", "NFQUEUE", "--queue-num", "7", "--queue-bypass"]
    assert rules[1:3] == [
        ["-i", SERVER_LINK.a, "-m", "conntrack", "--ctdir", "ORIGINAL", *first],
        ["-i", CLIENT_LINK.b, "-m", "conntrack", "--ctdir", "REPLY", *first],
    ]
    # From the client side the outside address is the destination, from the server side the
    # source: both directions of a flow reach one engine.
    assert rules[3:] == [
        ["-i", CLIENT_LINK.b, "-d", "0.0.0.0/0.0.0.1", "-j", "NFQUEUE", "--queue-num", "7",
         "--queue-bypass"],
        ["-i", SERVER_LINK.a, "-s", "0.0.0.0/0.0.0.1", "-j", "NFQUEUE", "--queue-num", "7",
         "--queue-bypass"],
        ["-i", CLIENT_LINK.b, "-d", "0.0.0.1/0.0.0.1", "-j", "NFQUEUE", "--queue-num", "8",
         "--queue-bypass"],
        ["-i", SERVER_LINK.a, "-s", "0.0.0.1/0.0.0.1", "-j", "NFQUEUE", "--queue-num", "8",
         "--queue-bypass"],
    ]  # fmt: skip
    closed = engines.dispatch_rules(4, True, QUEUE_NUM, frozenset(), fail_open=False)
    assert len(closed) == 10 and not any("--queue-bypass" in r for r in closed)
    assert closed[8][:4] == ["-i", CLIENT_LINK.b, "-d", "::3/::3"]


def test_each_syn_copy_goes_to_its_engines_group() -> None:
    one = syn_rules(False)
    assert [r for r in one if "NFLOG" in r] == [
        ["-j", "NFLOG", "--nflog-group", str(NFLOG_GROUP), "--nflog-size", "256",
         "--nflog-threshold", "1"]
    ]  # fmt: skip
    four = [r for r in syn_rules(True, engines=4) if "NFLOG" in r]
    # A SYN from the server side opens a connection from outside: the first engine's.
    assert four[0][:2] == ["-i", SERVER_LINK.a] and four[0][5] == str(NFLOG_GROUP)
    assert len(four) == 5
    assert four[3][:4] == ["-i", CLIENT_LINK.b, "-d", "::2/::3"]
    assert four[3][7] == str(NFLOG_GROUP + 2)
    # The rest of the chain is the same: the pause first, the marks after the copies.
    assert [r for r in syn_rules(True, engines=4) if "NFLOG" not in r] == [
        r for r in syn_rules(True) if "NFLOG" not in r
    ]


def test_a_count_that_is_not_a_power_of_two_or_state_no_port_bounds_is_refused() -> None:
    censor = build_censor(profile(), 0)
    assert engines.refusal([censor], 1) is None
    assert engines.refusal([censor], 2) is None
    assert engines.refusal([censor], 3) == "--engines must be one of 1, 2, 4, 8, 16, not 3"
    assert engines.pinned_ports([censor]) == frozenset({53})
    dns = censor.mechanisms["dns_injection"]
    censor.plan.udp_ports.pop(dns.name)  # as if the mechanism declared no port
    assert engines.refusal([censor], 2) == (
        "dns_injection keeps state across every flow: it needs one engine (--engines 1)"
    )
    assert engines.refusal([censor], 1) is None


def test_state_files_keep_the_first_engines_names() -> None:
    assert engines.engine_file("/run/x", "stats.json", 0) == "/run/x/stats.json"
    assert engines.engine_file("/run/x", "stats.json", 3) == "/run/x/stats-3.json"
    assert engines.engine_file("/run/x", "censor.sock", 1) == "/run/x/censor-1.sock"


def test_counters_are_summed_over_the_engines(tmp_path: Path) -> None:
    first = {"pid": 1, "started": 5.0, "updated": 9.0, "engines": 3, "queued_packets": 10,
             "syn_copy": True, "events": {"fet/pass": 2}, "mechanisms": ["fet"],
             "rate": 0.5}  # fmt: skip
    others = [
        {"pid": 2, "updated": 8.0, "engines": 3, "queued_packets": 5, "syn_copy": False,
         "events": {"fet/pass": 1, "tls_sni/rst": 1}, "mechanisms": ["fet"], "rate": 0.25},
        {"pid": 3, "queued_packets": 1, "new": 4},
    ]  # fmt: skip
    for i, other in enumerate(others, 1):
        Path(engines.engine_file(str(tmp_path), "stats.json", i)).write_text(json.dumps(other))
    merged = engines.merged_stats(first, str(tmp_path), 3)
    assert merged == {"pid": 1, "started": 5.0, "updated": 9.0, "engines": 3,
                      "queued_packets": 16, "syn_copy": True,
                      "events": {"fet/pass": 3, "tls_sni/rst": 1}, "mechanisms": ["fet"],
                      "rate": 0.75, "new": 4, "queued_packets_each": [10, 5, 1],
                      "engine_packets_each": [None, None, None]}  # fmt: skip
    Path(engines.engine_file(str(tmp_path), "stats.json", 2)).write_text("{not json")
    unread = engines.merged_stats(first, str(tmp_path), 3)
    assert unread["queued_packets"] == 15 and unread["queued_packets_each"] == [10, 5, None]


def test_the_parts_of_a_recording_merge_in_time_order(tmp_path: Path) -> None:
    parts = [str(tmp_path / f"part{i}.pcap") for i in range(3)]
    times = [[1.0, 4.0, 5.5], [2.0, 3.0], []]
    for path, ts in zip(parts, times, strict=True):
        with PcapWriter(path) as writer:
            for t in ts:
                writer.write(1.7e9 + t, bytes([0x45]) + bytes(19) + path.encode()[-10:])
    out = str(tmp_path / "all.pcap")
    assert engines.merge_parts([*parts, str(tmp_path / "missing.pcap")], out) == 5
    with CaptureReader(out) as reader:
        got = [(round(ts - 1.7e9, 3), pkt[-10:].decode()) for ts, pkt in reader]
    assert got == [(1.0, "part0.pcap"), (2.0, "part1.pcap"), (3.0, "part1.pcap"),
                   (4.0, "part0.pcap"), (5.5, "part0.pcap")]  # fmt: skip
    assert not any(os.path.exists(p) for p in parts)


def test_children_wait_for_the_gate_and_are_stopped_and_counted() -> None:
    """Forked engines wait until the first opens the gate; they are stopped and reaped."""
    number, children, gate = engines.fork(3)
    if number:  # a child: wait, then live until stopped
        engines.wait_gate(gate)
        signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
        time.sleep(60)
        os._exit(1)
    assert len(children) == 2 and engines.dead_children(children) == 0
    engines.open_gate(gate)
    engines.stop_children(children, grace=5.0)
    assert engines.dead_children(children) == 2
    for pid in children:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    assert engines.fork(1) == (0, [], -1)
