"""QUIC SNI censorship: decrypt a flow's first datagram as a QUIC Initial, drop the flow if its
SNI is listed.

Source: spec §5; A. Zohaib, Q. Zao, J. Sippe, A. Alaraj, A. Houmansadr, Z. Durumeric,
E. Wustrow, *Exposing and Circumventing SNI-based QUIC Censorship of the Great Firewall of
China*, USENIX Security 2025 (artifact ``gfw-report/usenixsecurity25-quic-sni``).

Measured, and emulated here:

- from 2024-04-07 (the built-in profile's ``active``); a blocklist of its own, distinct from the
  DNS, HTTP and TLS lists (``domains``);
- only the **first UDP datagram of a flow** (4-tuple) is inspected. The engine calls the hook
  once per flow, for the first client-to-server datagram, and forgets a UDP flow after
  ``engine.udp_timeout_s`` = 60 s without a datagram, checked on every packet: a ClientHello
  sent 60 s or more after the flow's last datagram is inspected as a new first datagram, as the
  artifact's ``flow-tracking-time`` experiment measured. A first datagram that is not a QUIC
  Initial (e.g. 14 zero bytes) exempts the whole flow, silently; one that claims to be an
  Initial but cannot be read (:mod:`gfwlab.proto.quic`) is reported as an anomaly and exempts
  the flow too;
- QUIC v1 Initials only (``versions``); v2 is not blocked (Table 3 row 10). How the censor reads
  odd Initials (Table 3) is in :mod:`gfwlab.proto.quic`;
- only if the source port is greater than the destination port (``port_rule``; the paper's
  section heading says ≥, the artifact's experiments say >);
- action: the Initial itself is delivered, later client-to-server datagrams are dropped; nothing
  is injected;
- residual: 180 s on (source IP, destination IP, destination port): a new source port does not
  help, and one spoofed Initial is enough to block a 3-tuple;
- triggered in both directions until 2025-03-13, then only by traffic leaving China
  (``outbound_only_from``: from that day only inside-out flows are inspected; with no
  ``--date`` the latest behaviour, outbound only, applies).

- block latency: the block (and the residual) starts ``block_latency_ms`` after the Initial,
  drawn per flow from the measured distribution (artifact ``how-fast-gfw-blocks/data/results.csv``,
  n=742: time from the ClientHello to the last payload that still got through; min 58.6 ms,
  median 109.7 ms, p90 189.7 ms, max 7.5 s, spec §5). :data:`BLOCK_LATENCY_MS` holds it as a
  quantile table; an empty table blocks from the next datagram;
- how the censor reads Table 3 row 6 (a zero-Length CRYPTO frame followed by a stray zero byte)
  is unknown (spec §12.8, §14e); ``crypto_reading`` picks one of the three readings consistent
  with rows 6 and 8 (:data:`gfwlab.proto.quic.CRYPTO_READINGS`; default ``skip-zeros``).

Differences: the load-dependent,
diurnal effectiveness is one fixed ``probability`` (1 by default; the artifact's per-hour
blocking rates in November 2024 ranged 1.29-80.7% in Beijing, median 9.8%, so e.g. 0.21 models
Beijing's overall 21.0%); the path-dependent coverage (Table 6) is not modelled.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Final, Literal

from mypy_extensions import mypyc_attr

from gfwlab.engine.actions import EventFields, rounded
from gfwlab.engine.flows import Flow
from gfwlab.engine.mechanism import Decision, Mechanism, Needs, Residual, Seen
from gfwlab.mechanisms import register_mechanism
from gfwlab.proto.quic import QUIC_V1, CryptoReading, QuicInitial
from gfwlab.rules import CommonParams, DomainSet, ResidualKey, quantiles
from gfwlab.rules.quantiles import Quantiles

BLOCK_LATENCY_MS: Final[Quantiles] = (
    (0.0, 58.64),
    (0.10, 79.6),
    (0.25, 89.6),
    (0.50, 109.7),
    (0.75, 139.6),
    (0.90, 189.7),
    (0.94, 500.0),
    (0.97, 2000.0),
    (1.0, 7519.26),
)
"""Milliseconds from the Initial to the start of the block (``how-fast-gfw-blocks``, n=742). Min,
median, p90 and max are the spec's (§5); p10, p25, p75, p94 and p97 are approximate, read off the
artifact's ``results.csv`` (about 6% of rows lie above 500 ms and 3% above 2 s; the sender's
10 ms spacing shows as steps at 69.6, 79.6, 89.6 ... ms)."""

PortRule = Literal["sport>dport", "sport>=dport", "any"]


@mypyc_attr(native_class=False)
@dataclass(frozen=True, slots=True, kw_only=True)
class QuicSniParams(CommonParams):
    domains: DomainSet = DomainSet()
    """SNI rules for QUIC: the QUIC blocklist, separate from the TLS one (bare domains include
    subdomains)."""
    port_rule: PortRule = "sport>dport"
    """Which first datagrams are inspected: source port greater than destination port (the
    experiments), greater or equal (the paper's section heading), or any."""
    versions: tuple[int, ...] = (QUIC_V1,)
    """QUIC versions whose Initials are blocked (1 = v1; v2, 0x6b3343cf = 1798521807, is
    parsed but not blocked by the GFW)."""
    outbound_only_from: str = "2025-03-13"
    """From this day (a quoted YYYY-MM-DD) only inside-out flows trigger it; before it, both
    directions. Empty: both directions on every day."""
    probability: float = 1.0
    """Share of listed Initials that are blocked. The GFW's is load-dependent: 1.29-80.7% per
    hour in Beijing (Nov 2024), 21.0% overall."""
    residual_s: float = 180.0
    """How long later datagrams on the residual key are dropped."""
    residual_key: ResidualKey = "3-tuple"
    """(source IP, destination IP, destination port): any source port is hit."""
    block_latency_ms: Quantiles = BLOCK_LATENCY_MS
    """Quantile table ([share, ms] pairs) of the time from the Initial to the start of the
    block; ``[]`` blocks from the next datagram."""
    crypto_reading: CryptoReading = "skip-zeros"
    """How a zero-Length CRYPTO frame that carries data is read (Table 3 row 6): skip-zeros,
    scan or two-byte-length (spec §14e)."""

    def __post_init__(self) -> None:
        if self.block_latency_ms:
            quantiles.check(self.block_latency_ms, "block_latency_ms")
        if not 0.0 <= self.probability <= 1.0:
            raise ValueError(f"probability must be between 0 and 1, got {self.probability}")
        if self.outbound_only_from:
            try:
                dt.date.fromisoformat(self.outbound_only_from)
            except ValueError:
                raise ValueError(
                    f"outbound_only_from must be YYYY-MM-DD or empty, "
                    f"got {self.outbound_only_from!r}"
                ) from None


def port_rule_admits(rule: PortRule, sport: int, dport: int) -> bool:
    """Whether a first datagram from ``sport`` to ``dport`` is inspected under ``rule``."""
    if rule == "sport>dport":
        return sport > dport
    if rule == "sport>=dport":
        return sport >= dport
    return True


@dataclass(frozen=True, kw_only=True, init=False)
class QuicFields(EventFields):
    """A QUIC Initial whose SNI is listed."""

    sni: str
    """The SNI of the decrypted ClientHello."""
    quic_version: int
    """The Initial's QUIC version."""
    why: str | None = None
    """Why a listed Initial passed: its ports (the ``port_rule``) or its ``version``."""
    draw: float | None = None
    """The draw that spared it, with ``probability`` below 1."""
    probability: float | None = None
    """The chance that a listed Initial is blocked."""
    block_after_ms: float | None = None
    """Milliseconds after the Initial at which the block starts (the drawn block latency)."""

    # Written out: a dataclass's generated __init__ runs interpreted even where the class is
    # compiled (gfwlab._build); this one is compiled with it.
    def __init__(
        self,
        *,
        sni: str,
        quic_version: int,
        why: str | None = None,
        draw: float | None = None,
        probability: float | None = None,
        block_after_ms: float | None = None,
    ) -> None:
        object.__setattr__(self, "sni", sni)
        object.__setattr__(self, "quic_version", quic_version)
        object.__setattr__(self, "why", why)
        object.__setattr__(self, "draw", draw)
        object.__setattr__(self, "probability", probability)
        object.__setattr__(self, "block_after_ms", block_after_ms)


class QuicSni(Mechanism[QuicSniParams]):
    citation = (
        "spec §5; Zohaib, Zao et al., Exposing and Circumventing SNI-based QUIC Censorship of "
        "the Great Firewall of China, USENIX Security 2025"
    )
    params_cls = QuicSniParams

    def setup(self) -> None:
        start = self.params.outbound_only_from
        self._outbound_from = dt.date.fromisoformat(start) if start else None

    def admits(self, flow: Flow) -> bool:
        if not Mechanism.admits(self, flow):
            return False
        if self._outbound_from is None or flow.direction == "inside-out":
            return True
        # Outside-in flows trigger it only before the outbound-only date (spec §5).
        return self.date is not None and self.date < self._outbound_from

    def needs(self) -> Needs:
        return Needs(quic_crypto_reading=self.params.crypto_reading)

    def inspects(self, seen: Seen) -> bool:
        return port_rule_admits(self.params.port_rule, seen.pkt.sport, seen.pkt.dport)

    def on_quic_initial(self, seen: Seen, initial: QuicInitial) -> Decision | None:
        p = self.params
        inspected = self.inspects(seen)
        if initial.sni is None:
            return None
        rule = p.domains.match(initial.sni)
        if rule is None:
            return None
        sni, version = initial.sni, initial.version
        if not inspected:
            fields = QuicFields(sni=sni, quic_version=version, why=p.port_rule)
            return Decision(action="pass", rule=rule, fields=fields)
        if initial.version not in p.versions:
            fields = QuicFields(sni=sni, quic_version=version, why="version")
            return Decision(action="pass", rule=rule, fields=fields)
        if p.probability < 1.0:
            draw = self.rng(seen).random()
            if draw >= p.probability:
                return Decision(
                    action="pass",
                    rule=rule,
                    fields=QuicFields(
                        sni=sni,
                        quic_version=version,
                        draw=rounded(draw, 6),
                        probability=p.probability,
                    ),
                )
        after, after_ms = 0.0, None
        if p.block_latency_ms:
            after_ms = rounded(quantiles.sample(p.block_latency_ms, self.rng(seen)), 3)
            after = after_ms / 1000.0
        return Decision(
            action="drop",
            rule=rule,
            drop=False,  # the Initial itself is delivered
            block="c2s",
            block_after=after,
            residual=Residual(key=p.residual_key, seconds=p.residual_s, policy="drop-c2s"),
            fields=QuicFields(sni=sni, quic_version=version, block_after_ms=after_ms),
        )


register_mechanism("quic_sni", QuicSni)
