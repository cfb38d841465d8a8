"""The ``gfwlab`` command.

Exit codes: 0 success, 2 usage or input error (one line on stderr naming what was wrong),
1 anything else, 130 interrupted. Outputs are published only when a run completes.
"""

# No ``from __future__ import annotations`` in the command modules: typer reads every
# command's signature at each start, and a string annotation costs it a compile and an
# eval (about 13 ms a command line, measured).

import gc
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Annotated, Any

import typer

from gfwlab import __version__
from gfwlab._ctrlc import keep as keep_ctrl_c
from gfwlab._ctrlc import settled as ctrl_c_settled
from gfwlab._json import json_text
from gfwlab.errors import GfwlabError
from gfwlab.evade.commands import evade_app
from gfwlab.lab.commands import lab_app
from gfwlab.measure import commands as measure_commands
from gfwlab.options import (
    AtOpt,
    DateOpt,
    InputError,
    NetworkOpt,
    ProfileOpt,
    ProfilesOpt,
    ResultsOpt,
    SeedOpt,
    SetOpt,
    console,
    err,
    profile_from,
    profiles_from,
    progress_bar,
)
from gfwlab.report.commands import report
from gfwlab.results.commands import results
from gfwlab.tools.commands import tools_app

if TYPE_CHECKING:
    from gfwlab.offline.analyze import Summary
    from gfwlab.profiles import Profile

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="The Great Firewall of China, rebuilt for the lab.",
    pretty_exceptions_enable=False,
)


@app.callback()
def start() -> None:
    """Before any command: the cyclic collector on (``gfwlab.__main__`` pauses it while the
    command line loads)."""
    gc.enable()


@app.command()
def analyze(
    captures: Annotated[
        list[str],
        typer.Argument(
            help="A pcap or pcapng capture (several: one Dask task each).", metavar="CAPTURE..."
        ),
    ],
    profile: ProfilesOpt = None,
    date: DateOpt = None,
    at: AtOpt = None,
    network: NetworkOpt = "national",
    sets: SetOpt = None,
    seed: SeedOpt = 0,
    events: Annotated[
        str | None, typer.Option("--events", help="Write events as JSON lines to this file.")
    ] = None,
    out: Annotated[
        str | None, typer.Option("--out", help="Write the censored capture (pcap) to this file.")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print a JSON summary instead.")] = False,
    exact: Annotated[
        bool,
        typer.Option(
            "--exact",
            help="Feed every packet to the engine (slower; the reference the default fast path "
            "is tested against: same events and censored capture).",
        ),
    ] = False,
    out_dir: Annotated[
        str | None,
        typer.Option(
            "--out-dir",
            help="Several captures: write CAPTURE.events.jsonl and CAPTURE.out.pcap here.",
        ),
    ] = None,
    scheduler: Annotated[
        str | None,
        typer.Option(
            "--scheduler", help="A Dask scheduler (tcp://host:8786); else a local cluster."
        ),
    ] = None,
    workers: Annotated[
        int, typer.Option("--workers", help="Worker processes of the local Dask cluster.")
    ] = 2,
    shards: Annotated[
        int,
        typer.Option(
            "--shards",
            help="Split the capture into this many parts by server address and analyse them in "
            "parallel on a Dask cluster (--workers, --scheduler): the same outputs as one process.",
        ),
    ] = 1,
    results_dir: ResultsOpt = None,
) -> None:
    """What the Great Firewall would have done to a capture, and why."""
    from gfwlab.offline import analyze as run  # noqa: PLC0415
    from gfwlab.offline.analyze import at_moment, dated  # noqa: PLC0415
    from gfwlab.profiles import parse_moment  # noqa: PLC0415

    if shards < 1 or workers < 1:
        raise InputError("--shards and --workers must be at least 1")
    if shards > 1 and (len(captures) > 1 or out_dir is not None):
        raise InputError("--shards splits one capture (no --out-dir)")
    if shards > 1 and (exact or at is not None or network != "national" or len(profile or []) > 1):
        raise InputError("--shards takes one --profile and no --exact, --at or --network")
    if len(captures) > 1 or (scheduler is not None and shards == 1) or out_dir is not None:
        if results_dir is not None:
            raise InputError("--results takes one capture (no --out-dir or --scheduler)")
        names = profile or ["gfw"]
        if len(names) > 1 or at is not None or network != "national":
            raise InputError(
                "several captures (or --scheduler) take one --profile and no --at or --network"
            )
        _analyze_many(captures, names[0], date, sets, seed, out_dir, scheduler, workers, as_json)
        return
    capture = captures[0]
    if at is not None and date is not None:
        raise InputError("--at and --date: give one (--at sets the day too)")
    moment = parse_moment(at) if at is not None else None
    day = moment.date().isoformat() if moment is not None else date
    profs = profiles_from(profile, day, sets, today=False, network=network)
    source = "--date"
    if moment is not None:
        profs, source = [at_moment(capture, p, moment) for p in profs], "--at"
    elif date is None:
        dated_all = [dated(capture, p) for p in profs]
        profs, source = [p for p, _ in dated_all], dated_all[0][1]
    from gfwlab.results.folder import now  # noqa: PLC0415

    # The profiles (lists of up to a million names) and the modules live as long as the
    # process: out of the cyclic collector's sight, its full passes walk only what the analysis
    # makes (measured with the real 2024 lists: 5% faster on a 300,000-packet capture, no
    # difference on a 1.3M-packet one).
    gc.freeze()
    started = now()
    if results_dir is not None:
        os.makedirs(results_dir, exist_ok=True)
        events = events or os.path.join(results_dir, "events.jsonl")
        out = out or os.path.join(results_dir, "censored.pcap")
    with _bytes_bar(not as_json and err.is_terminal) as progress:
        if shards > 1:
            summary = _analyze_split(
                capture, (profile or ["gfw"])[0], profs[0], sets, seed, events, out, shards,
                scheduler, workers, source, progress,
            )  # fmt: skip
        else:
            summary = run(
                capture,
                profs if len(profs) > 1 else profs[0],
                seed=seed,
                events_path=events,
                out_path=out,
                progress=progress,
                date_source=source,
                exact=exact,
            )
    for warning in summary.warnings:
        err.print(f"[yellow]warning:[/] {warning}", highlight=False)
    if results_dir is not None and events is not None:
        from gfwlab.results.ingest import save_events  # noqa: PLC0415

        save_events(
            results_dir,
            events,
            "analyze",
            started=started,
            profile=summary.profile.split("+") if summary.profile else [],
            date=summary.date,
            seed=summary.seed,
            capture=summary.capture,
        )
    if as_json:
        print(json_text(summary.as_dict()))
    else:
        _print_summary(summary)
        if results_dir is not None:
            console.print(f"results: {results_dir} (gfwlab results / gfwlab report)")
    if summary.truncated_at is not None:
        raise InputError(
            f"{capture}: capture truncated at byte {summary.truncated_at}; analysed the "
            f"{summary.packets} packets before it (outputs cover those)"
        )


@contextmanager
def _bytes_bar(show: bool) -> Iterator[Callable[[int, int], None] | None]:
    """A progress bar over a capture's bytes: the callback that moves it, or None when it is not
    shown (``--json``, not a terminal), and then rich's bars are not even loaded."""
    if not show:
        yield None
        return
    with progress_bar("analysing", "bytes") as bar:
        task = bar.add_task("analyse", total=None)

        def progress(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        yield progress


def _analyze_split(
    capture: str,
    name: str,
    prof: "Profile",
    sets: list[str] | None,
    seed: int,
    events: str | None,
    out: str | None,
    shards: int,
    scheduler: str | None,
    workers: int,
    source: str,
    progress: Callable[[int, int], None] | None,
) -> "Summary":
    """One capture split into ``shards`` parts on a Dask cluster (see gfwlab.offline.shard)."""
    from gfwlab.offline.scale import ProfileSpec, starting  # noqa: PLC0415
    from gfwlab.offline.shard_windows import analyze_sharded  # noqa: PLC0415

    spec = ProfileSpec(name, prof.date, tuple(sets or ()))
    spec.keep(prof)  # before the local cluster's workers are forked
    with starting(scheduler, workers) as (runner, windows_runner):
        return analyze_sharded(
            capture, prof, parts=shards, seed=seed, events_path=events, out_path=out,
            runner=runner, windows_runner=windows_runner, rebuild=spec.build,
            progress=progress, date_source=source,
        )  # fmt: skip


def _analyze_many(
    captures: list[str],
    profile: str,
    date: str | None,
    sets: list[str] | None,
    seed: int,
    out_dir: str | None,
    scheduler: str | None,
    workers: int,
    as_json: bool,
) -> None:
    """Several captures (or a cluster): one Dask task per capture (see gfwlab.offline.scale)."""
    from gfwlab.offline.scale import ProfileSpec, analyze_many  # noqa: PLC0415
    from gfwlab.profiles import parse_date  # noqa: PLC0415

    if out_dir is None:
        raise InputError("several captures (or --scheduler) need --out-dir for their outputs")
    loaded = profile_from(profile, date, sets, today=False)  # bad options fail here, first
    spec = ProfileSpec(profile, parse_date(date) if date else None, tuple(sets or ()))
    spec.keep(loaded)  # before the local cluster's workers are forked
    with progress_bar("analysing", "{task.completed}/{task.total} captures", quiet=as_json) as bar:
        task = bar.add_task("analyse", total=len(captures))
        summaries = analyze_many(
            captures,
            spec,
            seed=seed,
            out_dir=out_dir,
            scheduler=scheduler,
            workers=workers,
            progress=lambda done, _total: bar.update(task, completed=done),
        )
    if as_json:
        print(json_text([s.as_dict() for s in summaries]))
        return
    for summary in summaries:
        console.print(f"[bold]{summary.capture}[/]")
        _print_summary(summary)


_DATE_NOTES = {
    "capture": " (the capture's date)",
    "--at": " (--at: the capture's clock shifted to that moment)",
    "reference": " (the profile's reference date: the capture is dated before every mechanism)",
}


def _print_summary(summary: Any) -> None:
    from rich.table import Table  # noqa: PLC0415

    table = Table(
        title=f"What the GFW did ({summary.profile}, {summary.date or 'any date'}"
        f"{_DATE_NOTES.get(summary.date_source, '')}, seed {summary.seed})",
        title_justify="left",
    )
    table.add_column("t (s)", justify="right", no_wrap=True)
    table.add_column("flow", overflow="fold")
    table.add_column("dir", no_wrap=True)
    table.add_column("mechanism", no_wrap=True)
    table.add_column("action", no_wrap=True)
    table.add_column("rule", overflow="fold")
    table.add_column("residual", justify="right", no_wrap=True)
    limit = 60
    start = summary.start_ts or 0.0
    for v in summary.verdicts[:limit]:
        f = v.flow
        src = f"[{f['src']}]" if ":" in f["src"] else f["src"]
        dst = f"[{f['dst']}]" if ":" in f["dst"] else f["dst"]
        table.add_row(
            f"{v.first_ts - start:.3f}",
            f"{f['proto']} {src}:{f['sport']} → {dst}:{f['dport']}",
            "in→out" if v.direction == "inside-out" else "out→in",
            v.mechanism,
            _styled(v.action),
            v.rule,
            "" if v.residual_until is None else f"{v.residual_until - v.first_ts:.0f} s",
        )
    if summary.verdicts:
        console.print(table)
        if len(summary.verdicts) > limit:
            console.print(
                f"… and {len(summary.verdicts) - limit} more flows (see --events or --json)"
            )
    else:
        console.print("The GFW would not have acted on any flow in this capture.")
    console.print(
        f"{summary.packets} packets, {summary.flows} flows: {len(summary.verdicts)} acted on, "
        f"{summary.dropped} packets dropped, {summary.injected} forged packets, "
        f"{summary.anomalies} anomalies"
        + (
            f" ({', '.join(f'{k} ×{n}' for k, n in sorted(summary.anomaly_kinds.items()))})"
            if summary.anomaly_kinds
            else ""
        )
        + (
            f"; {summary.flows_evicted} flows evicted from the full flow table (engine.max_flows)"
            if summary.flows_evicted
            else ""
        )
    )
    if summary.parts > 1:
        console.print(f"Analysed in {summary.parts} parts, split by server address (--shards).")
    passes = {k: n for k, n in summary.events.items() if k.endswith("/pass")}
    if passes:
        console.print(
            "Matched but spared by a probability draw: "
            + ", ".join(f"{k.split('/')[0]} ×{n}" for k, n in passes.items())
        )
    for kind, path in summary.outputs.items():
        console.print(f"{kind.replace('_', ' ')}: {path}")


def _styled(action: str) -> str:
    colour = {"rst": "red", "drop": "magenta", "dns-inject": "yellow", "null-route": "magenta"}
    return f"[{colour.get(action, 'white')}]{action}[/]"


@app.command()
def synth(
    out: Annotated[str, typer.Argument(help="The pcap file to write.")],
    flows: Annotated[
        int | None, typer.Option("--flows", help="Conversations to start (all written whole).")
    ] = None,
    packets: Annotated[
        int | None, typer.Option("--packets", help="Or: stop after this many packets.")
    ] = None,
    seed: SeedOpt = 1,
    mix: Annotated[
        str,
        typer.Option(
            "--mix",
            help="realistic (25-40 packets per flow), flow-heavy (~130k flows per million "
            "packets), syn-flood (N spoofed SYNs) or concurrent (N flows held at once).",
        ),
    ] = "realistic",
    lists: Annotated[
        str | None,
        typer.Option("--lists", help="Directory of the gfw-2024-*.txt name lists (else built-in)."),
    ] = None,
    pps: Annotated[float, typer.Option("--pps", help="Mean packets per second.")] = 8000.0,
) -> None:
    """Write a deterministic synthetic capture: DNS, HTTP, TLS, QUIC, random TCP and bulk."""
    from pathlib import Path  # noqa: PLC0415

    from gfwlab.offline.synth import FLOODS, MIXES, generate, load_names  # noqa: PLC0415

    if (flows is None) == (packets is None):
        raise InputError("give --flows N or --packets N")
    if (flows or packets or 0) < 1:
        raise InputError("--flows/--packets must be at least 1")
    if mix not in MIXES and mix not in FLOODS:
        raise InputError(f"unknown --mix {mix!r}; one of: {', '.join([*MIXES, *FLOODS])}")
    try:
        names = load_names(Path(lists) if lists else None)
    except OSError as exc:
        raise InputError(f"{lists}: cannot read the name lists ({exc.strerror or exc})") from None
    with progress_bar("writing", "{task.completed} packets", clock="none") as bar:
        task = bar.add_task("synth", total=packets)
        info = generate(
            out,
            flows=flows,
            packets=packets,
            seed=seed,
            mix=mix,
            names=names,
            pps=pps,
            progress=lambda n: bar.update(task, completed=n),
        )
    print(json.dumps(info, indent=2))


@app.command()
def mechanisms(
    profile: ProfileOpt = "gfw",
    date: DateOpt = None,
    network: NetworkOpt = "national",
    sets: SetOpt = None,
    timeline: Annotated[
        str | None,
        typer.Option("--timeline", help="Draw every mechanism's active window to this SVG/PNG."),
    ] = None,
) -> None:
    """The profile's mechanisms: active dates, whether they run on --date, and their sources."""
    from rich.table import Table  # noqa: PLC0415

    prof = profile_from(profile, date, sets, network=network)
    if timeline is not None:
        from gfwlab.profiles.timeline import write  # noqa: PLC0415 - matplotlib is slow to load

        drawn = write(prof, timeline, network)
        console.print(f"{timeline}: {len(drawn)} windows")
        return
    from gfwlab.mechanisms import registry  # noqa: PLC0415

    known = registry()
    active = prof.active()
    table = Table(title=f"Mechanisms of profile {prof.name} on {prof.date}", title_justify="left")
    for col in ("mechanism", "runs", "active", "direction", "source"):
        table.add_column(col, overflow="fold")
    for name, params in prof.mechanisms.items():
        runs = "[green]yes[/]" if name in active else "[dim]no[/]"
        table.add_row(name, runs, str(params.active), params.direction, known[name].citation)
    console.print(table)


@app.command()
def demo(
    directory: Annotated[
        str | None,
        typer.Option("--dir", help="Keep the demo's files (events, results, HTML report) here."),
    ] = None,
    seed: SeedOpt = 1,
    offline: Annotated[
        bool, typer.Option("--offline", help="The offline tour even where the lab can run.")
    ] = False,
) -> None:
    """A tour: real clients through the emulated GFW in the lab, or, without root, a capture;
    ends with an HTML report of what happened."""
    from gfwlab.demo import can_run_live  # noqa: PLC0415

    why = "--offline" if offline else can_run_live()
    if why is None:
        _demo_live(directory, seed)
    else:
        console.print(f"[dim]live lab not available ({why}): the offline tour[/]")
        _demo_offline(directory, seed)


@contextmanager
def _demo_folder(directory: str | None) -> Iterator[str]:
    """The demo's folder (``--dir``, else a temporary one). A failed or interrupted demo leaves
    nothing of its own there: the folder goes if this run made it, else the files it added."""
    made = directory is None or not os.path.exists(directory)
    folder = directory or tempfile.mkdtemp(prefix="gfwlab-demo-")
    os.makedirs(folder, exist_ok=True)
    before = set(os.listdir(folder))
    try:
        yield folder
    except BaseException:
        if made:
            shutil.rmtree(folder, ignore_errors=True)
        else:
            for name in set(os.listdir(folder)) - before:
                path = os.path.join(folder, name)
                if os.path.isdir(path) and not os.path.islink(path):
                    shutil.rmtree(path, ignore_errors=True)
                elif os.path.lexists(path):
                    os.unlink(path)
        raise


def _demo_live(directory: str | None, seed: int) -> None:
    from rich.table import Table  # noqa: PLC0415

    from gfwlab.demo import run_live, save_results  # noqa: PLC0415
    from gfwlab.results.folder import now  # noqa: PLC0415

    started = now()
    console.rule("[bold]gfwlab demo[/]: real clients through the emulated GFW (2024-06-01)")
    table = Table(title_justify="left")
    for col in ("client in the lab", "the real GFW", "here", "detail"):
        table.add_column(col, overflow="fold")

    def report(what: str, expect: str, outcome: str, detail: str) -> None:
        colour = "green" if outcome in ("ok", "real answer") else "red"
        console.print(f"  {what}: [{colour}]{outcome}[/]")
        table.add_row(what, expect, f"[{colour}]{outcome}[/]", detail)

    with _demo_folder(directory) as folder:
        with err.status("making the lab, then probing a small list through it…"):
            events = run_live(report, seed=seed, probe_into=folder)
        console.print(table)
        ev = Table(title="What the censor did (lab events)", title_justify="left")
        for col in ("mechanism", "action", "rule", "flow", "detail"):
            ev.add_column(col, overflow="fold")
        for e in events:
            f = e["flow"]
            assert isinstance(f, dict)
            extra = e.get("injector") or e.get("qname") or ""
            ev.add_row(
                str(e["mechanism"]),
                _styled(str(e["action"])),
                str(e["rule"]),
                f"{f['proto']} {f['src']}:{f['sport']} → {f['dst']}:{f['dport']}",
                str(extra),
            )
        console.print(ev)
        console.print(
            "The lab is down again. Make your own: gfwlab lab up; gfwlab lab exec client -- …"
        )
        _print_demo_probe(os.path.join(folder, "measurements.jsonl"))
        with err.status("writing the report…"):
            page = save_results(folder, "probe", started=started, seed=seed, events=events)
        console.print(f"report: {page}", highlight=False)


def _print_demo_probe(path: str) -> None:
    """The demo probe's verdicts, one row per site (OONI's terms, then gfwlab's attribution)."""
    from rich.table import Table  # noqa: PLC0415

    table = Table(title="gfwlab probe through the lab (OONI terms)", title_justify="left")
    for col in ("site", "blocking", "mechanism", "graded against the censor"):
        table.add_column(col, overflow="fold")
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            m = json.loads(line)
            keys, own = m["test_keys"], m["test_keys"]["x_gfwlab"]
            right = {True: "[green]right[/]", False: "[red]wrong[/]"}.get(own["correct"], "-")
            table.add_row(m["input"], str(keys["blocking"]), own["mechanism"] or "", right)
    console.print(table)


def _demo_offline(directory: str | None, seed: int) -> None:
    from gfwlab.demo import save_results  # noqa: PLC0415
    from gfwlab.offline import analyze as run  # noqa: PLC0415
    from gfwlab.offline.synth import demo_traffic, merge  # noqa: PLC0415
    from gfwlab.packet.pcap import PcapWriter  # noqa: PLC0415
    from gfwlab.results.folder import now  # noqa: PLC0415

    started = now()
    prof = profile_from("gfw", "2024-06-01", [])
    keep = directory is not None
    with _demo_folder(directory) as workdir:
        capture = os.path.join(workdir, "demo.pcap")
        console.rule("[bold]gfwlab demo[/]: the Great Firewall as measured, on synthetic traffic")
        scenarios = list(demo_traffic())
        for i, (what, _pkts) in enumerate(scenarios, 1):
            console.print(f"  {i}. {what}")
        with PcapWriter(capture) as writer:
            for ts, pkt in merge(*(p for _w, p in scenarios)):
                writer.write(1_717_200_000.0 + ts, pkt)
        events = os.path.join(workdir, "events.jsonl")
        censored = os.path.join(workdir, "censored.pcap")
        summary = run(capture, prof, seed=seed, events_path=events, out_path=censored)
        _print_summary(summary)
        console.print(
            f"Open {censored} in Wireshark to see the forged packets"
            + ("" if keep else " (a temporary folder; use --dir to choose one)")
        )
        with err.status("writing the report…"):
            page = save_results(workdir, "analyze", started=started, seed=seed, capture=capture)
        console.print(f"report: {page}", highlight=False)


app.add_typer(evade_app, name="evade")

app.add_typer(lab_app, name="lab")
app.add_typer(tools_app, name="tools")

app.command()(results)

app.command()(report)

app.command()(measure_commands.probe)
app.command()(measure_commands.grade)


@app.command()
def version() -> None:
    """Print the version."""
    print(__version__)


def main() -> None:
    """Entry point: run the app and map errors to exit codes."""
    # gfwlab makes no BLAS call, but OpenBLAS starts a thread per core when NumPy loads, and
    # each spins a while: about 50 ms of CPU per command (measured on two cores). One thread,
    # unless the user set a number (the processes gfwlab starts inherit it).
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    # NumPy asks the kernel for transparent huge pages for every array of 4 MB or more. On a
    # two-core virtual machine, eight alternating runs of 1.3M packets each: with them, the
    # system time averaged 0.30 s (realistic mix) and 0.38 s (flow-heavy) and moved by 0.4 s
    # from run to run, most of it zeroing fresh huge pages; without, 0.18 s and 0.20 s, and
    # the runs took 0.90 and 0.92 of the time. The kernel counted no compaction stall: the
    # likely cost is the host backing memory the guest had not used before. A user's own
    # setting wins.
    os.environ.setdefault("NUMPY_MADVISE_HUGEPAGE", "0")
    keep_ctrl_c()
    try:
        code = app(standalone_mode=False)
        if isinstance(code, int) and code:
            # The parser turns Ctrl-C into exit code 130 and returns it in this mode.
            if code == 130:
                print("gfwlab: interrupted", file=sys.stderr)
            sys.exit(code)
    except GfwlabError as exc:
        print(f"gfwlab: error: {exc}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        err.print("gfwlab: interrupted", markup=False)
        sys.exit(130)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except typer.Abort:
        err.print("gfwlab: aborted", markup=False)
        sys.exit(130)
    except Exception as exc:
        # Usage errors from the command-line parser (typer ships its own copy of click, so match
        # on the interface rather than the class): they print themselves and carry exit code 2.
        show, code = getattr(exc, "show", None), getattr(exc, "exit_code", None)
        if callable(show) and isinstance(code, int):
            show()
            sys.exit(code)
        raise
    finally:
        ctrl_c_settled()


if __name__ == "__main__":
    main()
