"""A capture too large to index whole, split by server address a window at a time.

:func:`analyze_sharded` (``gfwlab analyze --shards N``) hands a capture of more than
``MAX_PACKETS`` packets here, and one that fits to :func:`gfwlab.offline.shard.analyze_split`.
One process (:func:`gfwlab.offline.analyze.analyze`) analyses such a capture a window of a
million packets at a time with one censor, whose flows go on from window to window. Split, each
part keeps its own censor for the whole capture (:class:`WindowPart`: on a Dask cluster, an
actor on one worker), and each window is split as a whole capture is
(:mod:`gfwlab.offline.shard`), with what the earlier windows decided carried over
(:class:`Carry`):

* a server address stays with the part that took it first (a residual block, per-server
  state and every flow it reaches stay in one part, across windows too);
* a flow life that may go on from the last window (its idle timeout has not passed: the engine
  forgets a flow at its next packet after it) keeps the server the engine took for it then, not
  the one its first packet in this window suggests: the engine's flow goes on in that part;
* the receivers of ``all`` scoped state (resolvers) stay in one part for the whole capture;
* the flow table check counts the lives of earlier windows still held.

A window's parts number their packets in the window and their timers from the window's first
packet in the whole capture (``fast.Part.offset``), so their events, releases and drops merge
window by window in one engine's order, and each window is written as one process writes it.
Where one process would not take the fast path (a first window most of whose packets reached
the engine, timestamps going backwards) or a window cannot be split, the whole capture goes to
one process after all, with a warning.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from gfwlab.engine.censor import Censor
from gfwlab.offline import fast
from gfwlab.offline.analyze import (
    NO_GAIN,
    Backwards,
    FlowVerdict,
    Summary,
    analyze,
    fill_summary,
    in_time_order,
    published,
    window_sizes,
)
from gfwlab.offline.index import (
    F64,
    MAX_PACKETS,
    U64,
    CaptureIndex,
    Lives,
    Windowed,
    address,
    open_index,
)
from gfwlab.offline.shard import (
    PartData,
    PartResult,
    PartTask,
    Runner,
    Split,
    analyze_split,
    inline,
    life_servers,
    merge,
    part_lives,
    record_parts,
    refusal,
    run_part,
    sum_stats,
    table_fills,
)
from gfwlab.packet.ip import PROTO_TCP
from gfwlab.profiles import Profile, build_censor


@dataclass(slots=True)
class Carry:
    """What the windows split so far decided, for the next one."""

    parts: int
    owners: dict[bytes, int] = field(default_factory=dict)
    """The part of each server address (a row of three words, as bytes)."""
    loads: list[float] = field(default_factory=list)
    """Each part's load so far (packets the engine is likely to see)."""
    pinned: int | None = None
    """The part of the receivers of ``all`` scoped state, once one is seen."""
    going: dict[bytes, tuple[bytes, float, float]] = field(default_factory=dict)
    """Flow lives that may go on in the next window, by flow key (as bytes): the server the
    engine took for them (an address row, as bytes), their last packet's time, and their idle
    timeout."""
    held: F64 = field(default_factory=lambda: np.zeros(0, dtype=np.float64))
    """When lives of earlier windows leave the flow table, for those not gone yet."""
    end: float = -math.inf
    """The last window's last timestamp."""

    def __post_init__(self) -> None:
        self.loads = [0.0] * self.parts


def split_window(
    index: CaptureIndex, censor: Censor, carry: Carry
) -> tuple[Split, dict[bytes, int]] | str:
    """How to split the window ``index`` into ``carry.parts``, with the server addresses it
    gives a part first (raw address bytes, as flows hold them); or why it cannot be split.
    Updates ``carry`` for the next window."""
    why = refusal(index, censor)
    if why is not None:
        return why
    eng = censor.profile.engine
    lives = index.lives(eng.tcp_timeout_s, eng.udp_timeout_s)
    held = carry.held[carry.held > (float(index.ts[0]) if len(index) else carry.end)]
    if table_fills(index, lives, censor, held):
        return f"its flow table (engine.max_flows={eng.max_flows:,}) could fill"
    servers = life_servers(index, censor, lives)
    words: U64 = servers.rows.view(np.uint64).reshape(-1, 3)
    first = lives.first[lives.keyed]
    timeout = np.where(index.proto[first] == PROTO_TCP, eng.tcp_timeout_s, eng.udp_timeout_s)
    keys = index.keys(first)
    if carry.going:
        # A life whose flow is still in its part's table (the engine forgets a flow at its
        # next packet after its idle timeout) goes on with the server the engine took for it.
        near = np.flatnonzero(index.ts[first] - timeout < carry.end)
        for j, key in zip(near.tolist(), keys[near], strict=True):
            hit = carry.going.get(key.tobytes())
            if hit is not None and float(index.ts[first[j]]) - hit[1] < hit[2]:
                words[j] = np.frombuffer(hit[0], dtype=np.uint64)
    addresses, of_life = np.unique(servers.rows, return_inverse=True)
    rows = [a.tobytes() for a in addresses]
    load = np.bincount(of_life, weights=servers.load, minlength=len(rows)).astype(np.float64)
    pinned = set(np.unique(of_life[servers.pinned]).tolist())
    if pinned:
        holders = {carry.owners[rows[a]] for a in pinned if rows[a] in carry.owners}
        if carry.pinned is not None:
            holders.add(carry.pinned)
        if len(holders) > 1:
            return "its resolvers would be held by more than one part"
        carry.pinned = holders.pop() if holders else _least(carry.loads)
    part = np.zeros(len(rows), dtype=np.int64)
    new: dict[bytes, int] = {}
    fresh = []
    for a, row in enumerate(rows):
        if row in carry.owners:
            part[a] = carry.owners[row]
        elif a in pinned and carry.pinned is not None:
            part[a] = new[row] = carry.pinned
        else:
            fresh.append(a)
            continue
        carry.loads[int(part[a])] += float(load[a])
    # New servers, heaviest first, each to the least loaded part so far.
    fresh.sort(key=lambda a: (-float(load[a]), a))
    for a in fresh:
        p = _least(carry.loads)
        part[a] = new[rows[a]] = p
        carry.loads[p] += float(load[a])
    carry.owners.update(new)
    life_part = np.zeros(lives.keyed.shape[0], dtype=np.int64)
    life_part[lives.keyed] = part[of_life]
    _carry_on(index, lives, carry, keys, words, timeout, timeout + eng.sweep_s, held)
    owners = {_raw(row): p for row, p in new.items()}
    return Split(carry.parts, life_part[lives.life_of], lives, life_part, owners), owners


def _least(loads: list[float]) -> int:
    return min(range(len(loads)), key=lambda p: (loads[p], p))


def _carry_on(
    index: CaptureIndex,
    lives: Lives,
    carry: Carry,
    keys: U64,
    words: U64,
    timeout: F64,
    hold: F64,
    held: F64,
) -> None:
    """Remember what of window ``index`` the next window needs: the lives that may go on in it
    (``timeout``: each one's idle timeout), and when the lives still in the table leave it
    (``hold``: each one's timeout and a sweep)."""
    end = float(index.ts[-1]) if len(index) else carry.end
    final = lives.final_ts[lives.keyed]
    carry.going = {k: v for k, v in carry.going.items() if v[1] + v[2] > end}
    for j in np.flatnonzero(final + timeout > end).tolist():
        carry.going[keys[j].tobytes()] = (words[j].tobytes(), float(final[j]), float(timeout[j]))
    gone = final + hold
    carry.held = np.concatenate((held[held > end], gone[gone > end]))
    carry.end = end


def _raw(row: bytes) -> bytes:
    """The raw address of an address row (three words: the third, its IP version)."""
    a = np.frombuffer(row, dtype=np.uint64).tolist()
    return address(a, 4 if a[2] == 4 else 16)


@dataclass(frozen=True, slots=True)
class WindowData:
    """One part's packets of one window (plain data, sent to the part's worker)."""

    packets: PartData
    """The packets, numbered in the window."""
    offset: int
    """The window's first packet's number in the whole capture."""
    ends: bool
    """Whether this is the capture's last window."""
    owners: dict[bytes, int]
    """The server addresses this window gives the part first."""


class WindowPart:
    """One part of a capture analysed a window at a time: its censor, kept from one window to
    the next (on a Dask cluster, an actor on one worker)."""

    def __init__(self, task: PartTask) -> None:
        self.censor = task.censor()
        self.me = task.me
        self.keep = task.keep
        self.owners: dict[bytes, int] = {}

    def window(self, data: WindowData) -> PartResult | str:
        """Analyse this part's packets of one window; or why the capture cannot be split."""
        self.owners.update(data.owners)
        return run_part(
            self.censor, data.packets, self.owners, self.me, self.keep, offset=data.offset,
            ends=data.ends,
        )  # fmt: skip


Results = Callable[[], list[PartResult | str]]
"""Waits for one window's parts to be analysed; their results, in part order."""
Session = Callable[[list[WindowData]], Results]
"""Starts the analysis of one window's parts (one data per part, in part order)."""
WindowRunner = Callable[[list[PartTask]], AbstractContextManager[Session]]
"""Sets up one :class:`WindowPart` per task for the run of a whole capture."""


@contextmanager
def inline_windows(tasks: list[PartTask]) -> Iterator[Session]:
    """The parts in this process, one after the other (tests, and one core)."""
    parts = [WindowPart(task) for task in tasks]

    def start(datas: list[WindowData]) -> Results:
        results = [p.window(d) for p, d in zip(parts, datas, strict=True)]
        return lambda: results

    yield start


class Unsplit(Exception):
    """The capture cannot be analysed split after all (the message says why)."""


@dataclass(slots=True)
class _Window:
    """A window whose parts are being analysed, and where it sits in the capture."""

    index: CaptureIndex
    ends: bool
    offset: int
    results: Results


def analyze_windows(
    windowed: Windowed,
    windows: Iterator[tuple[CaptureIndex, bool]],
    profile: Profile,
    *,
    parts: int,
    seed: int,
    events_path: str | None,
    out_path: str | None,
    runner: WindowRunner,
    rebuild: Callable[[], Profile] | None,
    progress: Callable[[int, int], None] | None,
    no_gain: float,
) -> Summary:
    """What one process writes for the capture of ``windowed``, its ``windows`` (checked in
    time order) split into ``parts`` each. Raises :class:`Unsplit` (nothing published) where
    one process would not take the fast path or a window cannot be split.

    While the parts analyse a window, this process indexes and splits the next one; while they
    analyse that one, it writes what the first gave."""
    censor = build_censor(profile, seed, runs_probes=False)
    carry = Carry(parts)
    summary = Summary.of(windowed.reader.path, profile, seed)
    keep = out_path is not None
    tasks = [PartTask(rebuild or profile, seed, me, {}, keep) for me in range(parts)]
    rows: dict[tuple[Any, ...], FlowVerdict] = {}
    latest: list[PartResult] = []
    give_up: float | None = no_gain

    def split_up(index: CaptureIndex, ends: bool, offset: int) -> list[WindowData]:
        how = split_window(index, censor, carry)
        if isinstance(how, str):
            raise Unsplit(f"window at packet {offset:,}: {how}")
        split, owners = how
        datas = []
        for me in range(parts):
            sel = np.flatnonzero(split.part_of == me)
            mine = {a: p for a, p in owners.items() if p == me}
            packets = PartData(
                index.subset(sel).detach(), sel, index.ts, part_lives(split, me, sel)
            )
            datas.append(WindowData(packets, offset, ends, mine))
        return datas

    def finish(window: _Window, results: list[PartResult | str]) -> None:
        nonlocal latest, give_up
        index = window.index
        latest = []
        for result in results:
            if isinstance(result, str):
                raise Unsplit(result)
            latest.append(result)
        plan = merge(latest)
        if give_up is not None and not window.ends and plan.fed >= give_up * len(index):
            raise Unsplit("most of its first window reached the engine")
        give_up = None
        record_parts(latest, rows, summary, write_event)
        if pcap_out is not None:
            fast.write(index, plan, pcap_out)
        if len(index):
            # Done with: the walk released these pages when it went on to the next window, and
            # writing the censored capture read them back.
            end = index.start[-1] + index.length[-1]
            windowed.reader.release(int(index.start[0]), int(end))
            if summary.start_ts is None:
                summary.start_ts = float(index.ts[0])
        summary.engine_packets += plan.fed
        summary.skipped += index.skipped
        if window.ends:
            summary.truncated_at = index.truncated_at
        if progress is not None and len(index):
            progress(int(index.start[-1]), index.size)

    with published(events_path, out_path) as (events_out, pcap_out), runner(tasks) as session:
        write_event = events_out.fh.write if events_out is not None else None
        running: _Window | None = None
        offset = 0
        for index, ends in windows:
            datas = split_up(index, ends, offset)  # while the parts analyse the last window
            done = running.results() if running is not None else None
            window = _Window(index, ends, offset, session(datas))
            del datas  # sent: the parts' copies of the window's index are theirs now
            if running is not None and done is not None:
                finish(running, done)  # while the parts analyse this one
            running = window
            offset += len(index)
        if running is not None:
            finish(running, running.results())
        fill_summary(summary, sum_stats(latest), rows)
        summary.flows_evicted = sum(r.evicted for r in latest)
    summary.parts = parts
    return summary


def analyze_sharded(
    capture: str,
    profile: Profile,
    *,
    parts: int,
    seed: int = 0,
    events_path: str | None = None,
    out_path: str | None = None,
    runner: Runner = inline,
    windows_runner: WindowRunner = inline_windows,
    rebuild: Callable[[], Profile] | None = None,
    progress: Callable[[int, int], None] | None = None,
    date_source: str = "--date",
    max_index: int = MAX_PACKETS,
    no_gain: float = NO_GAIN,
) -> Summary:
    """What :func:`~gfwlab.offline.analyze.analyze` (with ``max_index`` and ``no_gain``) writes
    for ``capture``, analysed in ``parts`` parts: whole (:func:`~.shard.analyze_split`, on
    ``runner``) or, for a capture of more than ``max_index`` packets, a window at a time (on
    ``windows_runner``). A capture that cannot be split is analysed by one process, with a
    warning saying why."""
    opened = open_index(capture, max_index, *window_sizes(max_index))
    if isinstance(opened, CaptureIndex):
        return analyze_split(
            capture, profile, parts=parts, seed=seed, events_path=events_path,
            out_path=out_path, runner=runner, rebuild=rebuild, progress=progress,
            date_source=date_source, index=opened,
        )  # fmt: skip
    try:
        summary = analyze_windows(
            opened, in_time_order(opened.indexes), profile, parts=parts, seed=seed,
            events_path=events_path, out_path=out_path, runner=windows_runner,
            rebuild=rebuild, progress=progress, no_gain=no_gain,
        )  # fmt: skip
        summary.date_source = date_source
        summary.name_outputs(events_path, out_path)
        return summary
    except Backwards:
        why = "its timestamps go backwards"
    except Unsplit as exc:
        why = str(exc)
    finally:
        opened.reader.close()
    summary = analyze(
        capture, profile, seed=seed, events_path=events_path, out_path=out_path,
        progress=progress, date_source=date_source, max_index=max_index, no_gain=no_gain,
    )  # fmt: skip
    summary.warnings.insert(0, f"{capture}: not split into {parts} parts: {why}")
    return summary
