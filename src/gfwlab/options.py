"""The command-line options, consoles and helpers every ``gfwlab`` command shares.

Each command group lives next to the code it drives (``gfwlab.lab.commands``,
``gfwlab.evade.commands``, ...) and is registered on the main command in :mod:`gfwlab.cli`; they
all declare their options from here, so ``--profile``, ``--date``, ``--set`` and ``--seed`` mean the
same thing everywhere.
"""

from __future__ import annotations

import datetime as dt
from typing import TYPE_CHECKING, Annotated, Any, Literal, cast

import typer

from gfwlab.errors import GfwlabError

if TYPE_CHECKING:
    from rich.console import Console
    from rich.progress import Progress


class LazyConsole:
    """A rich ``Console`` made on first use, standing in for it: importing rich costs about
    35 ms of a command's start, which a command that prints no table, colour or bar
    (``analyze --json``) need not pay. The commands import rich's tables and bars where they
    draw them, for the same reason."""

    def __init__(self, *, wide: bool = False, **options: Any) -> None:
        """``wide``: on a pipe, 160 columns instead of rich's 80 (do not squeeze tables)."""
        self._wide = wide
        self._options = options
        self._console: Console | None = None

    def real(self) -> Console:
        """The console itself, made now if it was not yet."""
        if self._console is None:
            from rich.console import Console  # noqa: PLC0415  # on first use (the class says why)

            made = Console(**self._options)
            if self._wide and not made.is_terminal:
                made = Console(width=160, **self._options)
            self._console = made
        return self._console

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real(), name)

    def __enter__(self) -> Console:
        return self.real().__enter__()

    def __exit__(self, *exc: object) -> None:
        self.real().__exit__(*exc)


console = cast("Console", LazyConsole(wide=True))
err = cast("Console", LazyConsole(stderr=True))


def progress_bar(
    label: str,
    counter: str,
    *,
    clock: Literal["left", "elapsed", "none"] = "left",
    quiet: bool = False,
) -> Progress:
    """The commands' progress bar, on stderr, gone when done: ``label`` in bold (it may name a
    task's field, as ``{task.description}``), the bar, then ``counter``: ``"bytes"`` (done and
    total, in bytes), ``"of"`` (done/total) or a template of rich's (``"{task.completed}
    packets"``), then the time ``left`` or ``elapsed``. Not shown where stderr is no terminal,
    nor when ``quiet`` (``--json``). rich's bars are imported here, when one is drawn."""
    from rich.progress import (  # noqa: PLC0415
        BarColumn,
        DownloadColumn,
        MofNCompleteColumn,
        Progress,
        ProgressColumn,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    columns: list[str | ProgressColumn] = [TextColumn(f"[bold]{label}[/]"), BarColumn()]
    if counter == "bytes":
        columns.append(DownloadColumn())
    elif counter == "of":
        columns.append(MofNCompleteColumn())
    else:
        columns.append(TextColumn(counter))
    if clock == "left":
        columns.append(TimeRemainingColumn())
    elif clock == "elapsed":
        columns.append(TimeElapsedColumn())
    return Progress(*columns, console=err, transient=True, disable=quiet or not err.is_terminal)


ProfileOpt = Annotated[
    str, typer.Option("--profile", "-p", help="Built-in profile name or TOML file.")
]
DateOpt = Annotated[
    str | None, typer.Option("--date", help="Emulate the GFW as it was that day (YYYY-MM-DD).")
]
SetOpt = Annotated[
    list[str] | None,
    typer.Option("--set", help="Override a parameter: mechanism.parameter=value (repeatable)."),
]
SeedOpt = Annotated[int, typer.Option("--seed", help="Seed for every random draw.")]
AtOpt = Annotated[
    str | None,
    typer.Option("--at", help="Emulate this UTC moment (YYYY-MM-DDTHH:MM), for dated events."),
]
NetworkOpt = Annotated[
    str,
    typer.Option(
        "--network", help="The client's network: national, cernet, mobile, unicom, telecom."
    ),
]


class InputError(GfwlabError):
    """A user error found by a command itself: one line on stderr, exit 2."""


def profile_from(
    profile: str,
    date: str | None,
    sets: list[str] | None,
    *,
    today: bool = True,
    network: str = "national",
) -> Any:
    """The profile as of ``--date``; without it, today (or no date at all, for ``analyze``,
    which then takes the capture's own date)."""
    from gfwlab.profiles import load_profile, parse_date  # noqa: PLC0415 - keeps --help fast

    day = parse_date(date) if date else dt.date.today() if today else None
    return load_profile(profile, date=day, overrides=sets or [], network=network)


ProfilesOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--profile",
        "-p",
        help="Built-in profile name or TOML file; repeat for censors in series, in path order "
        "from the client (e.g. -p henan -p gfw).",
    ),
]


def profiles_from(
    names: list[str] | None,
    date: str | None,
    sets: list[str] | None,
    *,
    today: bool = True,
    network: str = "national",
) -> list[Any]:
    """One profile per ``--profile`` (censors in series), as of ``--date`` (see profile_from)."""
    from gfwlab.profiles import load_profiles, parse_date  # noqa: PLC0415

    day = parse_date(date) if date else dt.date.today() if today else None
    return load_profiles(names or ["gfw"], date=day, overrides=sets or [], network=network)


ResultsOpt = Annotated[
    str | None,
    typer.Option(
        "--results",
        help="Also write a results folder here (run.json, the files, results.duckdb) for "
        "gfwlab results and gfwlab report.",
    ),
]
