"""Bursts of forged resets triggered by the TCP handshake itself (spec §8, §14a).

The two dated RST events of spec §14a do not read any payload: a device resets a connection on
its client SYN and/or its server SYN/ACK. What each burst looks like is data (a
:class:`BurstShape`): the flags, one TCP window per packet (the 2025-08-20 device raised it by 1
per packet), the first IP TTL and its step, IP-ID and DF. Sequence numbers follow the measured
captures: a burst toward the client carries the trigger's ACK number as its sequence number
(relative seq 0 on a SYN, whose ACK field is 0; relative seq 1 on a SYN/ACK, the server's ISN
plus 1 seen from the client), and acknowledges what the client sent; a burst toward the server
carries the sequence number the server expects next.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from gfwlab.engine.mechanism import Forged
from gfwlab.packet.ip import ACK, RST, Packet, build_tcp

Toward = Literal["client", "server", "both"]


@dataclass(frozen=True, kw_only=True)
class BurstShape:
    """One burst's fingerprint."""

    rst_ack: bool
    """RST+ACK (True) or a bare RST."""
    windows: tuple[int, ...]
    """The TCP window of each packet; the burst has one packet per entry."""
    ttl: int
    """IP TTL of the first packet."""
    ttl_step: int
    """Added to the TTL for each following packet."""
    ip_id: int
    df: bool


def forge_burst(
    trigger: Packet, *, c2s: bool, toward: Toward, shape: BurstShape, delay: float
) -> tuple[Forged, ...]:
    """The burst ``trigger`` draws, toward the client, the server or both (client first)."""
    seg_len = len(trigger.payload) + (1 if trigger.flags & 0x03 else 0)  # SYN/FIN count as 1
    if c2s:
        client, server, cport, sport = trigger.src, trigger.dst, trigger.sport, trigger.dport
        to_client = (trigger.ack, trigger.seq + seg_len)
        to_server = (trigger.seq + seg_len, trigger.ack)
    else:
        client, server, cport, sport = trigger.dst, trigger.src, trigger.dport, trigger.sport
        to_client = (trigger.seq + seg_len, trigger.ack)
        to_server = (trigger.ack, trigger.seq + seg_len)
    flags = RST | ACK if shape.rst_ack else RST
    ends: list[tuple[Literal["client", "server"], bytes, bytes, int, int, tuple[int, int]]] = []
    if toward in ("client", "both"):
        ends.append(("client", server, client, sport, cport, to_client))
    if toward in ("server", "both"):
        ends.append(("server", client, server, cport, sport, to_server))
    out: list[Forged] = []
    for end, src, dst, sp, dp, (seq, ack) in ends:
        for i, window in enumerate(shape.windows):
            pkt = build_tcp(
                src,
                dst,
                sp,
                dp,
                seq=seq & 0xFFFFFFFF,
                ack=(ack & 0xFFFFFFFF) if shape.rst_ack else 0,
                flags=flags,
                window=window,
                ttl=max(1, min(255, shape.ttl + i * shape.ttl_step)),
                ip_id=shape.ip_id,
                df=shape.df,
            )
            out.append(Forged(packet=pkt, delay=delay + i * 1e-6, toward=end))
    return tuple(out)
