"""The live censor's loop: what wakes it and in which order it serves what is ready.

Kept apart from :class:`~gfwlab.live.daemon.LiveCensor`, which handles each packet: this module
only waits (``select``) and dispatches. The order matters in one place: the SYN copies are read
before the queue is emptied, and those left over are fed after (``live/nflog.py``
:class:`~gfwlab.live.nflog.SynCopies`).
"""

from __future__ import annotations

import os
import select
import socket
import sys
import time
from typing import Any, Protocol

from gfwlab.live.nflog import SynCopies, queue_fail_open


class Served(Protocol):
    """What the loop needs of the censor it serves (:class:`~gfwlab.live.daemon.LiveCensor`)."""

    stop: bool
    fail_open: bool
    state_dir: str
    wake_fd: int
    syn_copies: SynCopies | None
    prober: Any

    def file(self, name: str) -> str: ...
    def on_packet(self, nfpkt: Any) -> None: ...
    def timers(self) -> float | None: ...
    def flush_events(self) -> None: ...
    def write_stats(self) -> None: ...
    def feed_copies(self, copies: list[bytes], now: float | None = None) -> None: ...
    def probe_results(self) -> None: ...
    def control(self, conn: socket.socket) -> None: ...
    def stop_recording(self) -> int: ...


def request(path: str, command: str, timeout: float) -> str:
    """Send one command to the control socket at ``path`` (:func:`serve`) and return its reply
    line (``ok ...`` or ``error ...``); OSError if it cannot be reached or does not answer."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(path)
        sock.sendall(command.encode() + b"\n")
        return sock.recv(4096).decode().strip()


def serve(live: Served, queue_num: int) -> None:
    """Bind NFQUEUE ``queue_num`` and the control socket, and run ``live`` until it stops: wait
    for packets, SYN copies, probe results, commands and timers; write the events once per pass
    and the counters twice a second. Leaves nothing behind (recording, prober, sockets)."""
    from netfilterqueue import NetfilterQueue  # noqa: PLC0415 - only the live adapter needs it

    nfq = NetfilterQueue()
    # The engine of a censor being restarted may hold the queue for a moment yet.
    deadline = time.monotonic() + 10.0
    while True:
        try:
            nfq.bind(queue_num, live.on_packet, max_len=8192)
            break
        except OSError:
            if time.monotonic() > deadline or live.stop:
                raise
            time.sleep(0.05)
    nfq_fd: int = nfq.get_fd()
    if live.fail_open:  # a full queue passes packets (counted as uninspected) instead of dropping
        try:
            queue_fail_open(nfq_fd, queue_num)
        except OSError as exc:
            print(f"gfwlab-censor: the queue's fail-open flag: {exc}", file=sys.stderr, flush=True)
    sock_path = live.file("censor.sock")
    if os.path.exists(sock_path):
        os.unlink(sock_path)
    ctl = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    ctl.bind(sock_path)
    ctl.listen(4)
    next_stats = 0.0
    try:
        while not live.stop:
            wait = live.timers()
            live.flush_events()
            now = time.monotonic()
            if now >= next_stats:
                live.write_stats()
                next_stats = now + 0.5
            timeout = min(0.5, wait) if wait is not None else 0.5
            try:
                fds = [nfq_fd, ctl.fileno(), live.wake_fd]
                if live.syn_copies is not None:
                    fds.append(live.syn_copies.fileno())
                ready, _, _ = select.select(fds, [], [], timeout)
            except InterruptedError:
                continue
            copies = live.syn_copies
            if copies is not None and copies.fileno() in ready:
                copies.read()  # before the queue is emptied (nflog.SynCopies)
                nfq.run(block=False)
            elif nfq_fd in ready:
                nfq.run(block=False)
            if copies is not None and copies.pending:
                live.feed_copies(copies.take_all())
            if live.wake_fd in ready:
                live.probe_results()
            if ctl.fileno() in ready:
                conn, _ = ctl.accept()
                live.control(conn)
    finally:
        live.stop_recording()
        live.prober.close()
        live.write_stats()
        if live.syn_copies is not None:
            live.syn_copies.close()
        nfq.unbind()
        ctl.close()
        if os.path.exists(sock_path):
            os.unlink(sock_path)
