"""The ``gfwlab lab`` commands (registered on the main command in :mod:`gfwlab.cli`)."""

# Annotations evaluated as written, not strings: gfwlab.cli says why.

import json
import os
import sys
import time
from typing import Annotated

import typer

from gfwlab.options import (
    AtOpt,
    DateOpt,
    InputError,
    NetworkOpt,
    ProfilesOpt,
    SeedOpt,
    SetOpt,
    console,
    err,
)

lab_app = typer.Typer(no_args_is_help=True, help="The live lab: namespaces with the GFW between.")


@lab_app.command("up")
def lab_up(
    profile: ProfilesOpt = None,
    date: DateOpt = None,
    at: AtOpt = None,
    network: NetworkOpt = "national",
    sets: SetOpt = None,
    seed: SeedOpt = 0,
    fail_open: Annotated[
        bool,
        typer.Option(
            "--fail-open/--fail-closed",
            help="If the censor dies or cannot keep up (its queue full), traffic passes.",
        ),
    ] = True,
    names: Annotated[
        list[str] | None,
        typer.Option("--name", help="Extra host name the lab certificate covers (repeatable)."),
    ] = None,
    hops: Annotated[
        int,
        typer.Option(
            "--hops",
            min=0,
            max=64,
            help="Routers between censor and server: TTL-limited packets die before the server.",
        ),
    ] = 12,
    client_hops: Annotated[
        int,
        typer.Option("--client-hops", min=0, max=64, help="Routers between client and censor."),
    ] = 0,
    client_timestamps: Annotated[
        bool,
        typer.Option(
            "--client-timestamps/--no-client-timestamps",
            help="Whether the client's TCP sends timestamps (Linux: yes; Geneva's rates: no).",
        ),
    ] = True,
    engines: Annotated[
        int,
        typer.Option(
            "--engines",
            help="Censor engines, one per queue, each judging a share of the servers "
            "(1, 2, 4, 8 or 16; docs/architecture.md).",
        ),
    ] = 1,
) -> None:
    """Make the lab: client, censor and server namespaces, real services, the censor inline."""
    from gfwlab.lab.lifecycle import UpOptions, up  # noqa: PLC0415

    chain = profile or ["gfw"]
    if at is not None and date is not None:
        raise InputError("--at and --date: give one (--at sets the day too)")
    from gfwlab.live.engines import COUNTS  # noqa: PLC0415

    if engines not in COUNTS:
        some = ", ".join(map(str, COUNTS[:-1]))
        raise InputError(f"--engines: {engines} is not {some} or {COUNTS[-1]}")
    opts = UpOptions(
        profile=chain[0],
        more_profiles=chain[1:],
        date=date,
        at=at,
        network=network,
        sets=sets or [],
        seed=seed,
        fail_open=fail_open,
        names=names or [],
        hops=hops,
        client_hops=client_hops,
        client_timestamps=client_timestamps,
        engines=engines,
    )
    with err.status("making the lab…") as spinner:
        up(opts, log=lambda msg: spinner.update(f"making the lab: {msg}…"))
    from gfwlab.live import topology as t  # noqa: PLC0415

    console.print(
        f"[green]lab up[/]: client {t.CLIENT_V4} [{t.CLIENT_V6}] → censor → server "
        f"{t.SERVER_V4} [{t.SERVER_V6}]; try: gfwlab lab exec client -- curl "
        "https://example.org/"
    )


@lab_app.command("down")
def lab_down() -> None:
    """Remove every namespace, link, rule, file and process the lab made."""
    from gfwlab.lab.lifecycle import down  # noqa: PLC0415

    removed = down()
    console.print("lab down: " + (f"removed {len(removed)} things" if removed else "nothing to do"))


@lab_app.command("restart-censor")
def lab_restart_censor() -> None:
    """Start the censor again (after a crash) without taking the lab down; blocks are kept."""
    from gfwlab.lab.restart import restart_censor  # noqa: PLC0415

    with err.status("restarting the censor…"):
        entry = restart_censor()
    console.print(
        f"censor restarted (pid {entry['pid']}, restart {entry['restarts']}); blocks active "
        "before it stopped are back in force"
    )


@lab_app.command("status")
def lab_status(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Namespaces, services and the censor's counters per mechanism."""
    from gfwlab.lab.lifecycle import status  # noqa: PLC0415

    s = status()
    if as_json:
        print(json.dumps(s.__dict__, indent=2))
        return
    from rich.table import Table  # noqa: PLC0415

    console.print(
        f"lab: [bold]{'up' if s.up else 'down'}[/] (state {s.state}); namespaces: "
        + (", ".join(s.namespaces) or "none")
    )
    if s.processes:
        table = Table(title="processes", title_justify="left")
        for col in ("name", "pid", "running"):
            table.add_column(col)
        for p in s.processes:
            table.add_row(p["name"], str(p["pid"]), "[green]yes[/]" if p["alive"] else "[red]no[/]")
        console.print(table)
    if s.stats:
        st = s.stats
        console.print(
            f"censor: {st.get('queued_packets', 0)} packets queued, "
            f"{st.get('dropped', 0)} dropped, {st.get('injected', 0)} forged, "
            f"{st.get('flows', 0)} flows, {st.get('residual_blocks', 0)} residual blocks"
        )
        if "uninspected" in st:
            console.print(
                f"kernel: {st['kernel_queued']} packets to the queue, {st['uninspected']} passed "
                "uninspected (fail-open: no censor reading, or its queue full), "
                f"{st['queue_dropped']} dropped by a full queue, "
                f"{st.get('kernel_residuals', 0)} residual blocks in ipsets, "
                f"{st.get('kernel_dropped', 0)} packets of {st.get('kernel_blocked_flows', 0)} "
                "blocked flows dropped for the engine"
            )
        each = st.get("queued_packets_each")
        if isinstance(each, list) and len(each) > 1:
            shares = ", ".join("?" if n is None else str(n) for n in each)
            console.print(f"engines: {len(each)}, packets queued to each: {shares}")
        if st.get("probes_waited"):
            console.print(
                f"prober: {st['probes_waited']} probes started late, every prober thread busy "
                f"when they were due ({st.get('probes_waiting', 0)} waiting now; live/prober.py)"
            )
        if st.get("anomaly_events_suppressed"):
            console.print(
                f"anomaly events over the rate limit, not written: "
                f"{st['anomaly_events_suppressed']} (live/ratelimit.py)"
            )
        if st.get("events"):
            table = Table(title="events per mechanism", title_justify="left")
            table.add_column("mechanism/action")
            table.add_column("count", justify="right")
            for key, n in sorted(st["events"].items()):
                table.add_row(key, str(n))
            console.print(table)
    for note in s.notes:
        console.print(f"[yellow]note[/]: {note}")


@lab_app.command(
    "exec", context_settings={"allow_extra_args": True, "ignore_unknown_options": True}
)
def lab_exec(
    ctx: typer.Context,
    role: Annotated[str, typer.Argument(help="client, censor or server")],
) -> None:
    """Run a command in a lab namespace: gfwlab lab exec client -- curl https://example.org/"""
    from gfwlab.lab.lifecycle import exec_argv  # noqa: PLC0415

    argv = exec_argv(role, list(ctx.args))
    sys.stdout.flush()
    os.execvp(argv[0], argv)


@lab_app.command("events")
def lab_events(
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="Keep printing new events.")
    ] = False,
) -> None:
    """The censor's events (DESIGN.md JSON), one per line."""
    from gfwlab.lab.lifecycle import follow_events  # noqa: PLC0415

    for line in follow_events(follow):
        print(line, flush=True)


@lab_app.command("record")
def lab_record(
    path: Annotated[str, typer.Argument(help="The pcap file to write.")],
    duration: Annotated[
        float | None, typer.Option("--duration", help="Seconds to record (default: until Ctrl-C).")
    ] = None,
) -> None:
    """Record what the censor sees, with the packets it injects, to a pcap file."""
    from gfwlab.lab.lifecycle import control  # noqa: PLC0415

    target = os.path.abspath(path)
    control(f"record {target}")
    try:
        if duration is None:
            err.print("recording; Ctrl-C stops")
            while True:
                time.sleep(3600)
        else:
            time.sleep(duration)
    except KeyboardInterrupt:
        pass
    finally:
        reply = control("stop")
    count = reply.split()[1] if len(reply.split()) > 1 else "?"
    console.print(f"recorded {count} packets to {target}")


@lab_app.command("save")
def lab_save(
    folder: Annotated[str, typer.Argument(help="The results folder to write.")],
) -> None:
    """Save the lab session so far as a results folder: its events, run.json and the DuckDB
    file (then: gfwlab results DIR; gfwlab report DIR)."""
    import datetime as dt  # noqa: PLC0415

    from gfwlab.lab.lifecycle import follow_events  # noqa: PLC0415
    from gfwlab.lab.state import LabState  # noqa: PLC0415
    from gfwlab.results.folder import now, write_jsonl, write_run  # noqa: PLC0415
    from gfwlab.results.ingest import ingest_dir  # noqa: PLC0415

    state = LabState.load()
    if state.status != "up":
        raise InputError("no lab is up (gfwlab lab up), so there is no session to save")
    events = [json.loads(line) for line in follow_events(False)]
    cfg = state.config
    started = (
        dt.datetime.fromtimestamp(min(float(e["ts"]) for e in events), dt.UTC)
        .isoformat(timespec="seconds")
        .replace("+00:00", "Z")
        if events and min(float(e["ts"]) for e in events) > 1e9
        else now()
    )
    os.makedirs(folder, exist_ok=True)
    write_jsonl(os.path.join(folder, "events.jsonl"), events)
    write_run(
        folder,
        "lab",
        started=started,
        profile=list(cfg.get("profiles") or [cfg.get("profile", "gfw")]),
        date=cfg.get("date"),
        seed=cfg.get("seed"),
        sets=cfg.get("sets", []),
        network=cfg.get("network"),
        at=cfg.get("at"),
    )
    info = ingest_dir(folder)
    console.print(
        f"saved {len(events)} events to {folder} ({info.counts.get('verdicts', 0)} flows acted "
        "on); gfwlab report " + folder,
        highlight=False,
    )
