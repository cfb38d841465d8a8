"""The report's charts, as Vega-Lite specifications built with Altair from the results database.

Every chart's data is a query over ``DIR/results.duckdb`` (:mod:`gfwlab.results.queries`), so a
mark on the page is a row in the database: the browser test counts them against the same
queries. Each function returns None where the folder has nothing to draw.
"""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass
from typing import Any

import altair as alt
import duckdb

from gfwlab.mechanisms._forge import FINGERPRINTS, RST_DELAY_MS, TTL_RECEIVED
from gfwlab.results.queries import run_query
from gfwlab.results.store import rows

alt.data_transformers.disable_max_rows()

TIMELINE_LIMIT = 5000
"""Events drawn on the timeline at most (a longer run shows its first ones, and says so)."""
OUTCOME_COLOURS = {
    "works": "#2ca02c",
    "degraded": "#ff7f0e",
    "blocked": "#d62728",
    "no-published-mechanism": "#9edae5",
    "hypothesis-only": "#c5b0d5",
    "skipped": "#c7c7c7",
}


@dataclass(frozen=True, slots=True)
class Chart:
    """One chart of the page."""

    key: str
    """Its element id is ``chart-KEY``."""
    title: str
    spec: dict[str, Any]
    note: str = ""


def _data(values: list[dict[str, Any]]) -> Any:
    """Inline data for a chart (Altair's Data is untyped)."""
    return alt.Data(values=values)  # type: ignore[no-untyped-call]


def _records(cols: list[str], data: list[tuple[Any, ...]]) -> list[dict[str, Any]]:
    return [dict(zip(cols, (_plain(v) for v in r), strict=True)) for r in data]


def _plain(v: Any) -> Any:
    if isinstance(v, int | float | str | bool) or v is None:
        return v
    return str(v)


def _spec(chart: alt.TopLevelMixin) -> dict[str, Any]:
    spec: dict[str, Any] = chart.to_dict()
    return spec


def _bars(
    query: str,
    con: duckdb.DuckDBPyConnection,
    key: str,
    title: str,
    *,
    x: Any,
    y: Any,
    tooltip: list[Any],
    color: Any = None,
    width: Any = 520,
    least: int = 1,
) -> Chart | None:
    """A bar chart of one named query's rows (None with fewer than ``least`` rows)."""
    data = _records(*run_query(con, query))
    if len(data) < least:
        return None
    encoding: dict[str, Any] = {"x": x, "y": y, "tooltip": tooltip}
    if color is not None:
        encoding["color"] = color
    chart = alt.Chart(_data(data)).mark_bar().encode(**encoding).properties(width=width)
    return Chart(key, title, _spec(chart))


def _share() -> dict[str, Any]:
    """The axis of a blocked share: a percentage from 0 to 1."""
    return {
        "title": "blocked share",
        "axis": alt.Axis(format="%"),
        "scale": alt.Scale(domain=[0, 1]),
    }


def blocked_by_category(con: duckdb.DuckDBPyConnection) -> Chart | None:
    """Probe: the share of measurements blocked per Citizen Lab category (one bar each)."""
    return _bars(
        "blocked-by-category", con, "category", "Blocked share per category",
        x=alt.X("blocked_share:Q", **_share()),
        y=alt.Y("category:N", sort="-x", title="category"),
        tooltip=["category:N", "measured:Q", "blocked:Q", "undetermined:Q",
                 alt.Tooltip("blocked_share:Q", format=".1%")],
    )  # fmt: skip


def blocked_by_day(con: duckdb.DuckDBPyConnection) -> Chart | None:
    """Probe: the blocked share per day (one bar each), for runs over more than one day."""
    return _bars(
        "blocked-by-day", con, "day", "Blocked share per day",
        x=alt.X("day:O", title="day"),
        y=alt.Y("blocked_share:Q", **_share()),
        tooltip=["day:O", "measured:Q", "blocked:Q", "undetermined:Q",
                 alt.Tooltip("blocked_share:Q", format=".1%")],
        width=alt.Step(40), least=2,
    )  # fmt: skip


def blocked_by_mechanism(con: duckdb.DuckDBPyConnection) -> Chart | None:
    """Probe: blocked measurements per GFW mechanism, split by OONI blocking type (one bar
    segment per mechanism and type)."""
    return _bars(
        "blocked-by-mechanism", con, "mechanism", "Blocked measurements per mechanism",
        x=alt.X("blocked:Q", title="blocked measurements"),
        y=alt.Y("mechanism:N", sort="-x", title="mechanism (gfwlab's attribution)"),
        color=alt.Color("blocking:N", title="OONI blocking"),
        tooltip=["mechanism:N", "blocking:N", "blocked:Q", "residual:Q",
                 alt.Tooltip("share:Q", format=".1%")],
    )  # fmt: skip


def flows_by_mechanism(con: duckdb.DuckDBPyConnection) -> Chart | None:
    """Censor: flows acted on per mechanism and action (one bar segment each)."""
    return _bars(
        "flows-by-mechanism", con, "flows", "Flows the censor acted on, per mechanism",
        x=alt.X("flows:Q", title="flows acted on"),
        y=alt.Y("mechanism:N", sort="-x"),
        color=alt.Color("action:N"),
        tooltip=["mechanism:N", "action:N", "flows:Q"],
    )  # fmt: skip


def timeline(con: duckdb.DuckDBPyConnection) -> Chart | None:
    """Censor: every event on a time line per mechanism (one point each), and every residual
    block as a span from the event that started it to its end (spec §1, §3, §4a: residual
    windows)."""
    cols, data = rows(
        con,
        """SELECT idx, round(ts - (SELECT min(ts) FROM events), 3) AS t, mechanism, action, rule,
                  src || ':' || sport || ' → ' || dst || ':' || dport AS flow, residual
           FROM events ORDER BY idx LIMIT ?""",
        [TIMELINE_LIMIT],
    )
    if not data:
        return None
    limit = data[-1][0] if len(data) == TIMELINE_LIMIT else None
    wcols, windows = rows(
        con,
        """SELECT round(ts - (SELECT min(ts) FROM events), 3) AS start,
                  round(residual_until - (SELECT min(ts) FROM events), 3) AS until,
                  mechanism, rule, dst || ':' || dport AS server
           FROM events WHERE residual_until IS NOT NULL AND NOT residual
                 AND (? IS NULL OR idx <= ?) ORDER BY idx""",
        [limit, limit],
    )
    spans = (
        alt.Chart(_data(_records(wcols, windows)))
        .mark_rect(opacity=0.25, height=14)
        .encode(
            x=alt.X("start:Q", title="seconds since the first event"),
            x2="until:Q",
            y=alt.Y("mechanism:N"),
            color=alt.value("#d62728"),
            tooltip=["mechanism:N", "rule:N", "server:N", "start:Q", "until:Q"],
        )
    )
    points = (
        alt.Chart(_data(_records(cols, data)))
        .mark_point(filled=True, size=60)
        .encode(
            x=alt.X("t:Q"),
            y=alt.Y("mechanism:N", title="mechanism"),
            color=alt.Color("action:N"),
            shape=alt.Shape("residual:N", title="residual hit"),
            tooltip=["t:Q", "mechanism:N", "action:N", "rule:N", "flow:N", "residual:N"],
        )
    )
    layers = [spans, points] if windows else [points]
    chart = alt.layer(*layers).properties(width=640)
    note = f"the first {TIMELINE_LIMIT} events" if limit is not None else ""
    return Chart("timeline", "Events per mechanism over time; residual blocks as spans",
                 _spec(chart), note)  # fmt: skip


def injectors(con: duckdb.DuckDBPyConnection) -> Chart | None:
    """Censor: forged packets' injector types (one bar segment per mechanism and injector)."""
    return _bars(
        "injectors", con, "injectors", "Forging injectors (spec §2, §4a)",
        x=alt.X("events:Q", title="events"),
        y=alt.Y("injector:N", sort="-x", title="injector (fingerprint)"),
        color=alt.Color("mechanism:N"),
        tooltip=["mechanism:N", "injector:N", "action:N", "events:Q"],
    )  # fmt: skip


def _quantile(table: tuple[tuple[float, float], ...], share: float) -> float:
    for (s0, v0), (s1, v1) in itertools.pairwise(table):
        if s0 <= share <= s1:
            return v0 if s1 == s0 else v0 + (v1 - v0) * (share - s0) / (s1 - s0)
    return table[-1][1]


def spec_fingerprints() -> list[dict[str, Any]]:
    """The measured RST fingerprints the spec cites (§4a table, §14j), per injector type and
    quantity: low, median and high (TTL: min / median / max as received; IP-ID: the published
    range; delay to the first reset: p10 / p50 / p90, ms)."""
    out: list[dict[str, Any]] = []
    for kind in ("type1", "type2", "type3"):
        fp = FINGERPRINTS[kind]
        ttl = TTL_RECEIVED.get(kind)
        lo, mid, hi = (
            (ttl[0][1], _quantile(ttl, 0.5), ttl[-1][1])
            if ttl
            else (fp.ttl[0], fp.ttl[0], fp.ttl[1])
        )
        out.append({"injector": kind, "quantity": "TTL", "lo": lo, "mid": mid, "hi": hi})
        ip_lo, ip_hi = fp.ip_id
        out.append({"injector": kind, "quantity": "IP-ID", "lo": ip_lo, "mid": (ip_lo + ip_hi) / 2,
                    "hi": ip_hi})  # fmt: skip
        delay = RST_DELAY_MS["type2" if kind == "type2" else "type1"]
        out.append({"injector": kind, "quantity": "delay (ms)", "lo": _quantile(delay, 0.1),
                    "mid": _quantile(delay, 0.5), "hi": _quantile(delay, 0.9)})  # fmt: skip
    return out


def fingerprints(con: duckdb.DuckDBPyConnection) -> Chart | None:
    """The forged resets found in the folder's capture (TTL, IP-ID, delay after the trigger; one
    point each) next to the measured ranges the spec cites (one span per type and quantity)."""
    cols, data = rows(
        con,
        """SELECT injector, quantity, value FROM (
               SELECT coalesce(injector, '?') AS injector, ttl, ip_id, latency_ms FROM forged)
           UNPIVOT (value FOR quantity IN (ttl AS 'TTL', ip_id AS 'IP-ID',
                                           latency_ms AS 'delay (ms)'))
           ORDER BY quantity, injector""",
    )
    if not data:
        return None
    measured = _records(cols, data)
    ref = spec_fingerprints()
    base_ref = alt.Chart(_data(ref))
    spans = base_ref.mark_rule(strokeWidth=10, opacity=0.35, color="#1f77b4").encode(
        x=alt.X("lo:Q", title=None), x2="hi:Q", y=alt.Y("injector:N"),
        tooltip=["injector:N", "lo:Q", "mid:Q", "hi:Q"],
    )  # fmt: skip
    mids = base_ref.mark_tick(color="#1f77b4", thickness=2).encode(x="mid:Q", y="injector:N")
    points = (
        alt.Chart(_data(measured))
        .mark_circle(size=50, color="#d62728", opacity=0.8)
        .encode(x="value:Q", y="injector:N", tooltip=["injector:N", "quantity:N", "value:Q"])
    )
    parts = []
    for q in ("TTL", "IP-ID", "delay (ms)"):
        layer = alt.layer(
            spans.transform_filter(alt.datum.quantity == q),
            mids.transform_filter(alt.datum.quantity == q),
            points.transform_filter(alt.datum.quantity == q),
        ).properties(width=520, height=90, title=q)
        parts.append(layer)
    chart = alt.vconcat(*parts)
    return Chart(
        "fingerprints",
        "Forged resets: this run (red points) next to the measured ranges (blue: spec §4a, §14j)",
        _spec(chart),
    )


def tools_heatmap(con: duckdb.DuckDBPyConnection) -> Chart | None:
    """Tools: the tool x date matrix, one cell each, coloured by outcome, linked to its
    drill-down (issue 15)."""
    cols, data = rows(
        con,
        """SELECT idx, tool, date, outcome, successes, trials, rate,
                  array_to_string(mechanisms, ', ') AS mechanisms, '#cell-' || idx AS href
           FROM tool_cells ORDER BY idx""",
    )
    if not data:
        return None
    values = _records(cols, data)
    for v in values:
        v["label"] = "-" if v["rate"] is None else f"{v['rate']:.0%}"
    base = alt.Chart(_data(values)).encode(
        x=alt.X("date:O", title="emulated date"), y=alt.Y("tool:N", title="tool")
    )
    cells = base.mark_rect(stroke="white").encode(
        color=alt.Color("outcome:N", scale=alt.Scale(domain=list(OUTCOME_COLOURS),
                        range=list(OUTCOME_COLOURS.values()))),
        href="href:N",
        tooltip=["tool:N", "date:O", "outcome:N", "successes:Q", "trials:Q", "mechanisms:N"],
    )  # fmt: skip
    text = base.mark_text(fontSize=11).encode(text="label:N", href="href:N")
    chart = alt.layer(cells, text).properties(width=alt.Step(110), height=alt.Step(28))
    return Chart("tools", "Circumvention tools × dates (click a cell for its evidence)",
                 _spec(chart))  # fmt: skip


def evasion(con: duckdb.DuckDBPyConnection) -> Chart | None:
    """Evasion matrix: each strategy's success rate (one bar each) and its published rate."""
    cols, data = rows(
        con,
        """SELECT idx, idx || ' ' || family AS row, strategy, published,
                  successes / trials AS rate, successes, trials, passes
           FROM evasion ORDER BY idx""",
    )
    if not data:
        return None
    base = alt.Chart(_data(_records(cols, data))).encode(
        y=alt.Y("row:N", sort=None, title="strategy (row, family)")
    )
    bars = base.mark_bar().encode(
        x=alt.X("rate:Q", title="success rate", axis=alt.Axis(format="%")),
        color=alt.Color("passes:N", title="within published interval"),
        tooltip=["strategy:N", "successes:Q", "trials:Q", "published:Q"],
    )
    ticks = base.mark_tick(color="black", thickness=2).encode(x="published:Q")
    chart = alt.layer(bars, ticks).properties(width=520)
    return Chart("evasion", "Evasion strategies: success rate (bars) and published (ticks)",
                 _spec(chart))  # fmt: skip


def all_charts(con: duckdb.DuckDBPyConnection) -> list[Chart]:
    """The charts that apply to this folder, in page order."""
    makers = (
        blocked_by_category, blocked_by_mechanism, blocked_by_day, flows_by_mechanism, timeline,
        injectors, fingerprints, tools_heatmap, evasion,
    )  # fmt: skip
    return [c for c in (m(con) for m in makers) if c is not None]


def spec_json(chart: Chart) -> str:
    """The chart's specification as JSON safe inside a <script> element."""
    return json.dumps(chart.spec, ensure_ascii=False).replace("</", "<\\/")
