"""Results folders in DuckDB: ingest, the named queries, export, and bad input (gfwlab.results)."""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path

import duckdb
import pyarrow.parquet as pq
import pytest

from gfwlab.offline.synth import demo_traffic, merge
from gfwlab.packet.pcap import PcapWriter
from gfwlab.results.ingest import ingest_dir
from gfwlab.results.queries import QUERIES, run_query
from gfwlab.results.store import SCHEMA_VERSION, ResultsError, connect
from results_fixtures import (
    SITES,
    TOOLS,
    Ran,
    events_for,
    gfwlab_here,
    probe_folder,
    tools_folder,
    write_lines,
)

BLOCKED = ("dns", "tcp_ip", "http-failure", "http-diff")


gfwlab = gfwlab_here


def one_line_error(res: Ran, *needles: str) -> None:
    assert res.returncode == 2, (res.returncode, res.stdout, res.stderr)
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1, res.stderr
    for n in needles:
        assert n in lines[0], (n, lines[0])


def test_probe_folder_loads_and_queries_match_the_files(tmp_path: Path) -> None:
    folder = probe_folder(tmp_path / "probe")
    info = ingest_dir(folder)
    assert info.loaded and info.kind == "probe"
    assert info.counts["measurements"] == len(SITES)
    assert info.counts["events"] == len(events_for(SITES))
    con = connect(folder, read_only=True)
    cols, rows = run_query(con, "blocked-by-category")
    got = {r[0]: dict(zip(cols, r, strict=True)) for r in rows}
    for cat in {s[1] for s in SITES}:
        of_cat = [s for s in SITES if s[1] == cat]
        blocked = sum(s[2] in BLOCKED for s in of_cat)
        assert got[cat]["measured"] == len(of_cat)
        assert got[cat]["blocked"] == blocked
        assert got[cat]["undetermined"] == sum(s[2] is None for s in of_cat)
        assert got[cat]["blocked_share"] == pytest.approx(blocked / len(of_cat), abs=1e-4)
    # the control failure is never counted as blocked
    assert got["MILX"]["blocked"] == 0 and got["MILX"]["undetermined"] == 1
    cols, rows = run_query(con, "blocked-by-mechanism")
    want = Counter((s[4], s[2]) for s in SITES if s[2] in BLOCKED)
    assert {(r[0], r[1]): r[2] for r in rows} == dict(want)
    cols, rows = run_query(con, "blocked-by-day")
    assert [r[1] for r in rows] == [6, 5]
    cols, rows = run_query(con, "accuracy")
    assert sum(r[cols.index("wrong")] for r in rows) == 1
    cols, rows = run_query(con, "verdicts")
    acted = [e for e in events_for(SITES) if e["action"] != "anomaly"]
    assert len(rows) == len(acted)
    dns = next(r for r in rows if r[cols.index("mechanism")] == "dns_injection")
    assert dns[cols.index("forged_ips")] == "59.24.3.174 208.77.47.172"
    cols, rows = run_query(con, "residual-windows")
    assert len(rows) == sum(1 for e in acted if e["residual_until"] and not e.get("residual"))
    cols, rows = run_query(con, "sites")
    by_url = {r[0]: dict(zip(cols, r, strict=True)) for r in rows}
    assert by_url["https://www.google.com/"]["dns_answers"] == "59.24.3.174 208.77.47.172"
    assert "connection_reset" in by_url["https://www.facebook.com/"]["failures"]
    con.close()


def test_every_named_query_runs_on_every_kind_of_folder(tmp_path: Path) -> None:
    for folder in (probe_folder(tmp_path / "p"), tools_folder(tmp_path / "t")):
        ingest_dir(folder)
        con = connect(folder, read_only=True)
        for name in QUERIES:
            run_query(con, name)
        con.close()


def test_ingest_is_idempotent_and_follows_changes(tmp_path: Path) -> None:
    folder = probe_folder(tmp_path / "probe")
    first = ingest_dir(folder)
    again = ingest_dir(folder)
    assert not again.loaded and again.counts == first.counts and again.run_id == first.run_id
    lines = (folder / "measurements.jsonl").read_text().splitlines()
    (folder / "measurements.jsonl").write_text("\n".join(lines[:4]) + "\n")
    changed = ingest_dir(folder)
    assert changed.loaded and changed.counts["measurements"] == 4
    assert changed.counts["runs"] == 1 and changed.counts["events"] == first.counts["events"]


def test_tools_cells(tmp_path: Path) -> None:
    folder = tools_folder(tmp_path / "tools")
    info = ingest_dir(folder)
    assert info.counts["tool_cells"] == len(TOOLS) * 3
    con = connect(folder, read_only=True)
    cols, rows = run_query(con, "tools-matrix")
    degraded = [(r[0], r[1]) for r in rows if r[cols.index("outcome")] == "degraded"]
    assert degraded == [("shadowsocks-libev", "2022-06-01"), ("v2ray-vmess-tcp", "2022-06-01")]
    con.close()


def test_export_parquet_and_jsonl(tmp_path: Path) -> None:
    folder = probe_folder(tmp_path / "probe")
    res = gfwlab("results", str(folder), "--export", "parquet", "--out", str(tmp_path / "pq"))
    assert res.returncode == 0, res.stderr
    assert pq.read_table(tmp_path / "pq" / "measurements.parquet").num_rows == len(SITES)
    assert pq.read_table(tmp_path / "pq" / "events.parquet").num_rows == len(events_for(SITES))
    out = tmp_path / "cat.jsonl"
    res = gfwlab("results", str(folder), "-q", "blocked-by-category", "--export", "jsonl",
                 "--out", str(out))  # fmt: skip
    assert res.returncode == 0, res.stderr
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    assert len(lines) == len({s[1] for s in SITES})
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".")]


def test_results_command_json_and_sql(tmp_path: Path) -> None:
    folder = probe_folder(tmp_path / "probe")
    res = gfwlab("results", str(folder), "-q", "events-by-mechanism", "--json")
    assert res.returncode == 0, res.stderr
    got = {
        (r["mechanism"], r["action"]): r["events"] for r in map(json.loads, res.stdout.splitlines())
    }
    assert got == dict(Counter((e["mechanism"], e["action"]) for e in events_for(SITES)))
    res = gfwlab(
        "results", str(folder), "--sql", "SELECT count(*) AS n FROM measurements", "--json"
    )
    assert json.loads(res.stdout) == {"n": len(SITES)}
    res = gfwlab("results", str(folder))
    assert res.returncode == 0 and "blocked-by-category" in res.stdout
    one_line_error(gfwlab("results", str(folder), "--sql", "DROP TABLE runs"), "--sql")
    one_line_error(gfwlab("results", str(folder), "-q", "nope"), "--query", "nope")


def test_analyze_writes_a_results_folder(tmp_path: Path) -> None:
    cap = tmp_path / "in.pcap"
    with PcapWriter(str(cap)) as w:
        for ts, pkt in merge(*(p for _w, p in demo_traffic())):
            w.write(1_717_200_000.0 + ts, pkt)
    folder = tmp_path / "res"
    res = gfwlab("analyze", str(cap), "--date", "2024-06-01", "--results", str(folder), "--json")
    assert res.returncode == 0, res.stderr
    summary = json.loads(res.stdout)
    run = json.loads((folder / "run.json").read_text())
    assert run["kind"] == "analyze" and run["format"] == 1 and run["date"] == "2024-06-01"
    con = connect(folder, read_only=True)
    _cols, rows = run_query(con, "verdicts")
    assert len(rows) == len(summary["verdicts"])
    n_events = sum(1 for _ in (folder / "events.jsonl").open())
    assert con.execute("SELECT count(*) FROM events").fetchone() == (n_events,)
    # every forged packet of the censored capture is matched to the rst event that forged it
    forged = con.execute("SELECT count(*) FROM forged").fetchone()
    assert forged is not None and forged[0] == summary["injected"] - _dns_answers(folder)
    con.close()


def _dns_answers(folder: Path) -> int:
    return sum(
        len(e.get("answers", []))
        for e in map(json.loads, (folder / "events.jsonl").read_text().splitlines())
    )


# --- bad input: one line, exit 2, never misread ------------------------------------------


def test_folder_without_results(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("hello")
    one_line_error(gfwlab("results", str(tmp_path)), str(tmp_path), "no results here")
    one_line_error(gfwlab("report", str(tmp_path)), "no results here")
    one_line_error(gfwlab("results", str(tmp_path / "missing")), "not a folder")
    assert not (tmp_path / "results.duckdb").exists()


@pytest.mark.parametrize(
    ("run", "needle"),
    [
        ({"kind": "probe", "format": 2}, "format 2 is newer"),
        ({"kind": "probe"}, "'format' missing"),
        ({"kind": "probe", "format": "1"}, "'format' missing or not an integer"),
        ({"kind": "probe", "format": 0}, "format 0"),
        ({"kind": "telepathy", "format": 1}, "'kind'"),
        ({"kind": "probe", "format": 1, "date": "yesterday"}, "'date'"),
    ],
)
def test_unknown_or_bad_run_json_is_refused(tmp_path: Path, run: dict, needle: str) -> None:
    folder = probe_folder(tmp_path / "p")
    (folder / "run.json").write_text(json.dumps(run))
    one_line_error(gfwlab("results", str(folder)), "run.json", needle)
    if run.get("format") == 2:
        one_line_error(gfwlab("report", str(folder)), "run.json", needle)
        assert not (folder / "report.html").exists()


def test_bad_lines_name_file_and_line(tmp_path: Path) -> None:
    folder = probe_folder(tmp_path / "p")
    path = folder / "events.jsonl"
    lines = path.read_text().splitlines()
    path.write_text("\n".join([*lines[:2], "{not json", *lines[2:]]) + "\n")
    one_line_error(gfwlab("results", str(folder)), "events.jsonl:3", "not a JSON line")
    write_lines(path, [{"ts": 1.0, "mechanism": "x", "action": "rst"}])
    one_line_error(gfwlab("results", str(folder)), "events.jsonl:1", "'flow' missing")
    probe_folder(folder)
    m = json.loads((folder / "measurements.jsonl").read_text().splitlines()[0])
    m["test_name"] = "dns_consistency"
    write_lines(folder / "measurements.jsonl", [m])
    one_line_error(gfwlab("results", str(folder)), "measurements.jsonl:1", "test_name")
    m["test_name"], m["test_keys"]["blocking"] = "web_connectivity", "maybe"
    write_lines(folder / "measurements.jsonl", [m])
    one_line_error(gfwlab("results", str(folder)), "measurements.jsonl:1", "blocking")


def test_a_failed_ingest_keeps_the_previous_load(tmp_path: Path) -> None:
    folder = probe_folder(tmp_path / "p")
    before = ingest_dir(folder).counts
    (folder / "events.jsonl").write_text("{broken\n")
    with pytest.raises(ResultsError, match=r"events\.jsonl:1"):
        ingest_dir(folder)
    con = connect(folder, read_only=True)
    assert con.execute("SELECT count(*) FROM events").fetchone() == (before["events"],)
    con.close()


def test_corrupt_database(tmp_path: Path) -> None:
    folder = probe_folder(tmp_path / "p")
    (folder / "results.duckdb").write_bytes(b"this is not a database" * 500)
    one_line_error(gfwlab("results", str(folder)), "results.duckdb", "DuckDB")
    one_line_error(gfwlab("report", str(folder)), "results.duckdb")


def test_database_schema_versions(tmp_path: Path) -> None:
    folder = probe_folder(tmp_path / "p")
    ingest_dir(folder)
    con = duckdb.connect(str(folder / "results.duckdb"))
    con.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", [str(SCHEMA_VERSION + 1)])
    con.close()
    one_line_error(gfwlab("results", str(folder)), "schema version", "newer")
    # an older schema is rebuilt from the files, not misread
    con = duckdb.connect(str(folder / "results.duckdb"))
    con.execute("UPDATE meta SET value = '0' WHERE key = 'schema_version'")
    con.execute("DELETE FROM measurements")
    con.close()
    assert ingest_dir(folder).counts["measurements"] == len(SITES)
    # a DuckDB file that is not gfwlab's
    other = tmp_path / "o"
    probe_folder(other)
    con = duckdb.connect(str(other / "results.duckdb"))
    con.execute("CREATE TABLE t (x INTEGER)")
    con.close()
    one_line_error(gfwlab("results", str(other)), "not a gfwlab results database")


def test_events_only_folder_is_read_as_format_0(tmp_path: Path) -> None:
    folder = tmp_path / "old"
    folder.mkdir()
    write_lines(folder / "events.jsonl", events_for(SITES))
    res = gfwlab("results", str(folder), "-q", "events-by-mechanism", "--json")
    assert res.returncode == 0, res.stderr
    assert "format 0" in res.stderr
    assert sum(json.loads(x)["events"] for x in res.stdout.splitlines()) == len(events_for(SITES))


def test_report_to_an_unwritable_place(tmp_path: Path) -> None:
    folder = probe_folder(tmp_path / "p")
    one_line_error(
        gfwlab("report", str(folder), "--out", str(tmp_path / "no" / "r.html")), "r.html"
    )
    one_line_error(gfwlab("report", str(folder), "--out", str(tmp_path)), "is a directory")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p"]
    assert not [p.name for p in folder.iterdir() if p.name.startswith(".")]
