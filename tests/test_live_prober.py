"""The live prober's threads: more probes due than threads never block the censor's loop, and no
probe is left waiting with no thread to run it.

The network exchange is replaced by one that waits for the test's word, so that which probes are
in flight is the test's to say; the real exchange, against a real ss-server through the lab, is
``tests/test_lab_encrypted.py::test_probes_beyond_the_prober_threads_hold_no_packet``. Making the
prober opens raw sockets (root) but sends nothing here."""

from __future__ import annotations

import os
import queue
import threading
import time
from collections.abc import Callable

import pytest

from gfwlab.engine.actions import Probe
from gfwlab.live.prober import ProbeOutcome, Prober

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="raw sockets need root")


class HeldProber(Prober):
    """A prober whose probes end when the test releases them, each in its own turn."""

    def __init__(self, max_threads: int) -> None:
        self.woken = 0
        super().__init__(self._woken, max_threads=max_threads)
        self.release: queue.Queue[None] = queue.Queue()
        self.started: list[int] = []
        self.busy = 0
        self.most_busy = 0
        self._count = threading.Lock()

    def _woken(self) -> None:
        self.woken += 1

    def _connect(self, probe: Probe) -> ProbeOutcome:
        with self._count:
            self.started.append(probe.probe_id)
            self.busy += 1
            self.most_busy = max(self.most_busy, self.busy)
        self.release.get(timeout=30)
        with self._count:
            self.busy -= 1
        return ProbeOutcome(probe.probe_id, "fin", 0)


def probe(n: int) -> Probe:
    return Probe(probe_id=n, kind="R1", server="198.19.240.1", port=8388, payload=b"x" * 200,
                 at=0.0, ttl=48, sport=40000 + n, tsval_hz=250, linger=8.0,
                 mechanism="ss_probing")  # fmt: skip


def submit_all(prober: Prober, probes: list[Probe]) -> None:
    """Submit from another thread, so that a submit that blocks fails the test, not hangs it."""
    worker = threading.Thread(target=lambda: [prober.submit(p) for p in probes], daemon=True)
    worker.start()
    worker.join(timeout=5)
    assert not worker.is_alive(), "submit waited for a prober thread"


def outcomes(prober: Prober, n: int) -> list[int]:
    return [prober.results.get(timeout=10).probe_id for _ in range(n)]


def until(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + 10
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.01)


def test_probes_beyond_the_threads_wait_in_order_and_all_run() -> None:
    prober = HeldProber(max_threads=3)
    try:
        submit_all(prober, [probe(i) for i in range(8)])
        until(lambda: len(prober.started) == 3, "three probes in flight")
        assert sorted(prober.started) == [0, 1, 2]
        assert prober.waiting == 5 and prober.waited == 5
        for _ in range(8):
            prober.release.put(None)
        assert sorted(outcomes(prober, 8)) == list(range(8))
        assert prober.started[3:] == [3, 4, 5, 6, 7]  # the waiting ones in the order they fell due
        assert prober.waiting == 0 and prober.most_busy == 3 and prober.woken == 8
    finally:
        prober.close()


def test_no_probe_is_stranded_when_a_thread_finishes_as_one_falls_due() -> None:
    """A thread that finds no probe waiting and frees its slot, while the loop finds no free slot
    and queues one, would leave that probe with no thread: many rounds of both at once."""
    prober = HeldProber(max_threads=2)
    try:
        n = 0
        for _ in range(200):
            batch = [probe(n + i) for i in range(3)]
            n += len(batch)
            for _ in batch:
                prober.release.put(None)  # each probe ends as soon as it starts
            submit_all(prober, batch)
            assert sorted(outcomes(prober, len(batch))) == [p.probe_id for p in batch]
        until(lambda: prober.waiting == 0, "no probe left waiting")
        assert prober.most_busy <= 2 and len(prober.started) == n
    finally:
        prober.close()
