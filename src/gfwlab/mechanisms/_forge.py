"""Forged TCP resets with the fingerprints of the GFW's measured injectors.

Spec §4a (S&P'25, "A Wall Behind A Wall", Table "fingerprint"), measured on SNI triggers:

========  ================  =====  ====  =====================  ==============
type      flags             count  DF    IP-ID                  IP TTL seen
========  ================  =====  ====  =====================  ==============
type1     RST               1      0     0x0000                 55-118
type2     RST+ACK           3 (identical)  1  0x00A3-0xFE5F      39-238
type3     RST+ACK           1      0     0x9916-0x9933          248
========  ================  =====  ====  =====================  ==============

All are sent to both client and server, with no payload. ``clayton2006`` is the pattern of
Clayton, Murdoch & Watson (PET 2006, spec §3): three resets each way with sequence numbers
base, base+1460 and base+4380. Whether the HTTP filter uses the same injectors as the SNI filter
is unknown (spec §12.6), so ``http_keyword`` takes ``injector`` as a parameter.

Measured distributions (spec §14j, S&P'25 artifact, per-trigger RST fingerprints), each a
parameter of :class:`ResetParams`:

- ``mixed`` picks a type **per trigger** in the measured proportions (22,084 triggers): type I
  60.66%, type II 38.69%, type III 0.65% (``injector_mix``). The paper's per-*packet* counts
  (77,892 : 309,333 : 4,366) are not per-trigger weights: type II sends three packets.
- the type is sticky per name: of 4,245 SNIs measured twice or more, 74.3% always drew the same
  type (11% expected if drawn independently). Modelled as a share of names pinned to one type
  (``sticky_share``), drawn once per name from ``keyed_rng`` in the same proportions; the other
  names draw per trigger. 0.717 makes 74.3% of names tested five times single-typed (five
  triggers per name is what makes the independent figure about 9-11%); the number of triggers
  per name was not published.
- the delay from the ClientHello to the first reset toward the client is drawn per type from a
  quantile table (:data:`RST_DELAY_MS`). The all-types quantiles are the spec's (p1 11.86 ...
  p95 29.86 ms; min 11.52 ms from S&P'25 §4), with the tail of 2.1% beyond 0.5 s and 1.0%
  beyond 5 s (``delay_tail``: the spec suspects artefacts; on by default; its longest value,
  30 s, is a guess). The per-type tables share the all-types values and differ in their
  shares: each is the all-types table read through a monotone map chosen so that type I's
  p10/p50/p90 are 12.04/14.69/18.26 ms and type II's 13.41/16.58/22.27 ms exactly, while the
  I/II/III mixture reproduces the all-types table exactly (type III uses type I's map; its
  measured 12.07/14.69/17.93 ms differ from type I's by under 0.4 ms).

The TTL columns are what the measurement endpoints *observed* (after some hops); the emulator
draws the sent TTL of types I and II from the measured per-type quantiles (spec §14j,
:data:`TTL_RECEIVED`), so the receiver sees the measured distribution when the censor is next to
it; type III's is fixed at 248.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final, Literal

from mypy_extensions import mypyc_attr

from gfwlab.engine import draws
from gfwlab.engine.actions import EventFields
from gfwlab.engine.mechanism import Forged
from gfwlab.engine.stream import Stream
from gfwlab.packet.ip import ACK, RST, SYN, Packet, build_tcp
from gfwlab.rules import CommonParams, quantiles
from gfwlab.rules.quantiles import Quantiles

Injector = Literal["type1", "type2", "type3", "mixed", "clayton2006"]
TYPES: Final[tuple[Injector, ...]] = ("type1", "type2", "type3")

INJECTOR_MIX: Final = (60.66, 38.69, 0.65)
"""Per-trigger shares (%) of injector types I, II, III (S&P'25 artifact, 22,084 triggers)."""

# Not Final: compiled, a Final tuple read by a function called at import is not set yet.
_ALL_MS = (11.52, 11.86, 12.0, 12.04, 12.14, 13.41, 13.72, 14.46, 14.69, 14.75, 15.41, 16.18,
           16.58, 17.2, 18.0, 18.26, 20.44, 22.27, 29.86, 500.0, 5000.0, 30000.0)  # fmt: skip
"""The values shared by the delay tables (ms): the spec's all-types quantiles and the per-type
p10/p50/p90, each at its all-types share."""


def _table(shares: tuple[float, ...]) -> Quantiles:
    return tuple(zip(shares, _ALL_MS, strict=True))


RST_DELAY_MS: Final[dict[str, Quantiles]] = {
    "all": _table((0.0, 0.01, 0.05, 0.0643, 0.10, 0.1813, 0.20, 0.30, 0.3795, 0.40, 0.50, 0.60,
                   0.6399, 0.70, 0.80, 0.8113, 0.90, 0.9113, 0.95, 0.979, 0.99, 1.0)),
    "type1": _table((0.0, 0.0155, 0.0777, 0.10, 0.1404, 0.2326, 0.2578, 0.3928, 0.50, 0.518,
                     0.6056, 0.6933, 0.7283, 0.7885, 0.8887, 0.90, 0.9164, 0.9184, 0.954, 0.9807,
                     0.9908, 1.0)),
    "type2": _table((0.0, 0.0012, 0.0061, 0.0078, 0.0359, 0.10, 0.1083, 0.153, 0.1885, 0.213,
                     0.3326, 0.4522, 0.50, 0.5598, 0.6595, 0.6707, 0.8741, 0.90, 0.9436, 0.9763,
                     0.9887, 1.0)),
}  # fmt: skip
"""Delay from the trigger to the first reset toward the client, ms, as (share, value) tables:
``all`` is spec §14j's all-types row; ``type1``/``type2`` are fitted (see the module docstring)."""

TAIL_FROM_MS: Final = 500.0
"""Where the suspected-artefact tail begins (spec §14j: 2.1% of resets beyond 0.5 s)."""


@mypyc_attr(native_class=False)
@dataclass(frozen=True, slots=True, kw_only=True)
class ResetParams(CommonParams):
    """The parameters of a mechanism that forges resets (``tls_sni``, ``http_keyword``)."""

    injector: Injector = "mixed"
    """Reset fingerprint: type1, type2, type3, mixed (the measured per-trigger mix, sticky per
    name) or clayton2006."""
    injector_mix: tuple[float, float, float] = INJECTOR_MIX
    """Relative per-trigger weights of types I, II, III under ``mixed`` (S&P'25: 60.66, 38.69,
    0.65)."""
    sticky_share: float = 0.717
    """Share of names pinned to one injector type under ``mixed`` (fitted to 74.3% of names
    always drawing one type)."""
    delay_ms_type1: Quantiles = RST_DELAY_MS["type1"]
    """Quantile table ([share, ms] pairs) of the delay to the first type I reset."""
    delay_ms_type2: Quantiles = RST_DELAY_MS["type2"]
    """Quantile table of the delay to the first type II reset."""
    delay_ms_type3: Quantiles = RST_DELAY_MS["type1"]
    """Quantile table of the delay to the first type III reset (type I's shape; measured p50
    14.69 ms as type I)."""
    delay_ms_other: Quantiles = RST_DELAY_MS["all"]
    """Quantile table of the delay for ``clayton2006`` (the all-types measurement)."""
    delay_tail: bool = True
    """Keep the measured tail beyond 0.5 s (2.1% of resets; possibly measurement artefacts)."""

    def __post_init__(self) -> None:
        for name in ("delay_ms_type1", "delay_ms_type2", "delay_ms_type3", "delay_ms_other"):
            quantiles.check(getattr(self, name), name)
        if not 0.0 <= self.sticky_share <= 1.0:
            raise ValueError("sticky_share must be between 0 and 1")
        if min(self.injector_mix) < 0 or sum(self.injector_mix) <= 0:
            raise ValueError("injector_mix needs non-negative weights with a positive sum")

    def delay_table(self, kind: Injector) -> Quantiles:
        """The delay table of injector ``kind``."""
        if kind == "type1":
            return self.delay_ms_type1
        if kind == "type2":
            return self.delay_ms_type2
        return self.delay_ms_type3 if kind == "type3" else self.delay_ms_other


@dataclass(frozen=True)
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


FINGERPRINTS: Final[dict[str, Fingerprint]] = {
    "type1": Fingerprint(RST, (0,), False, False, (0, 0), (55, 118)),
    "type2": Fingerprint(RST | ACK, (0, 0, 0), True, True, (0x00A3, 0xFE5F), (39, 238)),
    "type3": Fingerprint(RST | ACK, (0,), False, False, (0x9916, 0x9933), (248, 248)),
    # Clayton et al. published the sequence pattern, not the TTL or IP-ID: those are guesses.
    "clayton2006": Fingerprint(RST | ACK, (0, 1460, 4380), False, False, (0, 0xFFFF), (40, 60)),
}
"""The S&P'25 fingerprint table (types I-III) and the PET'06 pattern, as data."""


@dataclass(frozen=True, kw_only=True, init=False)
class ResidualResetFields(EventFields):
    """A new connection reset because a residual block is on its key."""

    residual: bool = True
    """Always true: the match was made by an earlier connection."""
    injector: str
    """Which RST injector's fingerprint the forged packets carry (spec §4a, S&P'25)."""

    # Written out: a dataclass's generated __init__ runs interpreted even where the class is
    # compiled (gfwlab._build); this one is compiled with it.
    def __init__(self, *, residual: bool = True, injector: str) -> None:
        object.__setattr__(self, "residual", residual)
        object.__setattr__(self, "injector", injector)


TTL_RECEIVED: Final[dict[str, Quantiles]] = {
    "type1": ((0.0, 43.0), (0.01, 55.0), (0.5, 87.0), (0.99, 118.0), (1.0, 118.0)),
    "type2": ((0.0, 39.0), (0.01, 40.0), (0.5, 136.0), (0.99, 236.0), (1.0, 238.0)),
}
"""IP TTL of the resets as received (spec §14j: min / p1 / median / p99 / max per type). The sent
TTL is drawn from these (rounded up, so the median is the measured one); type III's is 248."""


def _ttl(rng: Stream, kind: str, fp: Fingerprint) -> int:
    table = TTL_RECEIVED.get(kind)
    return math.ceil(quantiles.sample(table, rng)) if table else _draw(rng, fp.ttl)


def _draw(rng: Stream, span: tuple[int, int]) -> int:
    lo, hi = span
    return lo if lo == hi else draws.randint(rng, lo, hi)


def draw_delay(rng: Stream, params: ResetParams, kind: Injector) -> float:
    """Seconds from trigger to the first forged packet of injector ``kind`` (one draw)."""
    table = params.delay_table(kind)
    upto = 1.0 if params.delay_tail else quantiles.cdf(table, TAIL_FROM_MS)
    return quantiles.sample(table, rng, upto=upto) / 1000.0


PINS_KEPT: Final = 4096
"""How many names' pinned injector types a :class:`PinnedInjectors` keeps."""


class PinnedInjectors:
    """Under ``mixed``, the injector type each name is pinned to, or None for a name whose
    triggers each draw their own (``sticky_share`` of names are pinned).

    A name's pin is drawn from its own stream (``keyed("injector", name)``: the mechanism's
    ``keyed_rng``), fresh for every trigger: its first draws, so the pin, are the same every
    time. Seeding a stream costs more than the rest of a reset, so the pins of up to
    :data:`PINS_KEPT` names are kept (forgotten all at once when full): the same picks, without
    reseeding for a name seen again.
    """

    def __init__(self, params: ResetParams) -> None:
        self.params = params
        self.pins: dict[str, Injector | None] = {}

    def pin(self, name: str, keyed: Callable[..., Stream]) -> Injector | None:
        if name in self.pins:
            return self.pins[name]
        named = keyed("injector", name)
        pin: Injector | None = None
        if named.random() < self.params.sticky_share:
            pin = draws.weighted(named, TYPES, self.params.injector_mix)
        if len(self.pins) >= PINS_KEPT:
            self.pins.clear()
        self.pins[name] = pin
        return pin


def pick_injector(
    rng: Stream, params: ResetParams, pinned: Callable[[], Injector | None] | None
) -> Injector:
    """The injector type for one trigger: fixed, or under ``mixed`` the name's pinned type
    (``pinned``: :meth:`PinnedInjectors.pin` of the name that triggered, asked only under
    ``mixed``) or a per-trigger draw from ``rng``."""
    if params.injector != "mixed":
        return params.injector
    pin = pinned() if pinned is not None else None
    return pin if pin is not None else draws.weighted(rng, TYPES, params.injector_mix)


def forge_resets(
    trigger: Packet,
    *,
    c2s: bool,
    params: ResetParams,
    rng: Stream,
    pinned: Callable[[], Injector | None] | None = None,
) -> tuple[Injector, tuple[Forged, ...]]:
    """Resets to both ends of ``trigger``'s connection; returns the injector type used too.

    ``c2s`` says whether ``trigger`` went client-to-server. The reset toward each end carries
    the sequence number that end expects next, so a real TCP stack accepts it. A client's SYN
    (a residual hit) is answered toward the client with RST+ACK acknowledging it, whatever the
    type's flags: a bare RST is ignored in SYN-SENT (RFC 793 §3.4), and how the measured
    injectors reset a connection within its handshake is not published. ``rng`` is the
    flow's stream; ``pinned`` gives the injector type the name that triggered is pinned
    to, if any (:class:`PinnedInjectors`), and is None when no name is known.
    """
    kind = pick_injector(rng, params, pinned)
    delay = draw_delay(rng, params, kind)
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
    syn = c2s and trigger.flags & (SYN | ACK) == SYN
    out: list[Forged] = []
    ends: tuple[tuple[Literal["client", "server"], bytes, bytes, int, int, int, int], ...] = (
        ("client", server, client, sport, cport, to_client_seq, to_client_ack),
        ("server", client, server, cport, sport, to_server_seq, to_server_ack),
    )
    for toward, src, dst, sp, dp, seq, ack in ends:
        flags = fp.flags | ACK if syn and toward == "client" else fp.flags
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
                    ack=ack if flags & ACK else 0,
                    flags=flags,
                    window=0,
                    ttl=_ttl(rng, kind, fp),
                    ip_id=_draw(rng, fp.ip_id),
                    df=fp.df,
                )
            )
        out.extend(
            Forged(packet=p, delay=delay + i * 1e-6, toward=toward) for i, p in enumerate(pkts)
        )
    return kind, tuple(out)
