"""ipset entries added and taken out over netlink, from the censor's packet loop.

The censor writes an ipset entry for each residual drop block it mirrors into the kernel
(``live/kernel.py``) and for each blocked flow it hands to the kernel (``live/blocked.py``), and
fills or empties the set that pauses the SYN copies. The ``ipset`` command costs a process each
time, about 1.1 ms on the lab's machine, and the loop waits for it while packets queue.
pyroute2's ``IPSet`` (0.9.7) takes about 250 µs an entry, its message classes alone 180 µs
(their attribute layer); an entry is a handful of fixed attributes, so the messages are built
here with ``struct``, as ``live/nflog.py`` builds its own: about 9 µs an entry, measured in a
namespace (``tests/test_live_ipset.py`` compares what both ways write). Creating, listing and
flushing sets stay with the command: they are not on the packet path.

The message (``include/uapi/linux/netfilter/ipset/ip_set.h``): an nfnetlink request of the
ipset subsystem, command ``IPSET_CMD_ADD`` or ``IPSET_CMD_DEL``, without ``NLM_F_EXCL`` (the
command's ``-exist``: an entry added again gets the new timeout, a missing one deleted is no
error), with an acknowledgement asked for; its attributes: the protocol version, the set's
name and the entry (``IPSET_ATTR_DATA``): an address, its prefix length for a net, a
protocol and port, a second address, a timeout, in the order the set's type takes them.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import socket
import struct
from collections.abc import Callable
from typing import Protocol

from gfwlab.errors import LabError
from gfwlab.live.nflog import NETLINK_NETFILTER, NLM_F_ACK, acknowledgement, attr, request

NFNL_SUBSYS_IPSET = 6
IPSET_CMD_ADD = 9
IPSET_CMD_DEL = 10
IPSET_PROTOCOL = 6
"""The oldest protocol version kernels take (Linux keeps accepting it: ``IPSET_PROTOCOL_MIN``)."""
IPSET_ATTR_PROTOCOL = 1
IPSET_ATTR_SETNAME = 2
IPSET_ATTR_DATA = 7
IPSET_ATTR_IP = 1
IPSET_ATTR_CIDR = 3
IPSET_ATTR_PORT = 4
IPSET_ATTR_TIMEOUT = 6
IPSET_ATTR_PROTO = 7
IPSET_ATTR_IP2 = 20
IPSET_ATTR_IPADDR_IPV4 = 1
IPSET_ATTR_IPADDR_IPV6 = 2
NLA_F_NESTED = 0x8000
NLA_F_NET_BYTEORDER = 0x4000
_PROTOS = {"tcp": socket.IPPROTO_TCP, "udp": socket.IPPROTO_UDP}
_IPSET_ERRORS = {
    4097: "protocol error (an attribute the set's type needs is missing or malformed)",
    4103: "the entry is already there",
    4107: "the set has no timeout",
    4109: "not an IPv4 address",
    4110: "not an IPv6 address",
    4352: "the set is full",
    4354: "invalid protocol",
    4355: "protocol missing",
}
"""What the errors the kernel can send for an entry mean (``ip_set.h``; from 4352 on the hash
types' own, ``ip_set_hash.h``)."""


class Entries(Protocol):
    """Adds and takes out entries of the censor namespace's sets (one element text each, as the
    ``ipset`` command writes it: ``198.18.0.2,tcp:40000,198.19.0.1``, ``0.0.0.0/1``)."""

    def add(self, name: str, element: str, timeout: int | None = None) -> None: ...
    def delete(self, name: str, element: str) -> None: ...


class CommandEntries:
    """Entries through the ``ipset`` command (``run`` runs it in the censor namespace and raises
    LabError if it fails: ``Kernel.command``); for a censor outside the namespace."""

    def __init__(self, run: Callable[[list[str]], str]) -> None:
        self.run = run

    def add(self, name: str, element: str, timeout: int | None = None) -> None:
        extra = [] if timeout is None else ["timeout", str(timeout)]
        self.run(["ipset", "-exist", "add", name, element, *extra])

    def delete(self, name: str, element: str) -> None:
        self.run(["ipset", "-exist", "del", name, element])


class NetlinkEntries:
    """Entries over a netlink socket of the namespace the censor runs in."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
        self.sock.bind((0, 0))
        self.sock.settimeout(2.0)
        self.seq = 0

    def add(self, name: str, element: str, timeout: int | None = None) -> None:
        self._send(IPSET_CMD_ADD, name, element, timeout)

    def delete(self, name: str, element: str) -> None:
        self._send(IPSET_CMD_DEL, name, element, None)

    def close(self) -> None:
        self.sock.close()

    def _send(self, command: int, name: str, element: str, timeout: int | None) -> None:
        verb = "add" if command == IPSET_CMD_ADD else "del"
        try:
            family, data = entry(element, timeout)
        except ValueError:
            raise LabError(f"ipset {verb} {name} {element}: not an entry") from None
        self.seq = self.seq % 0xFFFFFFFF + 1
        attrs = (
            attr(IPSET_ATTR_PROTOCOL, bytes([IPSET_PROTOCOL]))
            + attr(IPSET_ATTR_SETNAME, name.encode() + b"\0")
            + attr(IPSET_ATTR_DATA | NLA_F_NESTED, data)
        )
        message = request(NFNL_SUBSYS_IPSET, command, 0, attrs, self.seq, NLM_F_ACK, family)
        try:
            self.sock.send(message)
            code = self._ack()
        except OSError as exc:
            raise LabError(f"ipset {verb} {name} {element}: {exc}") from None
        if code:
            why = _IPSET_ERRORS.get(code) or os.strerror(code)
            if code == errno.ENOENT:
                why = "no such set"
            raise LabError(f"ipset {verb} {name} {element}: {why}")

    def _ack(self) -> int:
        """The error code of the acknowledgement of the message just sent (0: done)."""
        while True:
            code = acknowledgement(self.sock.recv(8192), self.seq)
            if code is not None:
                return code


def entry(element: str, timeout: int | None) -> tuple[int, bytes]:
    """The address family and the ``IPSET_ATTR_DATA`` attributes of ``element`` (raises
    ValueError if it is not one: an address or net, then optionally ``proto:port``, then
    optionally a second address)."""
    parts = element.split(",")
    if not 1 <= len(parts) <= 3:
        raise ValueError(element)
    text, slash, prefix = parts[0].partition("/")
    first = ipaddress.ip_address(text)
    family = socket.AF_INET6 if first.version == 6 else socket.AF_INET
    data = _address(IPSET_ATTR_IP, first)
    if slash:
        bits = int(prefix)
        if not 0 <= bits <= first.max_prefixlen:
            raise ValueError(element)
        data += attr(IPSET_ATTR_CIDR, bytes([bits]))
    if len(parts) > 1:
        proto, colon, port = parts[1].partition(":")
        if not colon or proto not in _PROTOS or not 0 <= int(port) <= 0xFFFF:
            raise ValueError(element)
        data += attr(IPSET_ATTR_PORT | NLA_F_NET_BYTEORDER, struct.pack("!H", int(port)))
        data += attr(IPSET_ATTR_PROTO, bytes([_PROTOS[proto]]))
    if len(parts) > 2:
        second = ipaddress.ip_address(parts[2])
        if second.version != first.version:
            raise ValueError(element)
        data += _address(IPSET_ATTR_IP2, second)
    if timeout is not None:
        data += attr(IPSET_ATTR_TIMEOUT | NLA_F_NET_BYTEORDER, struct.pack("!I", timeout))
    return family, data


def _address(kind: int, addr: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bytes:
    inner = IPSET_ATTR_IPADDR_IPV6 if addr.version == 6 else IPSET_ATTR_IPADDR_IPV4
    return attr(kind | NLA_F_NESTED, attr(inner | NLA_F_NET_BYTEORDER, addr.packed))


def open_entries(argv: list[str], run: Callable[[list[str]], str]) -> Entries:
    """Netlink inside the censor namespace (``argv`` empty); the command from outside it, or if
    this kernel will not open a netfilter netlink socket."""
    if not argv:
        try:
            return NetlinkEntries()
        except OSError:
            pass
    return CommandEntries(run)
