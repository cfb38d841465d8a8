"""Forged packets out: each as a whole Ethernet frame on the censor's link toward its destination.

An AF_PACKET socket sends the frame as it is, so every header field of the forged packet (TTL,
IP-ID 0, DF, flags) is exactly the injector's: a raw IP socket would let the kernel replace an
IP-ID of 0.
"""

from __future__ import annotations

import ipaddress
import socket

from gfwlab.live.topology import CLIENT_LINK, INSIDE, SERVER_LINK
from gfwlab.rules.schema import Prefixes

ETH_P_IP = b"\x08\x00"
ETH_P_IPV6 = b"\x86\xdd"


class FrameInjector:
    """Sends forged IP packets as Ethernet frames on the link toward their destination."""

    def __init__(self) -> None:
        self._inside = Prefixes(tuple(ipaddress.ip_network(p) for p in INSIDE))
        self._links: dict[bool, tuple[socket.socket, bytes]] = {}
        for inside, dev, src_mac, dst_mac in (
            (True, CLIENT_LINK.b, CLIENT_LINK.b_mac, CLIENT_LINK.a_mac),
            (False, SERVER_LINK.a, SERVER_LINK.a_mac, SERVER_LINK.b_mac),
        ):
            sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
            sock.bind((dev, 0))
            self._links[inside] = (sock, _mac(dst_mac) + _mac(src_mac))
        self.sent = 0

    def send(self, packet: bytes) -> None:
        v6 = packet[0] >> 4 == 6
        dst = packet[24:40] if v6 else packet[16:20]
        sock, header = self._links[self._inside.contains(dst)]
        sock.send(header + (ETH_P_IPV6 if v6 else ETH_P_IP) + packet)
        self.sent += 1

    def close(self) -> None:
        for sock, _ in self._links.values():
            sock.close()


def _mac(text: str) -> bytes:
    return bytes(int(part, 16) for part in text.split(":"))
