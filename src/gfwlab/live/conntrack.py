"""One question to the kernel's connection tracking: the mark of the connection a packet is on.

The live censor asks it only for the rare packet that reaches its queue without a connection
(conntrack found it INVALID, ``live/kernel.py`` :func:`~gfwlab.live.kernel.seen_rules`), to learn
whether the kernel forwarded the connection's SYN/ACK without showing it to the engine
(``LiveCensor.conntrack_invalid``). It is one ctnetlink ``IPCTNL_MSG_CT_GET`` request on a
netlink socket of the censor's namespace (the one ``conntrack -G`` sends): the kernel finds the
entry by either of its tuples and answers at once, so a packet of either direction can be asked
about as it was sent. No library or program is needed for it.
"""

from __future__ import annotations

import itertools
import socket
import struct

NETLINK_NETFILTER = 12
NLM_F_REQUEST = 0x1
NLMSG_ERROR = 2
NLA_F_NESTED = 0x8000
NLA_TYPE_MASK = 0x3FFF
NFNL_SUBSYS_CTNETLINK = 1
IPCTNL_MSG_CT_GET = 1
CTA_TUPLE_ORIG = 1
CTA_TUPLE_IP = 1
CTA_TUPLE_PROTO = 2
CTA_IP_V4_SRC, CTA_IP_V4_DST, CTA_IP_V6_SRC, CTA_IP_V6_DST = 1, 2, 3, 4
CTA_PROTO_NUM, CTA_PROTO_SRC_PORT, CTA_PROTO_DST_PORT = 1, 2, 3
CTA_MARK = 8

_HEADER = struct.Struct("=IHHII")
"""struct nlmsghdr: length, type, flags, sequence number, port id."""


def _attr(kind: int, data: bytes) -> bytes:
    """One netlink attribute, padded to 4 bytes."""
    size = 4 + len(data)
    return struct.pack("=HH", size, kind) + data + b"\0" * (-size % 4)


def get_request(seq: int, proto: int, src: bytes, sport: int, dst: bytes, dport: int) -> bytes:
    """The ctnetlink message that asks for the entry holding the tuple (src, sport) -> (dst,
    dport) of protocol ``proto`` (4- or 16-byte addresses)."""
    v6 = len(src) == 16
    ip = _attr(CTA_IP_V6_SRC if v6 else CTA_IP_V4_SRC, src)
    ip += _attr(CTA_IP_V6_DST if v6 else CTA_IP_V4_DST, dst)
    ports = _attr(CTA_PROTO_NUM, bytes([proto]))
    ports += _attr(CTA_PROTO_SRC_PORT, struct.pack("!H", sport))
    ports += _attr(CTA_PROTO_DST_PORT, struct.pack("!H", dport))
    tuple_ = _attr(CTA_TUPLE_IP | NLA_F_NESTED, ip) + _attr(CTA_TUPLE_PROTO | NLA_F_NESTED, ports)
    family = socket.AF_INET6 if v6 else socket.AF_INET
    body = struct.pack("=BBH", family, 0, 0) + _attr(CTA_TUPLE_ORIG | NLA_F_NESTED, tuple_)
    kind = (NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_GET
    return _HEADER.pack(_HEADER.size + len(body), kind, NLM_F_REQUEST, seq, 0) + body


def parse_reply(data: bytes, seq: int) -> int | None:
    """The connection mark in the kernel's answer to request ``seq`` (0 if the entry has none),
    or None if the kernel has no such entry or answered with an error."""
    off = 0
    while off + _HEADER.size <= len(data):
        size, kind, _flags, got, _port = _HEADER.unpack_from(data, off)
        if size < _HEADER.size:
            return None
        msg = data[off + _HEADER.size : off + size]
        off += (size + 3) & ~3
        if got != seq:
            continue  # the answer to an earlier request that gave up
        if kind == NLMSG_ERROR or kind >> 8 != NFNL_SUBSYS_CTNETLINK:
            return None
        pos = 4  # struct nfgenmsg
        while pos + 4 <= len(msg):
            alen, atype = struct.unpack_from("=HH", msg, pos)
            if alen < 4:
                return None
            if atype & NLA_TYPE_MASK == CTA_MARK and alen >= 8:
                return int(struct.unpack_from("!I", msg, pos + 4)[0])
            pos += (alen + 3) & ~3
        return 0
    return None


class Conntrack:
    """A ctnetlink socket of the current network namespace, opened on first use (root only)."""

    def __init__(self, timeout: float = 0.5) -> None:
        self.timeout = timeout
        self.sock: socket.socket | None = None
        self._seq = itertools.count(1)
        self.asked = 0
        """Requests sent."""
        self.errors = 0
        """Requests that got no answer (socket errors, timeouts)."""

    def mark(self, proto: int, src: bytes, sport: int, dst: bytes, dport: int) -> int | None:
        """The mark of the connection holding this tuple (either direction), or None if there
        is none or the kernel could not be asked."""
        seq = next(self._seq) & 0xFFFFFFFF
        self.asked += 1
        try:
            if self.sock is None:
                self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
                self.sock.settimeout(self.timeout)
                self.sock.bind((0, 0))
            self.sock.send(get_request(seq, proto, src, sport, dst, dport))
            while True:
                data = self.sock.recv(65536)
                mark = parse_reply(data, seq)
                if mark is not None or _answers(data, seq):
                    return mark
        except OSError:
            self.errors += 1
            self.close()
            return None

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None


def _answers(data: bytes, seq: int) -> bool:
    """Whether ``data`` holds a message answering request ``seq``."""
    off = 0
    while off + _HEADER.size <= len(data):
        size, _kind, _flags, got, _port = _HEADER.unpack_from(data, off)
        if got == seq:
            return True
        if size < _HEADER.size:
            return False
        off += (size + 3) & ~3
    return False
