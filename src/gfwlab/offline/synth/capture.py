"""One deterministic synthetic-capture generator: DNS, HTTP, TLS, QUIC, random TCP and bulk.

``generate(OUT, flows=N, seed=S, mix="realistic")`` writes a raw-IP classic pcap (link type 101,
nanosecond timestamps) starting at 2024-06-01 00:00 UTC; ``gfwlab synth`` is its command.
Conversations of each kind are started at random times and interleaved by timestamp:

* DNS: a query (A or AAAA) and the resolver's answer (some NXDOMAIN, a few unanswered);
* HTTP: whole TCP connections with a browser's GET and a response over several segments;
* TLS: whole TCP connections with a browser-shaped ClientHello (:func:`build_client_hello`),
  the server's flight, client Finished, encrypted requests and application data;
* QUIC: a client Initial that decrypts (:func:`build_initial`, with the name in its SNI), a
  server Initial, then short-header packets both ways with random protected payloads;
* random TCP: handshakes with random payloads both ways between random high ports, and SYN
  scans answered with RST;
* bulk (``realistic`` mix): long TLS downloads and uploads.

Mixes (:data:`MIXES`): ``flow-heavy`` (about 130,000 flows per million packets: nearly every
packet a handshake or first-data packet, the mix of the original benchmark) and ``realistic``
(25 to 40 packets per flow, as in real network traces). A quarter of the names come from the
``blocked`` list and the rest from the ``popular`` list (:func:`load_names`; built-in names if
no list directory is given). Addresses come only from 198.18.0.0/15 (clients in 198.18/16,
servers and resolvers in 198.19/16) and 2001:db8::/32 (about 10 % of conversations are IPv6).
The output depends only on the arguments and the list files.

Speed comes from building headers directly: checksums are the ones'-complement sum computed as
``int.from_bytes(data) % 0xFFFF`` (2**16 = 1 mod 0xFFFF), header words are summed
arithmetically, and payloads are slices of a pre-drawn random pool. Every IPv4 header, TCP and
UDP checksum is correct.
"""

from __future__ import annotations

import heapq
import random
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gfwlab.offline.synth import flood
from gfwlab.packet.pcap import PcapWriter
from gfwlab.proto.dns import build_query
from gfwlab.proto.quic_build import build_initial
from gfwlab.proto.tls import build_client_hello

LIST_FILES = {
    "dns": "gfw-2024-dns-blocklist.txt",
    "http": "gfw-2024-http-blocklist.txt",
    "https": "gfw-2024-https-blocklist.txt",
    "tranco": "gfw-2024-tranco-664NX-top-10k.txt",
}
T0 = 1_717_200_000.0  # 2024-06-01 00:00:00 UTC

KINDS = ("dns", "http", "tls", "quic", "tcp", "bulk")


@dataclass(frozen=True, slots=True)
class Mix:
    """What a capture holds: each kind's share of the packets, and how long transfers are."""

    shares: dict[str, float]
    scale: float
    """Multiplies the mean length of responses, downloads and QUIC connections."""


MIXES = {
    "flow-heavy": Mix({"dns": 0.15, "http": 0.20, "tls": 0.30, "quic": 0.15, "tcp": 0.20}, 1.0),
    "realistic": Mix(
        {"dns": 0.02, "http": 0.12, "tls": 0.36, "quic": 0.20, "tcp": 0.05, "bulk": 0.25}, 3.0
    ),
}
"""``flow-heavy``: ~130k flows per million packets; ``realistic``: 25-40 packets per flow."""
FLOODS = ("syn-flood", "concurrent")
"""Mixes for the flow table's limits (:mod:`.flood`): ``flows`` SYNs from spoofed sources, or
``flows`` connections held open at once."""
BLOCKED_SHARE = 0.25
V6_SHARE = 0.10
KEYWORDS = ("falun", "ultrasurf", "freegate", "tiananmen", "dalai")

# TCP flags.
FIN, SYN, RST, PSH, ACK = 0x01, 0x02, 0x04, 0x08, 0x10
# Port ranges with no TCP or UDP port-registered dissector in tshark 4.0 (`tshark -G decodes`),
# so random payloads show as plain data rather than mis-dissected as some protocol.
CLIENT_PORTS = (50000, 54300)
RANDOM_SERVER_PORTS = (35000, 44300)
MSS_PAYLOAD = 1400
# MSS 1460, NOP, NOP, SACK permitted, NOP, window scale 7: 12 bytes, as a SYN carries them.
SYN_OPTIONS = b"\x02\x04\x05\xb4\x01\x01\x04\x02\x01\x03\x03\x07"

_TCP_HDR = struct.Struct("!HHIIBBHHH")
_UDP_HDR = struct.Struct("!HHHH")
_V4_HDR = struct.Struct("!BBHHHBBH4s4s")
_V6_HDR = struct.Struct("!IHBB16s16s")

Packets = list[tuple[float, bytes]]


def _fold(data: bytes) -> int:
    """Ones'-complement sum of ``data`` (even length) as a residue modulo 0xFFFF."""
    return int.from_bytes(data, "big") % 0xFFFF


def _finish(total: int) -> int:
    """The Internet checksum from a (non-zero data) sum residue."""
    s = total % 0xFFFF
    return 0xFFFF - (s or 0xFFFF)


class Conn:
    """Two endpoints; builds correct IPv4/IPv6 + TCP/UDP packets between them, either way."""

    __slots__ = ("addr_sum", "c", "cport", "ipid_c", "ipid_s", "s", "sport", "ttl_c", "ttl_s", "v6")

    def __init__(self, rng: random.Random, c: bytes, s: bytes, cport: int, sport: int) -> None:
        self.c, self.s, self.cport, self.sport = c, s, cport, sport
        self.v6 = len(c) == 16
        self.addr_sum = _fold(c + s)  # the pseudo-header's address words, either direction
        self.ttl_c = rng.randint(52, 64)
        self.ttl_s = rng.randint(38, 58)
        self.ipid_c = rng.getrandbits(16)
        self.ipid_s = rng.getrandbits(16)

    def _ip(self, c2s: bool, proto: int, body: bytes) -> bytes:
        src, dst = (self.c, self.s) if c2s else (self.s, self.c)
        if c2s:
            ttl = self.ttl_c
            self.ipid_c = ipid = (self.ipid_c + 1) & 0xFFFF
        else:
            ttl = self.ttl_s
            self.ipid_s = ipid = (self.ipid_s + 1) & 0xFFFF
        if self.v6:
            return _V6_HDR.pack(0x60000000, len(body), proto, ttl, src, dst) + body
        total = 20 + len(body)
        frag = 0x4000 if proto == 6 else 0
        csum = _finish(0x4500 + total + ipid + frag + (ttl << 8 | proto) + self.addr_sum)
        return _V4_HDR.pack(0x45, 0, total, ipid, frag, ttl, proto, csum, src, dst) + body

    def tcp(
        self,
        c2s: bool,
        seq: int,
        ack: int,
        flags: int,
        *,
        payload: bytes = b"",
        options: bytes = b"",
        window: int = 64240,
    ) -> bytes:
        sport, dport = (self.cport, self.sport) if c2s else (self.sport, self.cport)
        seq &= 0xFFFFFFFF
        ack &= 0xFFFFFFFF
        off = (20 + len(options)) >> 2
        seglen = 20 + len(options) + len(payload)
        total = (
            self.addr_sum
            + 6
            + seglen
            + sport
            + dport
            + (seq >> 16)
            + (seq & 0xFFFF)
            + (ack >> 16)
            + (ack & 0xFFFF)
            + (off << 12 | flags)
            + window
        )
        if options:
            total += _fold(options)
        if payload:
            total += _fold(payload + b"\x00" if len(payload) & 1 else payload)
        hdr = _TCP_HDR.pack(sport, dport, seq, ack, off << 4, flags, window, _finish(total), 0)
        return self._ip(c2s, 6, hdr + options + payload)

    def udp(self, c2s: bool, payload: bytes) -> bytes:
        sport, dport = (self.cport, self.sport) if c2s else (self.sport, self.cport)
        length = 8 + len(payload)
        total = self.addr_sum + 17 + length + sport + dport + length
        if payload:
            total += _fold(payload + b"\x00" if len(payload) & 1 else payload)
        csum = _finish(total) or 0xFFFF
        return self._ip(c2s, 17, _UDP_HDR.pack(sport, dport, length, csum) + payload)


class Tcp:
    """One TCP connection being written out: tracks both sequence numbers and the clock."""

    __slots__ = ("conn", "cseq", "last_c", "last_s", "out", "rtt", "sseq", "t")

    def __init__(self, rng: random.Random, conn: Conn, t: float, rtt: float) -> None:
        self.conn, self.t, self.rtt = conn, t, rtt
        self.cseq = rng.getrandbits(32)
        self.sseq = rng.getrandbits(32)
        # Per side: (own next seq, ack) of its last segment, data or not.
        self.last_c = self.last_s = (-1, -1)
        self.out: Packets = []

    def handshake(self) -> None:
        c = self.conn
        self.out.append((self.t, c.tcp(True, self.cseq, 0, SYN, options=SYN_OPTIONS)))
        self.t += self.rtt / 2
        self.out.append(
            (
                self.t,
                c.tcp(
                    False, self.sseq, self.cseq + 1, SYN | ACK, options=SYN_OPTIONS, window=65160
                ),
            )
        )
        self.cseq += 1
        self.sseq += 1
        self.t += self.rtt / 2
        self.out.append((self.t, c.tcp(True, self.cseq, self.sseq, ACK)))
        self.last_c = (self.cseq, self.sseq)
        self.last_s = (self.sseq, self.cseq)

    def send(self, c2s: bool, payload: bytes, dt: float) -> None:
        self.t += dt
        if c2s:
            self.out.append(
                (self.t, self.conn.tcp(True, self.cseq, self.sseq, PSH | ACK, payload=payload))
            )
            self.cseq += len(payload)
            self.last_c = (self.cseq, self.sseq)
        else:
            self.out.append(
                (self.t, self.conn.tcp(False, self.sseq, self.cseq, PSH | ACK, payload=payload))
            )
            self.sseq += len(payload)
            self.last_s = (self.sseq, self.cseq)

    def ack(self, c2s: bool, dt: float) -> None:
        """A pure ACK, unless this side has already acknowledged everything (no dup ACKs)."""
        if c2s:
            if self.cseq == self.last_c[0] and self.sseq == self.last_c[1]:
                return
            self.t += dt
            self.out.append((self.t, self.conn.tcp(True, self.cseq, self.sseq, ACK)))
            self.last_c = (self.cseq, self.sseq)
        else:
            if self.sseq == self.last_s[0] and self.cseq == self.last_s[1]:
                return
            self.t += dt
            self.out.append((self.t, self.conn.tcp(False, self.sseq, self.cseq, ACK)))
            self.last_s = (self.sseq, self.cseq)

    def close(self, client_first: bool = True) -> None:
        """FIN from one side, FIN/ACK from the other, final ACK."""
        a = client_first
        seq = self.cseq if a else self.sseq
        peer = self.sseq if a else self.cseq
        c = self.conn
        self.t += 0.0005
        self.out.append((self.t, c.tcp(a, seq, peer, FIN | ACK)))
        self.t += self.rtt / 2
        self.out.append((self.t, c.tcp(not a, peer, seq + 1, FIN | ACK)))
        self.t += self.rtt / 2
        self.out.append((self.t, c.tcp(a, seq + 1, peer + 1, ACK)))

    def reset(self, c2s: bool) -> None:
        self.t += 0.001
        seq = self.cseq if c2s else self.sseq
        self.out.append((self.t, self.conn.tcp(c2s, seq, 0, RST)))


def _tls_record(ctype: int, body: bytes) -> bytes:
    return bytes((ctype, 3, 3)) + len(body).to_bytes(2, "big") + body


class Generator:
    """Builds conversations of each kind from one seeded RNG."""

    def __init__(
        self, seed: int, lists: dict[str, list[str]], packets: int, mix: Mix = MIXES["flow-heavy"]
    ) -> None:
        self.rng = rng = random.Random(seed)
        self.scale = mix.scale
        self.lists = lists
        self.pool = rng.randbytes(1 << 22)
        letters = b"abcdefghijklmnopqrstuvwxyz      \n<>/=\"'.,-0123456789"
        self.text = bytes(letters[b % len(letters)] for b in rng.randbytes(1 << 20))
        n_clients = max(2000, packets // 40)
        self.clients4 = [
            bytes((198, 18, 1 + i // 254 % 255, 1 + i % 254))
            for i in rng.sample(range(255 * 254), min(n_clients, 255 * 254))
        ]
        self.clients6 = [
            bytes.fromhex("20010db8000c0000") + rng.randbytes(8)
            for _ in range(max(200, n_clients // 10))
        ]
        n_servers = max(1000, packets // 100)
        self.servers4 = [
            bytes((198, 19, 1 + i // 254 % 255, 1 + i % 254))
            for i in rng.sample(range(255 * 254), min(n_servers, 255 * 254))
        ]
        self.servers6 = [
            bytes.fromhex("20010db800050000") + rng.randbytes(8)
            for _ in range(max(100, n_servers // 10))
        ]
        self.resolvers4 = [
            bytes((198, 19, 0, 53)),
            bytes((198, 19, 0, 54)),
            bytes((198, 19, 1, 53)),
        ]
        self.resolvers6 = [bytes.fromhex("20010db8000500000000000000000053")]
        self.by_name: dict[tuple[str, bool], bytes] = {}
        self.hellos: dict[str, bytes] = {}
        self.flows = 0
        self.builders: dict[str, Callable[[float], Packets]] = {
            "dns": self.dns,
            "http": self.http,
            "tls": self.tls,
            "quic": self.quic,
            "tcp": self.random_tcp,
            "bulk": self.bulk,
        }

    # ------------------------------------------------------------------ helpers

    def blob(self, n: int) -> bytes:
        off = self.rng.randrange(len(self.pool) - n)
        return self.pool[off : off + n]

    def words(self, n: int) -> bytes:
        off = self.rng.randrange(len(self.text) - n)
        return self.text[off : off + n]

    def name(self, blocked_list: str) -> str:
        rng = self.rng
        if rng.random() < BLOCKED_SHARE:
            return rng.choice(self.lists[blocked_list])
        name = rng.choice(self.lists["tranco"])
        return "www." + name if rng.random() < 0.3 else name

    def client(self, v6: bool) -> bytes:
        return self.rng.choice(self.clients6 if v6 else self.clients4)

    def server_for(self, name: str, v6: bool) -> bytes:
        key = (name, v6)
        addr = self.by_name.get(key)
        if addr is None:
            addr = self.by_name[key] = self.rng.choice(self.servers6 if v6 else self.servers4)
        return addr

    def cport(self) -> int:
        return self.rng.randint(*CLIENT_PORTS)

    def conn(self, c: bytes, s: bytes, sport: int) -> Conn:
        self.flows += 1
        return Conn(self.rng, c, s, self.cport(), sport)

    def rtt(self) -> float:
        return self.rng.uniform(0.008, 0.25)

    def ack_every_other(self, tcp: Tcp, c2s_data: bool, i: int) -> None:
        if i % 2:
            tcp.ack(not c2s_data, 0.0002)

    # ------------------------------------------------------------------ conversations

    def dns(self, t: float) -> Packets:
        rng = self.rng
        v6 = rng.random() < V6_SHARE
        name = self.name("dns")
        qtype = 28 if rng.random() < 0.25 else 1
        query = build_query(name, qtype, id=rng.getrandbits(16))
        conn = self.conn(
            self.client(v6), rng.choice(self.resolvers6 if v6 else self.resolvers4), 53
        )
        out: Packets = [(t, conn.udp(True, query))]
        r = rng.random()
        if r < 0.04:
            return out  # unanswered
        if r < 0.07:
            flags, answers = 0x8183, b""  # NXDOMAIN
            count = 0
        else:
            flags = 0x8180
            count = rng.choice((1, 1, 1, 2, 2, 3, 4))
            parts = []
            for _ in range(count):
                addr = rng.choice(self.servers6) if qtype == 28 else rng.choice(self.servers4)
                parts.append(
                    b"\xc0\x0c"
                    + struct.pack("!HHIH", qtype, 1, rng.randint(30, 3600), len(addr))
                    + addr
                )
            answers = b"".join(parts)
        head = query[:2] + struct.pack("!HHHHH", flags, 1, count, 0, 0)
        out.append((t + rng.uniform(0.002, 0.12), conn.udp(False, head + query[12:] + answers)))
        return out

    def http(self, t: float) -> Packets:
        rng = self.rng
        v6 = rng.random() < V6_SHARE
        host = self.name("http")
        conn = self.conn(self.client(v6), self.server_for(host, v6), 80)
        tcp = Tcp(rng, conn, t, self.rtt())
        tcp.handshake()
        for req in range(1 if rng.random() < 0.8 else 2):
            if rng.random() < 0.08:
                path = f"/search?q={rng.choice(KEYWORDS)}&lang=en"
            else:
                path = rng.choice(
                    (
                        "/",
                        "/index.html",
                        "/favicon.ico",
                        "/news",
                        f"/static/app.{rng.getrandbits(32):08x}.js",
                        f"/img/{rng.randint(1, 99999)}.png",
                    )
                )
            request = (
                f"GET {path} HTTP/1.1\r\nHost: {host}\r\n"
                "User-Agent: Mozilla/5.0 (X11; Linux x86_64; rv:126.0) Gecko/20100101 "
                "Firefox/126.0\r\nAccept: */*\r\nAccept-Language: en-US,en;q=0.5\r\n"
                "Connection: keep-alive\r\n\r\n"
            ).encode("latin-1")
            tcp.send(True, request, 0.0005 if req == 0 else tcp.rtt)
            if rng.random() < 0.5:
                tcp.ack(False, tcp.rtt / 2)
            segs = min(int(12 * self.scale), int(rng.expovariate(1 / (3.0 * self.scale))) + 1)
            length = (segs - 1) * MSS_PAYLOAD + rng.randint(50, MSS_PAYLOAD - 200)
            head = (
                f"HTTP/1.1 200 OK\r\nServer: nginx\r\nContent-Type: text/html; charset=utf-8"
                f"\r\nContent-Length: {length}\r\nConnection: keep-alive\r\n\r\n"
            ).encode("latin-1")
            body = self.words(length)
            data = head + body
            for i in range(0, len(data), MSS_PAYLOAD):
                tcp.send(False, data[i : i + MSS_PAYLOAD], tcp.rtt / 2 if i == 0 else 0.0003)
                self.ack_every_other(tcp, False, i // MSS_PAYLOAD)
            tcp.ack(True, 0.0002)
        tcp.close(client_first=rng.random() < 0.7)
        return tcp.out

    def server_flight(self) -> list[bytes]:
        """ServerHello + ChangeCipherSpec + encrypted handshake, as 1 to 3 segments."""
        rng = self.rng
        exts = b"\x00\x2b\x00\x02\x03\x04" + b"\x00\x33\x00\x24\x00\x1d\x00\x20" + self.blob(32)
        body = (
            b"\x03\x03"
            + self.blob(32)
            + b"\x20"
            + self.blob(32)
            + b"\x13\x01\x00"
            + len(exts).to_bytes(2, "big")
            + exts
        )
        hello = _tls_record(22, b"\x02" + len(body).to_bytes(3, "big") + body)
        first = hello + _tls_record(20, b"\x01")
        # Encrypted extensions, certificate, verify, finished: 2.5 kB to 4.5 kB of records.
        remaining = rng.randint(2500, 4500)
        segs: list[bytes] = []
        room = MSS_PAYLOAD - len(first) - 5
        first += _tls_record(23, self.blob(min(room, remaining)))
        remaining -= min(room, remaining)
        segs.append(first)
        while remaining > 0:
            n = min(MSS_PAYLOAD - 5, remaining)
            segs.append(_tls_record(23, self.blob(n)))
            remaining -= n
        return segs

    def bulk(self, t: float) -> Packets:
        """A long TLS download (or, one time in five, upload)."""
        return self.tls(t, bulk=True)

    def tls(self, t: float, *, bulk: bool = False) -> Packets:
        rng = self.rng
        v6 = rng.random() < V6_SHARE
        sni = self.name("https")
        hello = self.hellos.get(sni)
        if rng.random() < 0.01:
            hello = build_client_hello(None, alpn=("h2", "http/1.1"))  # no SNI at all
        elif hello is None:
            hello = build_client_hello(sni, alpn=("h2", "http/1.1"))
            if len(self.hellos) < 200_000:
                self.hellos[sni] = hello
        conn = self.conn(self.client(v6), self.server_for(sni, v6), 443)
        tcp = Tcp(rng, conn, t, self.rtt())
        tcp.handshake()
        tcp.send(True, hello, 0.0005)
        if rng.random() < 0.3:
            tcp.ack(False, tcp.rtt / 2)
        for i, seg in enumerate(self.server_flight()):
            tcp.send(False, seg, tcp.rtt / 2 if i == 0 else 0.0003)
        tcp.ack(True, 0.0002)
        tcp.send(True, _tls_record(20, b"\x01") + _tls_record(23, self.blob(53)), 0.002)
        for _ in range(1 if rng.random() < 0.85 else rng.randint(2, 4)):
            tcp.send(True, _tls_record(23, self.blob(rng.randint(60, 700))), 0.001)
            mean = 8.0 * self.scale * (25 if bulk else 1)
            n = min(int(60 * self.scale * (25 if bulk else 1)), int(rng.expovariate(1 / mean)))
            up = bulk and rng.random() < 0.2
            for i in range(n):
                size = MSS_PAYLOAD - 5 if i < n - 1 else rng.randint(30, MSS_PAYLOAD - 5)
                tcp.send(up, _tls_record(23, self.blob(size)), tcp.rtt / 2 if i == 0 else 2e-4)
                self.ack_every_other(tcp, up, i)
            tcp.ack(True, 0.0002)
        tcp.send(True, _tls_record(23, self.blob(19)), 0.05)  # close_notify
        tcp.close()
        return tcp.out

    def quic_long(self, dcid: bytes, scid: bytes, size: int) -> bytes:
        """A QUIC v1 Initial of ``size`` bytes: real header, random protected payload."""
        head = (
            bytes((0xC0 | self.rng.getrandbits(2),))
            + b"\x00\x00\x00\x01\x08"
            + dcid
            + b"\x08"
            + scid
            + b"\x00"
        )
        rest = size - len(head) - 2
        return head + (0x4000 | rest).to_bytes(2, "big") + self.blob(rest)

    def quic(self, t: float) -> Packets:
        """A client Initial that decrypts (its SNI from the names), a server Initial, then
        1-RTT short-header packets both ways."""
        rng = self.rng
        v6 = rng.random() < V6_SHARE
        sni = self.name("quic")
        conn = self.conn(self.client(v6), self.server_for(sni, v6), 443)
        odcid, ccid, scid = self.blob(8), self.blob(8), self.blob(8)
        n = min(int(80 * self.scale), 2 + int(rng.expovariate(1 / (8.0 * self.scale))))
        out: Packets = []
        for i in range(n):
            size = rng.randint(1200, 1350)
            if i == 0:
                c2s, body = True, build_initial(sni, dcid=odcid, scid=ccid, pad_to=size)
            elif i == 1:
                c2s, body = False, self.quic_long(ccid, scid, size)
            else:
                c2s = rng.random() < 0.3
                body = (
                    bytes((0x40 | rng.getrandbits(5),))
                    + (scid if c2s else ccid)
                    + self.blob(size - 9)
                )
            out.append((t, conn.udp(c2s, body)))
            t += rng.uniform(0.0002, 0.01) if i != 0 else rng.uniform(0.008, 0.25)
        return out

    def random_tcp(self, t: float) -> Packets:
        rng = self.rng
        v6 = rng.random() < V6_SHARE
        conn = self.conn(
            self.client(v6),
            rng.choice(self.servers6 if v6 else self.servers4),
            rng.randint(*RANDOM_SERVER_PORTS),
        )
        tcp = Tcp(rng, conn, t, self.rtt())
        if rng.random() < 0.1:  # a scan: SYN, RST/ACK
            tcp.out.append((t, conn.tcp(True, tcp.cseq, 0, SYN, options=SYN_OPTIONS)))
            tcp.t += tcp.rtt
            tcp.out.append((tcp.t, conn.tcp(False, 0, tcp.cseq + 1, RST | ACK)))
            return tcp.out
        tcp.handshake()
        for _ in range(rng.randint(2, 14)):
            c2s = rng.random() < 0.4
            size = rng.randint(1, 200) if rng.random() < 0.5 else rng.randint(200, MSS_PAYLOAD)
            tcp.send(c2s, self.blob(size), rng.uniform(0.0002, tcp.rtt))
            if rng.random() < 0.5:
                tcp.ack(not c2s, tcp.rtt / 2)
        if rng.random() < 0.1:
            tcp.reset(rng.random() < 0.5)
        else:
            tcp.close(client_first=rng.random() < 0.6)
        return tcp.out


def read_list(path: Path) -> list[str]:
    """A list file's names, lower-cased, without blanks and ``#`` comments."""
    with open(path, encoding="utf-8") as fh:
        names = [line.strip().lower() for line in fh]
    return [n for n in names if n and not n.startswith("#")]


BUILTIN_BLOCKED = (
    "www.google.com", "www.facebook.com", "twitter.com", "www.youtube.com", "en.wikipedia.org",
    "www.nytimes.com", "www.torproject.org", "www.instagram.com",
)  # fmt: skip


def load_names(directory: Path | None) -> dict[str, list[str]]:
    """The name lists by use (``dns``, ``http``, ``https``, ``quic``, ``tranco``): the 2024 lists
    in ``directory`` (:data:`LIST_FILES`), or built-in names if ``directory`` is None. Raises
    OSError for a directory without them."""
    if directory is None:
        blocked = list(BUILTIN_BLOCKED)
        popular = [f"site{i}.example.com" for i in range(10_000)]
        return {"dns": blocked, "http": blocked, "https": blocked, "quic": blocked,
                "tranco": popular}  # fmt: skip
    lists = {key: read_list(directory / name) for key, name in LIST_FILES.items()}
    lists.setdefault("quic", lists["https"])
    return lists


def generate(
    out: str,
    *,
    flows: int | None = None,
    packets: int | None = None,
    seed: int = 1,
    mix: str = "realistic",
    names: dict[str, list[str]] | None = None,
    pps: float = 8000.0,
    progress: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Write the capture to ``out`` (published whole, or not at all); return what it holds.

    ``flows``: start this many conversations and write all their packets; ``packets``: stop
    after this many packets (the last conversations cut short). ``pps`` is the mean packet rate
    of capture time. ``progress`` is called with the packets written so far.
    """
    if (flows is None) == (packets is None):
        raise ValueError("give flows or packets")
    if mix in FLOODS:
        return flood.write(out, mix, flows or packets or 0, seed)
    chosen = MIXES[mix]
    lists = names if names is not None else load_names(None)
    gen = Generator(seed, lists, packets or (flows or 0) * 30, chosen)
    shares = {k: chosen.shares.get(k, 0.0) for k in KINDS}
    kinds = [k for k in KINDS if shares[k] > 0]
    rng = gen.rng
    made = dict.fromkeys(KINDS, 0)
    written = dict.fromkeys(KINDS, 0)
    convs = dict.fromkeys(KINDS, 0)
    heap: list[tuple[float, int, int, bytes]] = []
    counter = 0
    next_start = T0 + 0.001
    total_made = 0
    started = 0
    v6_packets = 0
    n = 0
    nbytes = 0
    t = T0
    limit = packets if packets is not None else -1
    with PcapWriter(out) as writer:
        write = writer.write
        while n != limit:
            while (flows is None or started < flows) and (not heap or next_start <= heap[0][0]):
                # The kind furthest below its share of the packets made so far goes next.
                kind = max(kinds, key=lambda k: shares[k] * (total_made + 1) - made[k])
                kind_i = KINDS.index(kind)
                conv = gen.builders[kind](next_start)
                convs[kind] += 1
                started += 1
                made[kind] += len(conv)
                total_made += len(conv)
                for ct, pkt in conv:
                    heapq.heappush(heap, (ct, counter, kind_i, pkt))
                    counter += 1
                mean = total_made / started
                next_start += rng.expovariate(pps / mean)
            if not heap:
                break
            t, _c, kind_i, pkt = heapq.heappop(heap)
            write(t, pkt)
            written[KINDS[kind_i]] += 1
            nbytes += len(pkt)
            if pkt[0] >> 4 == 6:
                v6_packets += 1
            n += 1
            if progress is not None and not n & 0x3FFF:
                progress(n)
    return {
        "packets": n,
        "seed": seed,
        "mix": mix,
        "pps_target": pps,
        "bytes_ip": nbytes,
        "capture_seconds": round(t - T0, 3),
        "flows_started": gen.flows,
        "packets_per_flow": round(n / max(gen.flows, 1), 1),
        "conversations": convs,
        "packets_by_kind": written,
        "share_by_kind": {k: round(v / max(n, 1), 4) for k, v in written.items()},
        "ipv6_packets": v6_packets,
    }
