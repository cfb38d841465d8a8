"""Run a parsed Geneva strategy on raw IP packets: triggers, and the actions duplicate,
fragment (TCP segmentation and IP fragmentation, in and out of order), tamper (replace and
corrupt on IP, TCP and UDP fields and TCP options), drop, send and sleep.

Sans-I/O: :class:`Interpreter` turns one packet (bytes) into the packets to send instead, with
randomness from a seeded stream; the live adapter and the offline simulator both use it. IPv4
only (an IPv6 packet passes unchanged). As in Geneva, every packet a tamper touched gets its
lengths and checksums recomputed unless the tamper set that very field, and a segment made by
``fragment`` gets a fresh data offset.

``fragment{tls:size:in_order}`` (a gfwlab addition, spec §4a) re-frames the TLS handshake
record carrying a ClientHello at the start of a TCP payload as two records, the first holding
``size`` bytes of the body (-1: half), and sends them as two segments (the second also carries
the rest of the payload). The wire then carries 5 bytes more than the endpoint's TCP sent, so
the interpreter of that connection shifts the sequence numbers of its later outbound segments
and the acknowledgement numbers of the segments it receives (``inbound``) by what its splits
added: the endpoints' TCP never sees the change. Any other payload passes on the left branch
unchanged (an encrypted record cannot be cut: each one carries its own MAC).
"""

from __future__ import annotations

import random
import struct
from dataclasses import dataclass, field, replace

from gfwlab.evade.strategy import Action, Strategy, Tree, Trigger
from gfwlab.packet.ip import PROTO_TCP, PROTO_UDP, checksum

FLAG_LETTERS = "FSRPAUECN"  # bit order, as Geneva (scapy) writes TCP flags
OPTION_KINDS = {
    "eol": 0, "nop": 1, "mss": 2, "wscale": 3, "sackok": 4, "sack": 5, "timestamp": 8,
    "altchksum": 14, "altchksumopt": 15, "md5header": 19, "uto": 28,
}  # fmt: skip
OPTION_SIZES = {2: 2, 3: 1, 4: 0, 5: 8, 8: 8, 14: 1, 15: 2, 19: 16, 28: 2}


def flags_text(flags: int) -> str:
    return "".join(c for i, c in enumerate(FLAG_LETTERS) if flags >> i & 1)


def flags_value(text: str) -> int:
    return sum(1 << FLAG_LETTERS.index(c) for c in text.upper() if c in FLAG_LETTERS)


@dataclass
class Pkt:
    """An IPv4 packet, field by field; ``fixed`` names the fields a tamper set (not recomputed)."""

    tos: int
    id: int
    ipflags: int  # 3 bits: reserved, DF, MF
    frag: int  # in 8-byte units
    ttl: int
    proto: int
    src: bytes
    dst: bytes
    ip_options: bytes
    l4: dict[str, int] = field(default_factory=dict)
    options: list[tuple[int, bytes]] = field(default_factory=list)
    load: bytes = b""
    raw_l4: bytes = b""  # a fragment's or an unknown protocol's bytes after the IP header
    fixed: dict[str, int] = field(default_factory=dict)

    @classmethod
    def parse(cls, raw: bytes) -> Pkt | None:
        if len(raw) < 20 or raw[0] >> 4 != 4:
            return None
        ihl = (raw[0] & 15) * 4
        total = struct.unpack_from("!H", raw, 2)[0]
        raw = raw[: max(total, ihl)]
        flags_frag = struct.unpack_from("!H", raw, 6)[0]
        p = cls(
            tos=raw[1], id=struct.unpack_from("!H", raw, 4)[0], ipflags=flags_frag >> 13,
            frag=flags_frag & 0x1FFF, ttl=raw[8], proto=raw[9], src=raw[12:16], dst=raw[16:20],
            ip_options=raw[20:ihl],
        )  # fmt: skip
        body = raw[ihl:]
        if p.frag or p.ipflags & 1 or p.proto not in (PROTO_TCP, PROTO_UDP):
            p.raw_l4 = body
        elif p.proto == PROTO_TCP and len(body) >= 20:
            sport, dport, seq, ack, off, fl, win, _, urg = struct.unpack_from("!HHIIBBHHH", body)
            hlen = max(20, (off >> 4) * 4)
            p.l4 = {"sport": sport, "dport": dport, "seq": seq, "ack": ack,
                    "flags": fl | (off & 1) << 8, "window": win, "urgptr": urg,
                    "reserved": off >> 1 & 7}  # fmt: skip
            p.options = _parse_options(body[20:hlen])
            p.load = body[hlen:]
        elif p.proto == PROTO_UDP and len(body) >= 8:
            sport, dport = struct.unpack_from("!HH", body)
            p.l4 = {"sport": sport, "dport": dport}
            p.load = body[8:]
        else:
            p.raw_l4 = body
        return p

    def copy(self) -> Pkt:
        return replace(self, l4=dict(self.l4), options=list(self.options), fixed=dict(self.fixed))

    def build(self) -> bytes:
        if self.raw_l4 or not self.l4:
            l4 = self.raw_l4
        elif self.proto == PROTO_TCP:
            l4 = self._tcp()
        else:
            l4 = self._udp()
        ihl = 20 + len(self.ip_options)
        total = self.fixed.get("IP.len", ihl + len(l4))
        hdr = struct.pack(
            "!BBHHHBBH4s4s", 0x40 | self.fixed.get("IP.ihl", ihl // 4), self.tos, total,
            self.id, self.ipflags << 13 | self.frag, self.ttl, self.proto, 0, self.src, self.dst,
        ) + self.ip_options  # fmt: skip
        csum = self.fixed.get("IP.chksum", checksum(hdr))
        return hdr[:10] + struct.pack("!H", csum) + hdr[12:] + l4

    def _tcp(self) -> bytes:
        opts = b"".join(bytes((k,)) if k in (0, 1) else bytes((k, len(v) + 2)) + v
                        for k, v in self.options)  # fmt: skip
        opts += b"\x00" * (-len(opts) % 4)
        off = self.fixed.get("TCP.dataofs", (20 + len(opts)) // 4)
        f = self.l4
        hdr = struct.pack(
            "!HHIIBBHHH", f["sport"], f["dport"], f["seq"] & 0xFFFFFFFF, f["ack"] & 0xFFFFFFFF,
            (off & 15) << 4 | (f["reserved"] & 7) << 1 | (f["flags"] >> 8 & 1), f["flags"] & 0xFF,
            f["window"] & 0xFFFF, 0, f["urgptr"] & 0xFFFF,
        ) + opts  # fmt: skip
        seg = hdr + self.load
        csum = self.fixed.get("TCP.chksum", checksum(self._pseudo(len(seg)) + seg))
        return seg[:16] + struct.pack("!H", csum & 0xFFFF) + seg[18:]

    def _udp(self) -> bytes:
        length = self.fixed.get("UDP.len", 8 + len(self.load))
        dgram = struct.pack("!HHHH", self.l4["sport"], self.l4["dport"], length, 0) + self.load
        csum = self.fixed.get("UDP.chksum", checksum(self._pseudo(len(dgram)) + dgram) or 0xFFFF)
        return dgram[:6] + struct.pack("!H", csum & 0xFFFF) + dgram[8:]

    def _pseudo(self, n: int) -> bytes:
        return self.src + self.dst + bytes((0, self.proto)) + n.to_bytes(2, "big")

    # ------------------------------------------------------------------ Geneva fields

    def get(self, proto: str, name: str) -> str | None:
        """A field as Geneva's trigger compares it (a string), or None if the layer is absent."""
        if proto == "IP":
            ip = {"tos": self.tos, "id": self.id, "frag": self.frag, "ttl": self.ttl,
                  "proto": self.proto, "flags": self.ipflags}  # fmt: skip
            return str(ip[name]) if name in ip else None
        want = PROTO_TCP if proto == "TCP" else PROTO_UDP if proto == "UDP" else -1
        if self.proto != want or not self.l4:
            return None
        if name == "flags" and proto == "TCP":
            return flags_text(self.l4["flags"])
        if name == "load":
            return self.load.decode("latin-1")
        value = self.l4.get(name)
        return None if value is None else str(value)


def _parse_options(raw: bytes) -> list[tuple[int, bytes]]:
    out, i = [], 0
    while i < len(raw):
        kind = raw[i]
        if kind in (0, 1):
            out.append((kind, b""))
            i += 1
            if kind == 0:
                break
            continue
        if i + 1 >= len(raw) or raw[i + 1] < 2:
            break
        out.append((kind, raw[i + 2 : i + raw[i + 1]]))
        i += raw[i + 1]
    return out


@dataclass
class Interpreter:
    """One strategy, applied packet by packet; ``rng`` is the seeded stream for corrupt."""

    strategy: Strategy
    rng: random.Random = field(default_factory=lambda: random.Random(0))
    used: dict[int, int] = field(default_factory=dict)  # tree id -> times fired (gas)
    tls_splits: dict[int, int] = field(default_factory=dict)
    """Sequence number (as the endpoint sent it) of each TLS-split segment -> bytes it added."""
    _shift: int = 0

    def outbound(self, raw: bytes) -> list[bytes]:
        return self._forest(self.strategy.outbound, raw, outbound=True)

    def inbound(self, raw: bytes) -> list[bytes]:
        return self._forest(self.strategy.inbound, raw, outbound=False)

    def _forest(self, trees: tuple[Tree, ...], raw: bytes, outbound: bool) -> list[bytes]:
        pkt = Pkt.parse(raw)
        if pkt is None:
            return [raw]
        shifted = False
        if self.tls_splits and pkt.proto == PROTO_TCP and pkt.l4:
            shifted = self._apply_shift(pkt, outbound)
        for tree in trees:
            if self._fires(tree, pkt):
                return [p.build() for p in self.run(tree.action, pkt)]
        return [pkt.build()] if shifted else [raw]

    def _apply_shift(self, pkt: Pkt, outbound: bool) -> bool:
        """Move a segment from the endpoint's sequence space to the wire's (outbound) or an
        acknowledgement from the wire's to the endpoint's (inbound); True if anything moved."""
        if outbound:
            seq = pkt.l4["seq"]
            self._shift = sum(e for k, e in self.tls_splits.items() if _before(k, seq))
            pkt.l4["seq"] = (seq + self._shift) & 0xFFFFFFFF
            return self._shift != 0
        ack, total = pkt.l4["ack"], 0
        for k, extra in sorted(self.tls_splits.items()):
            if _before(k + total, ack):
                total += extra
        pkt.l4["ack"] = (ack - total) & 0xFFFFFFFF
        return total != 0

    def _fires(self, tree: Tree, pkt: Pkt) -> bool:
        if not matches(tree.trigger, pkt):
            return False
        gas = tree.trigger.gas
        n = self.used.get(id(tree), 0)
        if gas is not None and gas >= 0 and n >= gas:
            return False
        self.used[id(tree)] = n + 1
        return True

    def run(self, action: Action | None, pkt: Pkt) -> list[Pkt]:
        if action is None or action.name in ("send", "sleep"):
            return [pkt]
        if action.name == "drop":
            return []
        if action.name == "tamper":
            return self.run(action.left, self.tamper(pkt, action.params))
        if action.name == "duplicate":
            second = pkt.copy()  # before the left subtree tampers with the first
            return self.run(action.left, pkt) + self.run(action.right, second)
        if action.params[0].lower() == "tls":
            parts = self.fragment_tls(pkt, action.params)
            if parts is None:
                return self.run(action.left, pkt)
            first, second = parts
        else:
            first, second = self.fragment(pkt, action.params)
        return self.run(action.left, first) + self.run(action.right, second)

    def fragment_tls(self, pkt: Pkt, params: tuple[str, ...]) -> tuple[Pkt, Pkt] | None:
        """The ClientHello record starting the payload as two records in two segments (above)."""
        load = pkt.load
        if pkt.proto != PROTO_TCP or not pkt.l4 or len(load) < 7 or load[0] != 22 or load[5] != 1:
            return None  # not a handshake record holding a ClientHello
        body_len = int.from_bytes(load[3:5], "big")
        if body_len < 2 or len(load) < 5 + body_len:
            return None  # a record that does not fit in this segment is left alone
        size, in_order = int(params[1]), params[2] == "True"
        cut = body_len // 2 if size == -1 or not 0 < size < body_len else size
        head, body, rest = load[:3], load[5 : 5 + body_len], load[5 + body_len :]
        one = head + cut.to_bytes(2, "big") + body[:cut]
        two = head + (body_len - cut).to_bytes(2, "big") + body[cut:] + rest
        a, b = pkt.copy(), pkt.copy()
        a.load, b.load = one, two
        b.l4["seq"] = (pkt.l4["seq"] + len(one)) & 0xFFFFFFFF
        for p in (a, b):
            for k in ("TCP.dataofs", "TCP.chksum", "IP.len", "IP.chksum"):
                p.fixed.pop(k, None)
        self.tls_splits.setdefault((pkt.l4["seq"] - self._shift) & 0xFFFFFFFF, 5)
        return (a, b) if in_order else (b, a)

    def tamper(self, pkt: Pkt, params: tuple[str, ...]) -> Pkt:
        proto, name, how = params[0], params[1], params[2]
        value = params[3] if how == "replace" else None
        rnd = self.rng
        if proto == "TCP" and name.startswith("options-"):
            kind = OPTION_KINDS.get(name[8:], 0)
            size = OPTION_SIZES.get(kind, 0)
            data = rnd.randbytes(size) if value is None else _option_value(kind, size, value)
            pkt.options = [o for o in pkt.options if o[0] != kind] + [(kind, data)]
            return pkt
        if name == "load":
            pkt.load = (
                value.encode("latin-1") if value is not None else rnd.randbytes(len(pkt.load))
            )
            return pkt
        if proto == "TCP" and name == "flags":
            pkt.l4["flags"] = flags_value(value) if value is not None else rnd.randrange(1 << 9)
            return pkt
        bits = {"tos": 8, "id": 16, "flags": 3, "frag": 13, "ttl": 8, "proto": 8, "len": 16,
                "chksum": 16, "ihl": 4, "dataofs": 4, "seq": 32, "ack": 32, "window": 16,
                "urgptr": 16, "sport": 16, "dport": 16, "reserved": 3}.get(name, 16)  # fmt: skip
        num = int(value, 0) if value is not None and value.lstrip("-").isdigit() else None
        num = rnd.randrange(1 << bits) if num is None else num & ((1 << bits) - 1)
        key = f"{proto}.{name}"
        if name in ("len", "chksum", "ihl", "dataofs"):
            pkt.fixed[key] = num
        elif proto == "IP":
            attr = {"flags": "ipflags"}.get(name, name)
            if hasattr(pkt, attr):
                setattr(pkt, attr, num)
        elif pkt.l4:
            pkt.l4[name] = num
        return pkt

    def fragment(self, pkt: Pkt, params: tuple[str, ...]) -> tuple[Pkt, Pkt]:
        kind, size, in_order = params[0].lower(), int(params[1]), params[2] == "True"
        overlap = int(params[3]) if len(params) > 3 else 0
        if kind == "tcp":
            if pkt.proto != PROTO_TCP or not pkt.l4 or not pkt.load:
                return pkt, pkt.copy()
            load = pkt.load
            cut = len(load) // 2 if size == -1 or size > len(load) - 1 else size
            a, b = pkt.copy(), pkt.copy()
            a.load = load[: cut + min(overlap, len(load) - cut)]
            b.load = load[cut:]
            b.l4["seq"] = (b.l4["seq"] + cut) & 0xFFFFFFFF
            for p in (a, b):
                for k in ("TCP.dataofs", "TCP.chksum", "IP.len", "IP.chksum"):
                    p.fixed.pop(k, None)
        else:
            body = pkt.raw_l4 or Pkt.build(pkt)[20 + len(pkt.ip_options) :]
            if len(body) <= 8:
                return pkt, pkt.copy()
            cut = (len(body) // 2) // 8 * 8 if size == -1 or size * 8 > len(body) else size * 8
            cut = cut or 8
            a, b = pkt.copy(), pkt.copy()
            a.raw_l4, b.raw_l4 = body[:cut], body[cut:]
            a.ipflags |= 1  # MF
            b.frag = pkt.frag + cut // 8
            for p in (a, b):
                p.fixed.pop("IP.len", None)
                p.fixed.pop("IP.chksum", None)
        return (a, b) if in_order else (b, a)


def _before(a: int, b: int) -> bool:
    """Whether sequence number ``a`` comes before ``b`` (modulo 2**32)."""
    return a != b and (b - a) & 0xFFFFFFFF < 1 << 31


def _option_value(kind: int, size: int, value: str) -> bytes:
    if value.isdigit():
        return int(value).to_bytes(max(size, 1), "big")[-max(size, 1) :] if size else b""
    return value.encode("latin-1")


def matches(trigger: Trigger, pkt: Pkt) -> bool:
    """Whether a packet fires a trigger: the field's value, as text, equals the trigger's."""
    got = pkt.get(trigger.proto, trigger.field)
    return got is not None and got == trigger.value
