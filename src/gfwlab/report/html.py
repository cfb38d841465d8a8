"""``gfwlab report DIR``: one self-contained HTML page of a results folder.

The page needs no network: the Vega, Vega-Lite and Vega-Embed libraries are inlined (the bundle
``vl-convert-python`` ships, made offline), and so is every chart's data, queried from the
folder's DuckDB database (:mod:`gfwlab.results`). It shows what applies to the folder: a probe
run's blocked share per category and per mechanism and its per-site evidence; a censor's events
on a time line with residual windows as spans, its per-flow verdicts with their evidence and
citations, the forged resets' fingerprints next to the spec's measured ones (§4a, §14j); a tools
matrix as a heat map with a drill-down per cell; an evasion matrix. When every chart has been
drawn the page sets ``data-rendered="yes"`` on its body (``data-rendered="error"`` if one
failed), which is what the browser test waits for.
"""

from __future__ import annotations

import functools
import html
import json
import os
from pathlib import Path
from typing import Any

import duckdb

from gfwlab._outfile import OutputFile
from gfwlab.report import charts
from gfwlab.results.ingest import ingest_dir
from gfwlab.results.queries import run_query
from gfwlab.results.store import connect, rows

TABLE_LIMIT = 2000
"""Rows shown per table (the rest are in the database: ``gfwlab results --export``)."""


_GLOBALS = "window.vegaEmbed = vegaEmbed; window.vega = vega; window.vegaLite = vegaLite;"


@functools.cache
def vega_bundle() -> str:
    """Vega, Vega-Lite and Vega-Embed as one script that sets ``window.vegaEmbed``."""
    import altair as alt  # noqa: PLC0415
    import vl_convert as vlc  # noqa: PLC0415

    want = ".".join(alt.SCHEMA_VERSION.lstrip("v").split(".")[:2])
    version = want if want in vlc.get_vegalite_versions() else None
    bundle: str = vlc.javascript_bundle(_GLOBALS, version)
    return bundle.replace("</script", "<\\/script")


def write_report(folder: str | os.PathLike[str], out: str | None = None) -> str:
    """Ingest ``folder`` if needed and write its report (default ``folder/report.html``)."""
    info = ingest_dir(folder)
    target = out or str(Path(folder) / "report.html")
    fh = OutputFile(target)  # an unwritable target fails here, before any work
    try:
        con = connect(folder, read_only=True)
        try:
            page = render(con, info.folder, info.notes)
        finally:
            con.close()
        fh.write(page.encode())
        fh.commit()
    finally:
        fh.abort()
    return target


def render(con: duckdb.DuckDBPyConnection, folder: str, notes: list[str]) -> str:
    """The whole page."""
    drawn = charts.all_charts(con)
    run_cols, run_rows = run_query(con, "runs")
    run = dict(zip(run_cols, run_rows[0], strict=True)) if run_rows else {}
    body: list[str] = [_header(run, folder, notes)]
    by_key = {c.key: c for c in drawn}
    for section, keys, tables in _sections(con):
        present = [by_key[k] for k in keys if k in by_key]
        if not present and not tables:
            continue
        body.append(f"<section><h2>{html.escape(section)}</h2>")
        for c in present:
            note = f' <span class="note">({html.escape(c.note)})</span>' if c.note else ""
            body.append(
                f"<figure><figcaption>{html.escape(c.title)}{note}</figcaption>"
                f'<div class="chart" id="chart-{c.key}"></div></figure>'
            )
        body.extend(tables)
        body.append("</section>")
    specs = "{" + ",".join(f'"{c.key}":{charts.spec_json(c)}' for c in drawn) + "}"
    return _PAGE.format(
        title=html.escape(f"gfwlab report: {run.get('kind', '?')} run, {folder}"),
        style=_STYLE,
        body="\n".join(body),
        bundle=vega_bundle(),
        specs=specs,
    )


def _header(run: dict[str, Any], folder: str, notes: list[str]) -> str:
    items = [
        ("folder", folder),
        ("kind", run.get("kind")),
        ("profile", ", ".join(run.get("profile") or []) or "-"),
        ("emulated date", run.get("date") or "-"),
        ("seed", run.get("seed")),
        ("started", run.get("started")),
        ("finished", run.get("finished")),
        ("command", run.get("argv") or "-"),
        ("gfwlab", run.get("gfwlab_version") or "-"),
    ]
    dl = "".join(f"<dt>{html.escape(k)}</dt><dd>{html.escape(str(v))}</dd>" for k, v in items)
    note = "".join(f'<p class="note">{html.escape(n)}</p>' for n in notes)
    return f"<header><h1>gfwlab report</h1><dl>{dl}</dl>{note}</header>"


def _sections(con: duckdb.DuckDBPyConnection) -> list[tuple[str, list[str], list[str]]]:
    return [
        ("Measurements (OONI Web Connectivity)", ["category", "mechanism", "day"],
         [t for t in (_accuracy(con), _sites(con)) if t]),
        ("What the censor did", ["flows", "timeline"],
         [t for t in (_table(con, "events", "events-by-mechanism"), _verdicts(con)) if t]),
        ("Forged packets", ["injectors", "fingerprints"], []),
        ("Circumvention tools", ["tools"], [t for t in (_tools(con),) if t]),
        ("Evasion strategies", ["evasion"],
         [t for t in (_table(con, "evasion", "evasion-matrix"),) if t]),
    ]  # fmt: skip


def _cell(v: Any) -> str:
    if v is None:
        return '<td class="none">-</td>'
    if isinstance(v, bool):
        return f'<td class="{"yes" if v else "no"}">{"yes" if v else "no"}</td>'
    if isinstance(v, float):
        return f'<td class="num">{v:.4g}</td>'
    if isinstance(v, int):
        return f'<td class="num">{v}</td>'
    if isinstance(v, list):
        v = " ".join(str(x) for x in v)
    return f"<td>{html.escape(str(v))}</td>"


def _html_table(key: str, caption: str, cols: list[str], data: list[tuple[Any, ...]],
                total: int | None = None) -> str:  # fmt: skip
    head = "".join(f"<th>{html.escape(c)}</th>" for c in cols)
    body = "".join("<tr>" + "".join(_cell(v) for v in r) + "</tr>" for r in data)
    total = len(data) if total is None else total
    more = (
        f' <span class="note">(the first {len(data)} of {total}: all are in results.duckdb)</span>'
        if total > len(data)
        else ""
    )
    return (
        f'<table id="table-{key}"><caption>{html.escape(caption)}{more}</caption>'
        f"<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
    )


def _table(con: duckdb.DuckDBPyConnection, key: str, query: str) -> str | None:
    cols, data = run_query(con, query)
    if not data:
        return None
    return _html_table(key, query, cols, data)


def _accuracy(con: duckdb.DuckDBPyConnection) -> str | None:
    cols, data = run_query(con, "accuracy")
    if not data:
        return None
    return _html_table("accuracy", "verdicts against the censor's events (probe --lab)", cols, data)


def _sites(con: duckdb.DuckDBPyConnection) -> str | None:
    cols, data = rows(con, f"{_SITES} LIMIT {TABLE_LIMIT}")
    if not data:
        return None
    total = rows(con, "SELECT count(*) FROM measurements")[1][0][0]
    return _html_table("sites", "each site: verdict and evidence", cols, data, int(total))


_SITES = """
WITH ev AS (
    SELECT m.idx, string_agg(DISTINCT v.mechanism || ' ' || v.action, ', ') AS censor_events,
           string_agg(DISTINCT v.citation, ' | ') AS citation
    FROM measurements m
    JOIN verdicts v ON v.name = m.hostname OR list_contains(m.dns_answers, v.dst)
    GROUP BY m.idx)
SELECT m.input AS url, m.category_code AS category, coalesce(m.blocking, 'null') AS blocking,
       m.accessible, m.mechanism, m.injector, m.residual, m.control_failure, m.correct,
       array_to_string(m.dns_answers, ' ') AS dns_answers,
       array_to_string(m.failures, ' ') AS failures, m.http_status, ev.censor_events, ev.citation
FROM measurements m LEFT JOIN ev USING (idx) ORDER BY m.idx"""
"""Each site with its evidence and, where the folder has the censor's events (probe --lab), what
the censor did to the site's name or address, with the citation."""

_VERDICTS = """
SELECT round(first_ts - (SELECT min(ts) FROM events), 3) AS t,
       proto || ' ' || src || ':' || sport || ' → ' || dst || ':' || dport AS flow,
       mechanism, action, rule, injector, name AS trigger,
       array_to_string(forged_ips, ' ') AS forged_ips, residual,
       round(residual_until - first_ts, 1) AS residual_s, extra, citation
FROM verdicts ORDER BY first_ts, src, sport"""


def _verdicts(con: duckdb.DuckDBPyConnection) -> str | None:
    cols, data = rows(con, f"{_VERDICTS} LIMIT {TABLE_LIMIT}")
    if not data:
        return None
    total = rows(con, "SELECT count(*) FROM verdicts")[1][0][0]
    i = cols.index("extra")
    cols[i] = "evidence"
    shown = [(*r[:i], _evidence(r[i]), *r[i + 1 :]) for r in data]
    return _html_table("verdicts", "each flow: what the censor did, why, and the source",
                       cols, shown, int(total))  # fmt: skip


def _evidence(extra: Any) -> str:
    """The event's own fields (the triggering packet's SNI, Host, path, query, FET measures...)."""
    try:
        fields = json.loads(extra) if isinstance(extra, str) else extra or {}
    except ValueError:
        return str(extra)
    parts = []
    for k, v in fields.items():
        if k in ("answers", "injector", "sni", "qname", "residual"):
            continue  # shown in their own columns
        parts.append(
            f"{k}={json.dumps(v, ensure_ascii=False) if isinstance(v, dict | list) else v}"
        )
    return "; ".join(parts)


def _tools(con: duckdb.DuckDBPyConnection) -> str | None:
    cols, data = rows(
        con,
        """SELECT idx, tool, date, outcome, successes, trials, rate, ci_lo, ci_hi,
                  array_to_string(mechanisms, ', ') AS mechanisms, trial_mode, citation,
                  first_packet
           FROM tool_cells ORDER BY idx""",
    )
    if not data:
        return None
    out = ['<table id="table-tools"><caption>each cell: outcome and evidence</caption><thead><tr>']
    heads = ("tool", "date", "outcome", "successes", "rate (CI)", "mechanisms", "trial mode",
             "first packet", "citation")  # fmt: skip
    out += [f"<th>{h}</th>" for h in heads]
    out.append("</tr></thead><tbody>")
    for r in data:
        d = dict(zip(cols, r, strict=True))
        ci = "" if d["ci_lo"] is None else f" ({d['ci_lo']:.2f}–{d['ci_hi']:.2f})"
        rate = "-" if d["rate"] is None else f"{d['rate']:.0%}{ci}"
        fp = d["first_packet"]
        packet = (
            "-"
            if fp is None
            else "<details><summary>show</summary><pre>"
            + html.escape(json.dumps(json.loads(fp), indent=1, ensure_ascii=False))
            + "</pre></details>"
        )
        out.append(
            f'<tr id="cell-{d["idx"]}" class="outcome-{html.escape(d["outcome"])}">'
            f"<td>{html.escape(d['tool'])}</td><td>{html.escape(str(d['date']))}</td>"
            f'<td>{html.escape(d["outcome"])}</td><td class="num">{d["successes"]}/{d["trials"]}'
            f"</td><td>{rate}</td><td>{html.escape(d['mechanisms'] or '-')}</td>"
            f"<td>{html.escape(d['trial_mode'] or '-')}</td><td>{packet}</td>"
            f"<td>{html.escape(d['citation'] or '-')}</td></tr>"
        )
    out.append("</tbody></table>")
    return "".join(out)


_STYLE = """
body{font:14px/1.4 system-ui,sans-serif;margin:1.5em auto;max-width:1200px;color:#222;padding:0 1em}
h1{margin:0 0 .3em} h2{border-bottom:2px solid #ddd;margin-top:2em}
dl{display:grid;grid-template-columns:max-content 1fr;gap:.1em 1em;margin:0}
dt{font-weight:600} dd{margin:0;font-family:monospace;word-break:break-all}
figure{margin:1em 0} figcaption{font-weight:600;margin-bottom:.4em}
table{border-collapse:collapse;margin:1em 0;font-size:12px;width:100%}
caption{text-align:left;font-weight:600;padding:.3em 0}
th,td{border:1px solid #ddd;padding:2px 6px;vertical-align:top;text-align:left}
th{background:#f4f4f4;position:sticky;top:0} td.num{text-align:right}
td.none{color:#aaa} .note{color:#777;font-weight:normal}
tr:target{outline:3px solid #1f77b4} pre{margin:0;font-size:11px;white-space:pre-wrap}
.outcome-works td:nth-child(3){color:#2ca02c}.outcome-blocked td:nth-child(3){color:#d62728}
"""

_PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>{style}</style></head>
<body data-rendered="no">
{body}
<footer class="note">Made by gfwlab from results.duckdb; charts by Vega-Lite, inlined.</footer>
<script>{bundle}</script>
<script>
const specs = {specs};
const keys = Object.keys(specs);
const options = {{renderer: "svg", actions: false}};
Promise.all(keys.map((k) => vegaEmbed("#chart-" + k, specs[k], options)))
  .then(() => {{ document.body.dataset.rendered = "yes"; }})
  .catch((e) => {{ document.body.dataset.rendered = "error"; console.error(e); }});
</script>
</body></html>
"""
