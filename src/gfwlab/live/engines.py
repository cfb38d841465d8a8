"""Several engines in the censor namespace, one per NFQUEUE, each judging a share of the servers.

``lab up --engines N`` (N a power of two, up to 16) starts the censor as N processes: the first,
the one ``lab`` knows, forks the others after the profiles are loaded, and each binds queue
``QUEUE_NUM + i`` and NFLOG group ``NFLOG_GROUP + i``. The kernel hands each packet to one of
them by a rule that needs no connection state (:func:`dispatch_rules`):

* a packet goes to the engine numbered by the low bits of its **outside address**, the one
  beyond the border: the destination of a packet from the client side, the source of one from
  the server side. For a connection opened from inside, that is the server, and every residual
  key holds the server (``engine.residual.residual_key``: ``5-tuple``, ``3-tuple``,
  ``2-tuple``, ``server``, ``server-ip``), so a block and every flow it can reach are judged by
  one engine, whoever the client is, as in the split offline analysis
  (``offline/shard.py``); ``server`` scoped state across flows (TLS-in-TLS's per-server
  detections) stays whole for the same reason. Both directions of a flow, its IP fragments and
  the packets conntrack finds INVALID (which have no connection to read) go by their
  addresses alone, so they reach the same engine;
* a connection opened from outside (conntrack's original direction from the server side: its
  server is inside, and a block on that server must see every outside client) goes to the
  first engine, its first SYN's copy too;
* a UDP datagram from or to a port of ``all`` scoped state (DNS injection's answer pools:
  ``Mechanism.shard_scope``, ``Censor.plan.udp_ports``) goes to the first engine, which so
  sees every one of them, in the kernel's order;
* draws are keyed per flow (``engine.draws``), so an engine draws for a flow what one engine
  for everything would.

What one engine for everything would do differently: the packets without a connection
(INVALID, fragments) of a connection opened from outside go by their outside address, which is
that connection's client, so they may reach another engine than the rest of it; each engine's
flow table holds ``engine.max_flows`` flows, so eviction under a flood
differs; and the order of two packets judged by different engines is not kept between them
(nothing in one engine depends on the other's). A profile with ``all`` scoped state that no
port bounds is refused (:func:`refusal`).

Files of the lab's state folder: the first engine keeps the names one censor uses
(``censor.sock``, ``stats.json``, ``blocks.json``); engine ``i`` uses ``censor-i.sock``,
``stats-i.json`` and ``blocks-i.json`` (:func:`engine_file`). Every engine appends its events
to ``events.jsonl`` whole lines at a time; the first one's counters are the sum of all
(:func:`merged_stats`), and it hands ``lab record`` on to the others and merges their parts
into one capture in time order (:func:`merge_parts`).
"""

from __future__ import annotations

import contextlib
import ctypes
import heapq
import json
import os
import signal
import time
from collections.abc import Callable, Iterable
from typing import Any

from gfwlab.engine import Censor
from gfwlab.engine.mechanism import all_scoped
from gfwlab.engine.mechanism import pinned_ports as pinned
from gfwlab.live.topology import CLIENT_LINK, SERVER_LINK
from gfwlab.packet.pcap import CaptureReader, PcapWriter

COUNTS = (1, 2, 4, 8, 16)
"""How many engines the lab may run: a power of two, so that a share is a bit mask."""
ENGINES_CHAIN = "GFWLAB_ENGINES"
"""The censor namespace's mangle chain that hands each queued packet to its engine's queue."""
_PR_SET_PDEATHSIG = 1
_NOT_SUMMED = frozenset({"pid", "started", "updated", "engines"})
EACH = ("queued_packets", "engine_packets")
"""Counters the first engine's also gives engine by engine (``<name>_each``, None for an
engine whose counters could not be read): how the work is shared out."""


def engine_file(state_dir: str, name: str, engine: int) -> str:
    """The path of the state file ``name`` (``stats.json``) of engine ``engine``."""
    if engine == 0:
        return os.path.join(state_dir, name)
    stem, dot, ext = name.rpartition(".")
    return os.path.join(state_dir, f"{stem}-{engine}{dot}{ext}")


def share(engine: int, engines: int, v6: bool) -> str:
    """The address and mask (for ``-s`` / ``-d``) of the addresses engine ``engine`` of
    ``engines`` judges: those whose low bits are its number."""
    if v6:
        return f"::{engine:x}/::{engines - 1:x}"
    return f"0.0.0.{engine}/0.0.0.{engines - 1}"


def pinned_ports(censors: Iterable[Censor]) -> frozenset[int]:
    """The UDP ports of ``all`` scoped state (their datagrams go to the first engine)."""
    return frozenset().union(*(pinned(c.mechanisms, c.plan.udp_ports) for c in censors))


def refusal(censors: Iterable[Censor], engines: int) -> str | None:
    """Why the censors cannot run as ``engines`` engines (None: they can)."""
    if engines not in COUNTS:
        return f"--engines must be one of {', '.join(map(str, COUNTS))}, not {engines}"
    if engines == 1:
        return None
    for censor in censors:
        for name, ports in all_scoped(censor.mechanisms, censor.plan.udp_ports):
            if not ports:
                return f"{name} keeps state across every flow: it needs one engine (--engines 1)"
    return None


def dispatch_rules(
    engines: int, v6: bool, queue: int, pinned: frozenset[int], fail_open: bool
) -> list[list[str]]:
    """The rules (after ``-A GFWLAB_ENGINES``) that queue each packet to its engine's queue."""
    bypass = ["--queue-bypass"] if fail_open else []
    out: list[list[str]] = []
    if pinned:
        ports = ",".join(str(p) for p in sorted(pinned))
        out += [
            ["-p", "udp", "-m", "multiport", "--ports", ports,
             "-j", "NFQUEUE", "--queue-num", str(queue), *bypass]
        ]  # fmt: skip
    first = ["-j", "NFQUEUE", "--queue-num", str(queue), *bypass]
    out += [
        ["-i", SERVER_LINK.a, "-m", "conntrack", "--ctdir", "ORIGINAL", *first],
        ["-i", CLIENT_LINK.b, "-m", "conntrack", "--ctdir", "REPLY", *first],
    ]  # connections opened from outside: the first engine's
    return out + shared_out(
        engines, v6, lambda i: ["-j", "NFQUEUE", "--queue-num", str(queue + i), *bypass]
    )


def syn_copy_rules(engines: int, v6: bool, group: int, nflog: list[str]) -> list[list[str]]:
    """The NFLOG rules of the SYN chain (``chains.syn_rules``): each SYN copied to its engine's
    group, as :func:`dispatch_rules` shares its packets out (``nflog``: the target's options
    after the group)."""
    if engines == 1:
        return [["-j", "NFLOG", "--nflog-group", str(group), *nflog]]
    # The chain takes a connection's first packet: one from the server side opens it from
    # outside, and is the first engine's.
    inbound = ["-i", SERVER_LINK.a, "-j", "NFLOG", "--nflog-group", str(group), *nflog]
    return [inbound] + [
        rule
        for rule in shared_out(
            engines, v6, lambda i: ["-j", "NFLOG", "--nflog-group", str(group + i), *nflog]
        )
        if rule[1] == CLIENT_LINK.b
    ]


def shared_out(engines: int, v6: bool, target: Callable[[int], list[str]]) -> list[list[str]]:
    """Two rules an engine, in engine order, that send the packets of its share to
    ``target(its number)``: from the client side by destination, from the server side by
    source (the outside address either way)."""
    out = []
    for i in range(engines):
        mask = share(i, engines, v6)
        out.append(["-i", CLIENT_LINK.b, "-d", mask, *target(i)])
        out.append(["-i", SERVER_LINK.a, "-s", mask, *target(i)])
    return out


def fork(engines: int) -> tuple[int, list[int], int]:
    """Start engines 1 .. ``engines - 1`` as children of this process, the first.

    Returns (this process's engine number, the children's pids (the first's only), a file
    descriptor): the first writes to it, the others read from it and wait (:func:`wait_gate`)
    until the first has put the kernel's rules in place and closes it (:func:`open_gate`). A
    child dies with the first (``PR_SET_PDEATHSIG``), so a ``kill -9`` of the censor leaves no
    engine behind."""
    if engines == 1:
        return 0, [], -1
    read_fd, write_fd = os.pipe()
    children = []
    for i in range(1, engines):
        pid = os.fork()
        if pid == 0:
            os.close(write_fd)
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
            if os.getppid() == 1:  # the first died before the line above
                os._exit(1)
            return i, [], read_fd
        children.append(pid)
    os.close(read_fd)
    return 0, children, write_fd


def wait_gate(fd: int) -> None:
    """In a child engine: wait until the first closes the gate (:func:`fork`)."""
    with contextlib.suppress(OSError):
        while os.read(fd, 1):
            pass
    os.close(fd)


def open_gate(fd: int) -> None:
    """In the first engine: let the children go on (:func:`fork`)."""
    if fd >= 0:
        os.close(fd)


def wait_ready(
    state_dir: str, engines: int, stopped: Callable[[], bool], timeout: float = 20.0
) -> bool:
    """In the first engine: wait until every other engine has made its control socket (it
    serves its queue by then), for at most ``timeout`` seconds or until ``stopped()``; whether
    they all did."""
    deadline = time.monotonic() + timeout
    paths = [engine_file(state_dir, "censor.sock", i) for i in range(1, engines)]
    while not all(os.path.exists(p) for p in paths):
        if stopped() or time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def stop_children(children: list[int], grace: float = 5.0) -> None:
    """Stop the child engines (SIGTERM, then SIGKILL after ``grace`` seconds) and reap them."""
    for pid in children:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    for pid in children:
        while True:
            with contextlib.suppress(ChildProcessError):
                done, _status = os.waitpid(pid, os.WNOHANG)
                if done == 0 and time.monotonic() < deadline:
                    time.sleep(0.02)
                    continue
                if done == 0:
                    os.kill(pid, signal.SIGKILL)
                    os.waitpid(pid, 0)
            break


def dead_children(children: list[int]) -> int:
    """How many child engines have exited (reaped here)."""
    dead = 0
    for pid in children:
        try:
            done, _status = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            dead += 1
            continue
        dead += done != 0
    return dead


def merged_stats(own: dict[str, Any], state_dir: str, engines: int) -> dict[str, Any]:
    """The first engine's counters ``own`` with every other engine's added (their last written
    ``stats-i.json``, at most half a second old): numbers summed (in dictionaries of numbers
    too, such as the events by kind), the rest the first's; and the counters of :data:`EACH`
    engine by engine."""
    out = dict(own)
    each: dict[str, list[Any]] = {key: [own.get(key)] for key in EACH}
    for i in range(1, engines):
        other: Any = None
        path = engine_file(state_dir, "stats.json", i)
        with contextlib.suppress(OSError, ValueError), open(path, encoding="utf-8") as fh:
            other = json.load(fh)
        if not isinstance(other, dict):
            other = {}
        for key, value in other.items():
            if key not in _NOT_SUMMED:
                out[key] = _sum(out.get(key), value)
        for key, values in each.items():
            values.append(other.get(key))
    for key, values in each.items():
        out[f"{key}_each"] = values
    return out


def _sum(mine: object, other: object) -> Any:
    """``mine`` and ``other`` added: numbers, and dictionaries key by key; else ``mine`` (or
    ``other`` if there is no ``mine``)."""
    if mine is None:
        return other
    if isinstance(mine, bool) or isinstance(other, bool):
        return mine
    if isinstance(mine, int | float) and isinstance(other, int | float):
        return mine + other
    if isinstance(mine, dict) and isinstance(other, dict):
        out = dict(mine)
        for key, value in other.items():
            out[key] = _sum(out[key], value) if key in out else value
        return out
    return mine


def merge_parts(parts: list[str], path: str) -> int:
    """Write the records of the captures ``parts`` (each in time order) to ``path`` in time
    order, and remove the parts; returns how many records were written."""
    writer = PcapWriter(path)
    try:
        readers = [CaptureReader(p) for p in parts if os.path.exists(p)]
        try:
            for ts, data in heapq.merge(*readers, key=lambda rec: rec[0]):
                writer.write(ts, data)
        finally:
            for r in readers:
                r.close()
    except BaseException:
        writer.abort()
        raise
    writer.commit()
    for p in parts:
        with contextlib.suppress(OSError):
            os.unlink(p)
    return writer.count
