"""The lab's fixed topology: three namespaces in a line, addresses from the benchmarking ranges.

::

    gfwlab-client            gfwlab-censor                      gfwlab-server
    gfwc0 ───────────────── gfwc1        gfws1 ──────────────── gfws0
    198.18.0.2/24           198.18.0.1   198.19.0.1             198.19.0.2/24 (+ .3 … .9)
    2001:db8:c::2/64        2001:db8:c::1 2001:db8:5::1         2001:db8:5::2/64

The client side (198.18.0.0/24, 2001:db8:c::/64) is inside the border; the server side is
outside. Addresses come only from 198.18.0.0/15 (RFC 2544, benchmarking) and 2001:db8::/32
(RFC 3849, documentation). MAC addresses are fixed and locally administered so the censor can
write whole Ethernet frames when it injects.
"""

from __future__ import annotations

from dataclasses import dataclass

PREFIX = "gfwlab-"
CLIENT_NS = f"{PREFIX}client"
CENSOR_NS = f"{PREFIX}censor"
SERVER_NS = f"{PREFIX}server"
NAMESPACES = (CLIENT_NS, CENSOR_NS, SERVER_NS)
ROLES = {"client": CLIENT_NS, "censor": CENSOR_NS, "server": SERVER_NS}

CLIENT_V4, CLIENT_GW_V4 = "198.18.0.2", "198.18.0.1"
SERVER_V4, SERVER_GW_V4 = "198.19.0.2", "198.19.0.1"
SERVER_EXTRA_V4 = tuple(f"198.19.0.{i}" for i in range(3, 10))
STANDS_FOR_1111 = SERVER_EXTRA_V4[-1]
"""The lab server address that stands for 1.1.1.1 (``ip_port_rst``, spec §14a): lab up maps the
mechanism's targets to it, so nothing is ever sent to 1.1.1.1."""
CLIENT_V6, CLIENT_GW_V6 = "2001:db8:c::2", "2001:db8:c::1"
SERVER_V6, SERVER_GW_V6 = "2001:db8:5::2", "2001:db8:5::1"
SITES_V4 = tuple(f"198.19.{1 << k}.0/{24 - k}" for k in range(8))
"""Every address from 198.19.1.0 to 198.19.255.255 is the server's (a local route on its
loopback, so services listening on the wildcard address answer on all of them): lab sites get an
address each, so that a residual block on one never touches another. 198.19.0.0/24 stays the
server link's own subnet. Ranges in use: probe sites 198.19.1.0 - 198.19.239.255, tool trials
198.19.240.0/20."""
SITES_V6 = "2001:db8:5:100::/56"
"""The IPv6 counterpart of SITES_V4 (local on the server's loopback)."""
INSIDE = ("198.18.0.0/24", "2001:db8:c::/64")
OUTSIDE = ("198.19.0.0/24", "2001:db8:5::/64")
MTU = 1500


@dataclass(frozen=True, slots=True)
class Link:
    """One veth pair: ``a`` in namespace ``a_ns``, ``b`` in ``b_ns``."""

    a: str
    a_ns: str
    a_mac: str
    b: str
    b_ns: str
    b_mac: str


CLIENT_LINK = Link("gfwc0", CLIENT_NS, "02:67:66:00:00:02", "gfwc1", CENSOR_NS, "02:67:66:00:00:01")
SERVER_LINK = Link("gfws1", CENSOR_NS, "02:67:66:00:01:01", "gfws0", SERVER_NS, "02:67:66:00:01:02")
LINKS = (CLIENT_LINK, SERVER_LINK)

DEFAULT_HOPS = 12
"""Routers between the censor and the server (``lab up --hops``): Geneva's TTL-limited insertions
(TTL 8 and 10) pass the censor and die before the server, as on the real path (the GFW sits
7-8 hops from Chinese vantage points, spec §1; servers abroad are further)."""

QUEUE_NUM = 7
"""NFQUEUE number the censor reads."""
NFLOG_GROUP = 7
"""NFLOG group of the clean SYNs the kernel forwards itself and copies to the censor
(``live/chains.py`` :func:`syn_rules`, ``live/nflog.py``)."""
BYPASS_MARK = 0x1
"""Connection mark of flows whose verdict is final: the kernel forwards them without queueing."""
SYN_CLEAN_MARK = 0x4
"""Mark the censor puts on a client SYN it passed with nothing else to do (no decision, no block):
kept on the connection, it lets the kernel forward the server's SYN/ACK unqueued
(``live/chains.py`` :func:`skip_rules`)."""
SYNACK_SKIPPED_MARK = 0x2
"""Connection mark: the kernel forwarded the server's SYN/ACK without showing it to the engine,
and no packet of the connection has reached the queue since."""
CT_INVALID_MARK = 0x10
"""Packet mark of a TCP packet queued without a connection (conntrack found it INVALID: a bad
checksum, a flag combination TCP does not allow) after the kernel forwarded its connection's
SYN/ACK unqueued (``live/chains.py`` :func:`seen_rules`)."""
SEEN_ORIGINAL_MARK = 0x2
"""Packet mark of the first packet queued after a skipped SYN/ACK, sent by the client."""
SEEN_REPLY_MARK = 0x8
"""Packet mark of the first packet queued after a skipped SYN/ACK, sent by the server."""
SYN_COPIED_MARK = 0x20
"""Packet mark of the first packet queued after the kernel forwarded its connection's SYN and
copied it to the censor (``live/chains.py`` :func:`syn_rules`): the SYN goes to the engine
first. An unmarked packet was queued before any such SYN of its connection."""

PROBER_NET = "198.18.1"
"""Prober addresses are PROBER_NET.1 - .254, on the censor namespace's loopback."""
