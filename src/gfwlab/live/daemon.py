"""The inline censor: packets from NFQUEUE through the engine, verdicts and forged packets out.

Runs inside the censor namespace (``python -m gfwlab.live.daemon``, started by ``lab up``). It is
the live adapter of the same sans-I/O engine the offline analyser uses:

- each queued packet is fed to ``Censor.feed`` with a monotonic clock as ``now``;
- ``Accept`` and ``Drop`` become NFQUEUE verdicts; a ``Bypass`` in the same batch marks the
  packet so the kernel remembers the mark on the connection and forwards the flow's later
  packets without queueing them (see ``netns.install_queue_rules``);
- ``Inject`` is written as a whole Ethernet frame on the link toward its destination
  (``live/frames.py``), so every header field is exactly the injector's;
- injections due later wait on the engine's ``next_deadline``;
- residual drop blocks the engine starts are mirrored as kernel ipset entries
  (``live/kernel.py``), so that they reach flows the kernel already bypasses;
- events go to ``events.jsonl`` in the lab's state folder, counters to ``stats.json``, and a unix
  socket (``censor.sock``) takes ``record PATH`` / ``stop`` for ``lab record``.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import gc
import heapq
import json
import os
import queue
import signal
import socket
import sys
import time
from typing import Any, assert_never

from gfwlab._json import json_line_bytes
from gfwlab.engine import Censor
from gfwlab.engine.actions import Accept, Action, Bypass, Drop, Inject, Probe, Report, rounded
from gfwlab.engine.flows import FlowKey
from gfwlab.errors import GfwlabError
from gfwlab.live import engines
from gfwlab.live.blocked import HeldFlows
from gfwlab.live.chains import UdpReplies, udp_replies
from gfwlab.live.engines import dead_children, engine_file, merge_parts, merged_stats
from gfwlab.live.frames import FrameInjector
from gfwlab.live.kernel import Kernel
from gfwlab.live.loop import request, serve
from gfwlab.live.nflog import NflogReader, SynCopies, connection
from gfwlab.live.persist import BlockStore, censors_of
from gfwlab.live.prober import Prober
from gfwlab.live.ratelimit import TokenBucket
from gfwlab.live.synack import MissedSynAcks
from gfwlab.live.topology import (
    BYPASS_MARK,
    CT_INVALID_MARK,
    NFLOG_GROUP,
    QUEUE_NUM,
    SEEN_ORIGINAL_MARK,
    SEEN_REPLY_MARK,
    SYN_CLEAN_MARK,
    SYN_COPIED_MARK,
)
from gfwlab.offline.chain import Chain
from gfwlab.packet.ip import (
    SYN,
    peek_tcp_flags,
)
from gfwlab.packet.pcap import PcapWriter
from gfwlab.profiles import build_censor, load_profiles, parse_date


def _bare_syn(packet: bytes) -> bool:
    """Whether an IP packet is a TCP SYN without ACK, RST or FIN (not a fragment)."""
    flags = peek_tcp_flags(packet)
    return flags >= 0 and flags & 0x17 == SYN


class LiveCensor(MissedSynAcks):
    """The NFQUEUE loop around one Censor."""

    def __init__(
        self,
        censor: Censor | Chain,
        state_dir: str,
        injector: FrameInjector,
        seed: int = 0,
        kernel: Kernel | None = None,
        engine: int = 0,
    ) -> None:
        self.censor = censor
        self.engine = engine
        """This engine's number (``live/engines.py``; 0: the first, or the only one)."""
        self.engines = 1
        """How many engines the censor runs as."""
        self.children: list[int] = []
        """The other engines' pids (in the first of several)."""
        self.nflog_group = NFLOG_GROUP + engine
        self.kernel = kernel
        self.journals: list[list[Any]] = []
        if kernel is not None:
            for one in censor.censors if isinstance(censor, Chain) else [(None, censor)]:
                one[1].rebypass = True
                one[1].residual.journal = []
                self.journals.append(one[1].residual.journal)
        self.wake_fd, self._wake_w = os.pipe()
        os.set_blocking(self.wake_fd, False)
        # Each engine's prober draws its own addresses and ports (the first's as one censor's).
        self.prober = Prober(self._wake, seed=seed if engine == 0 else hash((seed, engine)))
        self.state_dir = state_dir
        self.injector = injector
        self.mono0 = time.monotonic()
        self.wall0 = time.time()
        self.events = os.open(
            os.path.join(state_dir, "events.jsonl"), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644
        )
        self.unflushed = bytearray()
        """Event lines not yet written (:meth:`flush_events`)."""
        self.recorder: PcapWriter | None = None
        self.held: list[tuple[float, int, Any]] = []
        """Packets whose verdict waits for the forged packets they triggered."""
        self._held_seq = 0
        self.held_flows: dict[FlowKey, float] = {}
        """Connections with a held trigger, and until when: their later packets wait as long."""
        self.recorded = 0
        self.recording_to = ""
        """The path ``lab record`` gave (:meth:`start_recording`)."""
        self.stop = False
        self.fail_open = True
        """Whether the lab passes traffic the censor cannot take (``lab up --fail-open``, the
        default): the queue's fail-open flag is set when it is bound (``live/loop.py``)."""
        self.queued = 0
        self.started = time.time()
        self.censors = censors_of(censor)
        self.skip_handshake_ack = False
        self.udp_replies: UdpReplies | None = None
        """The UDP answers the kernel forwards unqueued (``set_skips``)."""
        self.skip_syn_ack = False
        """Whether the censor now marks clean SYNs, so that the kernel forwards their SYN/ACKs
        unqueued (off while recording, so that a recording holds every packet the engine's
        verdicts depend on, but for connections opened before it started)."""
        self.syn_ack_skippable = False
        """Whether no active mechanism needs the SYN/ACK (``set_skips``)."""
        self.synacks_fed = 0
        """SYN/ACKs rebuilt for the engine (:meth:`missed_syn_ack`,
        :meth:`invalid_after_syn_ack`)."""
        self.syn_copyable = False
        """Whether no active mechanism decides on a SYN (``set_skips``): the kernel may forward
        clean first SYNs and copy them to the censor (``live/chains.py`` :func:`syn_rules`)."""
        self.syn_copies: SynCopies | None = None
        """Where those copies arrive (``live/nflog.py``)."""
        self.syns_fed = 0
        """SYN copies fed to the engine (:meth:`feed_copies`)."""
        self.kernel_held: HeldFlows | None = None
        """Blocked flows whose later packets the kernel drops (``live/blocked.py``; a single
        censor with the kernel's sets only)."""
        self.syns_late = 0
        """SYN copies on which the engine did more than pass them (a residual block that started
        while the copy was on its way): what it asked for besides the verdict was done late."""
        # Blocks outlive a crash (live/persist.py).
        self.blocks = BlockStore(state_dir, os.path.basename(self.file("blocks.json")))
        self.anomaly_limit = TokenBucket()  # anomaly events only (live/ratelimit.py)

    def file(self, name: str) -> str:
        """The path of this engine's state file ``name`` (``live/engines.py``)."""
        return engine_file(self.state_dir, name, self.engine)

    def wall(self, now: float) -> float:
        return self.wall0 + (now - self.mono0)

    def record(self, packet: bytes, now: float) -> None:
        """Write ``packet`` to the recording (``lab record``; the caller checks there is one)."""
        assert self.recorder is not None
        self.recorder.write(self.wall(now), packet)
        self.recorded += 1

    def on_packet(self, nfpkt: Any) -> None:
        payload: bytes = nfpkt.get_payload()
        now = time.monotonic()
        self.queued += 1
        if self.recorder is not None:
            self.record(payload, now)
        mark = nfpkt.get_mark()
        if mark:
            if mark & SYN_COPIED_MARK:
                self.copy_first(payload, now)
            if mark & (SEEN_ORIGINAL_MARK | SEEN_REPLY_MARK):
                self.missed_syn_ack(payload, mark, now)
            elif mark & CT_INVALID_MARK:
                self.invalid_after_syn_ack(payload, now)
        actions = self.censor.feed(payload, now)
        if self.kernel is not None and any(self.journals):
            self.mirror(now)
        verdict = actions[0]
        if self.kernel_held is not None:  # not while recording: it holds every packet of its flows
            self.kernel_held.verdict(payload, type(verdict) is Drop and not self.recorder, now)
        plain = type(verdict) is Accept and verdict.hold_until is None and not self.held_flows
        if len(actions) == 1 and plain:
            if self.skip_syn_ack and _bare_syn(payload):
                nfpkt.set_mark(SYN_CLEAN_MARK)  # nothing to do: its SYN/ACK may skip the queue
            nfpkt.accept()  # most packets: nothing else to do
            return
        for action in actions:
            if type(action) is Bypass:
                nfpkt.set_mark(BYPASS_MARK)
                break
        # The verdict (always first) goes last: a forged packet due now leaves before the packet
        # that triggered it, as it does from an on-path censor that is nearer than the peer.
        self.carry_out(actions[1:], None)
        self.carry_out(actions[:1], nfpkt)

    def copy_first(self, payload: bytes, now: float) -> None:
        """Feed the copy of the SYN of the connection of ``payload``, a packet the kernel queued
        after copying it (``live/nflog.py`` :class:`~gfwlab.live.nflog.SynCopies`), first."""
        if self.syn_copies is not None:
            self.feed_copies(self.syn_copies.take(payload), now)

    def feed_copies(self, copies: list[bytes], now: float | None = None) -> None:
        """Feed the engine SYN copies the kernel forwarded (``live/chains.py``
        :func:`~gfwlab.live.chains.syn_rules`), in their order.

        The SYN has passed already; the engine had nothing to decide on it (no mechanism acts
        on SYNs, no residual block was held). If one started while the copy was on its way, what
        the engine asks for besides the verdict (a reset, an event) is done now, and counted in
        :attr:`syns_late`."""
        when = time.monotonic() if now is None else now
        for packet in copies:
            if self.recorder is not None:  # forwarded just before recording paused the copies
                self.record(packet, when)
            actions = self.censor.feed(packet, when)
            self.syns_fed += 1
            if len(actions) > 1 or type(actions[0]) is not Accept:
                self.syns_late += 1
                if self.kernel is not None and any(self.journals):
                    self.mirror(when)
                self.carry_out(actions[1:], None)

    def sync_syn_copies(self) -> None:
        """Pause the SYN copies while recording (a recording holds every packet), resume them
        otherwise. A residual block pauses them only for its server, from :meth:`mirror` (a new
        connection's SYN to it may draw a residual reset, spec §3; ``Kernel.add_residual``)."""
        if self.kernel is None or not self.syn_copyable:
            return
        paused = self.recorder is not None
        if paused != self.kernel.syn_paused:
            try:
                self.kernel.pause_syns(paused)
            except GfwlabError as exc:
                print(f"gfwlab-censor: {exc}", file=sys.stderr, flush=True)

    def carry_out(self, actions: list[Action], nfpkt: Any | None) -> None:
        for action in actions:
            match action:
                case Accept():
                    if nfpkt is None:
                        continue
                    now = time.monotonic()
                    hold = action.hold_until
                    key = connection(nfpkt.get_payload()) if hold or self.held_flows else None
                    if key is not None and self.held_flows.get(key, 0.0) > now:
                        # A later packet of a connection whose trigger is held (the client's
                        # retransmission of it, after its RTO, when the first reset is drawn
                        # late) would otherwise reach the server before the trigger's resets.
                        hold = max(hold or 0.0, self.held_flows[key])
                    if hold is None:
                        nfpkt.accept()
                    elif hold > now:
                        self._held_seq += 1
                        heapq.heappush(self.held, (hold, self._held_seq, nfpkt))
                        if key is not None:
                            self.held_flows[key] = hold
                    else:
                        # Feeding the packet took longer than the delay of the forged packets it
                        # triggered (a loaded machine): they are overdue in the engine's timers
                        # and leave now, before it. Accepted first, the trigger would reach the
                        # peer and its answer (whose flow the kernel bypasses) would reach the
                        # sender before the resets, and the request would get through.
                        self.fire_timers(now)
                        nfpkt.accept()
                case Drop():
                    if nfpkt is not None:
                        nfpkt.drop()
                case Inject():
                    self.injector.send(action.packet)
                    if self.recorder is not None:
                        self.record(action.packet, time.monotonic())
                case Report():
                    if action.event.action == "anomaly" and not self.anomaly_limit.allow(
                        time.monotonic()
                    ):
                        continue
                    event = action.event.as_dict(rounded(self.wall(action.event.ts), 6))
                    if event["residual_until"] is not None:
                        event["residual_until"] = rounded(self.wall(event["residual_until"]), 6)
                    if isinstance(event.get("at"), float):  # a probe's planned time
                        event["at"] = rounded(self.wall(event["at"]), 6)
                    self.unflushed += json_line_bytes(event)
                case Probe():
                    self.prober.submit(action)
                case Bypass():
                    pass
                case _:
                    assert_never(action)

    def flush_events(self) -> None:
        """Write the events of the packets handled since the last call to ``events.jsonl``: once
        per pass of the loop, before it waits again (and before the stats that count them)."""
        if self.unflushed:
            # One write of whole lines, appended: the engines of a censor share the file.
            data, written = memoryview(self.unflushed), 0
            try:
                while written < len(data):
                    written += os.write(self.events, data[written:])
            finally:
                data.release()
                del self.unflushed[:written]

    def _wake(self) -> None:
        os.write(self._wake_w, b"!")

    def probe_results(self) -> None:
        """Hand the prober's finished probes to the engine."""
        with contextlib.suppress(BlockingIOError):
            os.read(self.wake_fd, 4096)
        while True:
            try:
                done = self.prober.results.get_nowait()
            except queue.Empty:
                return
            now = time.monotonic()
            actions = self.censor.on_probe_result(
                done.probe_id, done.reaction, now, done.response_len
            )
            if self.kernel is not None:
                self.mirror(now)
            self.carry_out(actions, None)

    def set_skips(
        self,
        handshake_ack: bool,
        syn_ack: bool,
        syn: bool = False,
        udp_replies: UdpReplies | None = None,
    ) -> None:
        """What the kernel forwards without the engine (``live/chains.py`` :func:`skip_rules`),
        from what the active mechanisms declare; the SYN/ACK skip stays off while recording. A
        clean first SYN is forwarded and copied (``syn``) only along with the SYN/ACK skip."""
        self.skip_handshake_ack, self.syn_ack_skippable = handshake_ack, syn_ack
        self.udp_replies = udp_replies
        self.syn_copyable = syn and syn_ack and self.kernel is not None
        if self.syn_copyable and self.syn_copies is None:
            try:
                self.syn_copies = SynCopies(NflogReader(self.nflog_group))
            except OSError as exc:  # SYNs then wait in the queue, as before
                print(f"gfwlab-censor: NFLOG: {exc}", file=sys.stderr, flush=True)
                self.syn_copyable = False
        self._apply_skips()

    def _apply_skips(self) -> None:
        if self.kernel is None:
            return
        try:
            self.kernel.set_skip(
                self.skip_handshake_ack,
                syn_ack=self.syn_ack_skippable,
                syn=self.syn_copyable,
                udp_replies=self.udp_replies,
                engines=self.engines,
                install=self.engine == 0,  # the first of several engines writes the rules
            )
        except GfwlabError as exc:  # the queue then takes everything, as before
            print(f"gfwlab-censor: {exc}", file=sys.stderr, flush=True)
            self.syn_ack_skippable = self.syn_copyable = False
        self.skip_syn_ack = self.syn_ack_skippable and self.recorder is None
        self.sync_syn_copies()

    def mirror(self, now: float) -> None:
        """Write the blocks the engine started since the last call to the kernel
        (``Kernel.add_residual``: drop blocks to its sets, and every block's server to those
        that hold the skips off for it), before the packet's verdict, so that the flows they
        cover are shown to the engine again."""
        assert self.kernel is not None
        for journal in self.journals:
            for kind, key, entry in journal:
                try:
                    self.kernel.add_residual(kind, entry.policy, key, entry.start, entry.until, now)
                except GfwlabError as exc:
                    print(f"gfwlab-censor: {exc}", file=sys.stderr, flush=True)
            journal.clear()

    def fire_timers(self, now: float) -> float | None:
        """Carry out the engine's timers due by ``now``; return the next one's time."""
        deadline = self.censor.next_deadline()
        while deadline is not None and deadline <= now:
            self.carry_out(self.censor.on_timer(deadline), None)
            deadline = self.censor.next_deadline()
        return deadline

    def timers(self) -> float | None:
        """Run due timers; return seconds until the next one (None: none pending)."""
        now = time.monotonic()
        if self.kernel_held is not None:  # first: the engine's idle sweep may run next
            self.kernel_held.check(now)
        deadline = self.fire_timers(now)
        while self.held and self.held[0][0] <= now:
            heapq.heappop(self.held)[2].accept()
        if self.held_flows and not self.held:
            self.held_flows.clear()
        elif self.held_flows:
            self.held_flows = {k: t for k, t in self.held_flows.items() if t > now}
        if self.kernel is not None:
            with contextlib.suppress(GfwlabError):
                self.kernel.tick(now)
            due = self.kernel.next_check()
            if due is not None and (deadline is None or due < deadline):
                deadline = due
        if self.held and (deadline is None or self.held[0][0] < deadline):
            deadline = self.held[0][0]
        return None if deadline is None else max(0.0, deadline - now)

    def control(self, conn: socket.socket) -> None:
        with conn:
            conn.settimeout(2.0)
            try:
                line = conn.recv(4096).decode("utf-8", "replace").strip()
            except OSError:
                return
            cmd, _, arg = line.partition(" ")
            try:
                if cmd == "record":
                    if self.recorder is not None:
                        raise GfwlabError("already recording")
                    self.start_recording(arg)
                    reply = "ok"
                elif cmd == "stop":
                    count = self.stop_recording()
                    reply = f"ok {count}"
                else:
                    reply = f"error unknown command {cmd!r}"
            except GfwlabError as exc:
                reply = f"error {exc}"
            conn.sendall(reply.encode() + b"\n")

    def start_recording(self, path: str) -> None:
        """Record to ``path`` (``lab record``); the first of several engines has each engine
        record its own part, and merges them when it stops (:meth:`stop_recording`)."""
        self.recording_to = path
        if self.children:
            started: list[int] = []
            try:
                for i in range(1, self.engines):
                    self.ask(i, f"record {self.part(i)}")
                    started.append(i)
            except GfwlabError:  # an engine is gone: none records, nothing is left behind
                for i in started:
                    with contextlib.suppress(GfwlabError):
                        self.ask(i, "stop")
                    with contextlib.suppress(OSError):
                        os.unlink(self.part(i))
                raise
            path = self.part(0)
        self.recorder = PcapWriter(path)
        self.recorded = 0
        self.skip_syn_ack = False  # no SYN marked clean while recording
        self.sync_syn_copies()  # nor forwarded by the kernel

    def stop_recording(self) -> int:
        if self.recorder is None:
            return 0
        self.recorder.commit()
        self.recorder = None
        self.skip_syn_ack = self.syn_ack_skippable
        self.sync_syn_copies()
        if not self.children:
            return self.recorded
        for i in range(1, self.engines):
            with contextlib.suppress(GfwlabError):  # a dead engine's part is merged as it is
                self.ask(i, "stop")
        parts = [self.part(i) for i in range(self.engines)]
        return merge_parts(parts, self.recording_to)

    def part(self, engine: int) -> str:
        """Where engine ``engine`` records its part of a recording (:meth:`start_recording`)."""
        return engine_file(self.state_dir, "recording.pcap", engine)

    def ask(self, engine: int, command: str) -> str:
        """Send ``command`` to engine ``engine``'s control socket; its reply (GfwlabError if it
        refused or did not answer)."""
        try:
            reply = request(engine_file(self.state_dir, "censor.sock", engine), command, 5.0)
        except OSError as exc:
            raise GfwlabError(f"engine {engine} did not answer: {exc}") from None
        if not reply.startswith("ok"):
            raise GfwlabError(f"engine {engine}: {reply.removeprefix('error ')}")
        return reply

    def write_stats(self) -> None:
        self.flush_events()  # the stats count no event that is not in the file
        st = self.censor.stats
        chain = self.censor
        censors = [c for _, c in chain.censors] if isinstance(chain, Chain) else [chain]
        kernel = self.kernel
        copying = self.syn_copyable and kernel is not None and kernel.syn_paused is False
        data = {
            "pid": os.getpid(),
            "started": self.started,
            "updated": time.time(),
            "queued_packets": self.queued,
            "engine_packets": st.packets,
            "dropped": st.dropped,
            "injected": self.injector.sent,
            "probe_packets": self.prober.sent,
            "probes_waited": self.prober.waited,
            "probes_waiting": self.prober.waiting,
            "anomalies": st.anomalies,
            "fragments": st.fragments,
            "flows": st.flows,
            "flows_tracked": sum(len(c.flows) for c in censors),
            "residual_blocks": sum(len(c.residual) for c in censors),
            "kernel_residuals": self.kernel.added if self.kernel is not None else 0,
            "kernel_blocked_flows": self.kernel_held.added if self.kernel_held else 0,
            "kernel_blocked_now": len(self.kernel_held.held) if self.kernel_held else 0,
            # Writes of kernel state that failed (a block or a blocked flow the kernel may miss).
            "kernel_errors": (kernel.errors if kernel is not None else 0)
            + (self.kernel_held.errors if self.kernel_held else 0),
            "syn_ack_skip": self.skip_syn_ack,
            "synacks_fed": self.synacks_fed,
            "syn_copy": copying,
            "syns_fed": self.syns_fed,
            "syns_late": self.syns_late,
            "syn_copies_lost": self.syn_copies.reader.lost if self.syn_copies else 0,
            "events": st.events,
            "recording": self.recorder is not None,
            "mechanisms": sorted({m for c in censors for m in c.mechanisms}),
            "anomaly_events_suppressed": self.anomaly_limit.suppressed,
            "blocks_restored": self.blocks.restored,
            "engines": self.engines,
        }
        if self.children:
            data = merged_stats(data, self.state_dir, self.engines)
            data["engines_dead"] = dead_children(self.children)
        self.blocks.save(self.censor, time.monotonic(), time.time())
        path = self.file("stats.json")
        with open(path + ".tmp", "w", encoding="utf-8") as fh:
            fh.write(json.dumps(data))  # not dump: it makes a reference cycle
        os.replace(path + ".tmp", path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="gfwlab-censor", description=__doc__)
    parser.add_argument("--state-dir", required=True)
    parser.add_argument("--profile", action="append", dest="profiles")
    parser.add_argument("--date")
    parser.add_argument("--set", action="append", default=[], dest="sets")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--queue", type=int, default=QUEUE_NUM)
    parser.add_argument("--network", default="national")
    parser.add_argument("--clock-offset", type=float, default=0.0, help="seconds (lab up --at)")
    parser.add_argument(
        "--engines", type=int, default=1, help="engines, one per queue (live/engines.py)"
    )
    parser.add_argument(
        "--fail-closed",
        action="store_true",
        help="drop what the censor cannot inspect: no SYN forwarded unqueued, a full queue drops",
    )
    args = parser.parse_args(argv)
    try:
        profiles = load_profiles(
            args.profiles or ["gfw"],
            date=parse_date(args.date) if args.date else None,
            overrides=args.sets,
            network=args.network,
        )
    except GfwlabError as exc:
        print(f"gfwlab-censor: {exc}", file=sys.stderr)
        return 2
    # The engine's now is the monotonic clock; the emulated moment is the wall clock plus the
    # fixed offset of lab up --at (dated events, spec §14a).
    epoch = time.time() - time.monotonic() + args.clock_offset
    profiles = [dataclasses.replace(p, epoch_offset_s=epoch) for p in profiles]
    censor: Censor | Chain = build_censor(profiles[0], args.seed)
    if len(profiles) > 1:
        censor = Chain([(p.name, build_censor(p, args.seed)) for p in profiles])
    censors = censors_of(censor)
    why = engines.refusal(censors, args.engines)
    if why is not None:
        print(f"gfwlab-censor: {why}", file=sys.stderr)
        return 2
    gc.freeze()  # the profile's lists live as long as the censor: out of the collector's sight
    engine, children, gate = engines.fork(args.engines)
    if engine:
        engines.wait_gate(gate)  # the first engine's rules are in place
    code = 1
    try:
        code = _run(args, censor, censors, engine, children, gate)
    finally:
        if children:
            engines.stop_children(children)
        elif engine:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)  # a forked engine leaves what the first set up at exit to it
    return code


def _run(
    args: argparse.Namespace,
    censor: Censor | Chain,
    censors: list[Censor],
    engine: int,
    children: list[int],
    gate: int,
) -> int:
    """Run engine ``engine`` of ``args.engines`` (``live/engines.py``) on ``censor`` (whose
    censors are ``censors``)."""
    first = engine == 0
    kernel = Kernel()
    if first:
        with contextlib.suppress(GfwlabError):
            kernel.adopt(time.monotonic())
    live = LiveCensor(censor, args.state_dir, FrameInjector(), args.seed, kernel, engine)
    live.engines, live.children = args.engines, children
    live.fail_open = not args.fail_closed
    if first and args.engines > 1:
        try:
            pinned = engines.pinned_ports(censors)
            kernel.dispatch(args.engines, pinned, live.fail_open)
        except GfwlabError as exc:
            print(f"gfwlab-censor: the engines' queue rules: {exc}", file=sys.stderr)
            return 2
    if isinstance(censor, Censor):  # censors in series each keep their own flows: not held
        eng = censor.profile.engine
        held = HeldFlows(
            censor.flows, kernel.command, eng.tcp_timeout_s, eng.udp_timeout_s, kernel.entries
        )
        try:
            if first:  # the first of several engines empties the sets and fills the chain
                held.install()
            live.kernel_held = held
        except GfwlabError as exc:
            print(f"gfwlab-censor: blocked flows stay in the queue: {exc}", file=sys.stderr)
    # What the kernel may forward unqueued: the handshake ACK unless a mechanism needs it
    # (Needs.handshake_ack, Needs.watch_packets); a clean connection's SYN/ACK unless a
    # mechanism hooks it or counts packets (live/chains.py skip_rules).
    live.set_skips(
        not any(c.needs_handshake_ack for c in censors),
        not any(c.hooks.get("on_syn_ack") or c.hooks.get("on_tcp_packet") for c in censors),
        # The kernel forwards a copied SYN whether or not a censor reads the copies: with
        # --fail-closed every SYN waits in the queue, so that a dead censor lets none through.
        syn=not args.fail_closed and not any(c.needs_syn for c in censors),
        # DNS answers: to the engine they change nothing but counters (Plan.ports).
        udp_replies=udp_replies([c.plan.ports for c in censors]),
    )
    live.blocks.restore(censor, time.monotonic(), time.time())  # after a crash: restart-censor
    gc.freeze()  # and what this engine made since

    def stop(_signum: int, _frame: object) -> None:
        live.stop = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    if first:
        engines.open_gate(gate)
        # Ready (its control socket made) once every engine is: lab up waits for that.
        ready = engines.wait_ready(args.state_dir, args.engines, lambda: live.stop)
        if not ready and not live.stop:  # lab status counts the ones that exited
            print("gfwlab-censor: not every engine started", file=sys.stderr, flush=True)
    serve(live, args.queue + engine)
    return 0


if __name__ == "__main__":
    sys.exit(main())
