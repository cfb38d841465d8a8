"""One HTTP connection from the lab client, built packet by packet with scapy from a Geneva
strategy's published description (Bock et al., CCS 2019; spec §14c), without gfwlab: the check
that the censor's verdict depends only on the packets on the wire. Imports nothing from gfwlab.

Run as root inside the client namespace::

    python tests/scapy_geneva.py 198.19.0.7 51000 ttl_desync

prints ``evaded`` (the server's 200 came back and no reset) or ``censored``. The kernel has no
socket for the connection, so its RSTs to the server's segments are dropped for the run (an
iptables rule on this connection's port, removed at the end).
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable

from scapy.all import IP, TCP, AsyncSniffer, Raw, conf, send, sr1  # type: ignore[import-untyped]

conf.verb = 0
REQUEST = b"GET /?q=ultrasurf HTTP/1.1\r\nHost: %s\r\nAccept: */*\r\n\r\n"
IFACE = "gfwc0"
Build = Callable[[str, int, int, int, bytes], list[object]]


def _seg(dst: str, sport: int, seq: int, ack: int, load: bytes, **ip: int) -> object:
    return IP(dst=dst, **ip) / TCP(sport=sport, dport=80, flags="PA", seq=seq, ack=ack) / Raw(load)


def baseline(dst: str, sport: int, c: int, s: int, req: bytes) -> list[object]:
    return [_seg(dst, sport, c, s, req)]


def ttl_desync(dst: str, sport: int, c: int, s: int, req: bytes) -> list[object]:
    """A copy of the request claiming a 40-byte TCP header, TTL 10, then the request."""
    copy = IP(dst=dst, ttl=10) / TCP(sport=sport, dport=80, flags="PA", seq=c, ack=s,
                                     dataofs=10) / Raw(req)  # fmt: skip
    return [copy, _seg(dst, sport, c, s, req)]


def segments(dst: str, sport: int, c: int, s: int, req: bytes) -> list[object]:
    """The request in order in three segments: 8 bytes, 4 bytes, the rest."""
    return [_seg(dst, sport, c, s, req[:8]), _seg(dst, sport, c + 8, s, req[8:12]),
            _seg(dst, sport, c + 12, s, req[12:])]  # fmt: skip


FAMILIES: dict[str, Build] = {
    "baseline": baseline,
    "ttl_desync": ttl_desync,
    "segments": segments,
}


def connect(dst: str, sport: int, family: str) -> bool:
    rule = ["OUTPUT", "-p", "tcp", "--sport", str(sport), "--tcp-flags", "RST", "RST",
            "-j", "DROP"]  # fmt: skip
    subprocess.run(["iptables", "-w", "-A", *rule], check=True)
    sniffer = AsyncSniffer(iface=IFACE, filter=f"tcp and src host {dst} and dst port {sport}")
    sniffer.start()
    time.sleep(0.2)
    try:
        c = 1000
        syn = IP(dst=dst) / TCP(sport=sport, dport=80, flags="S", seq=c - 1,
                                options=[("MSS", 1460)])  # fmt: skip
        synack = sr1(syn, timeout=2, iface=IFACE)
        if synack is None:
            return False
        s = synack[TCP].seq + 1
        send(IP(dst=dst) / TCP(sport=sport, dport=80, flags="A", seq=c, ack=s), iface=IFACE)
        for pkt in FAMILIES[family](dst, sport, c, s, REQUEST % dst.encode()):
            send(pkt, iface=IFACE)
        time.sleep(0.8)
    finally:
        got = sniffer.stop() or []
        subprocess.run(["iptables", "-w", "-D", *rule], check=False)
    tcp = [p[TCP] for p in got if p.haslayer(TCP)]
    data = b"".join(bytes(t.payload) for t in tcp)
    # As curl: evaded when the answer comes and no reset does (the censor's RSTs reach both ends).
    return b" 200 OK" in data and not any(t.flags.R for t in tcp)


if __name__ == "__main__":
    print("evaded" if connect(sys.argv[1], int(sys.argv[2]), sys.argv[3]) else "censored")
