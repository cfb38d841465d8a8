"""The live censor without a clean connection's first SYN in its queue (live/chains.py
``syn_rules``): the kernel forwards the SYN and copies its headers to an NFLOG group
(live/nflog.py); the censor feeds the copy to the engine where the queue would have put the SYN.

The NFLOG messages are built here as the kernel builds them and read by the real parser; the
reader itself is exercised on a real NFLOG group in a private namespace (``test_a_real_group``).
The NFQUEUE packets and the NFLOG socket of the censor tests are stand-ins (payload, mark,
verdict; the copies waiting); the engine is the real one."""

from __future__ import annotations

import json
import os
import shutil
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gfwlab.live import chains, nflog
from gfwlab.live.daemon import LiveCensor
from gfwlab.live.nflog import SynCopies, connection, parse_messages
from gfwlab.live.topology import SEEN_ORIGINAL_MARK, SYN_CLEAN_MARK, SYN_COPIED_MARK
from gfwlab.packet.ip import ACK, PSH, SYN, addr_bytes, build_tcp, parse
from gfwlab.profiles import build_censor
from helpers import Links, QueuedPacket, profile

C, S = addr_bytes("198.18.0.2"), addr_bytes("198.19.0.9")
CISN, SISN = 1000, 5000
REQ = b"GET /?q=ultrasurf HTTP/1.1\r\nHost: example.com\r\nAccept: */*\r\n\r\n"
PACKET_TYPE = (nflog.NFNL_SUBSYS_ULOG << 8) | nflog.NFULNL_MSG_PACKET


def nla(kind: int, value: bytes) -> bytes:
    size = 4 + len(value)
    return struct.pack("=HH", size, kind) + value + b"\0" * (-size % 4)


def packet_message(payload: bytes, seq: int | None = None) -> bytes:
    """An NFULNL_MSG_PACKET message as nfnetlink_log sends it (header, marks, then payload)."""
    attrs = nla(1, struct.pack("!HBx", 0x0800, 3)) + nla(4, struct.pack("!I", 5))
    if seq is not None:
        attrs += nla(nflog.NFULA_SEQ, struct.pack("!I", seq))
    body = struct.pack("!BBH", socket.AF_INET, 0, 7) + attrs + nla(nflog.NFULA_PAYLOAD, payload)
    return struct.pack("=IHHII", 16 + len(body), PACKET_TYPE, 0, 0, 0) + body


def ack_message(error: int) -> bytes:
    body = struct.pack("=i", -error) + struct.pack("=IHHII", 16, 0, 0, 1, 0)
    return struct.pack("=IHHII", 16 + len(body), nflog.NLMSG_ERROR, 0, 1, 0) + body


def syn(port: int) -> bytes:
    return build_tcp(C, S, port, 80, seq=CISN, flags=SYN, options=bytes.fromhex("020405b4"))


def test_bind_messages_are_config_requests_for_the_group() -> None:
    messages = nflog.bind_messages(7, 256)
    assert len(messages) == 4
    for message in messages:
        size, kind, flags, _seq, _pid = struct.unpack_from("=IHHII", message)
        assert size == len(message) and size % 4 == 0
        assert kind == (nflog.NFNL_SUBSYS_ULOG << 8) | nflog.NFULNL_MSG_CONFIG
        assert flags == nflog.NLM_F_REQUEST | nflog.NLM_F_ACK
        assert struct.unpack_from("!BBH", message, 16) == (socket.AF_UNSPEC, 0, 7)
    # The copy mode: 256 bytes of each packet (big-endian), whole packets.
    assert messages[1][24:30] == struct.pack("!IB", 256, nflog.NFULNL_COPY_PACKET) + b"\0"


def test_the_fail_open_message_sets_that_flag_of_that_queue_only() -> None:
    message = nflog.fail_open_message(7)
    size, kind, flags, _seq, _pid = struct.unpack_from("=IHHII", message)
    assert size == len(message) == 16 + 4 + 8 + 8
    assert kind == (3 << 8) | 2  # NFNL_SUBSYS_QUEUE, NFQNL_MSG_CONFIG
    assert flags == nflog.NLM_F_REQUEST  # no acknowledgement: the binding reads this socket
    assert struct.unpack_from("!BBH", message, 16) == (socket.AF_UNSPEC, 0, 7)
    # NFQA_CFG_MASK (4) then NFQA_CFG_FLAGS (5), each the fail-open bit, big-endian
    assert message[20:] == nla(4, b"\0\0\0\1") + nla(5, b"\0\0\0\1")


def test_packets_acks_and_garbage_are_told_apart() -> None:
    a, b = syn(1), syn(2)
    buf = ack_message(0) + packet_message(a, seq=41) + packet_message(b) + ack_message(16)
    packets, errors, bad = parse_messages(buf)
    assert packets == [(41, a), (None, b)]
    assert errors == [0, 16] and bad == 0
    # A message cut short: what came before it is kept, the rest counted as one bad message.
    packets, errors, bad = parse_messages(packet_message(a, seq=1) + packet_message(b)[:-3])
    assert packets == [(1, a)] and bad == 1
    # A packet message without a payload attribute is bad, not fatal.
    empty = struct.pack("!BBH", 2, 0, 7)
    assert parse_messages(struct.pack("=IHHII", 20, PACKET_TYPE, 0, 0, 0) + empty) == ([], [], 1)


@given(st.binary(max_size=600))
def test_any_bytes_parse_without_raising(data: bytes) -> None:
    packets, errors, bad = parse_messages(data)
    assert bad >= 0 and all(isinstance(p, bytes) for _, p in packets)
    assert all(isinstance(e, int) for e in errors)


class Copies:
    """Stands in for the NFLOG socket: the copies the kernel made, waiting to be read."""

    def __init__(self) -> None:
        self.waiting: list[bytes] = []
        self.lost = 0

    def read(self) -> list[bytes]:
        out, self.waiting = self.waiting, []
        return out

    def fileno(self) -> int:
        return -1

    def close(self) -> None:
        pass


def live(tmp_path: Path, *sets: str) -> tuple[LiveCensor, Copies]:
    prof = profile("http_keyword.probability=1", "tcb.rst_probability=1", *sets)
    censor = LiveCensor(build_censor(prof, 0), str(tmp_path), Links(), 0)  # type: ignore[arg-type]
    copies = Copies()
    censor.syn_copies = SynCopies(copies)
    return censor, copies


def request(port: int, mark: int = SYN_COPIED_MARK | SEEN_ORIGINAL_MARK) -> QueuedPacket:
    data = build_tcp(C, S, port, 80, seq=CISN + 1, ack=SISN + 1, flags=PSH | ACK, payload=REQ)
    return QueuedPacket(data, mark)


def resets(censor: LiveCensor) -> int:
    return censor.censor.stats.events.get("http_keyword/rst", 0)


def test_the_request_after_a_copied_syn_is_judged_as_with_the_syn_queued(tmp_path: Path) -> None:
    """The request is the first packet queued after the kernel copied its connection's SYN (it
    carries SYN_COPIED_MARK): the copy is fed first, the engine has a TCB from the SYN, and the
    keyword is reset. Without the SYN the engine keeps no TCB (a connection seen mid-stream,
    S&P'25, spec §9) and the request would pass."""
    censor, copies = live(tmp_path)
    copies.waiting.append(syn(41000))
    censor.on_packet(request(41000))
    assert censor.syns_fed == 1 and resets(censor) == 1

    without, _ = live(tmp_path)
    without.on_packet(request(41001, mark=SEEN_ORIGINAL_MARK))
    assert without.syns_fed == 0 and resets(without) == 0


def test_a_copy_waits_for_a_packet_of_its_connection_queued_before_it(tmp_path: Path) -> None:
    """A client that sends a SYN/ACK before its SYN (Geneva's "no effect" row, spec §14c): the
    SYN/ACK is queued, then the SYN copied; the SYN/ACK carries no mark. The loop read the copy
    before it emptied the queue, yet the engine gets the SYN/ACK first and the SYN after, in the
    kernel's order. Copies of other connections are fed once the queue is empty."""
    censor, copies = live(tmp_path)
    assert censor.syn_copies is not None
    copies.waiting += [syn(41002), syn(41003)]
    censor.syn_copies.read()  # the loop reads the copies before it empties the queue
    early = build_tcp(C, S, 41002, 80, seq=CISN, ack=7, flags=SYN | ACK)
    censor.on_packet(QueuedPacket(early))
    assert censor.syns_fed == 0  # neither copy went before the unmarked packet
    censor.feed_copies(censor.syn_copies.take_all())  # the queue is empty
    assert censor.syns_fed == 2 and not censor.syn_copies.pending


def test_copies_are_read_when_the_marked_packet_comes_before_the_loop_read_them(
    tmp_path: Path,
) -> None:
    censor, copies = live(tmp_path)
    copies.waiting += [syn(41004), syn(41005)]
    censor.on_packet(request(41005))  # its copy is read now; the other one stays pending
    assert censor.syns_fed == 1 and resets(censor) == 1
    assert censor.syn_copies is not None and list(censor.syn_copies.pending) == [
        connection(syn(41004))
    ]


def test_a_copy_that_draws_a_residual_reset_is_counted_late(tmp_path: Path) -> None:
    """A residual block started while the copy was on its way (the censor pauses the copies as
    soon as it holds one): the engine's residual reset on the SYN (spec §3) is sent, late, and
    counted."""
    censor, copies = live(tmp_path, "http_keyword.residual_probability=1")
    copies.waiting.append(syn(41006))
    censor.on_packet(request(41006))  # reset: a residual block on (client, server, 80)
    assert resets(censor) == 1 and censor.syns_late == 0
    copies.waiting.append(syn(41007))
    assert censor.syn_copies is not None
    censor.syn_copies.read()
    censor.feed_copies(censor.syn_copies.take_all())
    assert censor.syns_late == 1 and resets(censor) == 2
    censor.fire_timers(time.monotonic() + 5)
    assert censor.injector.sent


def test_copies_only_where_no_mechanism_decides_on_a_syn() -> None:
    """Needs.syn: a null route with targets acts on a connection's SYN (spec §7a, §8); with none
    it never acts. The built-in profile on 2022-06-01 has nothing that decides on a SYN."""
    assert not build_censor(profile(), 0).needs_syn
    assert build_censor(profile("null_route.targets=['198.19.0.9']"), 0).needs_syn


def test_syn_rules() -> None:
    for v6 in (False, True):
        jump = chains.skip_rules(v6, handshake_ack=False, syn=True)[0]
        assert jump[-2:] == ["-j", chains.SYN_CHAIN]
        assert jump[jump.index("--tcp-flags") + 2] == "SYN"  # SYN alone: no ACK, FIN, RST
        assert jump[jump.index("--connbytes") + 1] == "1:1"  # the connection's first packet
        assert "bpf" in jump  # without payload
        rules = chains.syn_rules(v6)
        name = chains.synoff_set(v6)
        assert rules[0] == ["-m", "set", "--match-set", name, "dst", "-j", "RETURN"]
        assert rules[1][rules[1].index("--nflog-group") + 1] == str(nflog_group())
        assert rules[2][-1] == f"0x{SYN_CLEAN_MARK:x}" and rules[-1] == ["-j", "ACCEPT"]
        assert rules[3][-3:] == [chains.syncopy_set(v6), "src,src,dst", "--exist"]
        seen = chains.seen_rules(v6, syn_ack=False, syn=True)
        assert [r[-1] for r in seen] == [
            f"0x{SYN_COPIED_MARK:x}",
            f"0x{SYN_COPIED_MARK:x}",
            "src,src,dst",
            "dst,dst,src",
        ]
        assert chains.seen_rules(v6, syn_ack=True, syn=True)[-4:] == seen
    made = chains.create_commands()
    for v6 in (False, True):
        assert f"create {chains.syncopy_set(v6)} hash:ip,port,ip" in made
        assert f"create {chains.synoff_set(v6)} hash:net" in made


def nflog_group() -> int:
    from gfwlab.live.topology import NFLOG_GROUP  # noqa: PLC0415

    return NFLOG_GROUP


NS = f"nflogtest-{os.getpid()}"


READER = """
import json, subprocess, sys, time
from gfwlab.live.nflog import NflogReader
reader = NflogReader(9, rcvbuf=4096)
ping = ["ping", "-q", "127.0.0.1"]
subprocess.run([*ping, "-c", "3", "-i", "0.2"], check=True, capture_output=True)
time.sleep(0.1)
first = reader.read()
lost_first = reader.lost
subprocess.run([*ping, "-c", "60", "-i", "0.002"], check=True, capture_output=True)
rest = reader.read()  # what the buffer held; the loss shows in the next copy's number
subprocess.run([*ping, "-c", "1"], check=True, capture_output=True)
time.sleep(0.1)
rest += reader.read()
print(json.dumps({"first": [p.hex() for p in first], "lost_first": lost_first,
                  "rest": len(rest), "lost": reader.lost}))
"""


@pytest.mark.live
@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("ip"), reason="needs root and ip")
def test_a_real_group() -> None:
    """A real NFLOG group in a private namespace (pings on its loopback): copies read in order,
    copies the kernel could not deliver (a tiny socket buffer) counted exactly by their
    numbers."""
    subprocess.run(["ip", "netns", "add", NS], check=True)
    try:
        ns = ["ip", "netns", "exec", NS]
        subprocess.run([*ns, "ip", "link", "set", "lo", "up"], check=True)
        rule = ["iptables", "-A", "OUTPUT", "-p", "icmp", "--icmp-type", "echo-request", "-j",
                "NFLOG", "--nflog-group", "9", "--nflog-size", "128",
                "--nflog-threshold", "1"]  # fmt: skip
        subprocess.run([*ns, *rule], check=True)
        env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1] / "src")}
        res = subprocess.run([*ns, sys.executable, "-c", READER], capture_output=True,
                             text=True, timeout=60, env=env, check=False)  # fmt: skip
        assert res.returncode == 0, res.stderr
        out = json.loads(res.stdout)
        first = [bytes.fromhex(p) for p in out["first"]]
        assert len(first) == 3 and out["lost_first"] == 0
        assert [parse(p).proto for p in first] == [1, 1, 1]  # whole IPv4 ICMP packets
        assert out["rest"] + out["lost"] == 61 and out["lost"] > 0  # the buffer overflowed
    finally:
        subprocess.run(["ip", "netns", "del", NS], check=False)


def _reference_messages(buf: bytes) -> tuple[list[tuple[int | None, bytes]], list[int], int]:
    """What ``parse_messages`` answers, read with ``struct`` as netlink's C headers declare."""
    packets: list[tuple[int | None, bytes]] = []
    errors: list[int] = []
    bad = off = 0
    while off + 16 <= len(buf):
        size, kind, _flags, _seq, _pid = struct.unpack_from("=IHHII", buf, off)
        if size < 16 or off + size > len(buf):
            return packets, errors, bad + 1
        body = buf[off + 16 : off + size]
        off += (size + 3) & ~3
        if kind == 2:  # NLMSG_ERROR
            if len(body) >= 4:
                errors.append(-struct.unpack_from("=i", body)[0])
            else:
                bad += 1
        elif kind == PACKET_TYPE:
            seq, payload, at = None, None, 4
            while at + 4 <= len(body):
                length, attr = struct.unpack_from("=HH", body, at)
                if length < 4 or at + length > len(body):
                    payload = None
                    break
                if attr & 0x3FFF == nflog.NFULA_PAYLOAD:
                    payload = body[at + 4 : at + length]
                elif attr & 0x3FFF == nflog.NFULA_SEQ and length == 8:
                    seq = struct.unpack_from("!I", body, at + 4)[0]
                at += (length + 3) & ~3
            if payload is None:
                bad += 1
            else:
                packets.append((seq, payload))
    return packets, errors, bad


messages = st.lists(
    st.one_of(
        st.builds(lambda p, s: packet_message(p, seq=s), st.binary(max_size=80),
                  st.none() | st.integers(0, 2**32 - 1)),
        st.builds(ack_message, st.integers(0, 200)),
        st.binary(max_size=40),
    ),
    max_size=5,
).map(b"".join)  # fmt: skip


@given(messages | st.binary(max_size=600))
def test_messages_are_read_as_their_c_headers_say(buf: bytes) -> None:
    assert parse_messages(buf) == _reference_messages(buf)


@st.composite
def ipv4(data: st.DrawFn) -> bytes:
    """An IPv4 packet with TCP or UDP or another protocol, its lengths and fragment fields drawn
    near the edges parse checks."""
    ihl = data(st.sampled_from([4, 5, 6, 15]))
    proto = data(st.sampled_from([6, 17, 1, 6, 17]))
    body = data(st.binary(min_size=0, max_size=70))
    header = bytearray(ihl * 4)
    header[0] = 0x40 | ihl
    total = data(st.one_of(st.just(len(header) + len(body)), st.integers(0, 200)))
    header[2:4] = total.to_bytes(2, "big")
    header[6:8] = data(st.sampled_from([0, 0x4000, 0x2000, 0x0001, 0x4000 | 0x0100])).to_bytes(
        2, "big"
    )
    header[9] = proto
    header[12:20] = data(st.binary(min_size=8, max_size=8))
    if proto == 6 and len(body) >= 13:
        body = body[:12] + bytes([data(st.integers(0, 255))]) + body[13:]
    return bytes(header) + body


@given(st.one_of(ipv4(), st.binary(max_size=80)))
def test_a_connection_is_keyed_as_the_parser_reads_it(raw: bytes) -> None:
    assert connection(raw) == nflog._parsed_connection(raw)


def test_a_connection_is_the_same_key_both_ways() -> None:
    there = build_tcp(C, S, 41000, 80, seq=1, flags=SYN)
    back = build_tcp(S, C, 80, 41000, seq=1, ack=2, flags=SYN | ACK)
    assert connection(there) == connection(back) == (6, C, 41000, S, 80)
    v6 = build_tcp(addr_bytes("2001:db8:c::2"), addr_bytes("2001:db8:5::2"), 41000, 80, seq=1)
    assert connection(v6) == nflog._parsed_connection(v6) is not None
