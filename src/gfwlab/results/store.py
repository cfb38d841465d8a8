"""The results database: one DuckDB file per results folder (``DIR/results.duckdb``).

The files a run writes (``run.json``, ``measurements.jsonl``, ``events.jsonl``, ``tools.jsonl``,
``evasion.jsonl``: see :mod:`gfwlab.results.ingest`) are the record; the database is built from
them and can always be rebuilt. It stores its schema version in table ``meta``; a database of an
older schema is rebuilt from the files, one of a newer schema (written by a newer gfwlab) is
refused, never misread.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import duckdb

from gfwlab.errors import GfwlabError

SCHEMA_VERSION = 1
"""The version of the tables below; bump it with any change to them."""
DB_NAME = "results.duckdb"


class ResultsError(GfwlabError):
    """A results folder or database gfwlab cannot read: one line, exit 2."""


SCHEMA = """
CREATE TABLE meta (key VARCHAR PRIMARY KEY, value VARCHAR);
CREATE TABLE files (
    run_id VARCHAR, name VARCHAR, size BIGINT, mtime_ns BIGINT, rows BIGINT,
    PRIMARY KEY (run_id, name)
);
CREATE TABLE runs (
    run_id VARCHAR PRIMARY KEY, kind VARCHAR, format INTEGER, gfwlab_version VARCHAR,
    started TIMESTAMP, finished TIMESTAMP, profile VARCHAR[], date DATE, seed BIGINT,
    argv VARCHAR[], folder VARCHAR, note VARCHAR
);
CREATE TABLE measurements (
    run_id VARCHAR, idx INTEGER, measurement_start_time TIMESTAMP, input VARCHAR,
    hostname VARCHAR, category_code VARCHAR, blocking VARCHAR, accessible BOOLEAN,
    mechanism VARCHAR, injector VARCHAR, residual BOOLEAN, control_failure BOOLEAN,
    correct BOOLEAN, truth JSON, dns_answers VARCHAR[], failures VARCHAR[],
    http_status INTEGER, report_id VARCHAR, software VARCHAR, x_gfwlab JSON
);
CREATE TABLE events (
    run_id VARCHAR, idx INTEGER, ts DOUBLE, proto VARCHAR, src VARCHAR, sport INTEGER,
    dst VARCHAR, dport INTEGER, direction VARCHAR, mechanism VARCHAR, action VARCHAR,
    rule VARCHAR, residual_until DOUBLE, citation VARCHAR, injector VARCHAR, sni VARCHAR,
    qname VARCHAR, forged_ips VARCHAR[], residual BOOLEAN, extra JSON
);
CREATE TABLE tool_cells (
    run_id VARCHAR, idx INTEGER, tool VARCHAR, date VARCHAR, trials INTEGER, successes INTEGER,
    outcome VARCHAR, rate DOUBLE, ci_lo DOUBLE, ci_hi DOUBLE, mechanisms VARCHAR[],
    first_packet JSON, citation VARCHAR, trial_mode VARCHAR
);
CREATE TABLE evasion (
    run_id VARCHAR, idx INTEGER, date VARCHAR, family VARCHAR, strategy VARCHAR,
    published DOUBLE, also DOUBLE, trials INTEGER, successes INTEGER, lo INTEGER, hi INTEGER,
    passes BOOLEAN, note VARCHAR, mode VARCHAR
);
-- The forged resets found in the folder's capture (censored.pcap), matched to their rst event.
CREATE TABLE forged (
    run_id VARCHAR, idx INTEGER, event_idx INTEGER, ts DOUBLE, mechanism VARCHAR,
    injector VARCHAR, toward VARCHAR, flags INTEGER, ttl INTEGER, ip_id INTEGER, df BOOLEAN,
    latency_ms DOUBLE
);
-- What the censor did to each flow: one row per flow, mechanism and action that acted, as
-- `gfwlab analyze` summarises it (gfwlab.offline.analyze: rst, drop, dns-inject, null-route,
-- probe).
CREATE VIEW verdicts AS
SELECT run_id, proto, src, sport, dst, dport, direction, mechanism, action,
       arg_min(rule, idx) AS rule, min(ts) AS first_ts, count(*) AS events,
       arg_min(residual_until, idx) AS residual_until, arg_min(injector, idx) AS injector,
       arg_min(coalesce(sni, qname), idx) AS name, arg_min(forged_ips, idx) AS forged_ips,
       bool_or(coalesce(residual, false)) AS residual, arg_min(citation, idx) AS citation,
       arg_min(extra, idx) AS extra
FROM events
WHERE action IN ('rst', 'drop', 'dns-inject', 'null-route', 'probe')
GROUP BY ALL;
"""

TABLES = ("runs", "measurements", "events", "forged", "tool_cells", "evasion")
"""The tables ``gfwlab results --export`` writes (and ``verdicts``, a view over events)."""


def db_path(folder: str | os.PathLike[str]) -> Path:
    return Path(folder) / DB_NAME


def connect(
    folder: str | os.PathLike[str], *, read_only: bool = False
) -> duckdb.DuckDBPyConnection:
    """Open (or, unless ``read_only``, create) the folder's database at the current schema.

    A database of an older schema is rebuilt empty (the caller ingests the files again); one of a
    newer schema, or a file that is not a DuckDB database, is refused with :class:`ResultsError`.
    """
    path = db_path(folder)
    exists = path.exists()
    if read_only and not exists:
        raise ResultsError(f"{path}: no results database (run: gfwlab results {folder})")
    try:
        con = duckdb.connect(str(path), read_only=read_only)
    except duckdb.Error as exc:
        if "lock" in str(exc).lower():
            raise ResultsError(f"{path}: in use by another gfwlab process; try again") from None
        raise ResultsError(f"{path}: not a readable DuckDB database ({_first_line(exc)})") from None
    try:
        version = schema_version(con) if exists else None
    except duckdb.Error as exc:
        con.close()
        raise ResultsError(f"{path}: not a gfwlab results database ({_first_line(exc)})") from None
    if version == SCHEMA_VERSION:
        return con
    if version is not None and version > SCHEMA_VERSION:
        con.close()
        raise ResultsError(
            f"{path}: schema version {version} is newer than this gfwlab reads "
            f"({SCHEMA_VERSION}); upgrade gfwlab, or delete the file to rebuild it from the folder"
        )
    if read_only:
        con.close()
        raise ResultsError(
            f"{path}: schema version {version} is older than this gfwlab's ({SCHEMA_VERSION}); "
            f"rebuild it: gfwlab results {folder}"
        )
    _create(con)
    return con


def schema_version(con: duckdb.DuckDBPyConnection) -> int | None:
    """The schema version stored in ``meta``; None for an empty database (no tables at all)."""
    tables = {
        r[0] for r in con.execute("SELECT table_name FROM information_schema.tables").fetchall()
    }
    if not tables:
        return None
    if "meta" not in tables:
        raise duckdb.CatalogException("it has no meta table")
    row = con.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
    if row is None or not str(row[0]).isdigit():
        raise duckdb.CatalogException("meta has no schema_version")
    return int(row[0])


def _create(con: duckdb.DuckDBPyConnection) -> None:
    """Drop whatever an older schema left and create the current one."""
    from gfwlab import __version__  # noqa: PLC0415

    con.execute("BEGIN")
    for name, kind in con.execute(
        "SELECT table_name, table_type FROM information_schema.tables"
    ).fetchall():
        con.execute(f'DROP {"VIEW" if kind == "VIEW" else "TABLE"} IF EXISTS "{name}" CASCADE')
    con.execute(SCHEMA)
    con.execute(
        "INSERT INTO meta VALUES ('schema_version', ?), ('gfwlab_version', ?)",
        [str(SCHEMA_VERSION), __version__],
    )
    con.execute("COMMIT")


def rows(
    con: duckdb.DuckDBPyConnection, sql: str, params: list[Any] | None = None
) -> tuple[list[str], list[tuple[Any, ...]]]:
    """Column names and rows of a query."""
    cur = con.execute(sql, params or [])
    names = [d[0] for d in cur.description or []]
    return names, cur.fetchall()


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
