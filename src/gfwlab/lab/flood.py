"""A bounded packet flood from inside the lab: SYNs or random UDP, through the censor.

    gfwlab lab exec client -- python -m gfwlab.lab.flood syn --dst 198.19.0.2 --port 80 \\
        --count 50000 --seconds 10 [--rate PPS]

Run in the client namespace (``lab exec client``): it writes whole IPv4 packets to a raw socket
(``IP_HDRINCL``), from the client's address with random source ports, sequence numbers and IP
IDs. ``syn``: TCP SYNs to ``--port`` (each one a new flow for the censor: its flow table fills
and evicts, ``engine.max_flows``); ``udp``: datagrams of random bytes to random ports, a third of
them to port 53 and a third to 443, so the DNS and QUIC dissectors see garbage (anomaly events,
rate-limited by the daemon). It stops at ``--count`` packets or ``--seconds``, whichever comes
first, and refuses any destination outside the lab (198.18.0.0/15): traffic goes only between
the lab's namespaces. The last line it prints is JSON: packets sent, seconds, packets a second.
"""

from __future__ import annotations

import argparse
import errno
import ipaddress
import json
import random
import socket
import sys
import time

from gfwlab.live.topology import CLIENT_V4
from gfwlab.packet.ip import SYN, addr_bytes, build_tcp, build_udp

LAB_V4 = ipaddress.ip_network("198.18.0.0/15")


def _packets(kind: str, src: bytes, dst: bytes, port: int, rng: random.Random) -> list[bytes]:
    """A batch of 256 distinct packets (built once; the flood cycles through new batches)."""
    out = []
    for _ in range(256):
        sport = rng.randrange(1024, 65536)
        if kind == "syn":
            out.append(
                build_tcp(src, dst, sport, port, seq=rng.getrandbits(32), flags=SYN,
                          ip_id=rng.getrandbits(16))
            )  # fmt: skip
        else:
            dport = rng.choice((53, 443, rng.randrange(1, 65536)))
            payload = rng.randbytes(rng.randrange(8, 600))
            out.append(build_udp(src, dst, sport, dport, payload, ip_id=rng.getrandbits(16)))
    return out


def flood(
    kind: str, dst: str, port: int, count: int, seconds: float, rate: float | None, seed: int
) -> dict[str, object]:
    if ipaddress.ip_address(dst) not in LAB_V4:
        raise SystemExit(f"flood: {dst} is outside the lab (198.18.0.0/15)")
    rng = random.Random(seed)
    src, dstb = addr_bytes(CLIENT_V4), addr_bytes(dst)
    sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 22)
    sent = 0
    start = time.monotonic()
    end = start + seconds
    with sock:
        while sent < count:
            batch = _packets(kind, src, dstb, port, rng)
            for pkt in batch[: count - sent]:
                try:
                    sock.sendto(pkt, (dst, 0))
                except OSError as exc:
                    if exc.errno not in (errno.ENOBUFS, errno.EAGAIN):
                        raise
                    continue  # the link's queue is full: a flood drops, it does not wait
                sent += 1
            now = time.monotonic()
            if now >= end:
                break
            if rate:
                ahead = sent / rate - (now - start)
                if ahead > 0:
                    time.sleep(min(ahead, end - now))
    took = time.monotonic() - start
    return {"kind": kind, "sent": sent, "seconds": round(took, 3), "pps": round(sent / took, 1)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="gfwlab-flood", description=__doc__.split("\n\n")[0])
    parser.add_argument("kind", choices=("syn", "udp"))
    parser.add_argument("--dst", default="198.19.0.2")
    parser.add_argument("--port", type=int, default=80)
    parser.add_argument("--count", type=int, default=50_000)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--rate", type=float, default=None, help="packets a second (default: max)")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    if not 0 < args.count <= 5_000_000 or not 0 < args.seconds <= 600:
        parser.error("--count must be 1..5000000 and --seconds 0..600: a flood is bounded")
    result = flood(args.kind, args.dst, args.port, args.count, args.seconds, args.rate, args.seed)
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
