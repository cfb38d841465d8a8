"""ipset entries added and taken out over netlink, from the censor's packet loop.

The censor writes an ipset entry for each residual drop block it mirrors into the kernel
(``live/kernel.py``) and for each blocked flow it hands to the kernel (``live/blocked.py``), and
fills or empties the set that pauses the SYN copies. The ``ipset`` command costs a process each
time, about 1.1 ms on the lab's machine, and the loop waits for it while packets queue.
pyroute2's ``IPSet`` (0.9.7) takes about 250 µs an entry, its message classes alone 180 µs
(their attribute layer); an entry is a handful of fixed attributes, so the messages are built
here with ``struct``, as ``live/nflog.py`` builds its own: about 9 µs an entry, measured in a
namespace (``tests/test_live_ipset.py`` compares what both ways write). Creating and flushing
sets stay with the command: they are not on the packet path.

Listing is, every few seconds while the kernel holds blocked flows (``live/blocked.py``
:meth:`~gfwlab.live.blocked.HeldFlows.check` reads how long each entry has left), so
:meth:`NetlinkEntries.timeouts` reads a set with one netlink dump (``IPSET_CMD_LIST``) and takes
each entry's attributes as they come, without text. Measured in the censor namespace with
100,000 entries in a set: 0.1 s compiled (0.3 s interpreted), against 0.9 s for ``ipset list
-output save`` read as text (0.75 s of it the command's own); the censor's queue waits all
that time.

The message (``include/uapi/linux/netfilter/ipset/ip_set.h``): an nfnetlink request of the
ipset subsystem, command ``IPSET_CMD_ADD`` or ``IPSET_CMD_DEL``, without ``NLM_F_EXCL`` (the
command's ``-exist``: an entry added again gets the new timeout, a missing one deleted is no
error), with an acknowledgement asked for; its attributes: the protocol version, the set's
name and the entry (``IPSET_ATTR_DATA``): an address, its prefix length for a net, a
protocol and port, a second address, a timeout, in the order the set's type takes them. A list
(``IPSET_CMD_LIST`` with ``NLM_F_DUMP``) is answered with messages that describe the set and
hold its entries in ``IPSET_ATTR_ADT``, each an ``IPSET_ATTR_DATA`` of the same attributes,
until ``NLMSG_DONE``.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import socket
import struct
from collections.abc import Callable
from typing import Final, Protocol

from gfwlab.errors import LabError
from gfwlab.live.nflog import (
    NETLINK_NETFILTER,
    NFGEN_HEADER,
    NLM_F_ACK,
    NLMSG_ERROR,
    NLMSG_HEADER,
    acknowledgement,
    align,
    attr,
    error_code,
    request,
    u16_host,
)

NFNL_SUBSYS_IPSET: Final = 6
IPSET_CMD_LIST: Final = 7
IPSET_CMD_ADD: Final = 9
IPSET_CMD_DEL: Final = 10
IPSET_PROTOCOL: Final = 6
"""The oldest protocol version kernels take (Linux keeps accepting it: ``IPSET_PROTOCOL_MIN``)."""
IPSET_ATTR_PROTOCOL: Final = 1
IPSET_ATTR_SETNAME: Final = 2
IPSET_ATTR_DATA: Final = 7
IPSET_ATTR_ADT: Final = 8
IPSET_ATTR_IP: Final = 1
IPSET_ATTR_CIDR: Final = 3
IPSET_ATTR_PORT: Final = 4
IPSET_ATTR_TIMEOUT: Final = 6
IPSET_ATTR_PROTO: Final = 7
IPSET_ATTR_IP2: Final = 20
IPSET_ATTR_IPADDR_IPV4: Final = 1
IPSET_ATTR_IPADDR_IPV6: Final = 2
NLA_F_NESTED: Final = 0x8000
NLA_F_NET_BYTEORDER: Final = 0x4000
NLM_F_DUMP: Final = 0x300
NLMSG_DONE: Final = 3
_LIST_REPLY: Final = (NFNL_SUBSYS_IPSET << 8) | IPSET_CMD_LIST
_ATTR_TYPE: Final = 0x3FFF
_PROTOS: Final = {"tcp": socket.IPPROTO_TCP, "udp": socket.IPPROTO_UDP}
Member = tuple[bytes, int, int, bytes]
"""An entry of a ``hash:ip,port,ip`` set: its first address (packed: 4 or 16 bytes), protocol
number, port and second address (``198.18.0.2,tcp:40000,198.19.0.6``)."""

_IPSET_ERRORS: Final = {
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
    def timeouts(self, name: str) -> dict[Member, int]:
        """The entries of the ``hash:ip,port,ip`` set ``name``, each with the seconds it has
        left (raises LabError if the set cannot be read, ValueError if an entry is not one)."""
        ...


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

    def timeouts(self, name: str) -> dict[Member, int]:
        out: dict[Member, int] = {}
        for line in self.run(["ipset", "list", name, "-output", "save"]).splitlines():
            parts = line.split()
            if len(parts) >= 5 and parts[0] == "add" and parts[3] == "timeout":
                out[member(parts[2])] = int(parts[4])
        return out


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

    def timeouts(self, name: str) -> dict[Member, int]:
        self.seq = self.seq % 0xFFFFFFFF + 1
        attrs = attr(IPSET_ATTR_PROTOCOL, bytes([IPSET_PROTOCOL])) + attr(
            IPSET_ATTR_SETNAME, name.encode() + b"\0"
        )
        message = request(NFNL_SUBSYS_IPSET, IPSET_CMD_LIST, 0, attrs, self.seq, NLM_F_DUMP)
        out: dict[Member, int] = {}
        try:
            self.sock.send(message)
            # A dump's messages fill at most the largest buffer a read has offered (the kernel
            # sizes them by it), so none is cut short.
            while not _read_dump(self.sock.recv(1 << 16), self.seq, out):
                pass
        except OSError as exc:
            why = "no such set" if exc.errno == errno.ENOENT else exc.strerror or str(exc)
            raise LabError(f"ipset list {name}: {why}") from None
        return out

    def _ack(self) -> int:
        """The error code of the acknowledgement of the message just sent (0: done)."""
        while True:
            code = acknowledgement(self.sock.recv(8192), self.seq)
            if code is not None:
                return code


def _read_dump(buf: bytes, seq: int, out: dict[Member, int]) -> bool:
    """Add the entries of a list dump's messages in ``buf`` (answers to request ``seq``; others,
    left from a request that timed out, are skipped) to ``out``; True once the dump is done.
    Raises OSError with the kernel's error code if it refused the request."""
    off = 0
    while off + NLMSG_HEADER.size <= len(buf):
        size, kind, _flags, got, _pid = NLMSG_HEADER.unpack_from(buf, off)
        if size < NLMSG_HEADER.size or off + size > len(buf):
            raise OSError(errno.EBADMSG, "a message cut short")
        if got == seq:
            if kind == NLMSG_DONE:
                return True
            if kind == NLMSG_ERROR:
                if size < NLMSG_HEADER.size + 4:
                    raise OSError(errno.EBADMSG, "an error message without its code")
                code = error_code(buf, off + NLMSG_HEADER.size)
                if code:
                    raise OSError(code, _IPSET_ERRORS.get(code) or os.strerror(code))
                return True
            if kind == _LIST_REPLY:
                _read_members(buf, off + NLMSG_HEADER.size + NFGEN_HEADER.size, off + size, out)
        off += align(size)
    return False


def _read_members(buf: bytes, at: int, end: int, out: dict[Member, int]) -> None:
    """The entries in the ``IPSET_ATTR_ADT`` attribute of a list reply's attributes
    ``buf[at:end]`` (the other attributes describe the set)."""
    while at + 4 <= end:
        size = u16_host(buf, at)
        if size < 4:
            raise OSError(errno.EBADMSG, "an attribute without length")
        if u16_host(buf, at + 2) & _ATTR_TYPE == IPSET_ATTR_ADT:
            entry_at, entries_end = at + 4, min(end, at + size)
            while entry_at + 4 <= entries_end:
                entry_size = u16_host(buf, entry_at)
                if entry_size < 4:
                    raise OSError(errno.EBADMSG, "an entry without length")
                data_end = min(entries_end, entry_at + entry_size)
                _read_member(buf, entry_at + 4, data_end, out)
                entry_at += align(entry_size)
        at += align(size)


def _read_member(buf: bytes, at: int, end: int, out: dict[Member, int]) -> None:
    """One entry's attributes ``buf[at:end]`` (``IPSET_ATTR_DATA``, each a 4-byte header and its
    value): added to ``out`` if it has both addresses, a protocol, a port and a timeout (an entry
    of a ``hash:ip,port,ip`` set). Numbers in an entry are in network order."""
    first = second = b""
    proto = port = timeout = -1
    while at + 4 <= end:
        size = u16_host(buf, at)
        if size < 4:
            raise OSError(errno.EBADMSG, "an entry's attribute without length")
        kind = u16_host(buf, at + 2) & _ATTR_TYPE
        v = at + 4
        if kind == IPSET_ATTR_IP:  # nested: the address attribute inside
            first = buf[v + 4 : at + size]
        elif kind == IPSET_ATTR_IP2:
            second = buf[v + 4 : at + size]
        elif kind == IPSET_ATTR_PORT and size >= 6:
            port = buf[v] << 8 | buf[v + 1]
        elif kind == IPSET_ATTR_PROTO and size >= 5:
            proto = buf[v]
        elif kind == IPSET_ATTR_TIMEOUT and size >= 8:
            timeout = buf[v] << 24 | buf[v + 1] << 16 | buf[v + 2] << 8 | buf[v + 3]
        at += align(size)
    if len(first) in (4, 16) and len(second) == len(first) and min(proto, port, timeout) >= 0:
        out[(first, proto, port, second)] = timeout


def member(element: str) -> Member:
    """The :data:`Member` of an element of a ``hash:ip,port,ip`` set as ``ipset`` writes it
    (raises ValueError if it is not one)."""
    first, proto_port, second = element.split(",")
    proto, _, port = proto_port.partition(":")
    a, b = ipaddress.ip_address(first), ipaddress.ip_address(second)
    if a.version != b.version or not 0 <= int(port) <= 0xFFFF:
        raise ValueError(element)
    number = _PROTOS.get(proto)
    if number is None:
        number = int(proto)  # a protocol ipset names by number
    return a.packed, number, int(port), b.packed


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
