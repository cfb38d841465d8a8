"""Forged TCP resets with the fingerprints of the GFW's measured injectors.

Spec §4a (S&P'25, "A Wall Behind A Wall", Table "fingerprint"), measured on SNI triggers:

========  ================  =====  ====  =====================  ==============
type      flags             count  DF    IP-ID                  IP TTL seen
========  ================  =====  ====  =====================  ==============
type1     RST               1      0     0x0000                 55-118
type2     RST+ACK           3 (identical)  1  0x00A3-0xFE5F      39-238
type3     RST+ACK           1      0     0x9916-0x9933          248
========  ================  =====  ====  =====================  ==============

All are sent to both client and server, with no payload. ``mixed`` picks a type per trigger in
the dataset's proportions (77,892 : 309,333 : 4,366 packets). ``clayton2006`` is the pattern of
Clayton, Murdoch & Watson (PET 2006, spec §3): three resets each way with sequence numbers
base, base+1460 and base+4380. Whether the HTTP filter uses the same injectors as the SNI filter
is unknown (spec §12.6), so ``http_keyword`` takes ``injector`` as a parameter.

The TTL columns are what the measurement endpoints *observed* (after some hops); the emulator
draws the sent TTL uniformly from that range. First-RST latency (spec §4a): 11.52-445.38 ms,
mean 17.98 ms; drawn as the minimum plus an exponential with the remaining mean, capped at the
maximum (the distribution's shape was not published).
"""

from __future__ import annotations

import random
from typing import Literal

from gfwlab.mechanisms.base import Forged
from gfwlab.packet.ip import ACK, RST, Packet, build_tcp

Injector = Literal["type1", "type2", "type3", "mixed", "clayton2006"]

MIXED_WEIGHTS = (77_892, 309_333, 4_366)
"""Packets of injector types I, II, III in the S&P'25 dataset (LaTeX comment of its table)."""


def draw_latency(rng: random.Random, latency_ms: tuple[float, float, float]) -> float:
    """Seconds from trigger to first forged packet: min + Exp(mean - min), capped at max."""
    lo, mean, hi = latency_ms
    if mean <= lo:
        return lo / 1000.0
    return min(hi, lo + rng.expovariate(1.0 / (mean - lo))) / 1000.0


def pick_injector(rng: random.Random, injector: Injector) -> Injector:
    if injector != "mixed":
        return injector
    kinds: tuple[Injector, ...] = ("type1", "type2", "type3")
    return rng.choices(kinds, weights=MIXED_WEIGHTS)[0]


def forge_resets(
    trigger: Packet,
    *,
    c2s: bool,
    injector: Injector,
    rng: random.Random,
    latency_ms: tuple[float, float, float],
) -> tuple[Injector, tuple[Forged, ...]]:
    """Resets to both ends of ``trigger``'s connection; returns the injector type used too.

    ``c2s`` says whether ``trigger`` went client-to-server. The reset toward each end carries
    the sequence number that end expects next, so a real TCP stack accepts it.
    """
    kind = pick_injector(rng, injector)
    delay = draw_latency(rng, latency_ms)
    seg_len = len(trigger.payload) + (1 if trigger.flags & 0x03 else 0)  # SYN/FIN count as 1
    if c2s:
        client, server, cport, sport = trigger.src, trigger.dst, trigger.sport, trigger.dport
        to_server_seq = trigger.seq + seg_len
        to_client_seq, to_client_ack = trigger.ack, trigger.seq + seg_len
        to_server_ack = trigger.ack
    else:
        client, server, cport, sport = trigger.dst, trigger.src, trigger.dport, trigger.sport
        to_client_seq = trigger.seq + seg_len
        to_server_seq, to_server_ack = trigger.ack, trigger.seq + seg_len
        to_client_ack = trigger.ack
    out: list[Forged] = []
    for toward, src, dst, sp, dp, seq, ack in (
        ("client", server, client, sport, cport, to_client_seq, to_client_ack),
        ("server", client, server, cport, sport, to_server_seq, to_server_ack),
    ):
        if kind == "type1":
            pkts = [
                build_tcp(
                    src,
                    dst,
                    sp,
                    dp,
                    seq=seq,
                    ack=0,
                    flags=RST,
                    window=0,
                    ttl=rng.randint(55, 118),
                    ip_id=0,
                    df=False,
                )
            ]
        elif kind == "type2":
            one = build_tcp(
                src,
                dst,
                sp,
                dp,
                seq=seq,
                ack=ack,
                flags=RST | ACK,
                window=0,
                ttl=rng.randint(39, 238),
                ip_id=rng.randint(0x00A3, 0xFE5F),
                df=True,
            )
            pkts = [one, one, one]
        elif kind == "type3":
            pkts = [
                build_tcp(
                    src,
                    dst,
                    sp,
                    dp,
                    seq=seq,
                    ack=ack,
                    flags=RST | ACK,
                    window=0,
                    ttl=248,
                    ip_id=rng.randint(0x9916, 0x9933),
                    df=False,
                )
            ]
        else:  # clayton2006
            pkts = [
                build_tcp(
                    src,
                    dst,
                    sp,
                    dp,
                    seq=seq + off,
                    ack=ack,
                    flags=RST | ACK,
                    window=0,
                    ttl=rng.randint(40, 60),
                    ip_id=rng.randint(0, 0xFFFF),
                    df=False,
                )
                for off in (0, 1460, 4380)
            ]
        toward_lit: Literal["client", "server"] = "client" if toward == "client" else "server"
        out.extend(
            Forged(packet=p, delay=delay + i * 1e-6, toward=toward_lit) for i, p in enumerate(pkts)
        )
    return kind, tuple(out)
