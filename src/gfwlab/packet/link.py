"""Link layers: which link types a capture may have, and how their headers are removed.

Shared by the classic pcap and the pcapng readers: one small integer "mode" per family of link
types (:data:`LINK_MODES`), and :func:`strip`, which returns a frame's IP packet or None.
"""

from __future__ import annotations

import mmap
from typing import Protocol

from gfwlab.errors import AdapterError

LINKTYPE_NULL = 0
LINKTYPE_ETHERNET = 1
LINKTYPE_RAW = 101
LINKTYPE_LINUX_SLL = 113
LINKTYPE_LINUX_SLL2 = 276

"""A record longer than this (256 KiB) is taken as corruption, unless the header's snaplen is
larger (up to :data:`_HARD_MAX_CAPLEN`)."""
FrameBuffer = bytes | mmap.mmap

# How the link-layer header is removed: one small integer per family of link types.
MODE_ETH = 0
MODE_RAW = 1
MODE_SLL = 2
MODE_SLL2 = 3
MODE_NULL = 4
MODE_LOOP = 5

LINK_MODES: dict[int, int] = {
    0: MODE_NULL,
    1: MODE_ETH,
    12: MODE_RAW,
    14: MODE_RAW,
    101: MODE_RAW,
    108: MODE_LOOP,
    113: MODE_SLL,
    228: MODE_RAW,
    229: MODE_RAW,
    276: MODE_SLL2,
}

_LINK_NAMES: dict[int, str] = {
    0: "NULL",
    1: "ETHERNET",
    3: "AX25",
    6: "IEEE802_5",
    7: "ARCNET_BSD",
    8: "SLIP",
    9: "PPP",
    10: "FDDI",
    12: "RAW",
    14: "RAW",
    50: "PPP_HDLC",
    51: "PPP_ETHER",
    100: "ATM_RFC1483",
    101: "RAW",
    104: "C_HDLC",
    105: "IEEE802_11",
    107: "FRELAY",
    108: "LOOP",
    113: "LINUX_SLL",
    114: "LTALK",
    117: "PFLOG",
    119: "IEEE802_11_PRISM",
    122: "IP_OVER_FC",
    123: "SUNATM",
    127: "IEEE802_11_RADIOTAP",
    129: "ARCNET_LINUX",
    138: "APPLE_IP_OVER_IEEE1394",
    143: "DOCSIS",
    163: "IEEE802_11_AVS",
    189: "USB_LINUX",
    192: "PPI",
    220: "USB_LINUX_MMAPPED",
    226: "IPNET",
    227: "CAN_SOCKETCAN",
    228: "IPV4",
    229: "IPV6",
    239: "NFLOG",
    249: "USBPCAP",
    251: "BLUETOOTH_LE_LL",
    253: "NETLINK",
    254: "BLUETOOTH_LINUX_MONITOR",
    258: "PKTAP",
    272: "NORDIC_BLE",
    276: "LINUX_SLL2",
}
_LINK_NAMES.update({147 + i: f"USER{i}" for i in range(16)})

_ETHERTYPE_IPV4 = 0x0800
_ETHERTYPE_IPV6 = 0x86DD
_VLAN_TPIDS = frozenset({0x8100, 0x88A8, 0x9100})
ETH_IP_CODES = frozenset({_ETHERTYPE_IPV4, _ETHERTYPE_IPV6})
_NULL_IPV4 = 2
_NULL_IPV6 = frozenset({24, 28, 30})


def link_type_name(linktype: int) -> str:
    """A short name for a link type, or ``"unknown"``."""
    return _LINK_NAMES.get(linktype, "unknown")


def unsupported_link_type(path: str, linktype: int, offset: int) -> AdapterError:
    """The error raised for a link type this reader cannot strip."""
    return AdapterError(
        path, f"unsupported link type {linktype} ({link_type_name(linktype)})", offset
    )


def ip_offset(mode: int, buf: FrameBuffer, start: int, end: int) -> int | None:
    """Where the IP packet inside the frame ``buf[start:end]`` begins (it runs to ``end``), or
    None if the frame carries something else."""
    n = end - start
    if mode == MODE_ETH:
        if n < 14:
            return None
        etype = (buf[start + 12] << 8) | buf[start + 13]
        off = start + 14
        while etype in _VLAN_TPIDS:
            if off + 4 > end:
                return None
            etype = (buf[off + 2] << 8) | buf[off + 3]
            off += 4
    elif mode == MODE_RAW:
        return start
    elif mode == MODE_SLL:
        if n < 16:
            return None
        etype = (buf[start + 14] << 8) | buf[start + 15]
        off = start + 16
    elif mode == MODE_SLL2:
        if n < 20:
            return None
        etype = (buf[start] << 8) | buf[start + 1]
        off = start + 20
    else:  # MODE_NULL / MODE_LOOP: a 4-byte address family
        if n < 4:
            return None
        if mode == MODE_LOOP:
            family = (buf[start + 2] << 8) | buf[start + 3]
        else:
            # Host byte order of the capturing machine: the family is small, so whichever end
            # holds the non-zero bytes tells the order.
            family = buf[start] | (buf[start + 1] << 8)
            if family == 0:
                family = (buf[start + 2] << 8) | buf[start + 3]
        if family == _NULL_IPV4 or family in _NULL_IPV6:
            return start + 4
        return None
    if etype in ETH_IP_CODES:
        return off
    return None


def strip(mode: int, buf: FrameBuffer, start: int, end: int) -> bytes | None:
    """The IP packet inside the frame ``buf[start:end]``, or None if it carries something else."""
    if mode == MODE_RAW:
        return buf[start:end]
    off = ip_offset(mode, buf, start, end)
    return None if off is None else buf[off:end]


def link_header_strip(linktype: int, frame: bytes) -> bytes | None:
    """The IP packet carried by ``frame`` of the given link type, or None if it is not IP.

    Raises ValueError for a link type this module does not support.
    """
    mode = LINK_MODES.get(linktype)
    if mode is None:
        raise ValueError(f"unsupported link type {linktype} ({link_type_name(linktype)})")
    return strip(mode, frame, 0, len(frame))


RELEASE = 64 << 20
"""Bytes a record loop reads between two releases of the pages behind it
(:meth:`ReaderState.release`)."""


class ReaderState(Protocol):
    """What a capture format's record loop updates on its reader (counts, truncation)."""

    path: str
    packets: int
    skipped: int
    bytes_read: int
    linktypes: list[int]

    @property
    def closed(self) -> bool: ...

    def mark_truncated(self, offset: int) -> None: ...

    def release(self, start: int, end: int) -> None: ...
