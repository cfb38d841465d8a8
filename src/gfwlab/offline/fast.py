"""The fast path of ``gfwlab analyze``: feed the engine only what can change a verdict.

The engine's own flow state says what can: once a flow is BYPASSED (nothing left to inspect) a
later packet of it only adds to counters, unless a residual *drop* block is held somewhere
(then every packet is looked up); once a flow is BLOCKED, each later packet gets the cached
verdict of its direction. So, over a :class:`~gfwlab.offline.index.CaptureIndex`:

1. every flow life's packets are fed in file order, interleaved with the other lives' and with
   the engine's timers exactly as the every-packet path interleaves them, until the flow is
   BYPASSED or BLOCKED after a packet; packets outside flows are always fed;
2. while the engine holds a residual drop block, every packet it could cover is fed;
3. every bare TCP SYN (no ACK, no RST) of a BYPASSED or BLOCKED flow is fed: it may open a new
   connection on the flow's 5-tuple (``Flow.opened_anew_by``). Where the engine made a new
   flow on it, the life is cut there and the rest of it is the new flow's life, fed as in 1;
4. the rest of a BYPASSED flow is counted in bulk; the rest of a BLOCKED flow is dropped or
   passed in bulk by its direction; both are copied to the censored capture in bulk;
5. a packet of a flow still being inspected that would change nothing but counters (a bare
   TCP ACK of a flow with a TCB, a DNS answer: :func:`_quiet`) is counted in bulk too, unless a
   residual drop block covers it.

What keeps it identical to the every-packet path (``tests/test_fastpath.py``):

* draws are keyed per flow (``Flow.draws``), so leaving packets out changes no draw;
* a flow's ``packets`` count is set to its position before each packet is fed, and its
  ``last_seen`` is set to the time of the life's last packet after each: within a life the
  gaps are shorter than the idle timeout, so the engine's expiry (at a packet or a sweep)
  forgets the flow exactly when the every-packet path would;
* a timer released before a fed packet is written before the first packet at or after its
  deadline, where the every-packet path would have released it;
* a life is one engine flow: it is cut where the engine forgets the flow before the life ends
  (evicted from a full table, or replaced by a new connection on its 5-tuple);
* timestamps must not go backwards (the caller falls back to the every-packet path if they do).
"""

from __future__ import annotations

import bisect
import heapq
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Final, assert_never

import numpy as np
from mypy_extensions import mypyc_attr

from gfwlab.engine.actions import Accept, Action, Bypass, Drop, Event, Inject, Probe, Report
from gfwlab.engine.censor import Censor
from gfwlab.engine.flows import Flow, FlowKey, FlowState, flow_key
from gfwlab.engine.residual import ResidualTable
from gfwlab.offline.dropwatch import DropWatch
from gfwlab.offline.index import F64, I64, Bools, CaptureIndex, Lives
from gfwlab.packet.ip import ACK, FIN, PROTO_TCP, PROTO_UDP, RST, SYN
from gfwlab.packet.pcap import MAX_CAPLEN, PcapWriter

Writes = list[tuple[float, bytes]]
Timed = list[tuple[float, int, bytes]]
"""Injections released by timers: (time, the timer's number, packet), in release order."""

_BLOCK_CODES: Final = {"none": 0, "c2s": 1, "s2c": 2, "both": 3}
_CHUNK: Final = 32 << 20


@mypyc_attr(native_class=False)  # an exception: a Python class even when compiled
class FastPathError(RuntimeError):
    """The index and the engine disagree about a packet (a bug: use ``--exact``)."""


@dataclass
class Plan:
    """What the censored capture holds, relative to the input's packets."""

    before: dict[int, Timed] = field(default_factory=dict)
    """Packets released by timers, written before input packet ``i``."""
    at: dict[int, Writes] = field(default_factory=dict)
    """What a fed packet's actions wrote (itself if accepted, then injections)."""
    tail: Timed = field(default_factory=list)
    """Injections released at the end of the capture."""
    dropped: I64 = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    """Input packets dropped in bulk (later packets of blocked flows)."""
    fed: int = 0
    """Packets that reached the engine."""


@mypyc_attr(native_class=False)  # an exception: a Python class even when compiled
class PartError(RuntimeError):
    """A part of a split capture met a flow whose server address another part holds."""


@dataclass
class Part:
    """Where the packets of an index that is one part of a split capture (:mod:`.shard`) sit in
    the whole capture. With it, :func:`run` numbers everything it plans (packets, timers) as
    in the whole capture, so that the parts' plans merge into the plan of the whole."""

    ids: I64
    """Each packet's number in the whole capture."""
    ts: F64
    """The whole capture's timestamps."""
    owns: Callable[[Flow], bool]
    """Whether this part holds the flow's server address (else :class:`PartError`)."""
    current: int = -1
    """The number in the whole capture of the packet being fed (for ordering its events)."""
    lives: Lives | None = None
    """The index's flow lives, if the caller has them (:meth:`CaptureIndex.lives` else)."""
    offset: int = 0
    """Packets of the whole capture before ``ts[0]`` (a window of a capture analysed a window
    at a time, whose ``ids`` and ``ts`` are the window's): the timers are numbered from
    ``offset`` on, so that releases due together keep one engine's order across windows."""


def run(
    index: CaptureIndex,
    censor: Censor,
    report: Callable[[Event], None],
    *,
    keep: bool,
    progress: Callable[[int, int], None] | None = None,
    part: Part | None = None,
    ends_capture: bool = True,
) -> Plan:
    """Analyse ``index`` with ``censor``; Reports go to ``report`` in the every-packet order.
    ``keep``: remember what to write to a censored capture. ``part``: ``index`` is one part of
    a split capture; the plan is numbered as in the whole. ``ends_capture`` off: ``index`` is
    a window of a capture analysed a window at a time with the same censor, and more follow
    (the injections still pending at its end are not flushed; flows go on in the next one)."""
    eng = censor.profile.engine
    lives = part.lives if part is not None and part.lives is not None else None
    if lives is None:
        lives = index.lives(eng.tcp_timeout_s, eng.udp_timeout_s)
    n = len(index)
    ts = index.ts
    # Per-packet arrays are read through memoryviews: Python numbers on each read, without
    # lists of a million objects (about 40 bytes a packet each, and slower to read at random).
    tsl = _view(ts)
    order: memoryview[int] = _view(lives.order)  # typed: its items are machine integers
    lstart: list[int] = lives.start.tolist()
    lcount: list[int] = lives.count.tolist()
    first: list[int] = lives.first.tolist()
    final: list[float] = lives.final_ts.tolist()
    keyed: list[bool] = lives.keyed.tolist()
    n_lives = len(first)
    # Per-life flags are lists, not bytearrays: compiled, a list's item is read in place where a
    # bytearray's goes through the generic item lookup (three a packet).
    status = [0] * n_lives  # 0 inspecting, 1 bypassed, 2 blocked, 3 done
    flows: list[Flow | None] = [None] * n_lives
    big = int(np.iinfo(np.int64).max)
    bypass_from = [big] * n_lives
    block_from = [big] * n_lives
    block_code = [0] * n_lives
    client_lower = [False] * n_lives
    """Whether the flow's client is the lower endpoint of its key."""
    base = [0] * n_lives
    """The flow's packets before this index (a window of a capture analysed in windows)."""
    lower = index.lower.tobytes()  # bytes: read in place, compiled
    fed_at: list[int] = []
    starts = _view(index.start)
    lengths = _view(index.length)
    data = index.data
    residual = censor.residual
    plan = Plan()
    at = plan.at
    table = censor.flows.flows
    verdicts = censor.verdicts
    ids: list[int] = part.ids.tolist() if part is not None else []
    offset = part.offset if part is not None else 0

    waiting = verdicts.timers
    part_ts = _view(part.ts) if part is not None else tsl

    def timers(until: float, last: int) -> None:
        deadline = censor.next_deadline()
        while deadline is not None and deadline <= until:
            seqs = _numbers(part, waiting, deadline) if keep else None
            actions = censor.on_timer(deadline)
            out: Timed = []  # without a censored capture, released injections go nowhere
            if actions and keep:
                if part is None:
                    j = max(last + 1, bisect.bisect_left(tsl, deadline))
                else:
                    after = ids[last] + 1 if last >= 0 else 0
                    j = max(after, bisect.bisect_left(part_ts, deadline))
                out = plan.before.setdefault(j, [])
            _timed(actions, seqs, out, keep, report)
            deadline = censor.next_deadline()

    life_of = lives.life_of
    pos = lives.pos
    # The queue of packets to feed: each entry a packet and the life it was queued for, as one
    # integer (the packet in the high bits), so that the heap compares machine integers. An
    # entry whose packet a cut has since moved to a new life is stale (the new life queues its
    # own): ``life_of`` tells. ``cut`` changes ``life_of`` and ``pos`` in place, and these views
    # share their memory.
    heap: list[int] = []
    shift = (2 * n + 1).bit_length()  # more than the lives there can be: one more per cut
    mask = (1 << shift) - 1
    life_at = _shared(life_of)
    pos_at = _shared(pos)
    # Residual drop blocks: which bypassed flows a drop entry's key covers (see DropWatch).
    watch = DropWatch(censor)
    suspect = [0] * n_lives
    # A full flow table evicts flows (oldest first): a life whose flow is evicted goes on as a
    # new life from its next packet, as the engine makes a new flow for it.
    full = n_lives + len(censor.flows) > censor.flows.max_flows
    evicted = censor.flows.evicted_log = [] if full else None
    life_by_flow: dict[int, int] = {}
    """The life of each flow the engine holds, by ``id``: kept only where it may evict."""

    # The nested functions below use no function that run() itself names (``len``, the module's
    # helpers): mypyc would then keep them in the closure's environment, which they refer to, and
    # the environment (this window's index views and per-life lists, the engine) would outlive
    # the call in a reference cycle, with the collector off (``offline/analyze.py``) until a
    # collection.

    def cut(life: int, at: int, new: int) -> int:
        """Make the packets of ``life`` from ``at`` (a position in ``order``) life ``new`` (the
        number of lives so far), of a flow not yet known; return it. Entries queued for the old
        life past the cut are stale (their position is beyond its new count)."""
        lo, hi = lstart[life], lstart[life] + lcount[life]
        lstart.append(at)
        lcount.append(hi - at)
        lcount[life] = at - lo
        first.append(order[at])
        final.append(final[life])
        keyed.append(True)
        status.append(0)
        flows.append(None)
        suspect.append(0)
        for arr, value in ((bypass_from, big), (block_from, big), (block_code, 0)):
            arr.append(value)
        client_lower.append(False)
        base.append(0)
        rest = lives.order[at:hi]
        life_of[rest] = new
        pos[rest] -= at - lo
        return new

    # Bare TCP SYNs: the packets that may open a new connection on a judged flow's 5-tuple.
    bare = index.flow & (index.proto == PROTO_TCP) & (index.flags & (SYN | ACK | RST) == SYN)
    is_syn = bare.tobytes()
    syn_at: list[int] = np.flatnonzero(bare[lives.order]).tolist()
    """Where each bare SYN is in ``order`` (increasing)."""
    n_syn = len(syn_at)
    is_quiet = _quiet(index, censor).tobytes()
    quiet_at: list[int] = []

    def push_syn(life: int, k: int) -> None:
        """Queue the next bare SYN of a judged ``life`` after its position ``k``."""
        lo = lstart[life]
        j = bisect.bisect_right(syn_at, lo + k)
        if j < n_syn and syn_at[j] < lo + lcount[life]:
            heapq.heappush(heap, order[syn_at[j]] << shift | life)

    nl = 0
    last = -1
    done = -1
    """The last packet handled: a packet queued twice (by a drop entry and as a SYN) once."""
    fed = 0
    sees_blocked = bool(censor.hooks.get("on_syn_ack"))  # it runs on blocked flows too

    def suspects(lives_hit: Iterable[int]) -> None:
        """Queue the next packet of each bypassed life in ``lives_hit`` after the current one."""
        for hit in lives_hit:
            if status[hit] == 1 and not suspect[hit]:
                suspect[hit] = 1
                lo, hi = lstart[hit], lstart[hit] + lcount[hit]
                at = bisect.bisect_right(order, last, lo, hi)
                if at < hi:
                    heapq.heappush(heap, order[at] << shift | hit)

    # The loop's own heap operations through local names: a module's attribute is looked up by
    # name at each use, compiled too.
    push, pop = heapq.heappush, heapq.heappop
    while True:
        i = heap[0] >> shift if heap else n
        if nl < n_lives and first[nl] < i:
            i = first[nl]
        if i >= n:
            break
        now = tsl[i]
        deadline = censor.next_deadline()
        if deadline is not None and deadline <= now:
            timers(now, last)
        if len(residual.entries) < watch.size:
            watch.forget_expired()
        last = i
        if heap and heap[0] >> shift == i:
            life = pop(heap) & mask
            if life_at[i] != life or i == done:
                continue  # queued before its life was cut (the new life has it), or twice
            k = pos_at[i]
        else:
            life, k = nl, 0
            nl += 1
        done = i
        if status[life] == 1:  # a bypassed flow: a drop entry's key covers it, or a bare SYN
            if not suspect[life]:
                push_syn(life, k)
            elif k + 1 < lcount[life]:
                push(heap, order[lstart[life] + k + 1] << shift | life)
            held = flows[life]
            assert held is not None
            c2s = lower[i] == client_lower[life]
            if (
                not is_syn[i]
                and held.state is FlowState.BYPASSED
                and residual.lookup(held, "drop-c2s" if c2s else "drop-s2c", now) is None
            ):
                continue  # not blocked now: it stays bypassed, counted in bulk
        elif status[life] == 2:
            if not is_syn[i]:
                continue  # blocked since it was queued: its verdict is cached
            push_syn(life, k)
        elif (
            is_quiet[i]
            and (held := flows[life]) is not None
            and _quiet_now(held, lower[i] == client_lower[life], residual, now)
        ):
            # Past its life's first packet (flows[life] is set by the first one fed), it would
            # change nothing but counters: counted in bulk.
            quiet_at.append(i)
            if k + 1 < lcount[life]:
                push(heap, order[lstart[life] + k + 1] << shift | life)
            else:
                flows[life] = None
                if full:
                    life_by_flow.pop(id(held), None)
            continue
        flow = flows[life]
        if flow is not None:
            flow.packets = base[life] + k
        begin = starts[i]
        packet = data[begin : begin + lengths[i]]
        g = i
        if part is not None:
            g = part.current = ids[i]
            verdicts.timer_seq = max(verdicts.timer_seq, (offset + g) << 20)
        actions = censor.feed(packet, now)
        if len(actions) != 1 or type(actions[0]) is not Accept:
            _collect(actions, now, packet, at.setdefault(g, []) if keep else [], keep, report)
        # else accepted as it is: the censored capture copies it from the input
        fed_at.append(i)
        fed += 1
        if progress is not None and not fed & 0x3FFF:
            progress(int(index.start[i]), index.size)
        if watch.added and watch.changed():
            suspects(watch.new_hits())
        if evicted:
            for gone in evicted:
                # The engine evicted it: its life's packets after the current one are a new life.
                was = life_by_flow.pop(id(gone), None)
                if was is not None:
                    lo, hi = lstart[was], lstart[was] + lcount[was]
                    at_ = bisect.bisect_right(order, last, lo, hi)
                    if at_ < hi:
                        push(heap, order[at_] << shift | cut(was, at_, len(first)))
            evicted.clear()
        if flow is not None and is_syn[i] and table.get(_key(flow)) is not flow:
            # A new connection on a judged flow's 5-tuple: the engine made a new flow on this
            # SYN, whose life is the rest of this one, from this packet.
            if full:
                life_by_flow.pop(id(flow), None)
            flows[life] = None
            life, k, flow = cut(life, lstart[life] + k, len(first)), 0, None
        if not keyed[life]:
            status[life] = 3
            continue
        if flow is None:
            # The flow the engine found or made for packet i (in the table under the packet's
            # key: nothing in feed removes it), without reading the packet's endpoints again.
            got = censor.last
            if got is None:
                raise FastPathError(f"{index.path}: packet {i} made no flow")
            flow, c2s = got
            flows[life] = flow
            base[life] = flow.packets - 1 - k  # its packets in earlier windows
            if evicted is not None:
                life_by_flow[id(flow)] = life
            client_lower[life] = lower[i] == c2s
        flow.last_seen = final[life]
        if part is not None and not part.owns(flow):
            raise PartError(f"{index.path}: packet {g}: a flow of a server held by another part")
        state = flow.state
        if k + 1 >= lcount[life]:  # its last packet: nothing more will need the flow
            flows[life] = None
            if full:
                life_by_flow.pop(id(flow), None)
        nxt = order[lstart[life] + k + 1] if k + 1 < lcount[life] else n
        if (
            state is FlowState.BLOCKED
            and nxt < n
            and (sees_blocked or flow.blocked_from > tsl[nxt])
        ):
            # The block is not in effect yet (it starts later), or a hook looks at blocked flows:
            # their next packets still go to the engine.
            push(heap, nxt << shift | life)
        elif state is FlowState.BLOCKED:
            if status[life] != 2:
                if status[life] == 0:
                    push_syn(life, k)
                status[life] = 2
                block_from[life] = k + 1
                block_code[life] = _BLOCK_CODES[flow.block]
        elif state is FlowState.BYPASSED:
            if status[life] == 0:
                status[life] = 1
                bypass_from[life] = k + 1
                push_syn(life, k)
                if k + 1 < lcount[life] and watch.register(life, flow):
                    suspects((life,))
        elif status[life] == 0 and nxt < n:
            push(heap, nxt << shift | life)
    if part is not None and len(part.ts):
        timers(float(part.ts[-1]), last)
    elif n:
        timers(tsl[n - 1], last)
    if ends_capture:
        _flush(censor, part, waiting, plan.tail, keep, report)
    censor.flows.evicted_log = None
    watch.close()
    _account(
        index, censor, fed_at, quiet_at, life_of, pos, np.asarray(bypass_from, dtype=np.int64),
        np.asarray(block_from, dtype=np.int64), np.asarray(block_code, dtype=np.int8),
        np.asarray(client_lower, dtype=np.bool_), plan,
    )  # fmt: skip
    plan.fed = fed
    if part is not None:
        plan.dropped = part.ids[plan.dropped]
    return plan


def _quiet_now(held: Flow, c2s: bool, residual: ResidualTable, now: float) -> bool:
    """Whether a quiet packet (see :func:`_quiet`) of the flow ``held``, in the direction
    ``c2s``, would change nothing now: the flow is clean, a TCP segment has a TCB to be fed to,
    and no residual drop covers it."""
    if held.state is not FlowState.CLEAN or (held.proto == PROTO_TCP and held.tcb is None):
        return False
    return (
        not residual.drops or residual.lookup(held, "drop-c2s" if c2s else "drop-s2c", now) is None
    )


def _collect(
    actions: Iterable[Action],
    at: float,
    packet: bytes | None,
    out: Writes,
    keep: bool,
    report: Callable[[Event], None],
) -> None:
    for action in actions:
        match action:
            case Accept():
                if keep and packet is not None:
                    out.append((at, packet))
            case Drop() | Probe() | Bypass():
                pass
            case Inject():
                if keep:
                    out.append((action.at, action.packet))
            case Report():
                report(action.event)
            case _:
                assert_never(action)


def _numbers(
    part: Part | None, waiting: list[tuple[float, int, Inject | Probe]], until: float | None
) -> list[int] | None:
    """In a part, the numbers of the timers due by ``until`` (all: None), in the order the
    engine releases them: they order the parts' releases at one instant as one engine would.
    One capture whole needs no numbers (0 stands for each)."""
    if part is None:
        return None
    due = sorted((t[0], t[1]) for t in waiting if until is None or t[0] <= until)
    return [q for _at, q in due]


def _flush(
    censor: Censor,
    part: Part | None,
    waiting: list[tuple[float, int, Inject | Probe]],
    out: Timed,
    keep: bool,
    report: Callable[[Event], None],
) -> None:
    """Release every pending injection at the end of the capture, numbered as the timers'."""
    pending = _numbers(part, waiting, None)
    _timed(censor.flush(), pending, out, keep, report)


def _timed(
    actions: list[Action],
    seqs: list[int] | None,
    out: Timed,
    keep: bool,
    report: Callable[[Event], None],
) -> None:
    for action, seq in zip(actions, seqs or [0] * len(actions), strict=True):
        if type(action) is Inject:
            if keep:
                out.append((action.at, seq, action.packet))
        else:
            _collect((action,), 0.0, None, [], keep, report)


def _key(flow: Flow) -> FlowKey:
    return flow_key(flow.proto, flow.client, flow.cport, flow.server, flow.sport)


def _shared(array: I64) -> memoryview[int]:
    """A view of ``array`` itself (native int64, contiguous), which sees its changes."""
    if array.dtype != np.dtype(np.int64) or not array.flags.c_contiguous:
        raise ValueError("not a contiguous array of native int64")
    view: memoryview[int] = array.data.cast("B").cast("l")
    return view


def _view(array: np.ndarray) -> memoryview[Any]:
    """``array`` as a memoryview of native numbers (indexing gives Python ones)."""
    native = np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("="))
    fmt: Any = native.dtype.char  # "d", "l" or "?"
    view: memoryview[Any] = native.data.cast("B").cast(fmt)
    return view


def _quiet(index: CaptureIndex, censor: Censor) -> Bools:
    """The packets that change nothing but counters when a clean flow's packet past its first
    one (the caller checks the flow: :func:`_quiet_now`), as the live adapter lets
    the kernel forward them (``live/chains.py`` ``skip_rules``):

    - a TCP segment without SYN, FIN or RST and without payload: it is the TCB's "other
      segment", on which no transition acts (``engine/tcb.py``); unless a mechanism needs the
      handshake ACK or counts packets (``Censor.needs_handshake_ack``);
    - a UDP datagram from a port the engine watches to one it does not (a DNS answer): the
      engine neither dissects it nor finishes its flow on it (``Censor._udp``).
    """
    watched = np.zeros(1 << 16, dtype=np.bool_)  # by port: a lookup, where np.isin sorts
    watched[np.asarray(sorted(censor.plan.ports), dtype=np.int64)] = True
    # The port is the low 16 bits of an endpoint's third word: a cast to 16 bits keeps them (and
    # indexes with a 2.6 MB array per million packets, not a masked 8-byte one: 30 ms -> 9 on
    # a realistic capture's 1.3M packets).
    sport, dport = index.src[:, 2].astype(np.uint16), index.dst[:, 2].astype(np.uint16)
    quiet: Bools = (index.proto == PROTO_UDP) & watched[sport] & ~watched[dport]
    if not censor.needs_handshake_ack:
        bare_ack = (index.proto == PROTO_TCP) & (index.flags & (SYN | FIN | RST) == 0)
        quiet |= bare_ack & (index.payload_len == 0)
    return index.flow & quiet


def _account(
    index: CaptureIndex,
    censor: Censor,
    fed_at: list[int],
    quiet_at: list[int],
    life_of: I64,
    pos: I64,
    bypass_from: I64,
    block_from: I64,
    block_code: np.ndarray,
    client_lower: np.ndarray,
    plan: Plan,
) -> None:
    """Count the packets not fed: quiet ones, bypassed ones, and blocked ones dropped or
    passed."""
    rest = np.ones(len(index), dtype=np.bool_)
    rest[np.asarray(fed_at, dtype=np.int64)] = False
    quiet = np.asarray(quiet_at, dtype=np.int64)
    rest[quiet] = False
    blocked = rest & (pos >= block_from[life_of])
    bypassed = rest & (pos >= bypass_from[life_of]) & ~blocked
    if not np.array_equal(rest, blocked | bypassed):
        raise FastPathError(f"{index.path}: a packet was neither fed nor accounted for")
    c2s = index.lower == client_lower[life_of]
    code = block_code[life_of]
    drop = blocked & ((code == 3) | ((code == 1) & c2s) | ((code == 2) & ~c2s))
    st = censor.stats
    st.packets += int(rest.sum()) + len(quiet_at)
    st.bytes += int(index.length[rest].sum()) + int(index.length[quiet].sum())
    st.bypassed_pkts += int(bypassed.sum())
    st.bypassed_bytes += int(index.length[bypassed].sum())
    st.dropped += int(drop.sum())
    plan.dropped = np.flatnonzero(drop)


def write(index: CaptureIndex, plan: Plan, writer: PcapWriter) -> None:
    """Write the censored capture: the input's packets in order, less drops, with the engine's
    own writes in their places; runs of untouched packets are copied in bulk."""
    n = len(index)
    special = np.zeros(n + 1, dtype=np.bool_)
    special[n] = True
    for i in plan.before:
        special[i] = True
    for i in plan.at:
        special[i] = True
    special[plan.dropped] = True
    dropped = np.zeros(n, dtype=np.bool_)
    dropped[plan.dropped] = True
    heads = _record_heads(index) if index.raw_records else None
    if heads is not None and n:
        buf = np.frombuffer(index.data, dtype=np.uint8)
        given = buf[(index.start - 16)[:, None] + np.arange(16)]
        same = np.all(given == heads, axis=1)
    else:
        same = None
    cur = 0
    for s in np.flatnonzero(special).tolist():
        if s > cur:
            _plain(index, cur, s, writer, heads, same)
        if s == n:
            break
        for at, _seq, packet in plan.before.get(s, ()):
            writer.write(at, packet)
        mine = plan.at.get(s)
        if mine is not None:
            for at, packet in mine:
                writer.write(at, packet)
        elif not dropped[s]:
            _plain(index, s, s + 1, writer, heads, same)
        cur = s + 1
    for at, _seq, packet in plan.tail:
        writer.write(at, packet)


def _record_heads(index: CaptureIndex) -> np.ndarray | None:
    """The record header :class:`PcapWriter` writes for each input packet (nanoseconds)."""
    if index.length.size and int(index.length.max()) > MAX_CAPLEN:
        return None
    ts = index.ts
    if ts.size and (not np.all(np.isfinite(ts)) or float(ts.min()) < 0):
        return None
    sec = np.floor(ts)
    frac = np.round((ts - sec) * 1_000_000_000)
    carry = frac >= 1_000_000_000
    sec = sec + carry
    frac = frac - carry * 1_000_000_000
    if ts.size and float(sec.max()) > 0xFFFFFFFF:
        return None
    heads = np.empty((ts.shape[0], 4), dtype="<u4")
    heads[:, 0] = sec.astype(np.uint64)
    heads[:, 1] = frac.astype(np.uint64)
    heads[:, 2] = index.length
    heads[:, 3] = index.length
    return heads.view(np.uint8).reshape(-1, 16)


def _plain(
    index: CaptureIndex,
    a: int,
    b: int,
    writer: PcapWriter,
    heads: np.ndarray | None,
    same: np.ndarray | None,
) -> None:
    """Input packets ``a`` to ``b - 1`` as they are. ``same``: whether each packet's record
    header in the input is byte for byte ``heads`` (then runs are copied as they are)."""
    if heads is None:
        tsl = index.ts[a:b].tolist()
        for j, i in enumerate(range(a, b)):
            writer.write(tsl[j], index.packet(i))
        return
    start, length, data = index.start, index.length, index.data
    view = memoryview(data)
    if b - a <= 8:  # a few records: cheaper one by one than through NumPy
        for i in range(a, b):
            s = int(start[i])
            if same is not None and same[i]:
                writer.write_records(view[s - 16 : s + int(length[i])], 1)
            else:
                writer.write_records(heads[i].tobytes() + data[s : s + int(length[i])], 1)
        return
    while a < b:
        base = int(start[a]) - 16
        limit = base + _CHUNK
        c = int(np.searchsorted(start[a:b], limit, side="right")) + a
        c = max(c, a + 1)
        end = int(start[c - 1] + length[c - 1])
        if same is not None and same[a:c].all():
            # The input's records are already what the writer would write: copy them as they are.
            writer.write_records(view[base:end], c - a)
        else:
            chunk = np.frombuffer(bytearray(view[base:end]), dtype=np.uint8)
            offs = (start[a:c] - 16 - base)[:, None] + np.arange(16)
            chunk[offs] = heads[a:c]
            writer.write_records(chunk.data, c - a)
        a = c
