"""The censor namespace's sets and chains: their names, the ``ipset`` lines that make the sets,
and the ``iptables`` rules that fill the chains.

The rules are made here and installed by ``lab up`` (``lab/netns.py``) and by the censor
(:class:`gfwlab.live.kernel.Kernel`), which switches them as the engine's needs and blocks
change. The residual drop sets and what their elements cover are described in
:mod:`gfwlab.live.kernel`; the skip, SYN and seen chains in :func:`skip_rules`, :func:`syn_rules`
and :func:`seen_rules`.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass

from gfwlab.engine.residual import SERVER_AT
from gfwlab.live import blocked
from gfwlab.live.engines import syn_copy_rules
from gfwlab.live.topology import (
    BYPASS_MARK,
    CT_INVALID_MARK,
    NFLOG_GROUP,
    SEEN_ORIGINAL_MARK,
    SEEN_REPLY_MARK,
    SYN_CLEAN_MARK,
    SYN_COPIED_MARK,
    SYNACK_SKIPPED_MARK,
)
from gfwlab.rules.profile import ResidualKey

BYPASSED_CHAIN = "GFWLAB_BYPASSED"
"""The censor namespace's mangle chain of the residual set rules."""
QUEUE_CHAIN = "GFWLAB"
"""The censor namespace's mangle chain that queues packets (``netns.install_queue_rules``)."""
SKIP_CHAIN = "GFWLAB_SKIP"
"""The chain, crossed just before the queue, of packets the engine does not need to see."""
SEEN_CHAIN = "GFWLAB_SEEN"
"""The chain the skip chain ends in: it marks the first packet queued after a skipped SYN/ACK."""
SYN_CHAIN = "GFWLAB_SYN"
"""The chain of a clean connection's first SYN, which the kernel copies to the censor and forwards
(:func:`syn_rules`)."""
SYN_COPY_BYTES = 256
"""Bytes of each SYN copied to the censor: every IPv4 or IPv6 header and TCP header fits."""
SYNCOPY_SET_TIMEOUT = 30
"""Seconds an entry of the copied SYNs' sets lives if no packet of its connection is queued
after the SYN (a spoofed SYN of a flood, a connection that never answers): long after the
censor fed the copy. Room for a million entries: more than 30 s of any SYN rate the censor
could read the copies of."""
SYNACK_SET_TIMEOUT = 120
"""Seconds an entry of the skipped SYN/ACKs' sets lives if no packet of its connection is queued
after the SYN/ACK (the first one that is takes it out)."""

_PURE_ACK_V4 = (
    "13,48 0 0 0,84 0 0 15,100 0 0 2,7 0 0 0,80 0 0 12,84 0 0 240,116 0 0 2,12 0 0 0,7 0 0 0,"
    "40 0 0 2,29 0 1 0,6 0 0 1,6 0 0 0"
)
"""Classic BPF, run on the IPv4 packet: true if it carries no TCP payload (total length = IP
header + TCP header): ``ldb [0]; and #15; lsh #2; tax; ldb [x+12]; and #0xf0; rsh #2; add x;
tax; ldh [2]; jeq x, 1, 0; ret #1; ret #0``."""
_PURE_ACK_V6 = (
    "10,48 0 0 6,21 0 6 6,48 0 0 52,84 0 0 240,116 0 0 2,7 0 0 0,40 0 0 4,29 1 0 0,6 0 0 0,6 0 0 1"
)
"""The same for IPv6 without extension headers (next header TCP, payload length = TCP
header): ``ldb [6]; jeq #6, 0, 6; ldb [52]; and #0xf0; rsh #2; tax; ldh [4]; jeq x, 1, 0;
ret #0; ret #1``."""

IPSET_MAX_TIMEOUT = 2147483
"""The longest timeout ipset accepts, in seconds (~24.8 days)."""

_TABLES: dict[str, tuple[str, str, str]] = {
    # table: (set type, client-to-server match, server-to-client match)
    "tuple": ("hash:ip,port,ip", "src,dst,dst", "dst,src,src"),
    "port": ("hash:ip,port", "dst,dst", "src,src"),
    "addr": ("hash:ip", "dst", "src"),
}
_TABLE_OF: dict[ResidualKey, str] = {
    "3-tuple": "tuple",
    "5-tuple": "tuple",
    "server": "port",
    "server-ip": "addr",
    "2-tuple": "addr",
}
_POLICIES = {"drop-c2s": "c2s", "drop-s2c": "s2c"}
_PROTO_NAMES = {6: "tcp", 17: "udp"}


@dataclass(frozen=True, slots=True)
class KernelSet:
    """One ipset of residual drop blocks."""

    name: str
    type: str
    family: str
    """``inet`` or ``inet6``."""
    match: str
    """The ``--match-set`` direction flags of the packets it blocks."""


def kernel_sets() -> list[KernelSet]:
    """Every set, in rule order (names fit ipset's 31 characters)."""
    out = []
    for table, (kind, c2s, s2c) in _TABLES.items():
        for direction, match in (("c2s", c2s), ("s2c", s2c)):
            for family in ("inet", "inet6"):
                v = "6" if family == "inet6" else "4"
                out.append(KernelSet(f"gfwlab-{table}-{direction}{v}", kind, family, match))
    return out


def set_name(kind: ResidualKey, policy: str, v6: bool) -> str | None:
    """The set a block of ``kind`` and ``policy`` goes in; None if it has none (``rst``)."""
    direction = _POLICIES.get(policy)
    if direction is None:
        return None
    return f"gfwlab-{_TABLE_OF[kind]}-{direction}{'6' if v6 else '4'}"


def element(kind: ResidualKey, key: tuple[object, ...]) -> tuple[str, bool]:
    """The set element of a residual key (``engine.residual.residual_key``) and whether it is
    IPv6."""
    if kind in ("3-tuple", "5-tuple"):
        if kind == "3-tuple":
            proto, client, server, sport = key
        else:
            proto, client, _cport, server, sport = key
        c, s = _addr(client), _addr(server)
        return f"{c},{_PROTO_NAMES.get(int(proto), str(proto))}:{sport},{s}", c.version == 6  # type: ignore[call-overload]
    if kind == "server":
        proto, server, sport = key
        s = _addr(server)
        return f"{s},{_PROTO_NAMES.get(int(proto), str(proto))}:{sport}", s.version == 6  # type: ignore[call-overload]
    server = key[0] if kind == "server-ip" else key[1]
    s = _addr(server)
    return str(s), s.version == 6


def _addr(raw: object) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    assert isinstance(raw, bytes)
    return ipaddress.ip_address(raw)


def synack_set(v6: bool) -> str:
    """The set of connections whose SYN/ACK the kernel forwarded unqueued (:func:`skip_rules`):
    (client, client port, server), kept until the connection's next packet reaches the queue."""
    return f"gfwlab-synack{'6' if v6 else '4'}"


def syncopy_set(v6: bool) -> str:
    """The set of connections whose first SYN the kernel copied and forwarded (:func:`syn_rules`):
    (client, client port, server), kept until a packet of the connection reaches the queue."""
    return f"gfwlab-syncopy{'6' if v6 else '4'}"


def synoff_set(v6: bool) -> str:
    """The set of destinations whose clean first SYNs are queued instead of copied
    (:func:`syn_rules`): each server a residual block is held on, for as long as the block
    (a new connection's SYN to it may draw a residual reset, spec §3), and, while the censor
    records, every address (:data:`EVERY_ADDRESS`, without a timeout)."""
    return f"gfwlab-synoff{'6' if v6 else '4'}"


def held_set(v6: bool) -> str:
    """The set of servers a residual drop block is held on (:func:`hold_rules`): while one is,
    the kernel forwards none of their packets the engine would otherwise not see."""
    return f"gfwlab-held{'6' if v6 else '4'}"


EVERY_ADDRESS = {False: ("0.0.0.0/1", "128.0.0.0/1"), True: ("::/1", "8000::/1")}


def server_of(kind: ResidualKey, key: tuple[object, ...]) -> tuple[str, bool]:
    """The server address of a residual key (``engine.residual.residual_key``: every kind holds
    it), as a set element, and whether it is IPv6."""
    s = _addr(key[SERVER_AT[kind]])
    return str(s), s.version == 6


def create_commands() -> str:
    """``ipset restore`` input that makes every set (empty, with timeouts)."""
    lines = [
        f"create {s.name} {s.type} family {s.family} timeout {IPSET_MAX_TIMEOUT // 2}\n"
        for s in kernel_sets()
    ]
    lines += [
        f"create {synack_set(v6)} hash:ip,port,ip family {'inet6' if v6 else 'inet'} "
        f"timeout {SYNACK_SET_TIMEOUT} maxelem 262144\n"
        for v6 in (False, True)
    ]
    lines += [
        f"create {syncopy_set(v6)} hash:ip,port,ip family {'inet6' if v6 else 'inet'} "
        f"timeout {SYNCOPY_SET_TIMEOUT} maxelem 1048576\n"
        for v6 in (False, True)
    ]
    lines += [
        f"create {name(v6)} {kind} family {'inet6' if v6 else 'inet'} "
        f"timeout {IPSET_MAX_TIMEOUT // 2}\n"
        for name, kind in ((synoff_set, "hash:net"), (held_set, "hash:ip"))
        for v6 in (False, True)
    ]
    return "".join(lines) + blocked.create_lines()


def jump_rule(bypass_mark: int = BYPASS_MARK) -> list[str]:
    """The rule (after ``-I/-D GFWLAB``) that sends bypassed packets through the sets."""
    mark = f"0x{bypass_mark:x}"
    return ["-m", "connmark", "--mark", f"{mark}/{mark}", "-j", BYPASSED_CHAIN]


def bypassed_chain_rules(bypass_mark: int, v6: bool) -> list[list[str]]:
    """The rules (iptables arguments after ``-A CHAIN``) of the chain a bypassed packet crosses:
    a packet a residual set matches loses its connection's bypass mark (and goes on to the
    queue); any other goes through."""
    family = "inet6" if v6 else "inet"
    mark = f"0x{bypass_mark:x}"
    rules = [
        [
            "-m",
            "set",
            "--match-set",
            s.name,
            s.match,
            "-j",
            "CONNMARK",
            "--set-xmark",
            f"0x0/{mark}",
        ]
        for s in kernel_sets()
        if s.family == family
    ]
    rules.append(["-m", "connmark", "--mark", f"{mark}/{mark}", "-j", "ACCEPT"])
    return rules


HOLD_COMMENT = "gfwlab: residual drop blocks in force"


def hold_rules(v6: bool) -> list[list[str]]:
    """The rules (after ``-I GFWLAB_SKIP 1``) that hold the skips off for the packets of servers
    a residual drop block is held on (:func:`held_set`, either way: from or to the server), put
    first while such blocks are in force (:func:`skip_rules`); their comment tells them from the
    chain's own last rule, a bare jump to the same chain. Every residual key holds its server
    (:func:`server_of`), so a block reaches no flow of another server, whose packets the kernel
    goes on forwarding as before."""
    return [
        ["-m", "set", "--match-set", held_set(v6), flags,
         "-m", "comment", "--comment", HOLD_COMMENT, "-g", SEEN_CHAIN]
        for flags in ("dst", "src")
    ]  # fmt: skip


UdpReplies = tuple[frozenset[int], frozenset[int]]
"""Server ports whose answers skip the queue, and the client ports they must not go to."""
MULTIPORT_MAX = 15
"""Ports one ``multiport`` match takes."""


def skip_rules(
    v6: bool,
    *,
    handshake_ack: bool = True,
    syn_ack: bool = False,
    syn: bool = False,
    udp_replies: UdpReplies | None = None,
) -> list[list[str]]:
    """The rules (after ``-A GFWLAB_SKIP``) of packets forwarded without the engine.

    - ``syn``: a connection's first packet in its original direction when it is a bare SYN
      without payload goes to :data:`SYN_CHAIN` (:func:`syn_rules`), which copies it to the
      censor and forwards it, unless a residual block may act on it.
    - ``handshake_ack``: the client's handshake ACK (no SYN, FIN or RST, no payload, the second
      packet of the connection in its original direction) when no mechanism needs it
      (``Needs.handshake_ack``).
    - ``syn_ack``: the server's first answer, a SYN/ACK, on a connection whose client SYN the
      censor passed with nothing else to do (:data:`SYN_CLEAN_MARK` on the connection), when no
      mechanism hooks the SYN/ACK or counts packets. The connection then carries
      :data:`SYNACK_SKIPPED_MARK` until its next packet reaches the queue, which
      :func:`seen_rules` marks so that the censor can tell the engine's TCP view what it missed
      (``LiveCensor.on_packet``); until then the connection is also in :func:`synack_set`, which
      a packet without a connection can be matched against (:func:`seen_rules`).
    - ``udp_replies``: a UDP datagram in a connection's reply direction from one of its first
      ports to a port outside its second (DNS answers: ``Censor.plan.ports``).

    The chain ends with a jump to :data:`SEEN_CHAIN`; jumps to it put first while residual drop
    blocks are in force (:func:`hold_rules`, :meth:`Kernel.set_skip`) stop the rest for the
    packets of the servers the blocks are held on: a block may drop such a packet, and only the
    engine knows."""
    out: list[list[str]] = []
    if syn:
        out.append(_empty_segment(v6, "SYN", 1, SYN_CHAIN))
    if handshake_ack:
        out.append(_empty_segment(v6, "ACK", 2, "ACCEPT"))
    if syn_ack:
        clean, skipped = f"0x{SYN_CLEAN_MARK:x}", f"0x{SYNACK_SKIPPED_MARK:x}"
        both = f"0x{SYN_CLEAN_MARK | SYNACK_SKIPPED_MARK:x}"
        first_answer = [
            "-p", "tcp", "--tcp-flags", "SYN,ACK,FIN,RST", "SYN,ACK",
            "-m", "conntrack", "--ctdir", "REPLY",
            "-m", "connbytes", "--connbytes", "1:1", "--connbytes-dir", "reply",
            "--connbytes-mode", "packets",
        ]  # fmt: skip
        first_clean = [*first_answer, "-m", "connmark", "--mark", f"{clean}/{both}"]
        out.append(
            [*first_clean, "-j", "SET", "--add-set", synack_set(v6), "dst,dst,src", "--exist"]
        )
        out.append([*first_clean, "-j", "CONNMARK", "--or-mark", skipped])
        out.append([*first_answer, "-m", "connmark", "--mark", f"{both}/{both}", "-j", "ACCEPT"])
    if udp_replies is not None:
        sports, watched = (",".join(str(p) for p in sorted(ports)) for ports in udp_replies)
        out.append(
            ["-p", "udp", "-m", "multiport", "--sports", sports,
             "-m", "multiport", "!", "--dports", watched,
             "-m", "conntrack", "--ctdir", "REPLY", "-j", "ACCEPT"]
        )  # fmt: skip
    out.append(["-g", SEEN_CHAIN])
    return out


def udp_replies(watched: Sequence[frozenset[int]]) -> UdpReplies | None:
    """The ``udp_replies`` of :func:`skip_rules` for a chain of censors, each watching the
    server ports of ``watched`` (``Censor.plan.ports``): answers from a port every censor
    watches, toward a port none does; None when there are none (or more than one ``multiport``
    match takes)."""
    ports = frozenset.intersection(*watched) if watched else frozenset()
    union = frozenset().union(*watched)
    if not ports or len(ports) > MULTIPORT_MAX or len(union) > MULTIPORT_MAX:
        return None
    return ports, union


def _empty_segment(v6: bool, flags: str, nth: int, target: str) -> list[str]:
    """A rule for the connection's ``nth`` packet from its client when its only flag of SYN,
    ACK, FIN and RST is ``flags`` and it carries no payload."""
    return ["-p", "tcp", "--tcp-flags", "SYN,ACK,FIN,RST", flags,
            "-m", "connbytes", "--connbytes", f"{nth}:{nth}", "--connbytes-dir", "original",
            "--connbytes-mode", "packets",
            "-m", "bpf", "--bytecode", _PURE_ACK_V6 if v6 else _PURE_ACK_V4,
            "-j", target]  # fmt: skip


def syn_rules(v6: bool, group: int = NFLOG_GROUP, engines: int = 1) -> list[list[str]]:
    """The rules (after ``-A GFWLAB_SYN``) of a clean connection's first SYN (:func:`skip_rules`).

    The SYN is copied to NFLOG ``group`` (``live/nflog.py``; headers only, one packet per
    message, sent at once) and forwarded without waiting: the censor feeds the copy to the
    engine before the next packet it takes from its queue, so the engine sees the connection
    from its SYN, as when the SYN is queued, and the TCB's initial sequence number is the
    SYN's own (rebuilding it from a later packet would take an insertion packet with a forged
    sequence number for the stream's start, spec §9). The connection is marked
    :data:`SYN_CLEAN_MARK`, as the censor marks a SYN it passed clean, so that its SYN/ACK may
    skip the queue too, and put in :func:`syncopy_set`, so that the first packet of it queued
    afterwards is marked :data:`SYN_COPIED_MARK` (:func:`seen_rules`): the censor then feeds the
    copy first, and holds it back after a packet of the connection queued earlier (a client's
    SYN/ACK sent before its SYN, say): the engine sees them in the kernel's order.

    The copy leaves the verdict to the kernel, so it is only made where the engine has nothing
    to decide on a SYN: no active mechanism acts on one (``Needs.syn``; the censor does not
    install the rule then), and no residual block is held on the SYN's server, since a residual
    reset is drawn on a new connection's SYN (spec §3). The censor puts the server of each
    block it holds in :func:`synoff_set`, for as long as the block: SYNs to it go to the queue
    again, those to any other server are still copied (every residual key holds its server,
    :func:`server_of`). While it records, it puts every address there."""
    nflog = ["--nflog-size", str(SYN_COPY_BYTES), "--nflog-threshold", "1"]
    return [
        ["-m", "set", "--match-set", synoff_set(v6), "dst", "-j", "RETURN"],
        *syn_copy_rules(engines, v6, group, nflog),
        ["-j", "CONNMARK", "--or-mark", f"0x{SYN_CLEAN_MARK:x}"],
        ["-j", "SET", "--add-set", syncopy_set(v6), "src,src,dst", "--exist"],
        ["-j", "ACCEPT"],
    ]  # fmt: skip


def seen_rules(v6: bool = False, *, syn_ack: bool = True, syn: bool = False) -> list[list[str]]:
    """The rules (after ``-A GFWLAB_SEEN``) crossed by every packet on its way to the queue: the
    first one of a connection whose SYN/ACK the kernel skipped is marked with the direction it
    was sent in (:data:`SEEN_ORIGINAL_MARK`, :data:`SEEN_REPLY_MARK`), and the connection loses
    :data:`SYNACK_SKIPPED_MARK` and its entry in :func:`synack_set`.

    A TCP packet that conntrack finds INVALID (a bad checksum, a flag combination TCP does not
    allow such as FIN+RST: the insertion packets of Geneva's teardown strategies, spec §9 (a),
    §14c) has no connection, so no connection mark reaches it and the rules above cannot mark
    it; yet the engine, which checks neither checksums nor flags as conntrack does (spec §9),
    may take it for a RST or FIN of the connection, and what that does depends on whether the
    SYN/ACK came first. So it is matched against :func:`synack_set` by its addresses and client
    port, either way, and marked :data:`CT_INVALID_MARK` if the kernel forwarded its
    connection's SYN/ACK unqueued before it (``LiveCensor.invalid_after_syn_ack`` then feeds the
    engine the SYN/ACK first). The order is the kernel's, as the queue's is: a packet that
    reached the queue before the SYN/ACK went by (a server's RST answering a client's SYN/ACK,
    Geneva's TCB turnaround) is not marked, even if the censor reads it only later. The set's
    key has no server port: a client port reused at once towards another port of the same
    server shares the entry, and the engine's own TCB (by its 4-tuple) decides. These packets
    are rare; the two extra rules cost every queued packet one conntrack state test.

    Without the SYN/ACK skip (``syn_ack`` false: a mechanism hooks the SYN/ACK or counts
    packets) no connection is marked skipped and the set stays empty: there are no rules, and
    queued packets cross an empty chain.

    With the SYN copies (``syn``, :func:`syn_rules`) a packet of a connection in
    :func:`syncopy_set`, either way and with or without a connection, is marked
    :data:`SYN_COPIED_MARK` and takes the entry out."""
    copied: list[list[str]] = []
    if syn:
        name, mark = syncopy_set(v6), f"0x{SYN_COPIED_MARK:x}"
        copied = [
            ["-m", "set", "--match-set", name, flags, "-j", "MARK", "--or-mark", mark]
            for flags in ("src,src,dst", "dst,dst,src")
        ] + [
            ["-m", "mark", "--mark", f"{mark}/{mark}", "-j", "SET", "--del-set", name, flags]
            for flags in ("src,src,dst", "dst,dst,src")
        ]
    if not syn_ack:
        return copied
    skipped = f"0x{SYNACK_SKIPPED_MARK:x}"
    has = ["-m", "connmark", "--mark", f"{skipped}/{skipped}"]
    name = synack_set(v6)
    invalid = ["-p", "tcp", "-m", "conntrack", "--ctstate", "INVALID", "-m", "set", "--match-set"]
    mark_invalid = ["-j", "MARK", "--or-mark", f"0x{CT_INVALID_MARK:x}"]
    return [
        [*invalid, name, "src,src,dst", *mark_invalid],
        [*invalid, name, "dst,dst,src", *mark_invalid],
        [*has, "-m", "conntrack", "--ctdir", "ORIGINAL",
         "-j", "MARK", "--or-mark", f"0x{SEEN_ORIGINAL_MARK:x}"],
        [*has, "-m", "conntrack", "--ctdir", "REPLY",
         "-j", "MARK", "--or-mark", f"0x{SEEN_REPLY_MARK:x}"],
        [*has, "-m", "conntrack", "--ctdir", "ORIGINAL", "-j", "SET", "--del-set", name,
         "src,src,dst"],
        [*has, "-m", "conntrack", "--ctdir", "REPLY", "-j", "SET", "--del-set", name,
         "dst,dst,src"],
        [*has, "-j", "CONNMARK", "--set-xmark", f"0x0/{skipped}"],
        *copied,
    ]  # fmt: skip


def clean_syn_rule() -> list[str]:
    """The rule (after ``-A FORWARD`` of the mangle table) that keeps the censor's
    :data:`SYN_CLEAN_MARK` on the connection."""
    clean = f"0x{SYN_CLEAN_MARK:x}"
    return ["-m", "mark", "--mark", f"{clean}/{clean}", "-j", "CONNMARK", "--or-mark", clean]
