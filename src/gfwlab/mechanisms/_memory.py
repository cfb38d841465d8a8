"""Plausible injector memory for the Wallbleed leak: generated, never the emulator's own.

What the real injector leaked (Wallbleed, NDSS 2025, §IV; the hexdumps in
``blackbox-tests.inc``): fragments of other traffic it had buffered, chiefly SSDP/UPnP
multicast text (``M-SEARCH``/``NOTIFY`` with ``HOST: 239.255.255.250:1900``, ``ST: ssdp:all``,
``LOCATION: http://192.168.1.1:80/UPnP/IGD.xml``, ``uuid:...``), then binary runs that look like
ciphertext, runs of zero bytes, and packet headers. :func:`plausible_memory` strings such
segments together from a seeded stream; the mix is a guess from those hexdumps, not a measured
distribution.
"""

from __future__ import annotations

from typing import Final

from gfwlab.engine import draws
from gfwlab.engine.stream import Stream

_SSDP: Final = (
    'M-SEARCH * HTTP/1.1\r\nHOST: 239.255.255.250:1900\r\nMAN: "ssdp:discover"\r\nMX: {mx}\r\n'
    "ST: ssdp:all\r\n\r\n",
    "NOTIFY * HTTP/1.1\r\nHOST: 239.255.255.250:1900\r\nCACHE-CONTROL: max-age = 120\r\n"
    "LOCATION: http://192.168.{a}.{b}:80/UPnP/IGD.xml\r\n"
    "NT: urn:schemas-upnp-org:device:WANDevice:1\r\nUSN: uuid:{uuid}\r\n\r\n",
    "HTTP/1.1 200 OK\r\nCACHE-CONTROL: max-age = 120\r\nEXT: \r\n"
    "LOCATION: http://192.168.{a}.{b}:80/UPnP/IGD.xml\r\nST: uuid:IGD{{{uuid}}}\r\n\r\n",
)


def _uuid(rng: Stream) -> str:
    h = rng.randbytes(16).hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def _segment(rng: Stream) -> bytes:
    kind = draws.weighted(rng, ("text", "binary", "zeros", "header"), (4, 3, 2, 1))
    if kind == "text":
        text = draws.choice(rng, _SSDP).format(
            mx=draws.randint(rng, 1, 5),
            a=draws.randint(rng, 0, 3),
            b=draws.randint(rng, 1, 254),
            uuid=_uuid(rng),
        )
        start = draws.randrange(rng, len(text) // 2)
        return text[start:].encode()
    if kind == "binary":
        return rng.randbytes(draws.randint(rng, 8, 64))
    if kind == "zeros":
        return bytes(draws.randint(rng, 4, 48))
    # An IPv4 + UDP header of some other packet.
    ip = bytes((0x45, 0)) + draws.randint(rng, 60, 1500).to_bytes(2, "big") + rng.randbytes(2)
    ip += b"\x40\x00" + bytes((draws.randint(rng, 30, 128), 17)) + rng.randbytes(10)
    return (
        ip + rng.randbytes(4) + draws.randint(rng, 20, 1480).to_bytes(2, "big") + rng.randbytes(2)
    )


def plausible_memory(rng: Stream, n: int) -> bytes:
    """``n`` bytes of made-up injector memory, drawn from ``rng``."""
    out = bytearray()
    while len(out) < n:
        out += _segment(rng)
    return bytes(out[:n])
