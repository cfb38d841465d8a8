#!/usr/bin/env python3
"""A lab connection's cost in the live censor's process, in-process: no namespaces, no kernel.

    python benchmarks/bench_live_path.py                  # 30,000 connections, best of 3
    python benchmarks/bench_live_path.py --connections 100000 --repeat 5

``benchmarks/bench_lab.py`` measures the lab as a whole (root, namespaces, wrk against nginx);
this measures the part of it that is the censor's Python: what ``gfwlab-censor`` does for one
``wrk -H "Connection: close"`` connection once the kernel has handed it the packets. The
connection is the one the lab queues with the ``gfw`` profile on 2022-06-01 (every mechanism
active): the client's SYN, which the kernel forwards and copies to the censor, then the
request, the one packet of the connection that goes through the queue. Each is given to
``LiveCensor`` (``live/daemon.py``) as the loop of a busy censor gives it: the SYN's NFLOG
message (the bytes the kernel sends) read and parsed into the pending copies
(``live/nflog.py`` ``SynCopies``; only the socket's read is left out), then the request through
``on_packet`` with a stand-in for the NFQUEUE packet, marked as the lab's rules mark it (its SYN
was copied and its SYN/ACK skipped: ``SYN_COPIED_MARK | SEEN_ORIGINAL_MARK``), so that its copy
is taken and fed first; the events written to a real ``events.jsonl`` and flushed once per 16
connections (a pass of the loop).

Printed, in CPU µs per connection (``time.process_time``, best of ``--repeat``), each also as a
multiple of the first, measured in the same run:

* the baseline: ``packet.ip.parse`` of the connection's two packets;
* the engine alone: a fresh ``Censor`` fed the SYN and the request;
* the adapter path: a fresh ``LiveCensor`` around a fresh ``Censor``, as above.

The lab's censor costs more per connection than the adapter path (the NFQUEUE binding, the
verdict's system call, in which the kernel forwards the packet, and the NFLOG read): compare
with ``bench_lab.py``'s "censor CPU per new connection" and its ``--null-engine``. It reports;
it never asserts.
"""

from __future__ import annotations

import argparse
import os
import socket
import struct
import sys
import tempfile
import time
from collections.abc import Callable

import gfwlab
from gfwlab.engine import Censor
from gfwlab.live.daemon import LiveCensor
from gfwlab.live.nflog import (
    NFGEN_HEADER,
    NFNL_SUBSYS_ULOG,
    NFULA_PAYLOAD,
    NFULA_SEQ,
    NFULNL_MSG_PACKET,
    NLMSG_HEADER,
    SynCopies,
    attr,
    parse_messages,
)
from gfwlab.live.topology import NFLOG_GROUP, SEEN_ORIGINAL_MARK, SYN_COPIED_MARK
from gfwlab.packet.ip import ACK, PSH, SYN, build_tcp, parse
from gfwlab.profiles import build_censor, load_profiles, parse_date

DATE = "2022-06-01"
CLIENT, SERVER = socket.inet_aton("198.18.0.2"), socket.inet_aton("198.19.0.2")
REQUEST = b"GET / HTTP/1.1\r\nHost: 198.19.0.2\r\nConnection: close\r\n\r\n"  # wrk's, as sent

Connection = tuple[bytes, bytes]
NFULA_PACKET_HDR = 1
"""The attribute of a copy's hardware protocol and hook (``nfulnl_msg_packet_hdr``)."""


class Queued:
    """What ``LiveCensor.on_packet`` asks of an NFQUEUE packet."""

    __slots__ = ("mark", "payload")

    def __init__(self, payload: bytes) -> None:
        self.payload = payload
        self.mark = SYN_COPIED_MARK | SEEN_ORIGINAL_MARK

    def get_payload(self) -> bytes:
        return self.payload

    def get_mark(self) -> int:
        return self.mark

    def set_mark(self, mark: int) -> None:
        self.mark = mark

    def accept(self) -> None:
        pass

    def drop(self) -> None:
        pass


class Copies:
    """The NFLOG socket: the messages the kernel sent, each read and parsed as
    ``NflogReader.read`` does after its ``recv``."""

    def __init__(self) -> None:
        self.waiting: list[bytes] = []
        self.lost = 0

    def read(self) -> list[bytes]:
        out = [payload for buf in self.waiting for _seq, payload in parse_messages(buf)[0]]
        self.waiting.clear()
        return out

    def fileno(self) -> int:
        return -1

    def close(self) -> None:
        pass


def nflog_message(packet: bytes, seq: int) -> bytes:
    """The NFULNL_MSG_PACKET message the kernel sends for a copied ``packet``: the packet's
    hardware protocol, its number and its bytes."""
    attrs = (
        attr(NFULA_PACKET_HDR, struct.pack("!HBx", 0x0800, 3))
        + attr(NFULA_SEQ, struct.pack("!I", seq))
        + attr(NFULA_PAYLOAD, packet)
    )
    body = NFGEN_HEADER.pack(socket.AF_INET, 0, NFLOG_GROUP) + attrs
    kind = (NFNL_SUBSYS_ULOG << 8) | NFULNL_MSG_PACKET
    return NLMSG_HEADER.pack(NLMSG_HEADER.size + len(body), kind, 0, 0, 0) + body


class Links:
    """Where ``LiveCensor`` would send forged frames (none on these connections)."""

    def send(self, packet: bytes) -> None:
        pass

    def close(self) -> None:
        pass


def connections(n: int) -> list[Connection]:
    out = []
    for i in range(n):
        port, isn = 10_000 + i % 50_000, (i * 7919) & 0xFFFFFFFF
        syn = build_tcp(CLIENT, SERVER, port, 80, seq=isn, flags=SYN, options=b"\x02\x04\x05\xb4")
        data = build_tcp(
            CLIENT, SERVER, port, 80, seq=isn + 1, ack=1, flags=ACK | PSH, payload=REQUEST
        )
        out.append((syn, data))
    return out


def censor() -> Censor:
    made = build_censor(load_profiles(["gfw"], date=parse_date(DATE))[0], 0)
    assert isinstance(made, Censor)
    return made


def parse_only(conns: list[Connection]) -> None:
    for syn, data in conns:
        parse(syn)
        parse(data)


def engine_only(conns: list[Connection]) -> None:
    engine = censor()
    now = time.monotonic()
    for syn, data in conns:
        engine.feed(syn, now)
        engine.feed(data, now)


def adapter_path(conns: list[Connection]) -> None:
    with tempfile.TemporaryDirectory(prefix="gfwlab-bench-") as folder:
        live = LiveCensor(censor(), folder, Links(), 0)  # type: ignore[arg-type]
        copies = Copies()
        live.syn_copies = SynCopies(copies)
        queued = [Queued(data) for _syn, data in conns]
        messages = [nflog_message(syn, i) for i, (syn, _data) in enumerate(conns)]
        for i, message in enumerate(messages):
            copies.waiting.append(message)  # the kernel copies the SYN
            live.syn_copies.read()  # the loop reads the copies, then empties its queue
            live.on_packet(queued[i])
            if i % 16 == 15:
                live.flush_events()
        live.flush_events()
        os.close(live.events)


def best(run: Callable[[list[Connection]], None], conns: list[Connection], repeat: int) -> float:
    """CPU µs per connection, the best of ``repeat`` runs."""
    times = []
    for _ in range(repeat):
        start = time.process_time()
        run(conns)
        times.append(time.process_time() - start)
    return min(times) / len(conns) * 1e6


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--connections", type=int, default=30_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    if args.connections < 1 or args.repeat < 1:
        print("bench_live_path: --connections and --repeat must be at least 1", file=sys.stderr)
        return 2
    conns = connections(args.connections)
    adapter_path(conns[:2000])  # warm: imports, the lists, the first events
    print(f"gfwlab {gfwlab.ENGINE_BUILD} engine, gfw on {DATE}, {len(conns):,} connections")
    base = best(parse_only, conns, args.repeat)
    rows = [
        ("parse only (baseline)", base),
        ("engine: Censor.feed", best(engine_only, conns, args.repeat)),
        ("adapter path: LiveCensor", best(adapter_path, conns, args.repeat)),
    ]
    for name, us in rows:
        print(f"  {name:<26} {us:6.1f} µs/connection  {us / base:5.1f}× baseline")
    return 0


if __name__ == "__main__":
    sys.exit(main())
