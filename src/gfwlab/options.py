"""The command-line options, consoles and helpers every ``gfwlab`` command shares.

Each command group lives next to the code it drives (``gfwlab.lab.commands``,
``gfwlab.evade.commands``, ...) and is registered on the main command in :mod:`gfwlab.cli`; they
all declare their options from here, so ``--profile``, ``--date``, ``--set`` and ``--seed`` mean the
same thing everywhere.
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any

import typer
from rich.console import Console

from gfwlab.errors import GfwlabError

console = Console()
if not console.is_terminal:
    console = Console(width=160)  # piped output: do not squeeze tables into 80 columns
err = Console(stderr=True)

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
