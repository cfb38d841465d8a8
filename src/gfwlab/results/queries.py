"""The questions people ask of a results folder, as named SQL queries over its DuckDB database.

``gfwlab results DIR --query NAME`` runs one; the HTML report (:mod:`gfwlab.report`) draws its
charts and tables from the same queries, so a figure on the page is the figure in the database.
Blocking is counted in OONI's Web Connectivity terms: a measurement is *blocked* when its
``blocking`` is ``dns``, ``tcp_ip``, ``http-failure`` or ``http-diff``; ``false`` is accessible;
``null`` (no verdict: the control failed or the measurement could not be completed) is counted
apart as ``undetermined``, never as blocked.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import duckdb

from gfwlab.results.store import ResultsError, rows

BLOCKED = "blocking IN ('dns', 'tcp_ip', 'http-failure', 'http-diff')"


@dataclass(frozen=True, slots=True)
class Query:
    name: str
    about: str
    sql: str


QUERIES: dict[str, Query] = {
    q.name: q
    for q in (
        Query(
            "runs",
            "the runs in the folder",
            """
            SELECT kind, format, gfwlab_version, started, finished, profile, date, seed,
                   array_to_string(argv, ' ') AS argv, note
            FROM runs ORDER BY started""",
        ),
        Query(
            "blocked-by-category",
            "probe: blocked share per Citizen Lab category",
            f"""
            SELECT coalesce(category_code, '?') AS category, count(*) AS measured,
                   count(*) FILTER ({BLOCKED}) AS blocked,
                   count(*) FILTER (blocking IS NULL) AS undetermined,
                   round(count(*) FILTER ({BLOCKED}) / count(*), 4) AS blocked_share
            FROM measurements GROUP BY ALL ORDER BY blocked_share DESC, category""",
        ),
        Query(
            "blocked-by-mechanism",
            "probe: blocked measurements per GFW mechanism and OONI blocking type",
            f"""
            SELECT coalesce(mechanism, '(none named)') AS mechanism, blocking,
                   count(*) AS blocked, count(*) FILTER (residual) AS residual,
                   round(count(*) / (SELECT count(*) FROM measurements), 4) AS share
            FROM measurements WHERE {BLOCKED}
            GROUP BY ALL ORDER BY blocked DESC, mechanism, blocking""",
        ),
        Query(
            "blocked-by-day",
            "probe: blocked share per day",
            f"""
            SELECT CAST(measurement_start_time AS DATE) AS day, count(*) AS measured,
                   count(*) FILTER ({BLOCKED}) AS blocked,
                   count(*) FILTER (blocking IS NULL) AS undetermined,
                   round(count(*) FILTER ({BLOCKED}) / count(*), 4) AS blocked_share
            FROM measurements GROUP BY ALL ORDER BY day""",
        ),
        Query(
            "blocking-types",
            "probe: measurements per OONI blocking value",
            """
            SELECT coalesce(blocking, 'null') AS blocking, count(*) AS measurements,
                   count(*) FILTER (control_failure) AS control_failures
            FROM measurements GROUP BY ALL ORDER BY measurements DESC, blocking""",
        ),
        Query(
            "accuracy",
            "probe --lab: verdicts graded against the censor's events",
            """
            SELECT coalesce(truth->>'blocking', '?') AS expected,
                   coalesce(blocking, 'null') AS verdict,
                   count(*) AS measurements,
                   count(*) FILTER (correct) AS correct,
                   count(*) FILTER (NOT correct) AS wrong
            FROM measurements WHERE correct IS NOT NULL
            GROUP BY ALL ORDER BY expected, verdict""",
        ),
        Query(
            "sites",
            "probe: each site's verdict with its evidence",
            """
            SELECT input AS url, category_code AS category, coalesce(blocking, 'null') AS blocking,
                   accessible, mechanism, injector, residual, control_failure, correct,
                   array_to_string(dns_answers, ' ') AS dns_answers,
                   array_to_string(failures, ' ') AS failures, http_status
            FROM measurements ORDER BY idx""",
        ),
        Query(
            "events-by-mechanism",
            "censor: events per mechanism and action",
            """
            SELECT mechanism, action, count(*) AS events,
                   count(DISTINCT (proto, src, sport, dst, dport)) AS flows,
                   count(*) FILTER (residual_until IS NOT NULL AND NOT residual)
                       AS residual_windows,
                   count(*) FILTER (residual) AS residual_hits,
                   make_timestamp(CAST(min(ts) * 1e6 AS BIGINT)) AS first,
                   make_timestamp(CAST(max(ts) * 1e6 AS BIGINT)) AS last
            FROM events GROUP BY ALL ORDER BY events DESC, mechanism, action""",
        ),
        Query(
            "flows-by-mechanism",
            "censor: flows acted on per mechanism and action",
            """
            SELECT mechanism, action, count(*) AS flows FROM verdicts
            GROUP BY ALL ORDER BY flows DESC, mechanism, action""",
        ),
        Query(
            "verdicts",
            "censor: what it did to each flow, with the evidence",
            """
            SELECT round(first_ts - (SELECT min(ts) FROM events), 3) AS t,
                   proto, src, sport, dst, dport, mechanism, action, rule, injector, name,
                   array_to_string(forged_ips, ' ') AS forged_ips, residual,
                   round(residual_until - first_ts, 3) AS residual_s, events, citation
            FROM verdicts ORDER BY first_ts, src, sport""",
        ),
        Query(
            "residual-windows",
            "censor: residual blocks, start and end",
            """
            SELECT mechanism, rule, src, dst, dport, ts AS start, residual_until AS until,
                   round(residual_until - ts, 3) AS seconds
            FROM events WHERE residual_until IS NOT NULL AND NOT residual
            ORDER BY ts""",
        ),
        Query(
            "injectors",
            "censor: forged packets per injector type",
            """
            SELECT mechanism, coalesce(injector, '?') AS injector, action, count(*) AS events
            FROM events WHERE action IN ('rst', 'dns-inject') GROUP BY ALL
            ORDER BY events DESC, mechanism, injector""",
        ),
        Query(
            "anomalies",
            "censor: traffic it could not parse",
            """
            SELECT rule AS kind, count(*) AS events FROM events WHERE action = 'anomaly'
            GROUP BY ALL ORDER BY events DESC, kind""",
        ),
        Query(
            "tools-matrix",
            "tools: each tool x date cell",
            """
            SELECT tool, date, outcome, successes, trials, rate, ci_lo, ci_hi,
                   array_to_string(mechanisms, ', ') AS mechanisms, trial_mode, citation
            FROM tool_cells ORDER BY tool, date""",
        ),
        Query(
            "evasion-matrix",
            "evasion: each strategy against the censor",
            """
            SELECT date, family, strategy, published, successes, trials,
                   round(successes / trials, 4) AS rate, lo, hi, passes, mode, note
            FROM evasion ORDER BY idx""",
        ),
    )
}


def run_query(con: duckdb.DuckDBPyConnection, name: str) -> tuple[list[str], list[tuple[Any, ...]]]:
    """Columns and rows of the named query."""
    query = QUERIES.get(name)
    if query is None:
        raise ResultsError(f"--query: unknown query {name!r}; one of: {', '.join(QUERIES)}")
    return rows(con, query.sql)


def run_sql(con: duckdb.DuckDBPyConnection, sql: str) -> tuple[list[str], list[tuple[Any, ...]]]:
    """Columns and rows of the user's own SQL (the database is opened read-only for it)."""
    try:
        return rows(con, sql)
    except duckdb.Error as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ResultsError(f"--sql: {first}") from None


def count(con: duckdb.DuckDBPyConnection, table: str) -> int:
    row = con.execute(f"SELECT count(*) FROM {table}").fetchone()
    return int(row[0]) if row else 0
