"""The unconditional port-443 resets of 2025-08-20: 74 minutes of RST+ACK on every TCP/443 flow.

Source: spec §14a and §8; GFW Report, *Analysis of the GFW's Unconditional Port 443 Block on
August 20, 2025* (blog ``gfw_unconditional_rst_20250820``, M. Wu), net4people #511; x-cmd.com
blog 2025-08-23 (V2).

Measured, and emulated here:

- window: 2025-08-20 00:34-01:48 UTC+8, i.e. 2025-08-19 16:34-17:48 UTC (the ``active`` range,
  to the minute); outside it the mechanism does nothing, whatever ``--date`` says;
- ports: TCP 443 only (1-72, 22, 80, 444 and 8443 unaffected): ``ports``;
- inside-out: the client SYN draws 3 RST+ACK with relative seq 0 and TCP windows 1980, 1981,
  1982; the server SYN+ACK draws 3 more with relative seq 1 and windows 3293, 3294, 3295;
- outside-in: only the (Chinese) server's SYN+ACK triggers; the client SYN does not (so a SYN to
  a closed address, which draws no SYN+ACK, triggers nothing);
- no payload and no SNI are involved.

Not published, so parameters (spec §12.9, status U): the absolute TTL (``ttl``; it is reported
to rise by 1 per packet, V2: ``ttl_step``), IP-ID, DF, the latency, whether the server end is
reset too (``toward``; x-cmd says both parties, V2), and UDP/443 (not emulated).
"""

from __future__ import annotations

from dataclasses import dataclass

from mypy_extensions import mypyc_attr

from gfwlab.engine.actions import EventFields
from gfwlab.engine.mechanism import Decision, Mechanism, Seen
from gfwlab.mechanisms import register_mechanism
from gfwlab.mechanisms._burst import BurstShape, Toward, forge_burst
from gfwlab.packet.ip import ACK, SYN
from gfwlab.rules import CommonParams


@mypyc_attr(native_class=False)
@dataclass(frozen=True, slots=True, kw_only=True)
class UnconditionalRst443Params(CommonParams):
    ports: tuple[int, ...] = (443,)
    """Server TCP ports reset (measured: 443 only)."""
    syn_windows: tuple[int, ...] = (1980, 1981, 1982)
    """TCP window of each RST+ACK the client SYN draws (inside-out only); one packet each."""
    syn_ack_windows: tuple[int, ...] = (3293, 3294, 3295)
    """TCP window of each RST+ACK the server SYN+ACK draws (both directions)."""
    outside_in_syn: bool = False
    """Whether an outside client's SYN triggers too (measured: it does not)."""
    ttl: int = 64
    """IP TTL of the first forged packet (U: not published)."""
    ttl_step: int = 1
    """TTL increase per packet of a burst (V2: reported to rise)."""
    ip_id: int = 0
    """IP-ID of the forged packets (U)."""
    df: bool = False
    """DF bit of the forged packets (U)."""
    toward: Toward = "both"
    """Which ends get the resets (measured at the client; both parties per x-cmd, V2)."""
    latency_ms: float = 0.5
    """Milliseconds from trigger to the first forged packet (U)."""


@dataclass(frozen=True, kw_only=True, init=False)
class HandshakeResetFields(EventFields):
    """A connection reset on its handshake, with no payload read."""

    trigger: str
    """``syn`` (the client SYN) or ``syn-ack`` (the server SYN+ACK)."""
    windows: tuple[int, ...]
    """The TCP windows of the forged burst (the event's fingerprint)."""
    port: int
    """The server port."""

    # Written out: a dataclass's generated __init__ runs interpreted even where the class is
    # compiled (gfwlab._build); this one is compiled with it.
    def __init__(self, *, trigger: str, windows: tuple[int, ...], port: int) -> None:
        object.__setattr__(self, "trigger", trigger)
        object.__setattr__(self, "windows", windows)
        object.__setattr__(self, "port", port)


class UnconditionalRst443(Mechanism[UnconditionalRst443Params]):
    citation = (
        "spec §14a; GFW Report, Analysis of the GFW's Unconditional Port 443 Block on "
        "August 20, 2025; net4people #511"
    )
    params_cls = UnconditionalRst443Params

    def on_new_flow(self, seen: Seen) -> Decision | None:
        p = self.params
        if not seen.c2s or seen.pkt.flags & (SYN | ACK) != SYN:
            return None
        if seen.flow.direction == "outside-in" and not p.outside_in_syn:
            return None
        return self._burst(seen, "syn", p.syn_windows)

    def on_syn_ack(self, seen: Seen) -> Decision | None:
        return self._burst(seen, "syn-ack", self.params.syn_ack_windows)

    def _burst(self, seen: Seen, trigger: str, windows: tuple[int, ...]) -> Decision | None:
        p = self.params
        if seen.flow.sport not in p.ports or not windows or not self.in_window(seen):
            return None
        shape = BurstShape(
            rst_ack=True, windows=windows, ttl=p.ttl, ttl_step=p.ttl_step, ip_id=p.ip_id, df=p.df
        )
        forged = forge_burst(
            seen.pkt, c2s=seen.c2s, toward=p.toward, shape=shape, delay=p.latency_ms / 1000.0
        )
        return Decision(
            action="rst",
            rule=f"tcp/{seen.flow.sport}",
            injections=forged,
            fields=HandshakeResetFields(trigger=trigger, windows=windows, port=seen.flow.sport),
        )


register_mechanism("unconditional_rst_443", UnconditionalRst443)
