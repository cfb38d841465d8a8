"""``gfwlab evade apply``: a strategy applied offline to one side's packets in a capture.

The client of a TCP connection is the sender of its first SYN (without ACK); of anything else,
the sender of its first packet. The strategy's outbound forest rewrites the packets the chosen
side sends, its inbound forest the packets that side receives (an inbound ``drop`` removes a
packet before the endpoint would see it; as in Geneva, after the censor on the path, so the
written capture is what the endpoint's own tap would record). Timestamps of added packets are
those of the packet they came from.
"""

from __future__ import annotations

import random

from gfwlab.errors import MalformedPacket
from gfwlab.evade.interp import Interpreter
from gfwlab.evade.strategy import parse_strategy
from gfwlab.packet.ip import ACK, PROTO_TCP, SYN, parse
from gfwlab.packet.pcap import CaptureReader, PcapWriter


def apply_capture(strategy: str, path: str, out: str, side: str, seed: int = 0) -> tuple[int, int]:
    """Rewrite ``path`` into ``out``; returns (packets read, packets written)."""
    interp = Interpreter(parse_strategy(strategy), random.Random(f"evade:{seed}"))
    clients: dict[tuple[bytes, int, bytes, int, int], bytes] = {}
    n_in = n_out = 0
    with PcapWriter(out) as writer:
        for ts, raw in CaptureReader(path):
            n_in += 1
            try:
                pkt = parse(raw)
            except MalformedPacket:
                writer.write(ts, raw)
                n_out += 1
                continue
            a, b = (pkt.src, pkt.sport), (pkt.dst, pkt.dport)
            key = (*min(a, b), *max(a, b), pkt.proto)
            if key not in clients or (pkt.proto == PROTO_TCP and pkt.flags & (SYN | ACK) == SYN):
                clients.setdefault(key, pkt.src)
                if pkt.proto == PROTO_TCP and pkt.flags & (SYN | ACK) == SYN:
                    clients[key] = pkt.src
            from_client = clients[key] == pkt.src
            mine = from_client if side == "client" else not from_client
            for sent in interp.outbound(raw) if mine else interp.inbound(raw):
                writer.write(ts, sent)
                n_out += 1
    return n_in, n_out
