"""The ``gfwlab results`` command (registered on the main command in :mod:`gfwlab.cli`)."""

# Annotations evaluated as written, not strings: gfwlab.cli says why.

import datetime as dt
import json
from typing import Annotated, Any

import typer

from gfwlab.options import console, err

QueryOpt = Annotated[
    str | None,
    typer.Option(
        "--query",
        "-q",
        help="A named query: blocked-by-category, blocked-by-mechanism, blocked-by-day, "
        "events-by-mechanism, verdicts, sites, accuracy, tools-matrix, ... (see the list "
        "without it).",
    ),
]


def results(
    folder: Annotated[str, typer.Argument(help="A results folder (run.json and its files).")],
    query: QueryOpt = None,
    sql: Annotated[
        str | None,
        typer.Option("--sql", help="Your own SQL over the tables (read-only)."),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON lines instead.")] = False,
    export_fmt: Annotated[
        str | None,
        typer.Option(
            "--export",
            help="Export (parquet or jsonl) every table to the folder --out, or --query's "
            "result to the file --out.",
        ),
    ] = None,
    out: Annotated[str | None, typer.Option("--out", help="Where --export writes.")] = None,
) -> None:
    """Load a results folder into its DuckDB database (DIR/results.duckdb) and query it."""
    from gfwlab.options import InputError  # noqa: PLC0415
    from gfwlab.results import export, queries, store  # noqa: PLC0415
    from gfwlab.results.ingest import ingest_dir  # noqa: PLC0415

    if query is not None and sql is not None:
        raise InputError("--query and --sql: give one")
    if (export_fmt is None) != (out is None):
        raise InputError("--export and --out go together")
    if export_fmt is not None and sql is not None:
        raise InputError("--export takes --query, not --sql")
    if query is not None and query not in queries.QUERIES:
        raise InputError(f"--query: unknown query {query!r}; one of: {', '.join(queries.QUERIES)}")
    info = ingest_dir(folder)
    for note in info.notes:
        err.print(f"[yellow]note:[/] {note}", highlight=False)
    con = store.connect(folder, read_only=True)
    try:
        if export_fmt is not None and out is not None:
            for path in export.export(con, export_fmt, out, query):
                console.print(path, highlight=False)
            return
        if sql is not None:
            show(*queries.run_sql(con, sql), as_json=as_json, title="--sql")
            return
        if query is not None:
            cols, data = queries.run_query(con, query)
            show(cols, data, as_json=as_json, title=f"{query}: {queries.QUERIES[query].about}")
            return
        overview(con, info, as_json)
    finally:
        con.close()


def overview(con: Any, info: Any, as_json: bool) -> None:
    """The run, what the folder holds, and the queries that apply to it."""
    from gfwlab.results import queries  # noqa: PLC0415

    counts = info.counts
    picks = ["runs"]
    if counts.get("measurements"):
        picks += ["blocked-by-category", "blocked-by-mechanism"]
    if counts.get("events"):
        picks += ["events-by-mechanism"]
    if counts.get("tool_cells"):
        picks += ["tools-matrix"]
    if counts.get("evasion"):
        picks += ["evasion-matrix"]
    if as_json:
        doc = {"folder": info.folder, "kind": info.kind, "counts": counts}
        for name in picks:
            cols, data = queries.run_query(con, name)
            doc[name] = [dict(zip(cols, r, strict=True)) for r in data]
        print(json.dumps(doc, default=_plain, ensure_ascii=False))
        return
    console.print(
        f"[bold]{info.folder}[/]: {'an' if info.kind[0] in 'aeiou' else 'a'} {info.kind} run; "
        + ", ".join(f"{n} {t}" for t, n in counts.items() if n and t != "runs"),
        highlight=False,
    )
    for name in picks:
        cols, data = queries.run_query(con, name)
        show(cols, data, as_json=False, title=f"{name}: {queries.QUERIES[name].about}")
    console.print(
        "[dim]more: --query "
        + ", ".join(q for q in queries.QUERIES if q not in picks)
        + "; or --sql 'SELECT ...' over runs, measurements, events, verdicts, tool_cells, "
        "evasion[/]"
    )


def show(cols: list[str], data: list[tuple[Any, ...]], *, as_json: bool, title: str) -> None:
    """A rich table, or one JSON object per row."""
    if as_json:
        for r in data:
            print(json.dumps(dict(zip(cols, r, strict=True)), default=_plain, ensure_ascii=False))
        return
    from rich.table import Table  # noqa: PLC0415

    table = Table(title=title, title_justify="left")
    for c in cols:
        table.add_column(c, overflow="fold")
    limit = 200
    for r in data[:limit]:
        table.add_row(*(_cell(v) for v in r))
    console.print(table)
    if len(data) > limit:
        console.print(f"… and {len(data) - limit} more rows (--json or --export for all)")


def _cell(value: Any) -> str:
    if value is None:
        return "[dim]-[/]"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, list):
        return ", ".join(str(v) for v in value)
    return str(value).replace("[", "\\[")


def _plain(value: Any) -> Any:
    if isinstance(value, dt.datetime | dt.date):
        return value.isoformat()
    return str(value)
