"""Shadowsocks active probing: replay and random probes against suspected servers, then blocking.

Source: spec §7a; Alice, Bob, Carol, J. Beznazwy, A. Houmansadr, *How China Detects and Blocks
Shadowsocks*, ACM IMC 2020 (all numbers below), with the artifact's probe-length and replay-delay
data (gfw-report/imc20-shadowsocks).

Measured, and emulated here:

- passive trigger: the first data-carrying packet of a connection; its length and entropy are the
  features. Replayed payloads were almost all 160-700 bytes (max 999); a packet at 7.2 bits/byte
  was about 4x likelier to be replayed than one at 3.0. Triggered inside-out and outside-in;
- probes (``probe_mix``): replays R1 (identical), R2 (byte 0 changed), R3 (bytes 0-7 and 62-63
  changed), R4 (byte 16 changed), R5 (bytes 6 and 16 changed); random NR1 at lengths 7-9, 11-13,
  15-17, 21-23, 32-34, 40-42, 48-50 and NR2 of exactly 221 bytes (about 3x all NR1 together);
- staging: R3, R4 and R5 are sent only after the server answered R1 or R2;
- replays per connection and their delays (spec §14j, artifact replay-delay data): a replayed
  connection gets 3.43 replays on average (20,028 over 5,844 connections; one payload was
  replayed 47 times), drawn here as 1 + a geometric count with that mean, capped at
  ``max_replays``. The first replay's delay after the trigger follows :data:`FIRST_REPLAY_S`
  (p10 0.67 s, median 37.5 s, p90 1,157 s; min 0.28 s and max 570 h from the paper), each later
  one :data:`LATER_REPLAY_S` (median 1,037 s, 7.5% beyond 2.3 h), sampled log-linearly between
  the published quantiles from the flow's stream. ``delay_scale`` shrinks them so a lab run
  takes seconds. Random probes and staged R3-R5 use the first-replay table (their own delays
  were not published);
- prober fingerprint: IP TTL 46-50, source ports 32768-60999 (~90%), TCP timestamps from a
  250 Hz clock, connection closed (FIN/ACK) within 10 s;
- blocking: by dropping server-to-client packets of the server's port or whole address (null
  routing). The paper saw it on only 3 servers and thought it human-driven, so when to block is
  a parameter (``block_on``), and so is how long (``block_s``).

Differences: later replays are drawn independently of the first, so about 38% of connections
with more than one replay have a later replay earlier than their first (the first is the first
one planned). The two
published marginals cannot both hold with ordered replays at 3.43 per connection: conditioning
later replays on coming after the first moves their distribution by a KS distance of 0.17, and
calling the earliest draw the first moves the first-replay distribution by 0.15.

Unverified, so parameters: the share of candidate connections that draw probes
(``probability``), and the prober addresses (the lab uses its own inside range; IMC'20 saw 12,300
addresses in AS4837, AS4134 and others). First packets that look like TLS or HTTP (the FET
exemption Ex5, spec §6) are not candidates by default (``skip_protocols``): an inference, since
the GFW probed Shadowsocks servers, not every HTTPS server.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, Literal

from mypy_extensions import mypyc_attr

from gfwlab.engine import draws
from gfwlab.engine.actions import EventFields, rounded
from gfwlab.engine.mechanism import Decision, Mechanism, PlannedProbe, ProbeResult, Residual, Seen
from gfwlab.engine.stream import Stream
from gfwlab.mechanisms import register_mechanism
from gfwlab.proto._scan import entropy as _entropy
from gfwlab.rules import CommonParams, quantiles
from gfwlab.rules.quantiles import Quantiles

NR1_LENGTHS: Final = tuple(n + d for n in (8, 12, 16, 22, 33, 41, 49) for d in (-1, 0, 1))
"""NR1 probe lengths: trios around 8, 12, 16, 22, 33, 41, 49 (IMC'20 §4)."""
NR2_LENGTH: Final = 221
_MAX_S: Final = 570 * 3600.0
FIRST_REPLAY_S: Final[Quantiles] = (
    (0.0, 0.28), (0.01, 0.45), (0.05, 0.58), (0.10, 0.67), (0.20, 0.86), (0.30, 1.72),
    (0.40, 4.20), (0.50, 37.5), (0.60, 140.0), (0.70, 782.0), (0.80, 964.0), (0.90, 1157.0),
    (0.95, 1303.0), (0.99, 8443.0), (1.0, _MAX_S),
)  # fmt: skip
"""Seconds from the trigger to a connection's first replay (spec §14j, IMC'20 artifact, 5,844
first replays; min 0.28 s and max 570 h from the paper)."""
LATER_REPLAY_S: Final[Quantiles] = (
    (0.0, 0.28), (0.01, 1.4), (0.05, 10.5), (0.10, 23.1), (0.20, 92.0), (0.30, 335.0),
    (0.40, 858.0), (0.50, 1037.0), (0.60, 1218.0), (0.70, 1611.0), (0.80, 2570.0),
    (0.90, 6168.0), (0.95, 12308.0), (0.99, 87862.0), (1.0, _MAX_S),
)  # fmt: skip
"""Seconds from the trigger to each later replay of the same connection (spec §14j, 14,184
replays; the minimum is not published and is taken as the first replays' 0.28 s)."""
REPLAYS_MEAN: Final = 20_028 / 5_844
"""Replays per replayed connection (spec §14j): 3.43."""
REPLAYS: Final = ("R1", "R2", "R3", "R4", "R5")


@mypyc_attr(native_class=False)
@dataclass(frozen=True, slots=True, kw_only=True)
class SsProbingParams(CommonParams):
    probability: float = 0.5
    """Share of candidate first packets that draw probes (unpublished)."""
    min_length: int = 160
    """Shortest first packet that is a candidate (replays were 160-999 bytes)."""
    max_length: int = 999
    """Longest first packet that is a candidate."""
    typical_max: int = 700
    """Above this length candidates are rarer (almost all replays were <= 700 bytes)."""
    long_weight: float = 0.1
    """Relative chance of a candidate longer than ``typical_max``."""
    entropy_high: float = 7.2
    """Entropy (bits/byte) at which the full ``probability`` applies."""
    entropy_low: float = 3.0
    """Entropy at which the chance is ``1 / entropy_ratio`` of it (linear in between)."""
    entropy_ratio: float = 4.0
    """How much likelier a 7.2 bits/byte packet is replayed than a 3.0 one (IMC'20: ~4x)."""
    skip_protocols: bool = True
    """TLS- or HTTP-looking first packets (FET Ex5) are not candidates (inference)."""
    replays_mean: float = REPLAYS_MEAN
    """Mean number of R1/R2 replays per probed connection (1 + geometric; IMC'20: 3.43)."""
    max_replays: int = 47
    """Most replays of one connection (IMC'20: one payload was replayed 47 times)."""
    first_replay_s: Quantiles = FIRST_REPLAY_S
    """Quantile table ([share, seconds] pairs) of the delay to a connection's first replay."""
    later_replay_s: Quantiles = LATER_REPLAY_S
    """Quantile table of the delay to each later replay of the connection."""
    random_probes: int = 1
    """NR1/NR2 probes in the first stage (NR2 three times as likely as NR1)."""
    delay_scale: float = 1.0
    """Multiplies every probe delay (e.g. 0.001 for a lab run of seconds)."""
    max_delay_s: float = 570 * 3600.0
    """Longest delay drawn, before scaling."""
    ttl: tuple[int, int] = (46, 50)
    """Prober IP TTL range."""
    sport: tuple[int, int] = (32768, 60999)
    """Prober source port range."""
    tsval_hz: int = 250
    """Prober TCP timestamp clock."""
    linger_s: float = 8.0
    """How long a prober waits for a reaction before closing."""
    block_on: Literal["never", "replay-answered", "any-answer"] = "replay-answered"
    """When to block: never, once a replay (R1-R5) got data back, or any probe did."""
    block: Literal["port", "ip"] = "port"
    """Null-route the server's port (key ``server``) or its whole address (``server-ip``)."""
    block_s: float = 7 * 86400.0
    """How long the null route lasts (one server was unblocked after more than a week)."""

    def __post_init__(self) -> None:
        if not 0.0 <= self.probability <= 1.0:
            raise ValueError("probability must be between 0 and 1")
        if self.delay_scale < 0:
            raise ValueError("delay_scale must not be negative")
        if self.replays_mean < 1.0 or self.max_replays < 1:
            raise ValueError("replays_mean and max_replays must be at least 1")
        quantiles.check(self.first_replay_s, "first_replay_s")
        quantiles.check(self.later_replay_s, "later_replay_s")


def entropy(data: bytes) -> float:
    """Shannon entropy in bits per byte: ``-sum(c / n * log2(c / n))`` over the byte values
    present, summed in byte-value order (tests/test_hot_path.py holds it to that float). In C
    (``proto/_scan.c``): with a call to ``math.log2`` per byte value, compiled Python took 13 us
    a first packet."""
    return _entropy(data)


def _looks_like_protocol(payload: bytes) -> bool:
    if len(payload) >= 3 and payload[0] in (0x16, 0x17) and payload[1] == 3 and payload[2] < 0x10:
        return True
    return payload.startswith((b"GET ", b"PUT ", b"POST ", b"HEAD "))


@dataclass(frozen=True, kw_only=True, init=False)
class CandidateFields(EventFields):
    """A first data packet judged as a possible Shadowsocks connection."""

    length: int
    """Its payload length."""
    entropy: float
    """Its byte entropy (bits per byte)."""
    chance: float
    """The chance, from length and entropy, that it draws probes."""
    draw: float
    """The draw; probes follow when it is below ``chance``."""
    probes: tuple[str, ...] | None = None
    """The probes planned (types), when it drew them."""

    # Written out: a dataclass's generated __init__ runs interpreted even where the class is
    # compiled (gfwlab._build); this one is compiled with it.
    def __init__(
        self,
        *,
        length: int,
        entropy: float,
        chance: float,
        draw: float,
        probes: tuple[str, ...] | None = None,
    ) -> None:
        object.__setattr__(self, "length", length)
        object.__setattr__(self, "entropy", entropy)
        object.__setattr__(self, "chance", chance)
        object.__setattr__(self, "draw", draw)
        object.__setattr__(self, "probes", probes)


@dataclass(frozen=True, kw_only=True, init=False)
class ReactionFields(EventFields):
    """What the server did with a probe, and what followed."""

    probe: str
    """The probe type."""
    reaction: str
    """``data``, ``fin``, ``rst``, ``timeout`` or ``unreachable``."""

    # Written out: a dataclass's generated __init__ runs interpreted even where the class is
    # compiled (gfwlab._build); this one is compiled with it.
    def __init__(self, *, probe: str, reaction: str) -> None:
        object.__setattr__(self, "probe", probe)
        object.__setattr__(self, "reaction", reaction)


class SsProbing(Mechanism[SsProbingParams]):
    citation = "spec §7a; Alice et al., How China Detects and Blocks Shadowsocks, IMC 2020"
    params_cls = SsProbingParams

    def setup(self) -> None:
        # Read for every first data packet: kept natively, not looked up in the parameters.
        p = self.params
        self._lengths = (p.min_length, p.max_length)
        self._skip_protocols = p.skip_protocols

    def candidate(self, payload: bytes) -> bool:
        """Whether this first packet's length and look let it draw probes at all (cheap: the
        entropy is measured only for candidates)."""
        n = len(payload)
        lo, hi = self._lengths
        if n < lo or n > hi:
            return False
        return not (self._skip_protocols and _looks_like_protocol(payload))

    def chance(self, payload: bytes) -> tuple[float, float]:
        """(probability that this first packet draws probes, its entropy)."""
        h = entropy(payload)
        return (self._chance(len(payload), h) if self.candidate(payload) else 0.0), h

    def _chance(self, n: int, h: float) -> float:
        """The probability for a candidate of ``n`` bytes and entropy ``h``."""
        p = self.params
        # Linear in entropy through (entropy_low, 1/ratio) and (entropy_high, 1), clamped to [0, 1].
        span = max(p.entropy_high - p.entropy_low, 1e-9)
        low = 1.0 / p.entropy_ratio
        weight = min(1.0, max(0.0, low + (h - p.entropy_low) / span * (1.0 - low)))
        if n > p.typical_max:
            weight *= p.long_weight
        return p.probability * weight

    def on_first_data(self, seen: Seen, payload: bytes) -> Decision | None:
        if not self.candidate(payload):
            return None  # chance 0, whatever the entropy
        h = entropy(payload)
        chance = self._chance(len(payload), h)
        if chance <= 0.0:
            return None
        rng = self.rng(seen)
        draw = rng.random()
        hit = draw < chance
        probes = self._first_stage(rng, payload) if hit else ()
        fields = CandidateFields(
            length=len(payload),
            entropy=rounded(h, 3),
            chance=rounded(chance, 4),
            draw=rounded(draw, 6),
            probes=tuple(pr.kind for pr in probes) if hit else None,
        )
        if not hit:
            return Decision(action="pass", rule="ss:candidate", fields=fields)
        return Decision(action="probe", rule="ss:candidate", probes=probes, fields=fields)

    def _first_stage(self, rng: Stream, payload: bytes) -> tuple[PlannedProbe, ...]:
        p = self.params
        n = 1
        more = 1.0 - 1.0 / p.replays_mean  # 1 + geometric: the mean is replays_mean
        while n < p.max_replays and rng.random() < more:
            n += 1
        out = [
            self._probe(rng, REPLAYS[i % 2], payload, p.first_replay_s if i == 0 else None)
            for i in range(n)
        ]
        for _ in range(p.random_probes):
            if rng.random() < 0.75:
                out.append(self._probe(rng, "NR2", rng.randbytes(NR2_LENGTH)))
            else:
                out.append(self._probe(rng, "NR1", rng.randbytes(draws.choice(rng, NR1_LENGTHS))))
        return tuple(out)

    def _probe(
        self, rng: Stream, kind: str, payload: bytes, table: Quantiles | None = None
    ) -> PlannedProbe:
        """A probe; replays after the first draw from ``later_replay_s`` (``table`` None and
        ``kind`` a replay), the rest from ``table`` or the first-replay table."""
        p = self.params
        if table is None:
            table = p.later_replay_s if kind in ("R1", "R2") else p.first_replay_s
        return PlannedProbe(
            kind=kind,
            payload=mutate(kind, payload, rng.randbytes(10)),
            delay=self.draw_delay(rng, table) * p.delay_scale,
            ttl=draws.randint(rng, *p.ttl),
            sport=draws.randint(rng, *p.sport),
            tsval_hz=p.tsval_hz,
            linger=p.linger_s,
            origin=payload,
        )

    def draw_delay(self, rng: Stream, table: Quantiles | None = None) -> float:
        """Seconds until a probe, drawn from ``table`` (default: the first-replay delays)."""
        drawn = quantiles.sample(table or self.params.first_replay_s, rng)
        return min(self.params.max_delay_s, drawn)

    def on_probe_result(self, seen: Seen, result: ProbeResult) -> Decision | None:
        p = self.params
        answered = result.reaction == "data"
        replay = result.kind in REPLAYS
        block = answered and (
            p.block_on == "any-answer" or (p.block_on == "replay-answered" and replay)
        )
        extra = ReactionFields(probe=result.kind, reaction=result.reaction)
        if block:
            return Decision(
                action="null-route",
                rule=f"ss:{result.kind}-answered",
                residual=Residual(
                    key="server" if p.block == "port" else "server-ip",
                    seconds=p.block_s,
                    policy="drop-s2c",
                ),
                fields=extra,
            )
        if answered and result.kind in ("R1", "R2"):
            # Staged probing: R3-R5 only once the server has answered R1 or R2 (IMC'20).
            payload = result.context.get("origin", b"")
            if isinstance(payload, bytes) and payload:
                rng = self.rng(seen)
                probes = tuple(self._probe(rng, k, payload) for k in ("R3", "R4", "R5"))
                return Decision(action="probe", rule="ss:staged", probes=probes, fields=extra)
        return None


def mutate(kind: str, payload: bytes, noise: bytes) -> bytes:
    """The replay types' byte changes (IMC'20 §4.2); random probes are returned as given."""
    data = bytearray(payload)

    def flip(i: int, k: int) -> None:
        if i < len(data):
            data[i] ^= noise[k % len(noise)] | 1  # never 0: the byte always changes

    if kind == "R2":
        flip(0, 0)
    elif kind == "R3":
        for j, i in enumerate((*range(8), 62, 63)):
            flip(i, j)
    elif kind == "R4":
        flip(16, 0)
    elif kind == "R5":
        flip(6, 0)
        flip(16, 1)
    return bytes(data)


register_mechanism("ss_probing", SsProbing)
