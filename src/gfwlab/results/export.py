"""Export a results database, or one query's result, to Parquet or JSON Lines.

Written by DuckDB itself (``COPY ... TO``) under a temporary name beside the target and renamed
into place when complete, so a failed export leaves nothing behind.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import duckdb

from gfwlab.results.queries import QUERIES
from gfwlab.results.store import TABLES, ResultsError

FORMATS = {"parquet": "(FORMAT PARQUET)", "jsonl": "(FORMAT JSON)"}


def export(
    con: duckdb.DuckDBPyConnection, fmt: str, out: str, query: str | None = None
) -> list[str]:
    """Write one file per table (and the ``verdicts`` view) into folder ``out``, or, with
    ``query``, that query's result to file ``out``. Returns the paths written."""
    if fmt not in FORMATS:
        raise ResultsError(f"--export: expected parquet or jsonl, got {fmt!r}")
    target = Path(out)
    parent = target.resolve().parent
    if not parent.is_dir():
        raise ResultsError(f"{out}: folder {parent} does not exist")
    if query is not None:
        if query not in QUERIES:
            raise ResultsError(f"--query: unknown query {query!r}; one of: {', '.join(QUERIES)}")
        if target.is_dir():
            raise ResultsError(f"{out}: is a folder; --query exports to a file")
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=parent)
        os.close(fd)
        try:
            _copy(con, QUERIES[query].sql, tmp, fmt)
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return [str(target)]
    if target.exists() and not target.is_dir():
        raise ResultsError(
            f"{out}: exists and is not a folder (the export writes one file per table)"
        )
    tmpdir = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=parent))
    try:
        names = []
        for table in (*TABLES, "verdicts"):
            name = f"{table}.{fmt}"
            _copy(con, f"SELECT * FROM {table}", str(tmpdir / name), fmt)
            names.append(name)
        target.mkdir(exist_ok=True)
        for name in names:
            os.replace(tmpdir / name, target / name)
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)
    return [str(target / n) for n in names]


def _copy(con: duckdb.DuckDBPyConnection, sql: str, path: str, fmt: str) -> None:
    quoted = path.replace("'", "''")
    try:
        con.execute(f"COPY ({sql}) TO '{quoted}' {FORMATS[fmt]}")
    except duckdb.Error as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ResultsError(f"{path}: export failed ({first})") from None
