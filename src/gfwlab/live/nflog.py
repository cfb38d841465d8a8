"""Copies of packets the kernel forwarded itself, read from an NFLOG group (nfnetlink_log).

The live censor lets the kernel forward a clean connection's first SYN without holding it for a
verdict (``live/chains.py`` :func:`~gfwlab.live.chains.syn_rules`): the kernel sends a copy of
its headers to an NFLOG group and forwards it at once. The censor reads the copies here and feeds
each one to the engine before the next packet it takes from its queue, so the engine's TCP view
starts from the real SYN (its initial sequence number, options, TTL) as it does when the SYN is
queued. A copy costs the kernel one netlink message and the censor one read: no verdict, and
the packet's forwarding is not done in the censor's own system call.

The netlink messages are built and read here (about a hundred lines) rather than with
libnetfilter_log: the censor needs only binding a group, the copy mode, and the payload of each
message. The reader never raises on what it reads: a message it cannot make sense of is
counted in :attr:`NflogReader.malformed` and skipped.

The same few lines build the one queue setting the NFQUEUE binding in use cannot make: the
queue's fail-open flag (:func:`queue_fail_open`).
"""

from __future__ import annotations

import errno
import os
import socket
import struct
import sys
from collections.abc import Callable, Hashable
from typing import Final, Protocol

from gfwlab.engine.flows import FlowKey, flow_key
from gfwlab.errors import MalformedPacket
from gfwlab.packet.ip import PROTO_TCP, PROTO_UDP, ipv4_transport, parse

NETLINK_NETFILTER: Final = 12
NFNL_SUBSYS_QUEUE: Final = 3
NFNL_SUBSYS_ULOG: Final = 4
NFQNL_MSG_CONFIG: Final = 2
NFQA_CFG_MASK: Final = 4
NFQA_CFG_FLAGS: Final = 5
NFQA_CFG_F_FAIL_OPEN: Final = 0x0001
NFULNL_MSG_PACKET: Final = 0
NFULNL_MSG_CONFIG: Final = 1
NFULA_CFG_CMD: Final = 1
NFULA_CFG_MODE: Final = 2
NFULA_CFG_QTHRESH: Final = 5
NFULA_CFG_FLAGS: Final = 6
NFULNL_CFG_F_SEQ: Final = 0x0001
NFULNL_CFG_CMD_BIND: Final = 1
NFULNL_COPY_PACKET: Final = 2
NFULA_PAYLOAD: Final = 9
NFULA_SEQ: Final = 12
NLMSG_ERROR: Final = 2
NLM_F_REQUEST: Final = 0x1
NLM_F_ACK: Final = 0x4
SO_RCVBUFFORCE: Final = 33

NLMSG_HEADER: Final = struct.Struct("=IHHII")
"""Netlink message header: length, type, flags, sequence, port id (host byte order)."""
NFGEN_HEADER: Final = struct.Struct("!BBH")
"""nfnetlink header: family, version, resource id (the group, big-endian)."""
NLA_HEADER: Final = struct.Struct("=HH")
"""Attribute header: length, type."""


_PACKET_TYPE: Final = (NFNL_SUBSYS_ULOG << 8) | NFULNL_MSG_PACKET


def align(n: int) -> int:
    """``n`` rounded up to netlink's four-byte alignment (of messages and attributes)."""
    return (n + 3) & ~3


def error_code(buf: bytes, at: int) -> int:
    """The error number of an ``NLMSG_ERROR`` message whose body starts at ``buf[at]`` (0: an
    acknowledgement; the kernel sends it negated, a signed 32-bit number in host order)."""
    code = u32_host(buf, at)
    return (1 << 32) - code if code & 0x80000000 else -code


def attr(kind: int, value: bytes) -> bytes:
    """One netlink attribute, padded to four bytes."""
    size = NLA_HEADER.size + len(value)
    return NLA_HEADER.pack(size, kind) + value + b"\0" * (align(size) - size)


def request(
    subsys: int,
    msg: int,
    resource: int,
    attrs: bytes,
    seq: int,
    flags: int,
    family: int = socket.AF_UNSPEC,
) -> bytes:
    """One nfnetlink request: message ``msg`` of subsystem ``subsys`` for ``resource`` (an NFLOG
    group, a queue number)."""
    body = NFGEN_HEADER.pack(family, 0, resource) + attrs
    kind = (subsys << 8) | msg
    header = NLMSG_HEADER.pack(NLMSG_HEADER.size + len(body), kind, NLM_F_REQUEST | flags, seq, 0)
    return header + body


def config_message(group: int, seq: int, attrs: bytes) -> bytes:
    """One NFULNL_MSG_CONFIG request for ``group``, asking for an acknowledgement."""
    return request(NFNL_SUBSYS_ULOG, NFULNL_MSG_CONFIG, group, attrs, seq, NLM_F_ACK)


def fail_open_message(queue_num: int, seq: int = 1) -> bytes:
    """The NFQNL_MSG_CONFIG request that sets queue ``queue_num``'s fail-open flag (only that
    flag: the mask names it), without asking for an acknowledgement."""
    flag = struct.pack("!I", NFQA_CFG_F_FAIL_OPEN)
    attrs = attr(NFQA_CFG_MASK, flag) + attr(NFQA_CFG_FLAGS, flag)
    return request(NFNL_SUBSYS_QUEUE, NFQNL_MSG_CONFIG, queue_num, attrs, seq, 0)


def queue_fail_open(queue_fd: int, queue_num: int) -> None:
    """Make the bound queue ``queue_num`` fail open: when it is full, or the censor's socket
    cannot take another packet, the kernel accepts the packet instead of dropping it
    (``NFQA_CFG_F_FAIL_OPEN``, Linux 3.6). The packet then passes uninspected, and ``lab
    status`` counts it so (what the queue rules took minus what the censor read).

    Sent on the binding's own netlink socket ``queue_fd`` (the kernel takes a queue's settings
    only from the socket bound to it). No acknowledgement is asked for, so the binding reads
    nothing it does not expect; the kernel reports a failure (an unknown flag) on that socket
    all the same, where the binding skips it, and the queue then drops on overflow as before."""
    with socket.socket(fileno=os.dup(queue_fd)) as sock:
        sock.send(fail_open_message(queue_num))


def bind_messages(group: int, copy_range: int) -> list[bytes]:
    """Bind ``group``, copy up to ``copy_range`` bytes of each packet, one packet per message,
    each numbered (so that copies the kernel could not deliver are counted)."""
    return [
        config_message(group, 1, attr(NFULA_CFG_CMD, bytes([NFULNL_CFG_CMD_BIND]))),
        config_message(
            group, 2, attr(NFULA_CFG_MODE, struct.pack("!IBx", copy_range, NFULNL_COPY_PACKET))
        ),
        config_message(group, 3, attr(NFULA_CFG_QTHRESH, struct.pack("!I", 1))),
        config_message(group, 4, attr(NFULA_CFG_FLAGS, struct.pack("!H", NFULNL_CFG_F_SEQ))),
    ]


def parse_messages(buf: bytes) -> tuple[list[tuple[int | None, bytes]], list[int], int]:
    """The packets (sequence number if any, NFULA_PAYLOAD) of the NFULNL_MSG_PACKET messages in
    ``buf``, the error codes of the acknowledgements in it (0: success), and how many messages
    made no sense.

    Read a byte at a time rather than with ``struct``: compiled (``gfwlab._build``), that is
    native code, and the censor reads one of these for each SYN it copies."""
    packets: list[tuple[int | None, bytes]] = []
    errors: list[int] = []
    bad = 0
    off = 0
    n = len(buf)
    while off + 16 <= n:
        size, kind = u32_host(buf, off), u16_host(buf, off + 4)
        if size < 16 or off + size > n:
            return packets, errors, bad + 1  # the rest cannot be delimited
        start, end = off + 16, off + size
        off += align(size)
        if kind == NLMSG_ERROR:
            if end - start >= 4:
                errors.append(error_code(buf, start))
            else:
                bad += 1
        elif kind == _PACKET_TYPE:
            seq, payload = _attrs(buf, start, end)
            if payload is None:
                bad += 1
            else:
                packets.append((seq, payload))
    return packets, errors, bad


def acknowledgement(buf: bytes, seq: int) -> int | None:
    """The error code of the acknowledgement of request ``seq`` in ``buf`` (0: success), or None
    if ``buf`` holds none (only other requests' answers, left from before a timeout)."""
    off = 0
    while off + NLMSG_HEADER.size <= len(buf):
        size, kind, _flags, got, _pid = NLMSG_HEADER.unpack_from(buf, off)
        if size < NLMSG_HEADER.size:
            break
        if kind == NLMSG_ERROR and got == seq and size >= NLMSG_HEADER.size + 4:
            return error_code(buf, off + NLMSG_HEADER.size)
        off += align(size)
    return None


def _attrs(buf: bytes, start: int, end: int) -> tuple[int | None, bytes | None]:
    """A packet message's sequence number and payload, from its body ``buf[start:end]`` (None
    where absent or unreadable)."""
    seq: int | None = None
    payload: bytes | None = None
    at = start + 4  # past the nfnetlink header
    while at + 4 <= end:
        size, kind = u16_host(buf, at), u16_host(buf, at + 2) & 0x3FFF
        if size < 4 or at + size > end:
            return seq, None
        if kind == NFULA_PAYLOAD:
            payload = buf[at + 4 : at + size]
        elif kind == NFULA_SEQ and size == 8:
            seq = buf[at + 4] << 24 | buf[at + 5] << 16 | buf[at + 6] << 8 | buf[at + 7]
        at += align(size)
    return seq, payload


_LITTLE: Final = sys.byteorder == "little"


def u16_host(buf: bytes, at: int) -> int:
    """The 16-bit number in host byte order at ``buf[at]`` (netlink's headers are in it)."""
    if _LITTLE:
        return buf[at] | buf[at + 1] << 8
    return buf[at] << 8 | buf[at + 1]


def u32_host(buf: bytes, at: int) -> int:
    """The 32-bit number in host byte order at ``buf[at]``."""
    if _LITTLE:
        return buf[at] | buf[at + 1] << 8 | buf[at + 2] << 16 | buf[at + 3] << 24
    return buf[at] << 24 | buf[at + 1] << 16 | buf[at + 2] << 8 | buf[at + 3]


class NflogReader:
    """A bound NFLOG group, read without blocking."""

    def __init__(self, group: int, copy_range: int = 256, rcvbuf: int = 4 << 20) -> None:
        self.group = group
        self.read_packets = 0
        self.lost = 0
        """Copies the kernel could not deliver (a full socket buffer): gaps in their numbers."""
        self.next_seq: int | None = None
        self.malformed = 0
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
        try:
            self.sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, rcvbuf)
            self.sock.bind((0, 0))
            self.sock.settimeout(2.0)
            for message in bind_messages(group, copy_range):
                self.sock.send(message)
                _packets, errors, _bad = parse_messages(self.sock.recv(65536))
                if any(errors):
                    code = next(e for e in errors if e)
                    raise OSError(code, f"NFLOG group {group}: {errno.errorcode.get(code, code)}")
            self.sock.setblocking(False)
        except BaseException:
            self.sock.close()
            raise

    def fileno(self) -> int:
        return self.sock.fileno()

    def read(self) -> list[bytes]:
        """Every packet copy waiting, oldest first."""
        out: list[bytes] = []
        while True:
            try:
                buf = self.sock.recv(65536)
            except BlockingIOError:
                break
            except OSError as exc:
                if exc.errno == errno.ENOBUFS:  # counted by the gap in the numbers
                    continue
                raise
            packets, _errors, bad = parse_messages(buf)
            for seq, packet in packets:
                if seq is not None:
                    if self.next_seq is not None:
                        self.lost += (seq - self.next_seq) & 0xFFFFFFFF
                    self.next_seq = (seq + 1) & 0xFFFFFFFF
                out.append(packet)
            self.malformed += bad
        self.read_packets += len(out)
        return out

    def close(self) -> None:
        self.sock.close()


def connection(raw: bytes) -> FlowKey | None:
    """The connection of a TCP or UDP packet, the engine's key for it in both directions (None:
    neither): how :class:`SynCopies` pairs a SYN's copy with the connection's packets.

    An IPv4 packet is read where it lies (:func:`~gfwlab.packet.ip.ipv4_transport`: the checks
    :func:`~gfwlab.packet.ip.parse` makes before it would return the same ports; the censor keys
    two packets of each connection it copies the SYN of, and most are IPv4); any other goes
    through :func:`_parsed_connection`.
    ``tests/test_live_syncopy.py`` holds the two to the same answer on any bytes."""
    if len(raw) < 20 or raw[0] >> 4 != 4:
        return _parsed_connection(raw)
    proto, l4, _data, _end = ipv4_transport(raw)
    if proto < 0:
        return None  # malformed, a fragment, or neither TCP nor UDP
    sport, dport = raw[l4] << 8 | raw[l4 + 1], raw[l4 + 2] << 8 | raw[l4 + 3]
    return flow_key(proto, raw[12:16], sport, raw[16:20], dport)


def _parsed_connection(raw: bytes) -> FlowKey | None:
    """:func:`connection` through :func:`~gfwlab.packet.ip.parse`."""
    try:
        pkt = parse(raw)
    except MalformedPacket:
        return None
    if pkt.proto not in (PROTO_TCP, PROTO_UDP) or pkt.fragment:
        return None
    return flow_key(pkt.proto, pkt.src, pkt.sport, pkt.dst, pkt.dport)


class CopyReader(Protocol):
    """Where :class:`SynCopies` reads its copies from (:class:`NflogReader`)."""

    lost: int

    def fileno(self) -> int: ...
    def read(self) -> list[bytes]: ...
    def close(self) -> None: ...


class SynCopies:
    """The SYN copies read from an NFLOG group and not yet fed to the engine, by connection.

    The engine must see a copy where it would have seen the SYN in the queue: after every packet
    of its connection queued before it, before every one queued after. The kernel marks the
    first packet of the connection queued after the copy (``SYN_COPIED_MARK``), which takes
    its copy first (:meth:`take`); the censor's loop reads the copies (:meth:`read`) before it
    empties its queue and feeds what is left once the queue is empty (:meth:`take_all`): any
    packet queued before a copy was read is in the queue by then. Between connections the order
    does not matter: a copy is made only while the engine has nothing to decide on a SYN.
    """

    def __init__(self, reader: CopyReader, key: Callable[[bytes], Hashable] = connection) -> None:
        self.reader = reader
        self.key = key
        """The connection of a packet, the same for both directions (None: not TCP or UDP)."""
        self.pending: dict[Hashable, list[bytes]] = {}

    def fileno(self) -> int:
        return self.reader.fileno()

    def read(self) -> None:
        """Take in the copies waiting in the socket, oldest first."""
        for packet in self.reader.read():
            self.pending.setdefault(self.key(packet), []).append(packet)

    def take(self, packet: bytes) -> list[bytes]:
        """The copies of the connection of ``packet``, queued after the kernel copied its SYN
        (reading the socket first if none is pending: it was copied since the last read)."""
        key = self.key(packet)
        if key not in self.pending:
            self.read()
        return self.pending.pop(key, [])

    def take_all(self) -> list[bytes]:
        """Every copy pending, oldest first within a connection."""
        out = [p for ps in self.pending.values() for p in ps]
        self.pending.clear()
        return out

    def close(self) -> None:
        self.reader.close()
