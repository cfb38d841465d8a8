"""The live lab sees IP fragments as sent: a fragmented ClientHello, HTTP request and DNS query
carrying blocked names are censored, over IPv4 and (a DNS query) IPv6 (spec §3;
engine/defrag.py; lab/netns.untrack_fragments).

The client sends hand-built packets from a raw socket (a SYN and then the data segment cut into
IPv4 fragments, or a fragmented UDP query); the censor's queue must get each fragment (its
``fragments`` counter) and its events must show the blocked names. Needs root and the lab tools.
"""

from __future__ import annotations

import json
import sys
import textwrap
import time
from collections.abc import Iterator

import pytest

from testenv import LAB_MARKS, UP, client, gfwlab, leftovers

pytestmark = LAB_MARKS

SEND = textwrap.dedent(
    """
    import socket, struct, sys, time
    from gfwlab.offline.synth import http_get
    from gfwlab.packet.ip import ACK, PSH, SYN, addr_bytes, build_tcp, build_udp, fragment
    from gfwlab.proto.dns import build_query
    from gfwlab.proto.tls import build_client_hello

    c, s = addr_bytes("198.18.0.2"), addr_bytes("198.19.0.2")
    raw = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)

    def send(pkt):
        raw.sendto(pkt, ("198.19.0.2", 0))

    def tcp(port, cport, payload, ip_id):
        send(build_tcp(c, s, cport, port, seq=1000, flags=SYN))
        time.sleep(0.05)
        data = build_tcp(c, s, cport, port, seq=1001, ack=1, flags=PSH | ACK, payload=payload,
                         ip_id=ip_id)
        frags = fragment(data, 32)
        for f in frags:
            send(f)
        return len(frags)

    n = tcp(443, 41001, build_client_hello("www.youtube.com"), 0x1111)
    n += tcp(80, 41002, http_get("www.google.com"), 0x2222)
    query = build_udp(c, s, 41003, 53, build_query("www.google.com", 1, id=7), ip_id=0x3333)
    frags = fragment(query, 16)
    for f in frags:
        send(f)
    # An IPv6 query for AAAA, in three fragments (Fragment header after the fixed header).
    raw6 = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_RAW)
    c6, s6 = addr_bytes("2001:db8:c::2"), addr_bytes("2001:db8:5::2")
    query6 = build_udp(c6, s6, 41004, 53, build_query("www.facebook.com", 28, id=8))
    frags6 = fragment(query6, 16, ident=0x4444)
    for f in frags6:
        raw6.sendto(f, ("2001:db8:5::2", 0))
    print(n + len(frags) + len(frags6))
    """
)


@pytest.fixture(scope="module")
def lab() -> Iterator[None]:
    assert not leftovers(), leftovers()
    res = gfwlab("lab", "up", *UP)
    assert res.returncode == 0, res.stderr + res.stdout
    try:
        yield
    finally:
        gfwlab("lab", "down")


def test_fragmented_client_hello_http_and_dns_are_censored(lab: None) -> None:
    # The client's kernel knows nothing of the raw connections: keep the server's SYN/ACK from
    # it, or it resets them (a client RST tears down the censor's TCB, spec §9).
    synack = ["-p", "tcp", "-s", "198.19.0.2", "--tcp-flags", "SYN,ACK", "SYN,ACK", "-j", "DROP"]
    assert client("iptables", "-w", "-A", "INPUT", *synack).returncode == 0
    sent = client(sys.executable, "-c", SEND)
    assert sent.returncode == 0, sent.stderr
    fragments = int(sent.stdout.strip())
    time.sleep(1.0)
    stats = json.loads(gfwlab("lab", "status", "--json").stdout)["stats"]
    # Each fragment reached the censor's queue as sent (the kernel did not reassemble it first).
    assert stats["fragments"] >= fragments
    events = [json.loads(x) for x in gfwlab("lab", "events").stdout.splitlines()]
    got = {(e["mechanism"], e["action"]) for e in events}
    assert ("tls_sni", "rst") in got
    assert any(e["mechanism"] == "tls_sni" and e.get("sni") == "www.youtube.com"
               for e in events)  # fmt: skip
    assert ("http_keyword", "rst") in got
    assert any(e["mechanism"] == "dns_injection" and e.get("qname") == "www.google.com"
               for e in events)  # fmt: skip
    assert any(e["mechanism"] == "dns_injection" and e.get("qname") == "www.facebook.com"
               for e in events)  # fmt: skip
