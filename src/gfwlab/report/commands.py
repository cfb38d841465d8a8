"""The ``gfwlab report`` command (registered on the main command in :mod:`gfwlab.cli`)."""

# Annotations evaluated as written, not strings: gfwlab.cli says why.

from typing import Annotated

import typer

from gfwlab.options import console


def report(
    folder: Annotated[str, typer.Argument(help="A results folder (run.json and its files).")],
    out: Annotated[
        str | None,
        typer.Option("--out", help="The HTML file to write (default: DIR/report.html)."),
    ] = None,
) -> None:
    """A self-contained HTML report of a results folder: charts and tables, no network needed."""
    from gfwlab.report.html import write_report  # noqa: PLC0415

    path = write_report(folder, out)
    console.print(f"report: {path}", highlight=False)
