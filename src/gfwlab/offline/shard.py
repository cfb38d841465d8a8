"""One capture split into parts by server address, analysed in parallel, merged into one output.

``analyze_split(capture, profile, seed=..., parts=N)`` analyses a capture as ``N`` parts, each
on its own engine (in a Dask cluster: an existing one at ``tcp://host:port``, or a local cluster
of worker processes), and writes the events, censored capture and summary that one process
(:func:`gfwlab.offline.analyze.analyze`) writes for the whole capture, byte for byte.

The splitting rule. Each flow goes to the part of its **server's address**:

* every residual key holds the server's address (``5-tuple``, ``3-tuple``, ``2-tuple``,
  ``server``, ``server-ip``: :mod:`gfwlab.engine.residual`), so a block and every flow it can
  reach are in one part, whoever the client is;
* a mechanism's state across flows is declared (``Mechanism.shard_scope``): ``server`` scoped
  state (TLS-in-TLS's per-server detections) stays whole for the same reason; ``all`` scoped
  state (DNS injection's pool cursors) is touched only by datagrams to the mechanism's declared
  UDP ports, so every server that receives one (every resolver) belongs to one part, with all
  its flows;
* draws are keyed per flow, and each part numbers its timers and events as in the whole capture
  (:class:`gfwlab.offline.fast.Part`), so the parts' outputs merge in the order one engine
  makes them.

Servers go to parts heaviest first, each to the least loaded part (a server's load: the
packets the engine is likely to see of its flows, up to 8 per flow life); packets outside flows
(ICMP, malformed headers) go to part 0.

The server is who the engine will take for it (``engine.flows.open_flow`` on each flow life's
first packet). Each part checks it on every flow it feeds (a simultaneous open can swap the
roles); a flow whose server another part holds stops the split. A capture is also not split
(and is analysed by one process, with a warning saying why) when one part could not give the
whole's answer: IP fragments (reassembly state is keyed by the address pair, whose server is
unknown until reassembled), a flow table that could fill (eviction depends on every flow; the
limit is checked against the most flow lives that can be in the table at once), a mechanism
whose shared state no port bounds, timestamps going backwards, or several censors in series.
A capture of more than ``MAX_PACKETS`` packets is split a window at a time
(:mod:`gfwlab.offline.shard_windows`).
"""

from __future__ import annotations

import dataclasses
import heapq
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from gfwlab.engine.actions import Event
from gfwlab.engine.censor import Censor
from gfwlab.engine.flows import Flow
from gfwlab.engine.mechanism import all_scoped, pinned_ports
from gfwlab.engine.verdicts import Stats
from gfwlab.errors import MalformedPacket
from gfwlab.offline import fast
from gfwlab.offline.analyze import (
    FlowVerdict,
    Summary,
    analyze,
    collector_off,
    fill_summary,
    published,
)
from gfwlab.offline.events import Recorder
from gfwlab.offline.index import F64, I64, U64, Bools, CaptureIndex, Lives, address, build_index
from gfwlab.packet.ip import ACK, PROTO_TCP, PROTO_UDP, SYN, parse
from gfwlab.profiles import Profile, build_censor


@dataclass(frozen=True, slots=True)
class Split:
    """Which part analyses each packet of a capture."""

    parts: int
    part_of: I64
    """Each packet's part."""
    lives: Lives
    """The capture's flow lives."""
    life_part: I64
    """Each life's part."""
    owners: dict[bytes, int]
    """The part of each server address."""

    def owner(self, address: bytes) -> int:
        """The part that holds ``address`` as a server; -1 for an address no flow's server had."""
        return self.owners.get(address, -1)


def split(index: CaptureIndex, censor: Censor, parts: int) -> Split | str:
    """How to split ``index`` into ``parts`` for ``censor``'s profile, or why it cannot be."""
    why = refusal(index, censor)
    if why is not None:
        return why
    eng = censor.profile.engine
    lives = index.lives(eng.tcp_timeout_s, eng.udp_timeout_s)
    if table_fills(index, lives, censor):
        return f"its flow table (engine.max_flows={eng.max_flows:,}) could fill"
    servers = life_servers(index, censor, lives)
    addresses, of_life = np.unique(servers.rows, return_inverse=True)
    # The receivers of ``all`` scoped state are one group, whose first address stands for all.
    group = np.arange(addresses.shape[0], dtype=np.int64)
    pinned = np.unique(of_life[servers.pinned])
    if pinned.size:
        group[pinned] = pinned[0]
    load = np.bincount(group[of_life], weights=servers.load, minlength=group.shape[0])
    part_of_group = _balance(load.astype(np.float64), parts)
    part = part_of_group[group]
    owners = {
        address(a, 4 if a[2] == 4 else 16): int(p)
        for a, p in zip(
            addresses.view(np.uint64).reshape(-1, 3).tolist(), part.tolist(), strict=True
        )
    }
    life_part = np.zeros(lives.keyed.shape[0], dtype=np.int64)
    life_part[lives.keyed] = part[of_life]
    return Split(parts, life_part[lives.life_of], lives, life_part, owners)


def refusal(index: CaptureIndex, censor: Censor) -> str | None:
    """Why ``index`` cannot be split for ``censor``'s profile, whatever its flows (None: it
    can, if its flow table cannot fill, :func:`table_fills`)."""
    if not index.in_order:
        return "its timestamps go backwards"
    for name, ports in all_scoped(censor.mechanisms, censor.plan.udp_ports):
        if ports is None:
            return f"{name} keeps state across every flow"
    for i in np.flatnonzero(~index.flow).tolist():
        try:
            if parse(index.packet(i)).fragment:
                return f"packet {i} is an IP fragment"
        except MalformedPacket:
            continue
    return None


def table_fills(index: CaptureIndex, lives: Lives, censor: Censor, held: F64 | None = None) -> bool:
    """Whether the flow table could fill: the most flow lives it can hold at once (a life is
    held from its first packet until a sweep after its idle timeout; sweeps come at most
    ``sweep_s`` apart while any is held). ``held``: when lives of earlier windows leave the
    table, each held from the start."""
    eng = censor.profile.engine
    first = lives.first[lives.keyed]
    tcp = index.proto[first] == PROTO_TCP
    hold = np.where(tcp, eng.tcp_timeout_s, eng.udp_timeout_s) + eng.sweep_s
    born, gone = index.ts[first], lives.final_ts[lives.keyed] + hold
    before = held if held is not None else np.zeros(0, dtype=np.float64)
    times = np.concatenate((born, gone, before))
    steps = np.concatenate(
        (
            np.ones(born.shape[0], np.int64),
            -np.ones(gone.shape[0] + before.shape[0], np.int64),
        )
    )
    by = np.lexsort((-steps, times))  # at a tie, count the new life before the one going
    # Held from the start: the count starts at their number (the table may be full already).
    rise = max(int(np.cumsum(steps[by]).max()), 0) if by.size else 0
    return int(before.shape[0]) + rise >= eng.max_flows


@dataclass(frozen=True, slots=True)
class Servers:
    """The server of each flow life (keyed lives only, in life order), as the engine will take
    it (``engine.flows.open_flow`` on the life's first packet)."""

    rows: npt.NDArray[np.void]
    """Each server's address as a row of three words (the third: its IP version), viewed as
    one item each so that ``np.unique`` compares whole rows."""
    pinned: Bools
    """Whether the life is a datagram to a port of ``all`` scoped state (a resolver's)."""
    load: F64
    """The packets the engine is likely to see of the life: its packets, up to 8."""


def life_servers(index: CaptureIndex, censor: Censor, lives: Lives) -> Servers:
    """The server of each keyed life of ``index``."""
    pinned_udp = pinned_ports(censor.mechanisms, censor.plan.udp_ports)
    first = lives.first[lives.keyed]
    tcp = index.proto[first] == PROTO_TCP
    flags = index.flags[first].astype(np.int64)
    sport = (index.src[first, 2] & 0xFFFF).astype(np.int64)
    dport = (index.dst[first, 2] & 0xFFFF).astype(np.int64)
    synack = (flags & (SYN | ACK)) == (SYN | ACK)
    tcp_client = ~(synack & censor.profile.tcb.turnaround) & (
        ((flags & SYN) != 0) | (sport >= dport)
    )
    watched = np.fromiter(censor.plan.ports, dtype=np.int64)
    udp_client = ~(np.isin(sport, watched) & ~np.isin(dport, watched))
    src_client = np.where(tcp, tcp_client, udp_client)
    server = np.where(src_client[:, None], index.dst[first], index.src[first])
    server_port = np.where(src_client, dport, sport)
    words: U64 = server.astype(np.uint64)
    words[:, 2] >>= np.uint64(32)  # the version (the port's bits dropped)
    pinned = (index.proto[first] == PROTO_UDP) & np.isin(
        server_port, np.fromiter(pinned_udp, np.int64)
    )
    # The engine sees the first packets of each flow: a life's load is its packets, up to 8.
    load = np.minimum(lives.count[lives.keyed], _DEPTH).astype(np.float64)
    return Servers(words.view([("", words.dtype)] * 3).ravel(), pinned, load)


_DEPTH = 8


def _balance(load: npt.NDArray[np.float64], parts: int) -> I64:
    """Groups to parts, each to the least loaded part, heaviest first; ties by group number, so
    the same capture always splits the same way."""
    out = np.zeros(load.shape[0], dtype=np.int64)
    heap = [(0.0, p) for p in range(parts)]
    for g in np.lexsort((np.arange(load.shape[0]), -load)).tolist():
        if load[g] == 0:
            break
        total, p = heapq.heappop(heap)
        out[g] = p
        heapq.heappush(heap, (total + float(load[g]), p))
    return out


def part_lives(how: Split, me: int, sel: I64) -> Lives:
    """The flow lives of part ``me`` (packets ``sel``), numbered as that part's own index
    numbers them: what :meth:`CaptureIndex.lives` of the part's index gives, without working it
    out again (a part holds whole lives, and a gap that cuts a life is still there when the
    packets of other lives are left out)."""
    lives = how.lives
    mine = np.flatnonzero(how.life_part == me)
    rank = np.full(how.life_part.shape[0], -1, dtype=np.int64)
    rank[mine] = np.arange(mine.shape[0], dtype=np.int64)
    local = np.full(how.part_of.shape[0], -1, dtype=np.int64)
    local[sel] = np.arange(sel.shape[0], dtype=np.int64)
    count = lives.count[mine]
    start = np.zeros_like(count)
    if count.shape[0]:
        start[1:] = np.cumsum(count)[:-1]
    return Lives(
        order=local[lives.order[how.life_part[lives.life_of[lives.order]] == me]],
        start=start,
        count=count,
        first=local[lives.first[mine]],
        final_ts=lives.final_ts[mine],
        life_of=rank[lives.life_of[sel]],
        pos=lives.pos[sel],
        keyed=lives.keyed[mine],
    )


@dataclass(slots=True)
class PartResult:
    """What one part found: its plan numbered as in the whole capture, and its events."""

    plan: fast.Plan
    events: list[tuple[int, Event]]
    """Each event with the number (in the whole capture) of the packet that caused it."""
    stats: Stats
    evicted: int


ProfileSource = Profile | Callable[[], Profile]
"""A profile, or how to build it where the part runs (a worker rebuilds it from plain data)."""


@dataclass(frozen=True, slots=True)
class PartData:
    """The packets of one part (plain data: a cluster sends it to a worker ahead of the task)."""

    index: dict[str, Any]
    """The part's packets' index, detached (:meth:`CaptureIndex.detach`)."""
    ids: I64
    """Each of its packets' number in the whole capture (in the window, for a window)."""
    ts: F64
    """The whole capture's timestamps (the window's, for a window)."""
    lives: Lives
    """The part's flow lives (:func:`part_lives`)."""


@dataclass(frozen=True, slots=True)
class PartTask:
    """One part's work, as plain data a worker process can receive."""

    profile: ProfileSource
    seed: int
    me: int
    owners: dict[bytes, int]
    """The part of each server address (:attr:`Split.owners`)."""
    keep: bool

    def censor(self) -> Censor:
        """The part's censor, built from its profile where it runs."""
        prof = self.profile if isinstance(self.profile, Profile) else self.profile()
        return build_censor(prof, self.seed, runs_probes=False)

    def __call__(self, data: PartData) -> PartResult | str:
        """Analyse the part; or why the capture cannot be split after all."""
        return run_part(self.censor(), data, self.owners, self.me, self.keep)


@collector_off()
def run_part(
    censor: Censor,
    data: PartData,
    owners: dict[bytes, int],
    me: int,
    keep: bool,
    *,
    offset: int = 0,
    ends: bool = True,
) -> PartResult | str:
    """Analyse part ``me``'s packets ``data`` with ``censor`` (``owners``: the part of each
    server address; ``offset`` and ``ends``: of a window, see :class:`fast.Part` and
    :func:`fast.run`); or why the capture cannot be split after all."""

    def owns(flow: Flow) -> bool:
        return owners.get(flow.server) == me

    events: list[tuple[int, Event]] = []
    part = fast.Part(ids=data.ids, ts=data.ts, owns=owns, lives=data.lives, offset=offset)
    index = CaptureIndex.attach(data.index)
    try:
        plan = fast.run(
            index, censor, lambda e: events.append((part.current, e)), keep=keep, part=part,
            ends_capture=ends,
        )  # fmt: skip
    except fast.PartError as exc:
        return f"a flow changed servers ({exc})"
    finally:
        index.close()
    return PartResult(plan=plan, events=events, stats=censor.stats, evicted=censor.flows.evicted)


def merge(results: list[PartResult]) -> fast.Plan:
    """The plan of the whole capture from its parts' plans."""
    plan = fast.Plan()
    for r in results:
        plan.at.update(r.plan.at)
        plan.fed += r.plan.fed
        for j, timed in r.plan.before.items():
            plan.before.setdefault(j, []).extend(timed)
        plan.tail.extend(r.plan.tail)
    for timed in plan.before.values():
        timed.sort(key=_by_timer)
    plan.tail.sort(key=_by_timer)
    plan.dropped = np.sort(np.concatenate([r.plan.dropped for r in results]))
    return plan


def record_parts(
    results: list[PartResult],
    rows: dict[tuple[Any, ...], FlowVerdict],
    summary: Summary,
    write_event: Callable[[bytes], int] | None,
) -> None:
    """Record the parts' events in one engine's order (by the packet that caused each)."""
    record = Recorder(rows, summary.anomaly_kinds, write_event, None, FlowVerdict)
    for _g, event in heapq.merge(*(r.events for r in results), key=lambda e: e[0]):
        record(event)


def _by_timer(w: tuple[float, int, bytes]) -> tuple[float, int]:
    return w[0], w[1]


def sum_stats(results: list[PartResult]) -> Stats:
    """The parts' counters added up."""
    total = Stats()
    for r in results:
        for f in dataclasses.fields(Stats):
            if f.name == "events":
                for k, v in r.stats.events.items():
                    total.events[k] = total.events.get(k, 0) + v
            else:
                setattr(total, f.name, getattr(total, f.name) + getattr(r.stats, f.name))
    return total


Runner = Callable[[list[tuple[PartTask, PartData]]], Iterator[PartResult | str]]
"""Runs the parts' tasks on their data; yields each result as it completes (any order)."""


def inline(tasks: list[tuple[PartTask, PartData]]) -> Iterator[PartResult | str]:
    """Run the parts one after the other in this process (tests, and one core)."""
    for task, data in tasks:
        yield task(data)


def analyze_split(
    capture: str,
    profile: Profile,
    *,
    parts: int,
    seed: int = 0,
    events_path: str | None = None,
    out_path: str | None = None,
    runner: Runner = inline,
    rebuild: Callable[[], Profile] | None = None,
    progress: Callable[[int, int], None] | None = None,
    date_source: str = "--date",
    index: CaptureIndex | None = None,
) -> Summary:
    """What :func:`~gfwlab.offline.analyze.analyze` writes for ``capture``, analysed as
    ``parts`` parts by ``runner`` (``rebuild``: how a worker rebuilds ``profile``). A capture
    that cannot be split is analysed by one process, with a warning saying why. ``index``: the
    capture's index, already built (closed here); a capture too large for one is split a
    window at a time by :func:`gfwlab.offline.shard_windows.analyze_sharded`."""
    if index is None:
        index = build_index(capture)
    why = "it has more packets than the fast path indexes whole" if index is None else None
    results: list[PartResult] = []
    try:
        if index is not None:
            how = split(index, build_censor(profile, seed), parts)
            if isinstance(how, str):
                why = how
            else:
                tasks = _tasks(index, how, rebuild or profile, seed, out_path is not None)
                for done, result in enumerate(runner(tasks), start=1):
                    if isinstance(result, str):
                        why = result
                    else:
                        results.append(result)
                    if progress is not None:  # in bytes, as one process counts
                        progress(index.size * done // (parts + 1), index.size)
        if why is None and index is not None:
            summary = _write(index, profile, seed, results, events_path, out_path)
            summary.date_source = date_source
            summary.parts = parts
            if progress is not None:
                progress(index.size, index.size)
            return summary
    finally:
        if index is not None:
            index.close()
    summary = analyze(
        capture, profile, seed=seed, events_path=events_path, out_path=out_path,
        progress=progress, date_source=date_source,
    )  # fmt: skip
    summary.warnings.insert(0, f"{capture}: not split into {parts} parts: {why}")
    return summary


def _tasks(
    index: CaptureIndex, how: Split, profile: ProfileSource, seed: int, keep: bool
) -> list[tuple[PartTask, PartData]]:
    tasks = []
    for me in range(how.parts):
        sel = np.flatnonzero(how.part_of == me)
        lives = part_lives(how, me, sel)
        data = PartData(index.subset(sel).detach(), sel, index.ts, lives)
        tasks.append((PartTask(profile, seed, me, how.owners, keep), data))
    return tasks


def _write(
    index: CaptureIndex,
    profile: Profile,
    seed: int,
    results: list[PartResult],
    events_path: str | None,
    out_path: str | None,
) -> Summary:
    summary = Summary.of(index.path, profile, seed)
    with published(events_path, out_path) as (events_out, pcap_out):
        rows: dict[tuple[Any, ...], FlowVerdict] = {}
        write_event = events_out.fh.write if events_out is not None else None
        record_parts(results, rows, summary, write_event)
        plan = merge(results)
        if pcap_out is not None:
            fast.write(index, plan, pcap_out)
        if len(index):
            summary.start_ts = float(index.ts[0])
        fill_summary(summary, sum_stats(results), rows)
        summary.flows_evicted = sum(r.evicted for r in results)
        summary.engine_packets = plan.fed
        summary.skipped = index.skipped
        summary.truncated_at = index.truncated_at
    summary.name_outputs(events_path, out_path)
    return summary
