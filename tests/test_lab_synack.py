"""Live: a conntrack-INVALID insertion packet gets the verdict it gets with every packet queued.

With the SYN/ACK skip (live/chains.py ``skip_rules``) the engine learns of a clean connection's
SYN/ACK from the kernel's mark on the connection's next queued packet. A teardown insertion that
conntrack finds INVALID (here Geneva's RST/ACK with a corrupted checksum, spec §9 (a), §14c) has
no connection and so no connection mark: the kernel marks it by a set of the connections whose
SYN/ACK it skipped (``chains.seen_rules``, ``LiveCensor.invalid_after_syn_ack``). The same
insertion is sent on a connection opened while ``lab record`` records (the skip is then off: the
SYN/ACK is queued), and the censor's verdicts must agree."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from gfwlab.lab.lifecycle import control
from gfwlab.lab.netns import in_ns
from gfwlab.live.chains import SEEN_CHAIN
from gfwlab.live.topology import CENSOR_NS
from testenv import LAB_MARKS, UP, client, gfwlab, leftovers

pytestmark = LAB_MARKS

TRIAL = r'''
import json, socket, sys, time
from gfwlab.packet.ip import ACK, RST, SYN, addr_bytes, build_tcp, parse

CLIENT = "198.18.0.2"
REQUEST = b"GET /?q=falun HTTP/1.1\r\nHost: example.com\r\n\r\n"


def trial(server, insert):
    """Connect, insert a RST/ACK with a bad checksum (sequence numbers of the connection, read
    from its SYN/ACK), send the blocked request; the client port and what came back."""
    sniff = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_TCP)
    sniff.settimeout(2)
    sock = socket.create_connection((server, 80), timeout=2)
    cport = sock.getsockname()[1]
    while True:  # the SYN/ACK, as the client received it
        pkt = parse(sniff.recv(65535))
        if pkt.sport == 80 and pkt.dport == cport and pkt.flags & (SYN | ACK) == SYN | ACK:
            break
    sniff.close()
    if insert:
        rst = build_tcp(addr_bytes(CLIENT), addr_bytes(server), cport, 80, seq=pkt.ack,
                        ack=(pkt.seq + 1) & 0xFFFFFFFF, flags=RST | ACK, bad_checksum=True)
        raw = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
        raw.sendto(rst, (server, 0))
        raw.close()
        time.sleep(0.05)
    sock.sendall(REQUEST)
    try:
        got = "answered" if sock.recv(65536).startswith(b"HTTP/") else "closed"
    except ConnectionResetError:
        got = "reset"
    except TimeoutError:
        got = "silent"
    sock.close()
    return cport, got


print(json.dumps(trial(sys.argv[1], sys.argv[2] == "insert")))
'''


def _trial(script: Path, server: str, insert: bool) -> tuple[int, str]:
    res = client(sys.executable, str(script), server, "insert" if insert else "plain")
    assert res.returncode == 0, res.stderr
    port, got = json.loads(res.stdout.strip().splitlines()[-1])
    return int(port), str(got)


def test_an_invalid_insertion_gets_the_verdict_it_gets_with_the_synack_queued(
    tmp_path: Path,
) -> None:
    script = tmp_path / "trial.py"
    script.write_text(TRIAL)
    gfwlab("lab", "down")
    up = gfwlab("lab", "up", *UP, "--set", "tcb.rst_probability=1.0")
    assert up.returncode == 0, up.stderr
    try:
        skipped = _trial(script, "198.19.0.5", insert=True)  # SYN/ACK forwarded unqueued
        control(f"record {tmp_path / 'queued.pcap'}")  # no SYN marked clean while recording
        queued = _trial(script, "198.19.0.6", insert=True)  # SYN/ACK queued
        control("stop")
        plain = _trial(script, "198.19.0.7", insert=False)  # the control: no insertion
        time.sleep(0.6)  # the censor writes its counters every 0.5 s
        events = [json.loads(x) for x in gfwlab("lab", "events").stdout.splitlines()]
        stats = json.loads(gfwlab("lab", "status", "--json").stdout)["stats"]
        listing = subprocess.run(
            in_ns(CENSOR_NS, "iptables", "-w", "-t", "mangle", "-L", SEEN_CHAIN, "-v", "-x", "-n"),
            capture_output=True,
            text=True,
            check=False,
        ).stdout
    finally:
        gfwlab("lab", "down")
    assert leftovers() == []

    def verdict(port: int) -> list[str]:
        return sorted(
            f"{e['mechanism']}/{e['action']}"
            for e in events
            if isinstance(e.get("flow"), dict) and e["flow"].get("sport") == port
        )

    # The verdicts: the teardown evades (spec §14c) with the SYN/ACK queued and skipped alike;
    # without it the censor resets the keyword (the control: its verdict, whatever reached the
    # client first).
    assert "http_keyword/rst" in verdict(plain[0]), (plain, events)
    assert queued[1] == "answered" and "http_keyword/rst" not in verdict(queued[0]), (
        queued,
        events,
    )
    assert skipped[1] == queued[1] and verdict(skipped[0]) == verdict(queued[0]), (skipped, events)
    # The skip was on, the insertion reached the queue without a connection after the skipped
    # SYN/ACK (chains.seen_rules), and the censor fed the engine the SYN/ACK it had missed.
    assert stats["syn_ack_skip"] is True
    invalid = [line.split() for line in listing.splitlines() if "ctstate INVALID" in line]
    assert invalid and int(invalid[0][0]) >= 1, listing
    assert stats["synacks_fed"] >= 1, stats
