"""The HTML report in a real headless browser: Debian's chromium, driven by Playwright.

Each report is opened from disk with every network request refused; the test waits for the
page to say its charts are drawn, fails on any console error or page error, counts the rendered
marks of each chart and the rows of each table against the same figures queried from the
folder's DuckDB database, and keeps a screenshot (``test-artifacts/report-*.png``, ignored by git;
the path is printed).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gfwlab.offline.synth import demo_traffic, merge
from gfwlab.packet.pcap import PcapWriter
from gfwlab.report.html import write_report
from report_browser import check_censor, launch, needs_chromium, open_report, q
from results_fixtures import gfwlab_here, probe_folder, tools_folder

pytestmark = needs_chromium


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    yield from launch()


def test_probe_report_in_a_browser(browser: Any, tmp_path: Path) -> None:
    folder = probe_folder(tmp_path / "probe")
    report = Path(write_report(folder))
    p = open_report(browser, report, "probe")
    assert p.charts() == ["chart-category", "chart-mechanism", "chart-day", "chart-flows",
                          "chart-timeline", "chart-injectors"]  # fmt: skip
    categories = q(folder, "SELECT count(DISTINCT category_code) FROM measurements")
    assert p.marks("category") == {"mark-rect": categories}
    segments = q(
        folder,
        "SELECT count(*) FROM (SELECT DISTINCT mechanism, blocking FROM measurements "
        "WHERE blocking NOT IN ('false'))",
    )
    assert p.marks("mechanism") == {"mark-rect": segments}
    days = q(
        folder, "SELECT count(DISTINCT CAST(measurement_start_time AS DATE)) FROM measurements"
    )
    assert days == 2 and p.marks("day") == {"mark-rect": days}
    assert p.rows("sites") == q(folder, "SELECT count(*) FROM measurements")
    facebook = p.page.locator("#table-sites tbody tr").first.inner_text()
    assert "tls_sni rst" in facebook and "spec §4a" in facebook
    bbc = p.page.locator("#table-sites tbody tr").nth(5)  # unblocked: no event of the censor's
    assert "bbc" in bbc.inner_text() and bbc.locator("td").nth(12).inner_text() == "-"
    assert p.rows("accuracy") == q(
        folder,
        "SELECT count(*) FROM (SELECT DISTINCT truth->>'blocking', blocking FROM measurements "
        "WHERE correct IS NOT NULL)",
    )
    check_censor(p, folder)
    # the evidence is on the page: forged addresses and the citation of each flow
    text = p.page.inner_text("#table-verdicts")
    assert "59.24.3.174 208.77.47.172" in text and "spec §4a" in text


def test_analyze_report_with_fingerprints_in_a_browser(browser: Any, tmp_path: Path) -> None:
    cap = tmp_path / "in.pcap"
    with PcapWriter(str(cap)) as w:
        for ts, pkt in merge(*(p for _w, p in demo_traffic())):
            w.write(1_717_200_000.0 + ts, pkt)
    folder = tmp_path / "res"
    res = gfwlab_here("analyze", str(cap), "--date", "2024-06-01", "--results", str(folder))
    assert res.returncode == 0, res.stderr
    report = Path(write_report(folder, str(tmp_path / "analyze.html")))
    p = open_report(browser, report, "analyze")
    check_censor(p, folder)
    # one point per measured TTL, IP-ID and (toward the client) delay of every forged reset;
    # one span and one median tick per spec injector type and quantity (3 x 3)
    values = q(folder, "SELECT count(ttl) + count(ip_id) + count(latency_ms) FROM forged")
    assert values > 0
    assert p.marks("fingerprints") == {"mark-symbol": values, "mark-rule": 9, "mark-rect": 9}


def test_tools_report_heat_map_and_drill_down(browser: Any, tmp_path: Path) -> None:
    folder = tools_folder(tmp_path / "tools")
    report = Path(write_report(folder))
    p = open_report(browser, report, "tools")
    cells = q(folder, "SELECT count(*) FROM tool_cells")
    assert p.marks("tools") == {"mark-rect": cells, "mark-text": cells}
    assert p.rows("tools") == cells
    # a cell links to its drill-down row, which shows the first packet that gave the tool away
    idx = q(folder, "SELECT idx FROM tool_cells WHERE first_packet IS NOT NULL ORDER BY idx")
    cell = p.page.locator("#chart-tools g.mark-rect.role-mark path").nth(idx)
    box = cell.bounding_box()
    assert box is not None
    p.page.mouse.click(box["x"] + box["width"] * 0.2, box["y"] + box["height"] * 0.3)
    assert p.page.evaluate("location.hash") == f"#cell-{idx}"
    row = p.page.locator(f"#cell-{idx}")
    assert "fet" in row.inner_text()
    row.locator("summary").click()
    fp = json.loads(q(folder, f"SELECT first_packet FROM tool_cells WHERE idx = {idx}"))
    assert fp["hex"] in row.inner_text()


def test_report_command_writes_one_file(tmp_path: Path) -> None:
    folder = probe_folder(tmp_path / "probe")
    out = tmp_path / "r.html"
    res = gfwlab_here("report", str(folder), "--out", str(out))
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip().endswith(str(out))
    head = out.read_text().split("<script>")[0]
    assert "<script src" not in head and "<link" not in head  # the browser tests refuse the rest
    assert sorted(x.name for x in tmp_path.iterdir()) == ["probe", "r.html"]
    shutil.rmtree(folder)


def test_evasion_matrix_report(browser: Any, tmp_path: Path) -> None:
    folder = tmp_path / "ev"
    res = gfwlab_here("evade", "library", "--offline", "--trials", "5", "--results", str(folder))
    assert res.returncode == 0, res.stderr
    run = json.loads((folder / "run.json").read_text())
    assert run["kind"] == "evade-matrix" and run["date"] == "2020-01-15"
    p = open_report(browser, Path(write_report(folder)), "evasion")
    rows = q(folder, "SELECT count(*) FROM evasion")
    assert rows == 25
    assert p.marks("evasion") == {"mark-rect": 2 * rows}  # a bar and a published-rate tick each
    assert p.rows("evasion") == rows


def test_offline_demo_ends_with_its_report(browser: Any, tmp_path: Path) -> None:
    folder = tmp_path / "demo"
    res = gfwlab_here("demo", "--offline", "--dir", str(folder))
    assert res.returncode == 0, res.stderr
    last = res.stdout.strip().splitlines()[-1]
    assert last == f"report: {folder / 'report.html'}"
    assert json.loads((folder / "run.json").read_text())["kind"] == "analyze"
    p = open_report(browser, folder / "report.html", "demo-offline")
    check_censor(p, folder)
