"""RST-based IP:port blocking: 1.1.1.1:443 reset on the handshake, 2023-09-05 to 2023-09-20.

Source: spec §14a and §8; net4people #285 (scope, trigger), #295 (end, later changes); ooni/data
#139.

Measured, and emulated here:

- window: from 2023-09-05, about 06:00 UTC, to 2023-09-20 (the ``active`` range; the hour the
  resets stopped was not given, so the range ends at the start of the 20th: U);
- scope: the address 1.1.1.1 only (not 1.0.0.1, not Cloudflare's IPv6 resolvers), TCP/443 only
  (not TCP 53 or 80, not UDP): ``targets`` and ``ports``. Live, the lab maps the address to a lab
  address (nothing is ever sent to 1.1.1.1);
- trigger: the client SYN, whatever the SNI (or none): 3 resets with the same sequence number
  (unlike Clayton 2006's base, +1460, +4380).

Believed, not measured (U, parameters): the server SYN/ACK triggers 3 more (``on_syn_ack``, 6 in
all); RST or RST+ACK (``rst_ack``: RST+ACK, since a bare RST does not abort a Linux client in
SYN-SENT and the thread reports failed connections), TTL, window, IP-ID and DF. The Cloudflare
and CDN77 resets on data (2025) and the TCP/80 redirect of 2023-10-01 are not emulated.
"""

from __future__ import annotations

from dataclasses import dataclass

from mypy_extensions import mypyc_attr

from gfwlab.engine.actions import EventFields
from gfwlab.engine.mechanism import Decision, Mechanism, Seen
from gfwlab.mechanisms import register_mechanism
from gfwlab.mechanisms._burst import BurstShape, Toward, forge_burst
from gfwlab.packet.ip import ACK, SYN, addr_text
from gfwlab.rules import CommonParams, Prefixes


@mypyc_attr(native_class=False)
@dataclass(frozen=True, slots=True, kw_only=True)
class IpPortRstParams(CommonParams):
    targets: Prefixes = Prefixes()
    """Server addresses reset (measured: 1.1.1.1/32 only)."""
    ports: tuple[int, ...] = (443,)
    """Server TCP ports reset (measured: 443 only)."""
    count: int = 3
    """Resets per trigger, all with the same sequence number."""
    on_syn_ack: bool = True
    """Whether the server SYN/ACK draws a burst too (believed in the thread, not measured)."""
    rst_ack: bool = True
    """RST+ACK (True) or bare RST (unconfirmed)."""
    window: int = 0
    """TCP window of the resets (U)."""
    ttl: int = 64
    """IP TTL of the resets (U)."""
    ip_id: int = 0
    """IP-ID of the resets (U)."""
    df: bool = False
    """DF bit of the resets (U)."""
    toward: Toward = "both"
    """Which ends get the resets (U: the thread saw the client side)."""
    latency_ms: float = 0.5
    """Milliseconds from trigger to the first reset (U)."""


@dataclass(frozen=True, kw_only=True, init=False)
class IpPortResetFields(EventFields):
    """A connection to a listed address and port reset on its handshake."""

    trigger: str
    """``syn`` (the client SYN) or ``syn-ack`` (the server SYN/ACK)."""
    server: str
    """The listed server address."""
    count: int
    """Resets in the burst (each end)."""

    # Written out: a dataclass's generated __init__ runs interpreted even where the class is
    # compiled (gfwlab._build); this one is compiled with it.
    def __init__(self, *, trigger: str, server: str, count: int) -> None:
        object.__setattr__(self, "trigger", trigger)
        object.__setattr__(self, "server", server)
        object.__setattr__(self, "count", count)


class IpPortRst(Mechanism[IpPortRstParams]):
    citation = "spec §14a; net4people #285, #295; ooni/data #139"
    params_cls = IpPortRstParams

    def on_new_flow(self, seen: Seen) -> Decision | None:
        if not seen.c2s or seen.pkt.flags & (SYN | ACK) != SYN:
            return None
        return self._burst(seen, "syn")

    def on_syn_ack(self, seen: Seen) -> Decision | None:
        return self._burst(seen, "syn-ack") if self.params.on_syn_ack else None

    def _burst(self, seen: Seen, trigger: str) -> Decision | None:
        p, flow = self.params, seen.flow
        if flow.sport not in p.ports or not p.targets.contains(flow.server):
            return None
        if not self.in_window(seen) or p.count <= 0:
            return None
        shape = BurstShape(
            rst_ack=p.rst_ack,
            windows=(p.window,) * p.count,
            ttl=p.ttl,
            ttl_step=0,
            ip_id=p.ip_id,
            df=p.df,
        )
        forged = forge_burst(
            seen.pkt, c2s=seen.c2s, toward=p.toward, shape=shape, delay=p.latency_ms / 1000.0
        )
        server = addr_text(flow.server)
        return Decision(
            action="rst",
            rule=f"{server}:{flow.sport}",
            injections=forged,
            fields=IpPortResetFields(trigger=trigger, server=server, count=p.count),
        )


register_mechanism("ip_port_rst", IpPortRst)
