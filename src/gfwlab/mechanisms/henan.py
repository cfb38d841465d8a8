"""Henan's provincial firewall: one RST+ACK with a 10-byte payload, to the client only.

Source: spec §1 and §14b; M. Wu, A. Zohaib et al., *A Wall Behind A Wall: Emerging Regional
Censorship in China*, IEEE S&P 2025.

Measured, and emulated here:
- trigger: the HTTP Host or the TLS SNI of a client data packet, matched against one shared list
  (``domains``) whose rules include whole second-level suffixes such as ``com.au`` (a bare rule
  covers every name under it), on any TCP port; no sampling;
- no handshake packet is needed (a lone data packet triggers it: the ``henan`` profile sets
  ``[tcb] require_syn = false``); no reassembly, neither of TCP segments nor of TLS records: only
  a data packet that carries the whole ClientHello record or request header block is parsed;
- the TCP header must be exactly 20 bytes (data offset 5): any option evades (the parser flaw);
- action: 1 RST+ACK to the client only, payload ``01 02 03 04 05 06 07 08 09 00``, IP-ID
  0x0001, DF=0, observed TTL 58; no residual blocking;
- scope: traffic leaving Henan only (``direction = "inside-out"``); measured on China Unicom
  (AS4837) from October 2023, user reports from August 2023 (``active``).
Differences: only the client's first data packet of a connection is parsed (the measurements
sent one request per connection); the injection latency was not published (sent at once).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from mypy_extensions import mypyc_attr

from gfwlab.engine.actions import EventFields
from gfwlab.engine.mechanism import Decision, Forged, Mechanism, Seen
from gfwlab.errors import MalformedPacket
from gfwlab.mechanisms import register_mechanism
from gfwlab.packet.ip import ACK, RST, build_tcp
from gfwlab.proto.http import parse_request
from gfwlab.proto.tls import parse_client_hello
from gfwlab.rules import CommonParams, DomainSet

PAYLOAD: Final = bytes((1, 2, 3, 4, 5, 6, 7, 8, 9, 0))
"""The payload of Henan's RST+ACK (S&P'25)."""


@mypyc_attr(native_class=False)
@dataclass(frozen=True, slots=True, kw_only=True)
class HenanParams(CommonParams):
    domains: DomainSet = DomainSet()
    """Host and SNI rules (one shared list); a bare rule such as ``com.au`` blocks every name
    under it (Henan's suffix rules, spec §14b)."""
    header_bytes: int = 20
    """The only TCP header length inspected (the 20-byte-header parser flaw); 0 inspects all."""
    ttl: int = 58
    """The RST+ACK's TTL (observed 58 at the client)."""
    ip_id: int = 0x0001
    """The RST+ACK's IP-ID."""


@dataclass(frozen=True, kw_only=True, init=False)
class HenanResetFields(EventFields):
    """A connection reset by Henan's firewall."""

    host: str
    """The Host header or SNI that matched."""
    protocol: str
    """``http`` (Host header) or ``tls`` (SNI)."""

    # Written out: a dataclass's generated __init__ runs interpreted even where the class is
    # compiled (gfwlab._build); this one is compiled with it.
    def __init__(self, *, host: str, protocol: str) -> None:
        object.__setattr__(self, "host", host)
        object.__setattr__(self, "protocol", protocol)


class Henan(Mechanism[HenanParams]):
    citation = (
        "spec §1, §14b; Wu, Zohaib et al., A Wall Behind A Wall: Emerging Regional Censorship "
        "in China, IEEE S&P 2025"
    )
    params_cls = HenanParams

    def on_first_data(self, seen: Seen, payload: bytes) -> Decision | None:
        p, pkt = self.params, seen.pkt
        if not seen.c2s or (p.header_bytes and (pkt.raw[pkt.l4 + 12] >> 4) * 4 != p.header_bytes):
            return None
        host, proto = _host(payload)
        rule = p.domains.match(host) if host else None
        if rule is None or host is None:
            return None
        seg = len(pkt.payload)
        rst = build_tcp(
            pkt.dst, pkt.src, pkt.dport, pkt.sport, seq=pkt.ack, ack=pkt.seq + seg,
            flags=RST | ACK, window=0, payload=PAYLOAD, ttl=p.ttl, ip_id=p.ip_id, df=False,
        )  # fmt: skip
        return Decision(
            action="rst",
            rule=rule,
            injections=(Forged(packet=rst, delay=0.0, toward="client"),),
            fields=HenanResetFields(host=host, protocol=proto),
        )


def _host(payload: bytes) -> tuple[str | None, str]:
    """The SNI or Host a single packet carries whole, or None."""
    try:
        if payload[:1] == b"\x16":
            hello = parse_client_hello(payload)
            return (hello.sni if hello is not None else None), "tls"
        request = parse_request(payload)
    except MalformedPacket:
        return None, ""
    return (request.host if request is not None else None), "http"


register_mechanism("henan", Henan)
