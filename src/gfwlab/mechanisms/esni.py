"""ESNI blocking: drop client-to-server packets of connections whose ClientHello carries ESNI.

Source: spec §4b; K. Bock, iyouport, Anonymous, L.-H. Merino, D. Fifield, A. Houmansadr,
D. Levin, *Exposing and Circumventing China's Censorship of ESNI*, 2020 (net4people #43).

Measured, and emulated here:

- first seen 2020-07-29 (``active.start``); no end has been reported;
- trigger: a ClientHello with the encrypted_server_name extension 0xffce (necessary), on any
  TCP port 1-65535;
- triggerable in both directions for about two weeks, then one direction only: the profile's
  ``direction`` parameter (default ``inside-out``; set ``both`` for August 2020);
- action: no reset; client-to-server packets are dropped whatever their flags;
- residual: 120 or 180 s on (source IP, destination IP, destination port) (``residual_s``).

ECH (0xfe0d) is not blocked by the GFW as of late 2025 (spec §4c); this mechanism ignores it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from mypy_extensions import mypyc_attr

from gfwlab.engine.actions import EventFields
from gfwlab.engine.mechanism import Decision, Mechanism, Residual, Seen
from gfwlab.mechanisms import register_mechanism
from gfwlab.proto.tls import ClientHello
from gfwlab.rules import CommonParams, ResidualKey


@mypyc_attr(native_class=False)
@dataclass(frozen=True, slots=True, kw_only=True)
class EsniParams(CommonParams):
    direction: Literal["both", "inside-out", "outside-in"] = "inside-out"
    """Bidirectional for ~2 weeks from 2020-07-29, then unidirectional (spec §4b)."""
    residual_s: float = 180.0
    """Residual drop window: 120 or 180 s were both observed."""
    residual_key: ResidualKey = "3-tuple"
    """(source IP, destination IP, destination port)."""


@dataclass(frozen=True, kw_only=True, init=False)
class EsniFields(EventFields):
    """A ClientHello dropped for its encrypted_server_name extension."""

    sni: str | None
    """The plain-text SNI beside it, if any."""

    # Written out: a dataclass's generated __init__ runs interpreted even where the class is
    # compiled (gfwlab._build); this one is compiled with it.
    def __init__(self, *, sni: str | None) -> None:
        object.__setattr__(self, "sni", sni)


class Esni(Mechanism[EsniParams]):
    citation = "spec §4b; Bock et al., Exposing and Circumventing China's Censorship of ESNI, 2020"
    params_cls = EsniParams

    def on_client_hello(self, seen: Seen, hello: ClientHello) -> Decision | None:
        if not hello.has_esni:
            return None
        p = self.params
        return Decision(
            action="drop",
            rule="tls.extension:0xffce",
            drop=True,
            block="c2s",
            residual=Residual(key=p.residual_key, seconds=p.residual_s, policy="drop-c2s"),
            fields=EsniFields(sni=hello.sni),
        )


register_mechanism("esni", Esni)
