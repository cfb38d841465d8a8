"""A probe run from start to output folder: sites served, URLs measured, verdicts graded.

:func:`probe_lab` is what ``gfwlab probe --lab`` and the demo (:func:`demo_probe`) call. The
order is the point: every verdict is made from observations first; only then are the censor's
events of the run read (from the byte offset ``events.jsonl`` had when the run started) and
each verdict graded against them. ``hide_events=True`` makes the events unreadable while the
verdicts are made (the file is renamed away and back), which a test uses to show the verdicts
do not depend on them.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from gfwlab.measure import grade as grading
from gfwlab.measure import ooni, probe, sites
from gfwlab.measure.lists import Entry, builtin_list


@dataclass
class ProbeRun:
    """What a run produced (also written to the output folder)."""

    results: list[probe.SiteResult]
    measurements: list[dict[str, Any]]
    events: list[dict[str, Any]]
    addresses: dict[str, str]
    run: dict[str, Any]
    grade: grading.Grade | None = None
    warnings: list[str] = field(default_factory=list)


def _events_path() -> str:
    from gfwlab.lab.state import state_dir  # noqa: PLC0415

    return os.path.join(state_dir(), "events.jsonl")


@contextlib.contextmanager
def _hidden(path: str, hide: bool) -> Iterator[None]:
    if not hide or not os.path.exists(path):
        yield
        return
    away = path + ".hidden-from-probe"
    os.rename(path, away)  # the censor keeps appending through its open descriptor
    try:
        yield
    finally:
        os.rename(away, path)


def _read_events(path: str, offset: int) -> list[dict[str, Any]]:
    out = []
    try:
        with open(path, encoding="utf-8") as fh:
            fh.seek(offset)
            for line in fh:
                with contextlib.suppress(json.JSONDecodeError):
                    out.append(json.loads(line))
    except OSError:
        return []
    return out


def lab_config() -> dict[str, Any]:
    from gfwlab.lab.state import LabState  # noqa: PLC0415

    return dict(LabState.load().config)


def probe_lab(
    entries: Sequence[Entry],
    *,
    out_dir: str | None = None,
    concurrency: int = 16,
    control_resolver: str | None = None,
    argv: Sequence[str] = (),
    progress: Callable[[int], None] | None = None,
    hide_events: bool = False,
    naive: bool = False,
    h3: bool = True,
) -> ProbeRun:
    """Probe ``entries`` through the running lab; grade; write ``out_dir`` if given."""
    started = time.time()
    hosts = list(dict.fromkeys(e.host for e in entries))
    addresses = sites.install(hosts)
    setup = probe.lab_setup(control_resolver)
    setup.h3 = h3
    events_file = _events_path()
    offset = os.path.getsize(events_file) if os.path.exists(events_file) else 0
    with _hidden(events_file, hide_events):
        results = probe.run(setup, entries, concurrency=concurrency, progress=progress)
        if naive:
            from gfwlab.measure.verdict import naive as naive_verdict  # noqa: PLC0415

            for r in results:
                r.verdict = naive_verdict(r.obs)
        report = ooni.report_id(started, 0)
        measurements = [ooni.measurement(r, report=report, test_start=started) for r in results]
    time.sleep(0.2)  # the censor writes an event as it acts; let the last ones land
    events = _read_events(events_file, offset)
    graded = grading.grade(measurements, events, addresses)
    cfg = lab_config()
    finished = time.time()
    info = ooni.run_info(
        started=started,
        finished=finished,
        profile=cfg.get("profile"),
        date=cfg.get("date"),
        seed=cfg.get("seed"),
        argv=argv,
    )
    run = ProbeRun(results, measurements, events, addresses, info, graded)
    if out_dir is not None:
        write(out_dir, run)
    return run


def write(out_dir: str, run: ProbeRun) -> None:
    """Publish a run's folder (see :mod:`gfwlab.measure.ooni` for the files)."""
    ooni.publish(
        out_dir,
        {
            "measurements.jsonl": ooni.jsonl(run.measurements),
            "events.jsonl": ooni.jsonl(run.events),
            "sites.json": json.dumps(run.addresses, indent=1, sort_keys=True) + "\n",
            "run.json": json.dumps(run.run, indent=2) + "\n",
        },
    )


DEMO_CODES = ("GMB", "PORN", "NEWS", "POLR", "HUMR", "ANON", "GRP")


def demo_probe(
    out_dir: str,
    *,
    per_category: int = 3,
    extra: Sequence[str] = (
        "https://www.facebook.com/",
        "http://www.wikipedia.org/",
        "https://twitter.com/",
    ),
    concurrency: int = 8,
) -> ProbeRun:
    """Probe a small part of the built-in list (and a few names the ``gfw`` profile blocks)
    through the lab that is up, writing ``out_dir``; for ``gfwlab demo``."""
    chosen: list[Entry] = []
    counts: dict[str, int] = {}
    for e in builtin_list().entries:
        if e.category_code in DEMO_CODES and counts.get(e.category_code, 0) < per_category:
            counts[e.category_code] = counts.get(e.category_code, 0) + 1
            chosen.append(e)
    chosen += [Entry(u, "GRP", "Social Networking", "", "gfwlab demo", "") for u in extra]
    return probe_lab(chosen, out_dir=out_dir, concurrency=concurrency, argv=["gfwlab", "demo"])
