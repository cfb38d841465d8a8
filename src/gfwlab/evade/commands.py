"""The ``gfwlab evade`` commands (registered on the main command in :mod:`gfwlab.cli`).

Errors are one line on stderr and exit 2 (:class:`UsageError` and every GfwlabError, such as a
bad strategy naming its column).
"""

# Annotations evaluated as written, not strings: gfwlab.cli says why.

import datetime as dt
import json
from typing import TYPE_CHECKING, Annotated, Any, cast

import typer

from gfwlab.errors import GfwlabError
from gfwlab.options import DateOpt, LazyConsole, ProfileOpt, ResultsOpt, SeedOpt, SetOpt

if TYPE_CHECKING:
    from rich.console import Console

# No emoji codes: a strategy's ":flags:" must print as written.
console = cast("Console", LazyConsole(wide=True, emoji=False))
err = cast("Console", LazyConsole(stderr=True, emoji=False))


class UsageError(GfwlabError):
    """A bad combination of options for ``evade`` (exit 2, one line)."""


def _profiles(names: list[str], date: str | None, sets: list[str] | None) -> list[Any]:
    from gfwlab.profiles import load_profiles, parse_date  # noqa: PLC0415 - keeps --help fast

    day = parse_date(date) if date else dt.date.today()
    return load_profiles(names, date=day, overrides=sets or [])


evade_app = typer.Typer(
    no_args_is_help=True, help="Evasion strategies in Geneva's language against the censor."
)
StrategyOpt = Annotated[str, typer.Option("--strategy", "-s", help="A Geneva strategy.")]
OfflineOpt = Annotated[
    bool,
    typer.Option(
        "--offline",
        help="Scripted connections through the censor engine, no lab (default: live, in the "
        "lab that is up).",
    ),
]


@evade_app.command("run")
def evade_run(
    strategy: StrategyOpt,
    against: Annotated[
        str,
        typer.Option(
            "--against",
            help="http_keyword, tls_sni, dns_injection or quic_sni (offline: the first two).",
        ),
    ] = "http_keyword",
    side: Annotated[str, typer.Option("--side", help="client or server.")] = "client",
    trials: Annotated[int, typer.Option("--trials", min=1, help="Independent trials.")] = 50,
    profile: ProfileOpt = "gfw",
    date: DateOpt = None,
    sets: SetOpt = None,
    seed: SeedOpt = 0,
    explain: Annotated[
        bool,
        typer.Option(
            "--explain",
            help="The censor's TCP view of the first failed trial (live: recorded by the "
            "censor, replayed offline through the same engine).",
        ),
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    offline: OfflineOpt = False,
) -> None:
    """Run a strategy N times and report its success rate with a 99% interval."""
    from gfwlab.evade import simulate  # noqa: PLC0415
    from gfwlab.evade.strategy import parse_strategy  # noqa: PLC0415

    parse_strategy(strategy)  # a bad strategy is an error before anything else
    if not offline:
        _evade_live(strategy, against, side, trials, as_json, explain)
        return
    if side not in ("client", "server"):
        raise UsageError(f"--side: expected client or server, got {side!r}")
    if against not in simulate.TARGETS:
        raise UsageError(f"--against: expected {' or '.join(simulate.TARGETS)} offline")
    sets = ["http_keyword.residual_s=0", *(sets or [])]
    prof = _profiles([profile], date, sets)[0]
    res = simulate.run(strategy, against, prof, trials, seed, side)
    lo, hi = res.interval()
    failed = next((t for t in res.trials if not t.evaded), None)
    if as_json:
        doc: dict[str, Any] = {
            "strategy": strategy, "against": against, "side": side, "mode": "offline",
            "date": prof.date.isoformat() if prof.date else None, "trials": trials,
            "seeds": [seed, seed + trials - 1], "successes": res.successes,
            "rate": res.successes / trials, "interval_99": [round(lo, 4), round(hi, 4)],
            "independence": "a fresh censor per trial (no residual carries over)",
        }  # fmt: skip
        if explain and failed is not None:
            doc["explain"] = {"seed": failed.seed, "trace": failed.trace}
        print(json.dumps(doc))
        return
    console.print(
        f"{res.successes}/{trials} evaded ({res.successes / trials:.0%}, 99% interval "
        f"{lo:.0%}..{hi:.0%}) against {against}, {side} side, offline, seeds "
        f"{seed}..{seed + trials - 1}, a fresh censor per trial",
        markup=False,
    )
    if explain and failed is not None:
        console.print(f"trial seed {failed.seed} was censored; the censor's TCP view:")
        for pkt, view in failed.trace:
            console.print(f"  {pkt:<60} -> {view}", markup=False)


def _library_live(trials: int, dates: list[str] | None) -> tuple[list[Any], int]:
    """The library in the lab that is up (its date and seed; --date must agree)."""
    from gfwlab.evade import library, live  # noqa: PLC0415
    from gfwlab.lab.state import LabState  # noqa: PLC0415
    from gfwlab.profiles import parse_date  # noqa: PLC0415

    cfg = LabState.load().config
    day = parse_date(cfg["date"]) if cfg.get("date") else None
    if dates and [parse_date(d) for d in dates] != [day]:
        raise UsageError("live: the lab runs one date; bring it up with that --date")
    residual = _lab_residual(cfg)
    rows = []
    for entry in library.CHINA:
        res = live.run_live(entry.strategy, trials, residual)
        note = f"{res.waited} waited {res.waited_s:.0f} s" if res.waited else ""
        rows.append(library.Row(entry, res.successes, trials, day, note))
        err.print(f"{res.successes}/{trials} {entry.strategy}", markup=False)
    return rows, int(cfg.get("seed", 0))


def _lab_residual(cfg: dict[str, Any], mechanism: str = "http_keyword") -> float:
    """The longest residual window of ``mechanism`` among the lab's censors."""
    from gfwlab.profiles import load_profiles, parse_date  # noqa: PLC0415

    day = parse_date(cfg["date"]) if cfg.get("date") else None
    names = cfg.get("profiles") or [cfg.get("profile", "gfw")]
    profs = load_profiles(names, date=day, overrides=cfg.get("sets", []))
    return max(
        (float(getattr(p.mechanisms.get(mechanism), "residual_s", 0.0) or 0.0) for p in profs),
        default=0.0,
    )


def _evade_live(
    strategy: str, against: str, side: str, trials: int, as_json: bool, explain: bool
) -> None:
    import contextlib  # noqa: PLC0415
    import os  # noqa: PLC0415
    import tempfile  # noqa: PLC0415

    from gfwlab.evade import explain as explainer  # noqa: PLC0415
    from gfwlab.evade import live  # noqa: PLC0415
    from gfwlab.evade.simulate import wilson  # noqa: PLC0415
    from gfwlab.lab.lifecycle import control  # noqa: PLC0415
    from gfwlab.lab.state import LabState  # noqa: PLC0415
    from gfwlab.packet.ip import PROTO_TCP, PROTO_UDP, addr_bytes  # noqa: PLC0415

    if side not in live.SIDES:
        raise UsageError(f"--side: expected client or server, got {side!r}")
    if against not in live.TARGETS:
        raise UsageError(f"--against: expected {' or '.join(live.TARGETS)} live")
    target = live.TARGETS[against]
    cfg = LabState.load().config
    residual = _lab_residual(cfg, target.mechanism)
    recording = None
    try:  # the recording is removed whatever happens, Ctrl-C included
        if explain:
            fd, recording = tempfile.mkstemp(prefix="gfwlab-evade-", suffix=".pcap")
            os.close(fd)
            control(f"record {recording}")
        try:
            res = live.run_live(strategy, trials, residual, against, side)
        finally:
            if recording is not None:
                with contextlib.suppress(GfwlabError):
                    control("stop")
        failed = next((t for t in res.log if not t.evaded), None)
        explained = None
        if recording is not None and failed is not None:
            proto = PROTO_TCP if target.proto == "tcp" else PROTO_UDP
            explained = explainer.replay(
                recording, addr_bytes(failed.addr), proto, target.port, failed.start,
                failed.end, target.mechanism,
            )  # fmt: skip
    finally:
        if recording is not None:
            with contextlib.suppress(OSError):
                os.unlink(recording)
    lo, hi = wilson(res.successes, trials)
    how = (
        f"each trial on the server address used longest ago of {len(target.addresses)}; "
        f"{res.waited} trials waited out a {residual:g} s residual window ({res.waited_s:.1f} s)"
    )
    if as_json:
        doc: dict[str, Any] = {
            "strategy": strategy, "against": against, "side": side, "mode": "live",
            "trials": trials, "successes": res.successes, "rate": res.successes / trials,
            "interval_99": [round(lo, 4), round(hi, 4)], "independence": how,
            "seed": cfg.get("seed"), "outcomes": [t.evaded for t in res.log],
        }  # fmt: skip
        if explained is not None and failed is not None:
            doc["explain"] = {
                "trial": res.log.index(failed), "address": failed.addr,
                "how": "recorded by the censor, replayed offline through the same engine",
                "verdict": explained.verdict, "replay_censored": explained.censored,
                "trace": explained.trace,
            }  # fmt: skip
        print(json.dumps(doc))
        return
    console.print(
        f"{res.successes}/{trials} evaded ({res.successes / trials:.0%}, 99% interval "
        f"{lo:.0%}..{hi:.0%}) against {against}, {side} side, live through the lab (seed "
        f"{cfg.get('seed')}); " + how,
        markup=False,
    )
    if explain and failed is None:
        console.print("no trial failed: nothing to explain")
    if explained is not None and failed is not None:
        console.print(
            f"trial {res.log.index(failed) + 1} ({failed.addr}) failed; the censor's view of it, "
            "recorded by the censor and replayed offline through the same engine:",
            markup=False,
        )
        for pkt, view in explained.trace:
            console.print(f"  {pkt:<60} -> {view}", markup=False)
        console.print(f"  {explained.verdict}", markup=False)


@evade_app.command("library")
def evade_library(
    dates: Annotated[
        list[str] | None, typer.Option("--date", help="Emulated day (repeatable).")
    ] = None,
    trials: Annotated[int, typer.Option("--trials", min=1)] = 50,
    seed: SeedOpt = 0,
    write: Annotated[
        str | None, typer.Option("--write", help="Write the matrix (Markdown) to this file.")
    ] = None,
    offline: OfflineOpt = False,
    results_dir: ResultsOpt = None,
) -> None:
    """The built-in library (Geneva's China rows) against the censor, next to the published
    rates; disagreements are marked."""
    from gfwlab._outfile import OutputFile  # noqa: PLC0415
    from gfwlab.evade import library  # noqa: PLC0415
    from gfwlab.results.folder import now  # noqa: PLC0415

    started = now()
    if offline:
        days = dates or ["2020-01-15"]
        sets = ["http_keyword.probability=0.97", "http_keyword.residual_s=0"]
        profiles = [_profiles(["gfw"], d, sets)[0] for d in days]
        rows = library.matrix(profiles, trials, seed)
        command = "gfwlab evade library --offline " + " ".join(f"--date {d}" for d in days)
    else:
        rows, seed = _library_live(trials, dates)
        command = "gfwlab evade library"
    command += f" --trials {trials} --seed {seed}" + (f" --write {write}" if write else "")
    setup = ""
    if not offline:
        from gfwlab.lab.state import LabState  # noqa: PLC0415

        setup = library.lab_setup(LabState.load().config)
    text = library.render(rows, trials, seed, command, live=not offline, setup=setup)
    if write:
        out = OutputFile(write)
        out.write(text.encode())
        out.commit()
    if results_dir is not None:
        _save_library(results_dir, rows, trials, seed, offline, started)
    from rich.table import Table  # noqa: PLC0415

    table = Table("date", "family", "published", "successes", "interval", "")
    for r in rows:
        lo, hi = r.entry.bounds(trials)
        table.add_row(
            r.day.isoformat() if r.day else "any", r.entry.family, f"{r.entry.published:.0%}",
            f"{r.successes}/{trials}", f"{lo}..{hi}", "ok" if r.passes else "DIFFERS",
        )  # fmt: skip
    console.print(table)
    bad = sum(not r.passes for r in rows)
    console.print(f"{len(rows) - bad} of {len(rows)} rows within their published interval")


def _save_library(
    folder: str, rows: list[Any], trials: int, seed: int, offline: bool, started: str
) -> None:
    """``evade library --results DIR``: one line per row in DIR/evasion.jsonl, run.json, and
    DIR/results.duckdb (for gfwlab results and gfwlab report)."""
    import os  # noqa: PLC0415

    from gfwlab.results.folder import write_jsonl, write_run  # noqa: PLC0415
    from gfwlab.results.ingest import ingest_dir  # noqa: PLC0415

    os.makedirs(folder, exist_ok=True)
    lines = []
    for r in rows:
        lo, hi = r.entry.bounds(r.trials)
        lines.append({
            "date": r.day.isoformat() if r.day else None, "family": r.entry.family,
            "strategy": r.entry.strategy, "published": r.entry.published, "also": r.entry.also,
            "trials": r.trials, "successes": r.successes, "lo": lo, "hi": hi,
            "passes": r.passes, "note": r.note, "mode": "offline" if offline else "live",
        })  # fmt: skip
    write_jsonl(os.path.join(folder, "evasion.jsonl"), lines)
    days = sorted({ln["date"] for ln in lines if ln["date"]})
    write_run(folder, "evade-matrix", started=started, profile=["gfw"],
              date=days[0] if len(days) == 1 else None, seed=seed, trials=trials)  # fmt: skip
    ingest_dir(folder)
    console.print(f"results: {folder} (gfwlab results / gfwlab report)", markup=False)


@evade_app.command("apply")
def evade_apply(
    strategy: StrategyOpt,
    capture: Annotated[str, typer.Argument(help="A pcap or pcapng capture.")],
    out: Annotated[str, typer.Option("--out", "-o", help="The rewritten capture (pcap).")],
    side: Annotated[str, typer.Option("--side", help="client or server.")] = "client",
) -> None:
    """Apply a strategy to one side's packets in a capture (offline); the other side's and
    non-IPv4 packets are copied unchanged. Analyse the result with ``gfwlab analyze``."""
    from gfwlab.evade.apply import apply_capture  # noqa: PLC0415

    if side not in ("client", "server"):
        raise UsageError(f"--side: expected client or server, got {side!r}")
    n_in, n_out = apply_capture(strategy, capture, out, side)
    console.print(f"{n_in} packets in, {n_out} out, written to {out}", markup=False)
