"""The active prober: connects to suspected servers with the GFW prober's fingerprint.

IMC'20 (spec §7a) measured the probers' packets: IP TTL 46-50, source ports 32768-60999, TCP
timestamps from a 250 Hz clock shared by several processes, and a FIN/ACK within about 10 s. A
kernel socket cannot set its timestamp clock, so the prober speaks just enough TCP itself, over
raw sockets: SYN (MSS, SACK-permitted, timestamps, window scale), the handshake's ACK, one data
segment with the probe, ACKs for what the server sends, and a FIN/ACK after ``linger`` seconds or
when the server closes. It never sends a RST; the lab's iptables keep the kernel from resetting
the connections it does not know (``install_prober_rules``).

Prober addresses are in the lab's inside range (198.18.1.0/24, local to the censor namespace):
the real probers sit in Chinese networks (AS4837, AS4134). IPv4 only.
"""

from __future__ import annotations

import collections
import queue
import random
import socket
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from gfwlab.engine.actions import Probe
from gfwlab.errors import MalformedPacket
from gfwlab.live.topology import PROBER_NET
from gfwlab.packet.ip import ACK, FIN, PSH, RST, SYN, Packet, addr_bytes, build_tcp, parse


@dataclass(frozen=True, slots=True)
class ProbeOutcome:
    probe_id: int
    reaction: str
    """``data``, ``fin``, ``rst``, ``timeout`` or ``unreachable``."""
    response_len: int


MAX_THREADS = 64
"""Probes in flight at once. A probe holds its thread for up to its linger (about 10 s, spec
§7a) or the SYN's two tries (4.5 s) if nothing answers; probes due beyond this wait their turn."""


class Prober:
    """Runs probes in threads; outcomes are queued for the engine's thread to collect.

    :meth:`submit` never blocks: it is called from the censor's packet loop, and a loop that
    waits for a free prober thread holds every queued packet meanwhile (new connections stall
    for seconds while probes linger). With ``max_threads`` probes in flight, the next ones wait
    in order and the first thread to finish runs them; :attr:`waited` counts those that started
    late, and :attr:`waiting` how many wait now (``lab status``)."""

    def __init__(
        self, wake: Callable[[], None], *, seed: int = 0, max_threads: int = MAX_THREADS
    ) -> None:
        self.results: queue.Queue[ProbeOutcome] = queue.Queue()
        self._wake = wake
        self._rng = random.Random(f"{seed}:prober")
        self._clock0 = time.monotonic()
        self._ts_base = self._rng.randrange(1 << 31)
        self._free = max_threads
        self._due: collections.deque[Probe] = collections.deque()
        self.waited = 0
        """Probes that waited for a free thread (all ``max_threads`` busy when they were due)."""
        self._send = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
        self._recv = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_TCP)
        self._recv.settimeout(0.2)
        self._inboxes: dict[tuple[bytes, int], queue.Queue[bytes]] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._reader = threading.Thread(target=self._read, name="prober-rx", daemon=True)
        self._reader.start()
        self.sent = 0

    def submit(self, probe: Probe) -> None:
        """Start ``probe`` now (its time has come); the outcome arrives in ``results``."""
        if ":" in probe.server:
            self.results.put(ProbeOutcome(probe.probe_id, "unreachable", 0))
            self._wake()
            return
        with self._lock:
            if not self._free:
                self._due.append(probe)
                self.waited += 1
                return
            self._free -= 1
        threading.Thread(
            target=self._run, args=(probe,), name=f"probe-{probe.probe_id}", daemon=True
        ).start()

    @property
    def waiting(self) -> int:
        """Probes due that wait for a thread now."""
        return len(self._due)

    def close(self) -> None:
        self._stop.set()
        self._reader.join(timeout=1.0)
        self._send.close()
        self._recv.close()

    # ------------------------------------------------------------------ threads

    def _read(self) -> None:
        while not self._stop.is_set():
            try:
                data = self._recv.recv(65535)
            except TimeoutError:
                continue
            except OSError:
                return
            if len(data) < 24:
                continue
            ihl = (data[0] & 0x0F) * 4
            key = (data[16:20], struct.unpack_from("!H", data, ihl + 2)[0])
            with self._lock:
                inbox = self._inboxes.get(key)
            if inbox is not None:
                inbox.put(data)

    def _tsval(self) -> int:
        return (self._ts_base + int((time.monotonic() - self._clock0) * 250)) & 0xFFFFFFFF

    def _run(self, probe: Probe) -> None:
        """Run ``probe``, then the probes that waited for a thread, until none waits."""
        while True:
            try:
                outcome = self._connect(probe)
            except OSError:
                outcome = ProbeOutcome(probe.probe_id, "unreachable", 0)
            self.results.put(outcome)
            self._wake()
            with self._lock:  # one step with submit's: no probe is left waiting with no thread
                if not self._due or self._stop.is_set():
                    self._free += 1
                    return
                probe = self._due.popleft()

    def _connect(self, probe: Probe) -> ProbeOutcome:
        rng = random.Random(f"{probe.probe_id}:{probe.sport}")
        src = addr_bytes(f"{PROBER_NET}.{rng.randint(1, 254)}")
        dst = addr_bytes(probe.server)
        sport, dport = probe.sport, probe.port
        inbox: queue.Queue[bytes] = queue.Queue()
        with self._lock:
            self._inboxes[(src, sport)] = inbox
        try:
            return self._exchange(probe, rng, src, dst, sport, dport, inbox)
        finally:
            with self._lock:
                self._inboxes.pop((src, sport), None)

    def _exchange(
        self,
        probe: Probe,
        rng: random.Random,
        src: bytes,
        dst: bytes,
        sport: int,
        dport: int,
        inbox: queue.Queue[bytes],
    ) -> ProbeOutcome:
        isn = rng.randrange(1 << 32)
        tsecr = 0

        def send(flags: int, seq: int, ack: int, payload: bytes = b"", syn: bool = False) -> None:
            ts = b"\x08\x0a" + struct.pack("!II", self._tsval(), tsecr)
            opts = (
                (b"\x02\x04\x05\xb4\x04\x02" + ts + b"\x01\x03\x03\x07")
                if syn
                else (b"\x01\x01" + ts)
            )
            pkt = build_tcp(
                src,
                dst,
                sport,
                dport,
                seq=seq,
                ack=ack,
                flags=flags,
                window=64240 if syn else 502,
                options=opts,
                payload=payload,
                ttl=probe.ttl,
                ip_id=rng.randint(1, 0xFFFF),
                df=True,
            )
            self._send.sendto(pkt, (probe.server, 0))
            self.sent += 1

        synack = None
        for attempt in range(2):
            send(SYN, isn, 0, syn=True)
            synack = self._wait(inbox, 1.5 * (attempt + 1), lambda p: bool(p.flags & (SYN | RST)))
            if synack is not None:
                break
        if synack is None:
            return ProbeOutcome(probe.probe_id, "unreachable", 0)
        if synack.flags & RST:
            return ProbeOutcome(probe.probe_id, "rst", 0)
        tsecr = _tsval_of(synack.tcp_options)
        seq, ack = isn + 1, synack.seq + 1
        send(ACK, seq, ack)
        send(PSH | ACK, seq, ack, probe.payload)
        seq += len(probe.payload)
        received, reaction = 0, "timeout"
        deadline = time.monotonic() + probe.linger
        while (left := deadline - time.monotonic()) > 0:
            pkt = self._wait(inbox, left, lambda p: True)
            if pkt is None:
                break
            tsecr = _tsval_of(pkt.tcp_options) or tsecr
            if pkt.flags & RST:
                reaction = "rst" if not received else "data"
                return ProbeOutcome(probe.probe_id, reaction, received)
            if pkt.payload:
                received += len(pkt.payload)
                ack = pkt.seq + len(pkt.payload)
                reaction = "data"
                send(ACK, seq, ack)
            if pkt.flags & FIN:
                ack = pkt.seq + len(pkt.payload) + 1
                reaction = "data" if received else "fin"
                break
        send(FIN | ACK, seq, ack)
        return ProbeOutcome(probe.probe_id, reaction, received)

    @staticmethod
    def _wait(
        inbox: queue.Queue[bytes], timeout: float, want: Callable[[Packet], bool]
    ) -> Packet | None:
        end = time.monotonic() + timeout
        while (left := end - time.monotonic()) > 0:
            try:
                pkt = parse(inbox.get(timeout=left))
            except queue.Empty:
                return None
            except MalformedPacket:  # not a packet the prober can use
                continue
            if want(pkt):
                return pkt
        return None


def _tsval_of(options: bytes) -> int:
    i = 0
    while i < len(options):
        kind = options[i]
        if kind == 0:
            break
        if kind == 1:
            i += 1
            continue
        if i + 1 >= len(options):
            break
        length = options[i + 1]
        if kind == 8 and length == 10 and i + 10 <= len(options):
            return int.from_bytes(options[i + 2 : i + 6], "big")
        i += max(length, 2)
    return 0
