"""Results in an embedded database (DuckDB): the runs, measurements, events, verdicts, tool cells
and evasion rows of a results folder, one database per folder (``DIR/results.duckdb``).

- :mod:`.ingest`: the folder's file contracts and :func:`ingest_dir`;
- :mod:`.store`: the database, its schema and schema version;
- :mod:`.queries`: the named queries of ``gfwlab results`` and the HTML report;
- :mod:`.export`: Parquet and JSON Lines;
- :mod:`.folder`: writing a folder (``run.json``, JSON lines).

Import from the submodules: this package imports nothing, so ``gfwlab --help`` stays fast.
"""
