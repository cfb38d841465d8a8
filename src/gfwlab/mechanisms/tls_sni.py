"""TLS SNI filtering: forged resets when a ClientHello names a blocked server.

Source: spec §4a; M. Wu, A. Zohaib et al., *A Wall Behind A Wall: Emerging Regional Censorship in
China*, IEEE S&P 2025 (fingerprints, residual, latency, parsing logic); GFWeb (USENIX Security
2024) for list scale and asymmetry (spec §1).

Measured, and emulated here:

- trigger: the SNI of a TLS ClientHello, on any TCP port, matched against a list separate from
  the HTTP list; the list is asymmetric (as of 2024-07-10, 68 Tranco domains such as google.com
  and torproject.org were blocked only inside-out, none only outside-in): ``domains`` applies to
  both directions and ``inside_out_only`` to inside-out flows only;
- the client SYN must have been seen, the SYN/ACK need not be (``[tcb] require_syn``); TCP is
  reassembled, TLS records are not (a ClientHello split across records passes, 2024-04-04),
  except on networks that join records (``record_reassembly_from``: CERNET and China Mobile
  from December 2025, spec §14d; set by ``--network``, see :mod:`gfwlab.profiles.networks`);
- action: resets to both ends from injector types I, II or III (``injector``; see ``_forge``):
  per trigger 60.66% / 38.69% / 0.65%, sticky per name; the first reset after the ClientHello
  from the measured per-type delay distributions (p50 14.69 ms for type I, 16.58 ms for type II);
- residual: 180 s for all three types, on (client IP, server IP, server port); new connections
  on that key are reset.

Differences: the emulator resets a residual connection on its SYN (when the measured devices
act within the handshake is not published); ``residual_probability`` is 1 by default.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from mypy_extensions import mypyc_attr

from gfwlab.engine.actions import EventFields
from gfwlab.engine.mechanism import Decision, Mechanism, Needs, Residual, Seen
from gfwlab.mechanisms import register_mechanism
from gfwlab.mechanisms._forge import PinnedInjectors, ResetParams, ResidualResetFields, forge_resets
from gfwlab.proto.tls import ClientHello
from gfwlab.rules import DomainSet, ResidualKey


@mypyc_attr(native_class=False)
@dataclass(frozen=True, slots=True, kw_only=True)
class TlsSniParams(ResetParams):
    domains: DomainSet = DomainSet()
    """SNI rules blocked in both directions (bare domains include subdomains)."""
    inside_out_only: DomainSet = DomainSet()
    """SNI rules blocked only when the client is inside (spec §1 asymmetry)."""
    residual_s: float = 180.0
    """How long later connections on the residual key are reset."""
    residual_key: ResidualKey = "3-tuple"
    """What the residual block is keyed on."""
    residual_probability: float = 1.0
    """Chance that a new connection on the key is reset during the residual window."""
    record_reassembly_from: str = ""
    """From this day (a quoted YYYY-MM-DD) a ClientHello split across TLS records is joined and
    read (CERNET, China Mobile: December 2025, spec §14d); with no ``--date``, the latest
    behaviour. Empty: never (the national GFW, 2024-04-04)."""

    def __post_init__(self) -> None:
        if self.record_reassembly_from:
            try:
                dt.date.fromisoformat(self.record_reassembly_from)
            except ValueError:
                raise ValueError(
                    "record_reassembly_from must be YYYY-MM-DD or empty, "
                    f"got {self.record_reassembly_from!r}"
                ) from None


@dataclass(frozen=True, kw_only=True, init=False)
class SniResetFields(EventFields):
    """A connection reset for its SNI."""

    sni: str
    """The server name in the ClientHello."""
    injector: str
    """Which RST injector's fingerprint the forged packets carry (spec §4a, S&P'25)."""

    # Written out: a dataclass's generated __init__ runs interpreted even where the class is
    # compiled (gfwlab._build); this one is compiled with it.
    def __init__(self, *, sni: str, injector: str) -> None:
        object.__setattr__(self, "sni", sni)
        object.__setattr__(self, "injector", injector)


class TlsSni(Mechanism[TlsSniParams]):
    citation = (
        "spec §4a; Wu, Zohaib et al., A Wall Behind A Wall: Emerging Regional Censorship in "
        "China, IEEE S&P 2025"
    )
    params_cls = TlsSniParams

    def setup(self) -> None:
        self._pins = PinnedInjectors(self.params)

    def needs(self) -> Needs:
        since = self.params.record_reassembly_from
        joins = bool(since) and (self.date is None or self.date >= dt.date.fromisoformat(since))
        return Needs(tls_records=joins)

    def on_client_hello(self, seen: Seen, hello: ClientHello) -> Decision | None:
        if hello.sni is None:
            return None
        p = self.params
        rule = p.domains.match(hello.sni)
        if rule is None and seen.flow.direction == "inside-out":
            rule = p.inside_out_only.match(hello.sni)
        if rule is None:
            return None
        return self._reset(seen, rule, hello.sni)

    def residual_hit(self, seen: Seen, rule: str) -> Decision | None:
        return self._reset(seen, rule, None)

    def _reset(self, seen: Seen, rule: str, sni: str | None) -> Decision:
        p = self.params
        kind, forged = forge_resets(
            seen.pkt,
            c2s=seen.c2s,
            params=p,
            rng=self.rng(seen),
            pinned=lambda: self._pins.pin(sni or rule, self.keyed_rng),
        )
        return Decision(
            action="rst",
            rule=rule,
            injections=forged,
            block="none",
            residual=Residual(
                key=p.residual_key,
                seconds=p.residual_s,
                policy="rst",
                probability=p.residual_probability,
            ),
            fields=SniResetFields(sni=sni, injector=kind)
            if sni is not None
            else ResidualResetFields(injector=kind),
        )


register_mechanism("tls_sni", TlsSni)
