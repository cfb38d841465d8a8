"""The live censor's loop makes no reference cycles: every object it makes for a packet, a flow
or an event is freed by its reference count, so the cyclic collector, which the censor leaves
on, finds nothing and walks only what is young (its profile's objects are frozen out of its
sight at start, ``live/daemon.py`` ``main``). One was found this way: the counters written
with ``json.dump``, whose encoder's closures refer to each other, twice a second."""

from __future__ import annotations

import gc
import os
import random
import time
from pathlib import Path

from gfwlab.live.daemon import LiveCensor
from gfwlab.offline.synth import generate, load_names
from gfwlab.packet.pcap import CaptureReader
from gfwlab.profiles import build_censor
from helpers import assert_no_cycles, mangled, profile
from testenv import REAL_LIST_SETS, SHARED_BLOCKLISTS


class Wire:
    """Where the censor's forged frames go: counted, not sent."""

    def __init__(self) -> None:
        self.sent = 0

    def send(self, packet: bytes) -> None:
        self.sent += 1


class Queued:
    """A packet from the queue (the part of netfilterqueue's Packet the censor uses)."""

    def __init__(self, payload: bytes) -> None:
        self.payload = payload
        self.verdict = ""

    def get_payload(self) -> bytes:
        return self.payload

    def get_mark(self) -> int:
        return 0

    def set_mark(self, mark: int) -> None:
        pass

    def accept(self) -> None:
        self.verdict = "accept"

    def drop(self) -> None:
        self.verdict = "drop"


def test_the_live_censor_leaves_no_garbage_for_the_collector(tmp_path: Path) -> None:
    """A capture whose names come from the 2024 lists (DNS injections, resets, QUIC blocks,
    residual blocks, events of every kind), then the same packets mutated and cut (anomalies),
    through the live censor's packet path, timers and counters with the collector off. Once
    every flow and block has expired, nothing is left for the collector to find (a few objects
    of the suite's other threads aside). Probing is off: its probes would leave this machine's
    namespace."""
    cap = tmp_path / "cap.pcap"
    names = load_names(SHARED_BLOCKLISTS if SHARED_BLOCKLISTS.is_dir() else None)
    generate(str(cap), flows=300, seed=5, mix="realistic", names=names)
    sets = REAL_LIST_SETS if SHARED_BLOCKLISTS.is_dir() else ()
    censor = build_censor(
        profile("fet.active={start='2021-11-01'}", "ss_probing.enabled=false", *sets), 3
    )
    wire = Wire()
    live = LiveCensor(censor, str(tmp_path), wire, seed=3)  # type: ignore[arg-type]
    with CaptureReader(str(cap)) as reader:
        packets = [pkt for _, pkt in reader]
    rng = random.Random(8)
    packets += [mangled(pkt, rng) for pkt in packets]
    gc.collect()
    gc.disable()
    try:
        verdicts = []
        for i, pkt in enumerate(packets):
            queued = Queued(pkt)
            live.on_packet(queued)
            verdicts.append(queued)
            if i % 16 == 15:
                live.timers()
                live.flush_events()
        now = time.monotonic()
        for later in (1e4, 2e4, 4e4):
            live.carry_out(censor.on_timer(now + later), None)
        for _, _, held in live.held:
            held.accept()
        live.held.clear()
        live.held_flows.clear()
        live.write_stats()
        assert len(censor.flows) == 0 and not censor.residual.entries
        # Blocks of every kind were made (whether a blocked QUIC flow's later packets come after
        # its drawn block latency depends on how fast this machine feeds them: not counted).
        acted = censor.stats.events
        assert censor.stats.anomalies > 0 and wire.sent > 0 and acted.get("quic_sni/drop", 0) > 0
        assert acted.get("dns_injection/dns-inject", 0) > 0 and acted.get("tls_sni/rst", 0) > 0
        assert all(q.verdict for q in verdicts)
        assert_no_cycles(censor.stats.flows)
    finally:
        gc.enable()
        live.prober.close()
        os.close(live.events)
