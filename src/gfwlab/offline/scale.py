"""Many captures at once on a Dask cluster: one task per capture, outputs as one process makes.

``analyze_many(captures, spec, out_dir=..., scheduler=...)`` analyses each capture as its own
task on a Dask cluster (an existing one at ``tcp://host:port``, or a local cluster of worker
processes) and writes, per capture, the same events and censored capture a single
``gfwlab analyze`` of that file writes: each task runs :func:`gfwlab.offline.analyze.analyze`
in a worker, with the profile rebuilt there from its spec (name, date, ``--set`` overrides) so
that nothing but plain data crosses the network. ``out_dir`` must be reachable from every
worker under the same path (a shared file system for a remote cluster).

Sharding rule. A capture is the unit of work: a capture is never split across workers.
Splitting one capture by flow hash keeps flows and their draws together (every draw is keyed
per flow), and would keep residual keys together if the hash were over the IP pair (5-tuple,
3-tuple and 2-tuple keys all hold both addresses) — but server-keyed residuals (``server``,
``server-ip``: FET's, the null route's) and dns_injection's shared pool cursors span flows of
many clients, so a split capture could not give the single-process answer whenever those
mechanisms are active (the full ``gfw`` profile). Splitting is therefore by file only; to
spread one huge capture, cut it into files by time first (e.g. ``editcap -i``), knowing that a
flow or a residual block crossing the cut is then seen as two.
"""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from gfwlab.offline.analyze import Summary, analyze, dated
from gfwlab.profiles import load_profile


@dataclass(frozen=True, slots=True)
class ProfileSpec:
    """A profile as the command line names it: rebuilt on each worker."""

    name: str
    date: dt.date | None
    sets: tuple[str, ...] = ()


def outputs_for(capture: str, out_dir: str) -> tuple[str, str]:
    """Where the events and the censored capture of ``capture`` go in ``out_dir``."""
    stem = Path(capture).name
    return os.path.join(out_dir, f"{stem}.events.jsonl"), os.path.join(out_dir, f"{stem}.out.pcap")


def analyze_one(capture: str, spec: ProfileSpec, seed: int, out_dir: str) -> Summary:
    """One task: what ``gfwlab analyze CAPTURE --events ... --out ...`` does."""
    profile = load_profile(spec.name, date=spec.date, overrides=list(spec.sets))
    source = "--date"
    if spec.date is None:
        profile, source = dated(capture, profile)
    events, out = outputs_for(capture, out_dir)
    return analyze(
        capture, profile, seed=seed, events_path=events, out_path=out, date_source=source
    )


def analyze_many(
    captures: list[str],
    spec: ProfileSpec,
    *,
    seed: int,
    out_dir: str,
    scheduler: str | None = None,
    workers: int = 2,
    progress: Callable[[int, int], None] | None = None,
) -> list[Summary]:
    """Analyse every capture as a Dask task; summaries in the order of ``captures``."""
    from distributed import Client, LocalCluster, as_completed  # noqa: PLC0415

    names = [Path(c).name for c in captures]
    if len(set(names)) != len(names):
        raise ValueError("two captures have the same file name: their outputs would collide")
    os.makedirs(out_dir, exist_ok=True)
    cluster = None
    if scheduler is None:
        cluster = LocalCluster(
            n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None
        )
        client = Client(cluster)
    else:
        client = Client(scheduler)
    try:
        futures = [
            client.submit(
                analyze_one, c, spec, seed, out_dir, key=f"analyze-{i}-{names[i]}", pure=False
            )
            for i, c in enumerate(captures)
        ]
        done = 0
        for _ in as_completed(futures):
            done += 1
            if progress is not None:
                progress(done, len(futures))
        results: list[Summary] = client.gather(futures)
    finally:
        client.close()
        if cluster is not None:
            cluster.close()
    return results
