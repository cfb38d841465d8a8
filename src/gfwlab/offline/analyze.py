"""The capture adapter: packets from a file through the censor, events and a censored capture out.

The adapter does the I/O the engine must not: it reads packets and their capture timestamps,
releases timers up to each packet's time (so forged packets land at the time the real GFW would
send them), and carries out each Action through one ``match`` that ends in ``assert_never``.
Outputs are written to temporary files and published only when the run completes.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import gc
import math
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, assert_never

from gfwlab._outfile import OutputFile, commit_together
from gfwlab.engine.actions import (
    Accept,
    Action,
    Bypass,
    Drop,
    Event,
    Inject,
    Probe,
    Report,
    rounded,
)
from gfwlab.engine.censor import Censor
from gfwlab.engine.verdicts import Stats
from gfwlab.offline import fast
from gfwlab.offline.chain import Chain
from gfwlab.offline.events import Recorder
from gfwlab.offline.index import (
    MAX_PACKETS,
    WINDOW,
    CaptureIndex,
    Indexes,
    Windowed,
    open_index,
)
from gfwlab.packet.pcap import CaptureReader, PcapWriter
from gfwlab.profiles import Profile, build_censor


@dataclass(slots=True)
class FlowVerdict:
    """One row of the summary: what the censor did to one flow."""

    flow: dict[str, Any]
    direction: str
    mechanism: str
    action: str
    rule: str
    first_ts: float
    events: int = 1
    residual_until: float | None = None


@dataclass(slots=True)
class Summary:
    """What an analysis found."""

    capture: str
    profile: str
    date: str | None
    seed: int
    date_source: str = "--date"
    """Why this day: ``--date``, ``capture`` (its first packet's day) or ``reference`` (the
    profile's reference date, for a capture dated before every mechanism)."""
    packets: int = 0
    start_ts: float | None = None
    """Timestamp of the first packet."""
    skipped: int = 0
    truncated_at: int | None = None
    flows: int = 0
    dropped: int = 0
    injected: int = 0
    anomalies: int = 0
    bypassed_pkts: int = 0
    flows_evicted: int = 0
    """Flows forgotten because the flow table was full (``engine.max_flows``)."""
    engine_packets: int = 0
    """Packets fed to the engine one by one (the fast path accounts for the rest in bulk)."""
    parts: int = 1
    """How many parts the capture was split into, each on its own engine (``--shards``)."""
    warnings: list[str] = field(default_factory=list)
    events: dict[str, int] = field(default_factory=dict)
    verdicts: list[FlowVerdict] = field(default_factory=list)
    anomaly_kinds: dict[str, int] = field(default_factory=dict)
    outputs: dict[str, str] = field(default_factory=dict)

    @classmethod
    def of(cls, capture: str, profile: Profile, seed: int) -> Summary:
        """An empty summary of ``capture`` analysed with ``profile`` and ``seed``."""
        date = profile.date.isoformat() if profile.date else None
        return cls(capture=capture, profile=profile.name, date=date, seed=seed)

    def name_outputs(self, events_path: str | None, out_path: str | None) -> None:
        """Say where the published outputs are."""
        if events_path is not None:
            self.outputs["events"] = events_path
        if out_path is not None:
            self.outputs["censored_capture"] = out_path

    def as_dict(self) -> dict[str, Any]:
        return {
            "capture": self.capture,
            "profile": self.profile,
            "date": self.date,
            "date_source": self.date_source,
            "seed": self.seed,
            "packets": self.packets,
            "start_ts": self.start_ts,
            "skipped_frames": self.skipped,
            "truncated_at": self.truncated_at,
            "flows": self.flows,
            "dropped": self.dropped,
            "injected": self.injected,
            "anomalies": self.anomalies,
            "anomaly_kinds": self.anomaly_kinds,
            "bypassed_packets": self.bypassed_pkts,
            "flows_evicted": self.flows_evicted,
            "engine_packets": self.engine_packets,
            "parts": self.parts,
            "warnings": self.warnings,
            "events": self.events,
            "verdicts": [
                {
                    "flow": v.flow,
                    "direction": v.direction,
                    "mechanism": v.mechanism,
                    "action": v.action,
                    "rule": v.rule,
                    "first_ts": rounded(v.first_ts, 6),
                    "events": v.events,
                    "residual_until": v.residual_until,
                }
                for v in self.verdicts
            ],
            "outputs": self.outputs,
        }


def dated(capture: str, profile: Profile) -> tuple[Profile, str]:
    """``profile`` set to the day a capture analysed without ``--date`` emulates, and why.

    The day of the capture's first packet (UTC), so that the same capture, profile and seed give
    the same verdicts on any day they are analysed. A capture dated before every mechanism of the
    profile (a synthetic capture at time 0) is analysed as of the profile's ``reference_date``.
    An empty capture, or a profile without a reference date, keeps the profile as it is.
    """
    reader = CaptureReader(capture)
    try:
        first = next(iter(reader), None)
    finally:
        reader.close()
    if first is None:
        return profile, "capture"
    day = dt.datetime.fromtimestamp(max(first[0], 0.0), dt.UTC).date()
    earliest = profile.earliest_start()
    if earliest is not None and day < earliest and profile.reference_date is not None:
        return dataclasses.replace(profile, date=profile.reference_date), "reference"
    return dataclasses.replace(profile, date=day), "capture"


def at_moment(capture: str, profile: Profile, moment: dt.datetime) -> Profile:
    """``profile`` set so the capture's first packet happens at the UTC ``moment`` (``--at``):
    the capture's clock is shifted by a fixed offset (the engine's ``epoch_offset_s``) and the
    emulated day is the moment's. The packets' own timestamps, and the output capture's, are
    left as they were."""
    reader = CaptureReader(capture)
    try:
        first = next(iter(reader), None)
    finally:
        reader.close()
    start = first[0] if first is not None else 0.0
    offset = moment.timestamp() - start
    return dataclasses.replace(profile, date=moment.date(), epoch_offset_s=offset)


class Backwards(Exception):
    """A window of the capture goes back in time (:func:`in_time_order`)."""


class _NoGain(Exception):
    """Most packets of a capture's first window reached the engine: the every-packet path costs
    less than the fast path's index (time and memory) for such a capture."""


NO_GAIN = 0.5
"""The share of a first window's packets fed to the engine from which the rest of the capture
goes through the every-packet path instead (a flood of spoofed SYNs: every packet a new flow)."""


@contextmanager
def collector_off() -> Iterator[None]:
    """Run the enclosed analysis with the cyclic collector off; as it was again afterwards.

    An analysis holds hundreds of thousands of long-lived objects (flows, their connection
    state, per-flow streams, pending injections), and the collector traverses each of them
    twice, once in the young generation and once in the middle one, to find nothing: the
    engine makes no reference cycles per packet or flow, and the fast path none per window
    (``tests/test_fastpath.py`` runs captures with blocks, residual blocks, probes and
    malformed packets through the engine, expires every flow and finds no garbage; and counts
    what a window or an abandoned first window leaves behind). Everything an analysis made is
    freed as it goes, by reference counts. Counted with ``gc.callbacks`` on the flow-heavy
    capture, those traversals took 0.49 of 10.8 s with the built-in lists and 0.76 of 13.3 s
    with the 2024 lists, and peak memory is the same without them (``benchmarks/README.md``)."""
    was_on = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_on:
            gc.enable()


@collector_off()
def analyze(
    capture: str,
    profile: Profile | list[Profile],
    *,
    seed: int = 0,
    events_path: str | None = None,
    out_path: str | None = None,
    progress: Callable[[int, int], None] | None = None,
    on_event: Callable[[Event], None] | None = None,
    date_source: str = "--date",
    exact: bool = False,
    max_index: int = MAX_PACKETS,
    no_gain: float = NO_GAIN,
) -> Summary:
    """Run ``capture`` through a censor built from ``profile`` (several: censors in series, in
    path order from the client, see :mod:`.chain`); write the requested outputs.

    By default only the packets that can change a verdict reach the engine (:mod:`.fast`);
    ``exact`` feeds every packet (the reference the fast path is tested against). A capture
    of more than ``max_index`` records (classic pcap) or IP packets (pcapng) is indexed and
    analysed a window of ``max_index`` of them (at most :data:`~.index.WINDOW`) at a time with
    the same censor (the index grows with what it holds; flows go on from one window to the
    next), unless at least ``no_gain`` of the first window's packets reached the engine anyway
    (:data:`NO_GAIN`; above 1: never): the rest then goes through the every-packet path, whose
    memory is bounded by the flow table. A capture
    whose timestamps go backwards is analysed in file order by the every-packet path, with a
    warning. Raises AdapterError for an unreadable capture or an unwritable output, before any
    output is published. A truncated capture is analysed as far as it goes;
    ``Summary.truncated_at`` says where it ended.
    """
    warnings: list[str] = []
    index: CaptureIndex | None = None
    windowed: Windowed | None = None
    first, per = window_sizes(max_index)
    if not exact and not isinstance(profile, list):  # censors in series: every packet
        opened = open_index(capture, max_index, first, per)
        if isinstance(opened, Windowed):
            windowed = opened
        else:
            index = opened
        if index is not None and not index.in_order:
            back = int((index.ts[1:] < index.ts[:-1]).sum())
            warnings.append(
                f"{capture}: {back} records are earlier than the record before them; "
                "analysed in file order, every packet through the engine"
            )
            index.close()
            index = None
    if index is not None:
        reader = index.reader
    else:
        reader = windowed.reader if windowed is not None else CaptureReader(capture)
    try:
        summary: Summary | None = None
        if windowed is not None and not isinstance(profile, list):
            try:
                with published(events_path, out_path) as (events_out, pcap_out):
                    windows = in_time_order(windowed.indexes)
                    summary = _run_fast(
                        capture, windows, profile, seed, events_out, pcap_out, progress, on_event,
                        give_up=no_gain,
                    )  # fmt: skip
            except (Backwards, _NoGain) as exc:
                if isinstance(exc, Backwards):
                    why = "a record is earlier than the record before it; analysed in file order"
                    after = ""
                else:
                    why = (
                        f"more than {max_index:,} packets, and most of the first {first:,} "
                        "reached the engine (new flows, as in a flood); analysed streaming"
                    )
                    after = " (bounded memory)"
                warnings.append(f"{capture}: {why}, every packet through the engine{after}")
                reader.close()
                reader = CaptureReader(capture)
        if summary is None:
            with published(events_path, out_path) as (events_out, pcap_out):
                if index is not None and not isinstance(profile, list):
                    whole = iter([(index, True)])
                    summary = _run_fast(
                        capture, whole, profile, seed, events_out, pcap_out, progress, on_event
                    )
                else:
                    summary = _run(reader, profile, seed, events_out, pcap_out, progress, on_event)
        summary.date_source = date_source
        summary.warnings = warnings
    finally:
        reader.close()
    summary.name_outputs(events_path, out_path)
    return summary


def window_sizes(max_index: int) -> tuple[int, int]:
    """The first window's size, then every other one's, for a capture of more than
    ``max_index`` packets. The first is a sample (a tenth) that :data:`NO_GAIN` is judged on:
    cheap in memory if the rest streams."""
    per = min(max_index, WINDOW)
    return max(per // 10, 1), per


@contextmanager
def published(
    events_path: str | None, out_path: str | None
) -> Iterator[tuple[OutputFile | None, PcapWriter | None]]:
    """The requested outputs (events, censored capture), published when the block completes,
    and not at all if it raises (or is interrupted)."""
    events_out: OutputFile | None = None
    pcap_out: PcapWriter | None = None
    try:
        if events_path is not None:
            # One JSON line an event, written as UTF-8 bytes straight to the file's buffer.
            events_out = OutputFile(events_path)
        if out_path is not None:
            pcap_out = PcapWriter(out_path)
        yield events_out, pcap_out
    except BaseException:
        if events_out is not None:
            events_out.abort()
        if pcap_out is not None:
            pcap_out.abort()
        raise
    outputs: list[OutputFile] = []
    if events_out is not None:
        outputs.append(events_out)
    if pcap_out is not None:
        outputs.append(pcap_out.output)
    commit_together(outputs)


def in_time_order(indexes: Indexes) -> Indexes:
    """``indexes``, checked: raises Backwards where timestamps go backwards. The first window
    is the sample :data:`NO_GAIN` is judged on."""
    before = -math.inf
    for index, last in indexes:
        if not index.in_order or (len(index) and float(index.ts[0]) < before):
            raise Backwards
        if len(index):
            before = float(index.ts[-1])
        yield index, last


def _run_fast(
    capture: str,
    windows: Iterator[tuple[CaptureIndex, bool]],
    profile: Profile,
    seed: int,
    events_out: OutputFile | None,
    pcap_out: PcapWriter | None,
    progress: Callable[[int, int], None] | None,
    on_event: Callable[[Event], None] | None,
    *,
    give_up: float | None = None,
) -> Summary:
    """The fast path over the capture's index, given whole or a window at a time (``windows``:
    each index with whether it is the last). ``give_up``: raise _NoGain after a first window
    (not the last) of which at least this share of the packets reached the engine."""
    censor = build_censor(profile, seed, runs_probes=False)
    summary = Summary.of(capture, profile, seed)
    rows: dict[tuple[Any, ...], FlowVerdict] = {}
    write_event = events_out.fh.write if events_out is not None else None
    report = Recorder(rows, summary.anomaly_kinds, write_event, on_event, FlowVerdict)
    keep = pcap_out is not None
    for index, ends in windows:
        plan = fast.run(index, censor, report, keep=keep, progress=progress, ends_capture=ends)
        if pcap_out is not None:
            fast.write(index, plan, pcap_out)
        if len(index) and summary.start_ts is None:
            summary.start_ts = float(index.ts[0])
        if give_up is not None and not ends and plan.fed >= give_up * len(index):
            raise _NoGain
        give_up = None
        summary.engine_packets += plan.fed
        summary.skipped += index.skipped
        if ends:
            summary.truncated_at = index.truncated_at
            if progress is not None:
                progress(index.size, index.size)
    fill_summary(summary, censor.stats, rows)
    censors = censor.censors if isinstance(censor, Chain) else [("", censor)]
    summary.flows_evicted = sum(c.flows.evicted for _, c in censors)
    return summary


def _run(
    reader: CaptureReader,
    profile: Profile | list[Profile],
    seed: int,
    events_out: OutputFile | None,
    pcap_out: PcapWriter | None,
    progress: Callable[[int, int], None] | None,
    on_event: Callable[[Event], None] | None,
) -> Summary:
    profiles = profile if isinstance(profile, list) else [profile]
    profile = profiles[0]
    censor: Censor | Chain = build_censor(profile, seed, runs_probes=False)
    if len(profiles) > 1:
        censor = Chain([(p.name, build_censor(p, seed, runs_probes=False)) for p in profiles])
    summary = Summary(
        capture=reader.path,
        profile="+".join(p.name for p in profiles),
        date=profile.date.isoformat() if profile.date else None,
        seed=seed,
    )
    rows: dict[tuple[Any, ...], FlowVerdict] = {}
    write_event = events_out.fh.write if events_out is not None else None
    record = Recorder(rows, summary.anomaly_kinds, write_event, on_event, FlowVerdict)
    write_pkt = pcap_out.write if pcap_out is not None else None

    def carry_out(actions: Iterable[Action], ts: float, packet: bytes | None) -> None:
        for action in actions:
            match action:
                case Accept():
                    if write_pkt is not None and packet is not None:
                        write_pkt(ts, packet)
                case Drop():
                    pass
                case Inject():
                    if write_pkt is not None:
                        write_pkt(action.at, action.packet)
                case Report():
                    record(action.event)
                case Probe():
                    pass  # offline there is no server to probe: the event says when it would be
                case Bypass():
                    pass
                case _:
                    assert_never(action)

    count = 0
    for ts, packet in reader:
        if not count:
            summary.start_ts = ts
        deadline = censor.next_deadline()
        while deadline is not None and deadline <= ts:
            carry_out(censor.on_timer(deadline), deadline, None)
            deadline = censor.next_deadline()
        carry_out(censor.feed(packet, ts), ts, packet)
        count += 1
        if progress is not None and not count & 0x3FFF:
            progress(reader.bytes_read, reader.size)
    carry_out(censor.flush(), 0.0, None)
    if progress is not None:
        progress(reader.size, reader.size)
    fill_summary(summary, censor.stats, rows)
    censors = censor.censors if isinstance(censor, Chain) else [("", censor)]
    summary.flows_evicted = sum(c.flows.evicted for _, c in censors)
    summary.engine_packets = censor.stats.packets
    summary.skipped = reader.skipped
    summary.truncated_at = reader.truncated_at if reader.truncated else None
    return summary


def fill_summary(summary: Summary, st: Stats, rows: dict[tuple[Any, ...], FlowVerdict]) -> None:
    """The summary's counters from the engine's, and its rows of verdicts by first time."""
    summary.packets = st.packets
    summary.flows = st.flows
    summary.dropped = st.dropped
    summary.injected = st.injected
    summary.anomalies = st.anomalies
    summary.bypassed_pkts = st.bypassed_pkts
    summary.events = dict(sorted(st.events.items()))
    summary.verdicts = sorted(rows.values(), key=lambda v: v.first_ts)
