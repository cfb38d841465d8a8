"""What a socket cannot tell: the RST packets a connection received, and whether a SYN arrived.

:class:`RstSniffer` reads every TCP packet with RST set that reaches the probe's namespace (a
packet socket with a classic BPF filter, so nothing else is copied to user space) and keeps the
fields that tell the GFW's injectors apart (spec §4a, S&P'25 Table "fingerprint"; spec §3,
Clayton 2006; spec §14b, Henan): flags, count, DF, IP-ID, IP TTL, sequence numbers, payload.
:func:`classify` names the injector from them, from the packets alone.

:func:`syn_arrived` looks at the server side (the lab's server namespace, or any namespace
the probe can enter) for a half-open connection from the client: a SYN that reached the server
while the client never saw the SYN/ACK is null routing (spec §8: server-to-client packets
dropped); a SYN that never arrived was dropped on the way in (e.g. the FET residual, spec §6).
"""

from __future__ import annotations

import ctypes
import ipaddress
import os
import select
import socket
import struct
import threading
import time
from collections import defaultdict
from dataclasses import dataclass

ETH_P_IP = 0x0800
SO_ATTACH_FILTER = 26
PACKET_OUTGOING = 4
HENAN_PAYLOAD = bytes.fromhex("01020304050607080900")
# Classic BPF on a cooked IPv4 packet: TCP, not a later fragment, RST set.
_PROG = (
    (0x30, 0, 0, 9),  # ldb [9]          protocol
    (0x15, 0, 6, 6),  # jeq #6           else drop
    (0x28, 0, 0, 6),  # ldh [6]          flags + fragment offset
    (0x45, 4, 0, 0x1FFF),  # jset #0x1fff     a later fragment: drop
    (0xB1, 0, 0, 0),  # ldxb 4*([0]&0xf) IP header length
    (0x50, 0, 0, 13),  # ldb [x+13]       TCP flags
    (0x45, 0, 1, 0x04),  # jset #RST        accept, else drop
    (0x06, 0, 0, 0x40000),  # ret accept
    (0x06, 0, 0, 0),  # ret drop
)


@dataclass(frozen=True, slots=True)
class RstPacket:
    src: str
    sport: int
    dst: str
    dport: int
    ack: bool
    df: bool
    ip_id: int
    ttl: int
    seq: int
    window: int
    payload: bytes
    ts: float

    def as_dict(self) -> dict[str, object]:
        return {
            "flags": "RST+ACK" if self.ack else "RST",
            "df": self.df,
            "ip_id": f"0x{self.ip_id:04x}",
            "ttl": self.ttl,
            "seq": self.seq,
            "window": self.window,
            "payload_len": len(self.payload),
        }


def parse_rst(pkt: bytes, ts: float) -> RstPacket | None:
    """The RST fields of a raw IPv4 packet, or None if it is not a whole TCP RST."""
    if len(pkt) < 40 or pkt[0] >> 4 != 4 or pkt[9] != 6:
        return None
    ihl = (pkt[0] & 0xF) * 4
    total = int.from_bytes(pkt[2:4], "big")
    if len(pkt) < ihl + 20:
        return None
    tcp = pkt[ihl:]
    flags = tcp[13]
    if not flags & 0x04:
        return None
    doff = (tcp[12] >> 4) * 4
    payload = pkt[ihl + doff : total] if total <= len(pkt) else pkt[ihl + doff :]
    return RstPacket(
        src=str(ipaddress.IPv4Address(pkt[12:16])),
        sport=int.from_bytes(tcp[0:2], "big"),
        dst=str(ipaddress.IPv4Address(pkt[16:20])),
        dport=int.from_bytes(tcp[2:4], "big"),
        ack=bool(flags & 0x10),
        df=bool(pkt[6] & 0x40),
        ip_id=int.from_bytes(pkt[4:6], "big"),
        ttl=pkt[8],
        seq=int.from_bytes(tcp[4:8], "big"),
        window=int.from_bytes(tcp[14:16], "big"),
        payload=bytes(payload),
        ts=ts,
    )


def classify(pkts: list[RstPacket]) -> str | None:
    """The injector whose fingerprint the resets toward the client carry, or None without any.

    type1: one RST without ACK, IP-ID 0, DF 0. type2: three identical RST+ACK with DF 1.
    type3: RST+ACK, DF 0, IP-ID 0x9916-0x9933 (TTL 248 as sent). clayton2006: RST+ACKs whose
    sequence numbers step by 1460 and 2920 (base, +1460, +4380). henan: RST+ACK with the
    10-byte payload 01..09 00 and IP-ID 1. Anything else: ``unknown``.
    """
    if not pkts:
        return None
    first = pkts[0]
    if first.payload == HENAN_PAYLOAD and first.ip_id == 1:
        return "henan"
    if not first.ack and first.ip_id == 0 and not first.df:
        return "type1"
    seqs = sorted({p.seq for p in pkts})
    if len(seqs) >= 3 and {(s - seqs[0]) % (1 << 32) for s in seqs} >= {0, 1460, 4380}:
        return "clayton2006"
    if (
        first.ack
        and first.df
        and len(pkts) >= 3
        and len({(p.seq, p.ip_id, p.ttl) for p in pkts[:3]}) == 1
    ):
        return "type2"
    if first.ack and not first.df and 0x9916 <= first.ip_id <= 0x9933:
        return "type3"
    return "unknown"


def _setns(netns: str) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    path = netns if netns.startswith("/") else os.path.join("/run/netns", netns)
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        if libc.setns(fd, 0x40000000) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns({path}): {os.strerror(err)}")
    finally:
        os.close(fd)


def netns_fd(netns: str | None) -> int:
    """A descriptor of ``netns`` (None: the calling thread's), for :func:`setns_fd`."""
    if netns is None:
        return os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    return os.open(
        netns if netns.startswith("/") else os.path.join("/run/netns", netns),
        os.O_RDONLY | os.O_CLOEXEC,
    )


def setns_fd(fd: int) -> None:
    """Move the calling thread into the network namespace of the descriptor ``fd``."""
    if _LIBC.setns(fd, 0x40000000) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns: {os.strerror(err)}")


_LIBC = ctypes.CDLL(None, use_errno=True)


def enter_netns(netns: str | None) -> None:
    """Move the calling thread into ``netns`` (None: stay); for thread-pool initializers."""
    if netns is not None:
        _setns(netns)


class RstSniffer:
    """Collects incoming TCP resets in ``netns`` (None: the current namespace) until closed."""

    def __init__(self, netns: str | None) -> None:
        self._by_conn: dict[tuple[str, int, int], list[RstPacket]] = defaultdict(list)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(
            target=self._run, args=(netns,), daemon=True, name="rst-sniffer"
        )
        self._thread.start()
        self._ready.wait(10)
        if self._error is not None:
            raise self._error

    def _run(self, netns: str | None) -> None:
        try:
            enter_netns(netns)
            sock = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, socket.htons(ETH_P_IP))
            prog = b"".join(struct.pack("HBBI", *ins) for ins in _PROG)
            buf = ctypes.create_string_buffer(prog)
            sock.setsockopt(
                socket.SOL_SOCKET,
                SO_ATTACH_FILTER,
                struct.pack("HL", len(_PROG), ctypes.addressof(buf)),
            )
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        except BaseException as exc:
            self._error = exc
            self._ready.set()
            return
        self._ready.set()
        with sock:
            while not self._stop.is_set():
                if not select.select([sock], [], [], 0.1)[0]:
                    continue
                try:
                    data, addr = sock.recvfrom(2048)
                except OSError:
                    continue
                if addr[2] == PACKET_OUTGOING:
                    continue
                pkt = parse_rst(data, time.time())
                if pkt is not None:
                    with self._lock:
                        self._by_conn[(pkt.src, pkt.sport, pkt.dport)].append(pkt)

    def resets(self, address: str, port: int, local_port: int | None) -> list[RstPacket]:
        """The resets received from ``address``:``port`` on the connection from
        ``local_port``."""
        if local_port is None:
            return []
        with self._lock:
            return list(self._by_conn.get((address, port, local_port), ()))

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)


def _hex_v4(addr: str, port: int) -> str:
    return f"{int.from_bytes(ipaddress.IPv4Address(addr).packed, 'little'):08X}:{port:04X}"


def syn_arrived(server_netns: str | None, server: str, port: int, client: str) -> bool:
    """Whether ``server``:``port`` holds a half-open connection (SYN_RECV) from ``client``,
    read from ``/proc/thread-self/net/tcp`` in the server's namespace."""
    local, peer = _hex_v4(server, port), _hex_v4(client, 0).split(":")[0]
    found: list[bool] = []

    def look() -> None:
        enter_netns(server_netns)
        with open("/proc/thread-self/net/tcp", encoding="ascii") as fh:
            for line in fh:
                f = line.split()
                if len(f) > 3 and f[1] == local and f[2].startswith(peer) and f[3] == "03":
                    found.append(True)
                    return

    t = threading.Thread(target=look, daemon=True)
    t.start()
    t.join(5)
    return bool(found)
