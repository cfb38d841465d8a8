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
from dataclasses import dataclass
from typing import Literal

from gfwlab.engine.actions import EventFields
from gfwlab.engine.mechanism import Forged
from gfwlab.packet.ip import ACK, RST, Packet, build_tcp

Injector = Literal["type1", "type2", "type3", "mixed", "clayton2006"]

MIXED_WEIGHTS = (77_892, 309_333, 4_366)
"""Packets of injector types I, II, III in the S&P'25 dataset (LaTeX comment of its table)."""


@dataclass(frozen=True, slots=True)
class Fingerprint:
    """How one injector forges its resets."""

    flags: int
    offsets: tuple[int, ...]
    """One packet per entry, its sequence number offset from the expected one."""
    identical: bool
    """The copies are byte-identical (type II)."""
    df: bool
    ip_id: tuple[int, int]
    ttl: tuple[int, int]


FINGERPRINTS: dict[str, Fingerprint] = {
    "type1": Fingerprint(RST, (0,), False, False, (0, 0), (55, 118)),
    "type2": Fingerprint(RST | ACK, (0, 0, 0), True, True, (0x00A3, 0xFE5F), (39, 238)),
    "type3": Fingerprint(RST | ACK, (0,), False, False, (0x9916, 0x9933), (248, 248)),
    # Clayton et al. published the sequence pattern, not the TTL or IP-ID: those are guesses.
    "clayton2006": Fingerprint(RST | ACK, (0, 1460, 4380), False, False, (0, 0xFFFF), (40, 60)),
}
"""The S&P'25 fingerprint table (types I-III) and the PET'06 pattern, as data."""


@dataclass(frozen=True, slots=True, kw_only=True)
class ResidualResetFields(EventFields):
    """A new connection reset because a residual block is on its key."""

    residual: bool = True
    """Always true: the match was made by an earlier connection."""
    injector: str
    """Which RST injector's fingerprint the forged packets carry (spec §4a, S&P'25)."""


def _draw(rng: random.Random, span: tuple[int, int]) -> int:
    lo, hi = span
    return lo if lo == hi else rng.randint(lo, hi)


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
    fp = FINGERPRINTS[kind]
    out: list[Forged] = []
    ends: tuple[tuple[Literal["client", "server"], bytes, bytes, int, int, int, int], ...] = (
        ("client", server, client, sport, cport, to_client_seq, to_client_ack),
        ("server", client, server, cport, sport, to_server_seq, to_server_ack),
    )
    for toward, src, dst, sp, dp, seq, ack in ends:
        pkts: list[bytes] = []
        for offset in fp.offsets:
            if fp.identical and pkts:
                pkts.append(pkts[0])
                continue
            pkts.append(
                build_tcp(
                    src,
                    dst,
                    sp,
                    dp,
                    seq=seq + offset,
                    ack=ack if fp.flags & ACK else 0,
                    flags=fp.flags,
                    window=0,
                    ttl=_draw(rng, fp.ttl),
                    ip_id=_draw(rng, fp.ip_id),
                    df=fp.df,
                )
            )
        out.extend(
            Forged(packet=p, delay=delay + i * 1e-6, toward=toward) for i, p in enumerate(pkts)
        )
    return kind, tuple(out)
