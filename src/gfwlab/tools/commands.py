"""The ``gfwlab tools`` commands (registered on the main command in :mod:`gfwlab.cli`)."""

# Annotations evaluated as written, not strings: gfwlab.cli says why.

import datetime as dt
import json
import os
import shlex
import shutil
import sys
import tempfile
import time
from typing import Annotated, Any

import typer

from gfwlab import __version__
from gfwlab._outfile import OutputFile
from gfwlab.options import InputError, ProfileOpt, SeedOpt, SetOpt, console, err, progress_bar

tools_app = typer.Typer(
    no_args_is_help=True,
    help="Real circumvention tools (proxies, VPNs) through the lab, across the GFW's history.",
)

COLOURS = {
    "works": "green",
    "no-published-mechanism": "cyan",
    "degraded": "yellow",
    "blocked": "red",
    "hypothesis-only": "magenta",
    "skipped": "dim",
}


def ci_mode() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false")


@tools_app.command("list")
def tools_list(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """The recipes, and which tools are installed (a missing one fails under CI)."""
    from gfwlab.tools.recipes import RECIPES  # noqa: PLC0415

    rows: list[dict[str, Any]] = [
        {
            "tool": r.name,
            "summary": r.summary,
            "transport": f"{r.transport}/{r.port}",
            "installed": not r.missing(),
            "missing": r.missing(),
            "package": r.package,
        }
        for r in RECIPES.values()
    ]
    if as_json:
        print(json.dumps(rows, indent=2))
    else:
        from rich.table import Table  # noqa: PLC0415

        table = Table(title="gfwlab tools: recipes", title_justify="left")
        for col in ("tool", "what", "wire", "installed"):
            table.add_column(col, overflow="fold")
        for row in rows:
            ok = "[green]yes[/]" if row["installed"] else (
                f"[yellow]skipped[/]: {', '.join(row['missing'])} missing "
                f"(apt-get install {row['package']})"
            )  # fmt: skip
            table.add_row(row["tool"], row["summary"], row["transport"], ok)
        console.print(table)
    if ci_mode() and any(not r["installed"] for r in rows):
        err.print("CI is set: every tool must be installed (bash scripts/setup)", markup=False)
        raise typer.Exit(1)


@tools_app.command("run")
def tools_run(
    tool: Annotated[
        list[str] | None, typer.Option("--tool", "-t", help="A recipe (repeatable; default all).")
    ] = None,
    date: Annotated[
        list[str] | None,
        typer.Option(
            "--date",
            help="YYYY-MM-DD, or YYYY-MM-DDTHH:MM for a moment (lab up --at); repeatable. "
            "Default: the built-in set of eras.",
        ),
    ] = None,
    trials: Annotated[int, typer.Option("--trials", min=1, help="Trials per cell.")] = 20,
    tool_trials: Annotated[
        list[str] | None,
        typer.Option("--tool-trials", help="TOOL=N: trials for one tool (repeatable)."),
    ] = None,
    timeout: Annotated[
        float, typer.Option("--timeout", min=0.5, help="Seconds a trial may take.")
    ] = 3.0,
    wait_residuals: Annotated[
        bool,
        typer.Option(
            "--wait-residuals",
            help="Reuse one server address per cell and wait out each residual block (slow: "
            "180 s per FET block) instead of a fresh address per trial.",
        ),
    ] = False,
    download: Annotated[
        bool,
        typer.Option("--download/--no-download", help="A 10 MB download per cell, once."),
    ] = True,
    client: Annotated[
        str | None,
        typer.Option("--client", help="Your own tool's client command, run once per trial."),
    ] = None,
    server: Annotated[
        str | None, typer.Option("--server", help="Your own tool's server command.")
    ] = None,
    port: Annotated[
        int | None, typer.Option("--port", min=1, max=65535, help="Your own tool's port.")
    ] = None,
    udp: Annotated[bool, typer.Option("--udp", help="Your own tool speaks UDP.")] = False,
    name: Annotated[str, typer.Option("--name", help="Your own tool's name.")] = "byo",
    profile: ProfileOpt = "gfw",
    sets: SetOpt = None,
    seed: SeedOpt = 0,
    as_json: Annotated[bool, typer.Option("--json", help="Print the cells as JSON.")] = False,
    out: Annotated[
        str | None,
        typer.Option("--out", help="Write tools.jsonl, events.jsonl and run.json to this folder."),
    ] = None,
    write: Annotated[
        str | None,
        typer.Option("--write", help="Also write the matrix as Markdown (docs/tools.md)."),
    ] = None,
) -> None:
    """The matrix: each tool x each date, N trials per cell, each through the lab's censor."""
    from gfwlab.tools.matrix import BUILTIN, parse_when  # noqa: PLC0415
    from gfwlab.tools.recipe import RecipeError  # noqa: PLC0415
    from gfwlab.tools.recipes import RECIPES, Byo, split_command  # noqa: PLC0415
    from gfwlab.tools.run import Plan, run  # noqa: PLC0415

    started = _now()
    clock = time.monotonic()
    recipes = []
    for t in tool or ([] if client else list(RECIPES)):
        if t not in RECIPES:
            raise InputError(f"--tool {t!r}: unknown; one of: {', '.join(RECIPES)}")
        recipes.append(RECIPES[t])
    if (client, server, port).count(None) not in (0, 3):
        raise InputError("your own tool needs all of --client, --server and --port")
    if client is not None and server is not None and port is not None:
        try:
            byo = Byo(name, split_command("--client", client), split_command("--server", server),
                      port, "udp" if udp else "tcp")  # fmt: skip
        except RecipeError as exc:
            raise InputError(str(exc)) from None
        recipes.append(byo.recipe())
    per_tool: dict[str, int] = {}
    for item in tool_trials or []:
        key, sep, value = item.partition("=")
        if not sep or key not in {r.name for r in recipes} or not value.isdigit() or int(value) < 1:
            raise InputError(f"--tool-trials {item!r}: expected TOOL=N for a tool of this run")
        per_tool[key] = int(value)
    try:
        whens = [parse_when(d) for d in date] if date else list(BUILTIN)
    except ValueError as exc:
        raise InputError(str(exc)) from None
    if out is not None:
        _check_out(out)
    if write is not None and not os.access(os.path.dirname(os.path.abspath(write)), os.W_OK):
        raise InputError(f"--write {write}: cannot write there")
    if os.geteuid() != 0:
        raise InputError("gfwlab tools run makes the lab: it needs root")
    plan = Plan(
        recipes, whens, trials, per_tool, timeout, download, profile, sets or [], seed,
        wait_residuals,
    )  # fmt: skip
    total = sum(plan.trials_of(r.name) for r in recipes) * len(whens)
    with progress_bar("{task.description}", "of", clock="elapsed") as bar:
        task = bar.add_task("tools", total=total)
        try:
            cells, lines = run(
                plan, lambda text, n: bar.update(task, advance=n, description=text[:40])
            )
        except ValueError as exc:
            raise InputError(str(exc)) from None
    finished = _now()
    rows = [c.row() for c in cells]
    if out is not None:
        meta = {
            "kind": "tools",
            "format": 1,
            "gfwlab_version": __version__,
            "started": started,
            "finished": finished,
            "profile": profile,
            "date": None,
            "seed": seed,
            "argv": sys.argv[1:],
        }
        _write_out(out, rows, lines, meta)
    if write is not None:
        from gfwlab.tools.matrix import markdown  # noqa: PLC0415

        command = "gfwlab " + " ".join(shlex.quote(a) for a in sys.argv[1:])
        _write_text(write, markdown(cells, whens, command, finished[:10]))
    if as_json:
        print(json.dumps(rows, indent=2))
    else:
        _table(cells, whens)
        took = time.monotonic() - clock
        ran = [c for c in cells if c.outcome != "skipped"]
        console.print(
            f"{len(cells)} cells in {took:.0f} s ({len(whens)} lab up/down included): "
            f"{took / max(1, len(cells)):.1f} s per cell; the tools' own time per cell "
            f"{sum(c.seconds for c in ran) / max(1, len(ran)):.1f} s, per trial "
            f"{1000 * sum(c.seconds for c in ran) / max(1, sum(c.trials for c in ran)):.0f} ms"
        )
        if out is not None:
            console.print(f"wrote {out}/tools.jsonl, events.jsonl, run.json")
    if ci_mode() and any(c.outcome == "skipped" for c in cells):
        err.print("CI is set: a skipped tool is a failure (bash scripts/setup)", markup=False)
        raise typer.Exit(1)


def _now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _table(cells: list[Any], whens: list[Any]) -> None:
    from rich.table import Table  # noqa: PLC0415

    table = Table(title="What the GFW does to each tool (lab, gfw profile)", title_justify="left")
    table.add_column("tool", no_wrap=True)
    for w in whens:
        table.add_column(w.label, overflow="fold")
    by_tool: dict[str, dict[str, Any]] = {}
    for c in cells:
        by_tool.setdefault(c.tool, {})[c.date] = c
    for name, row in by_tool.items():
        values = []
        for w in whens:
            c = row.get(w.label)
            if c is None:
                values.append("")
                continue
            colour = COLOURS[c.outcome]
            text = f"[{colour}]{c.label()}[/]"
            if c.outcome != "skipped":
                lo, hi = c.ci
                text += f"\n{c.successes}/{c.trials} ok [{lo:.2f}, {hi:.2f}]"
                if c.download is not None:
                    text += "; 10 MB " + ("ok" if c.download else "failed")
                text += f"\n[dim]{c.explanation}[/]"
            values.append(text)
        table.add_row(name, *values)
    console.print(table)


def _write_text(path: str, text: str) -> None:
    out = OutputFile(path)
    try:
        out.write(text.encode())
        out.commit()
    finally:
        out.abort()


def _check_out(out: str) -> None:
    if os.path.exists(out) and (not os.path.isdir(out) or os.listdir(out)):
        raise InputError(f"--out {out}: exists and is not an empty folder")
    parent = os.path.dirname(os.path.abspath(out))
    if not os.path.isdir(parent) or not os.access(parent, os.W_OK):
        raise InputError(f"--out {out}: cannot write in {parent}")


def _write_out(
    out: str, rows: list[dict[str, Any]], lines: list[str], meta: dict[str, Any]
) -> None:
    """Write the three files into a temporary folder beside ``out``, then rename it: a reader
    sees all of them or none."""
    target = os.path.abspath(out)
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(target)}.tmp-", dir=os.path.dirname(target))
    try:
        with open(os.path.join(tmp, "tools.jsonl"), "w", encoding="utf-8") as fh:
            fh.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
        with open(os.path.join(tmp, "events.jsonl"), "w", encoding="utf-8") as fh:
            fh.writelines(line + "\n" for line in lines)
        with open(os.path.join(tmp, "run.json"), "w", encoding="utf-8") as fh:
            json.dump(meta, fh, indent=2)
            fh.write("\n")
        os.chmod(tmp, 0o755)
        os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
