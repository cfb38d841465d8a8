"""Live: a lab session saved as a results folder (``gfwlab lab save``), and the live demo ending
with its HTML report; each report opened in headless chromium and counted against DuckDB."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gfwlab.live.topology import SERVER_EXTRA_V4
from gfwlab.report.html import write_report
from gfwlab.results.ingest import ingest_dir
from report_browser import check_censor, launch, needs_chromium, open_report, q
from testenv import LAB_MARKS, UP, curl, gfwlab, leftovers

pytestmark = [*LAB_MARKS, needs_chromium]
SITE, OTHER = SERVER_EXTRA_V4[0], SERVER_EXTRA_V4[1]


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    yield from launch()


def test_lab_save_writes_a_results_folder(browser: Any, tmp_path: Path) -> None:
    gfwlab("lab", "down")
    up = gfwlab("lab", "up", *UP)
    assert up.returncode == 0, up.stderr
    folder = tmp_path / "session"
    try:
        blocked = curl("https://www.facebook.com/", "--resolve", f"www.facebook.com:443:{SITE}")
        assert blocked.returncode != 0
        ok = curl("https://example.org/", "--resolve", f"example.org:443:{OTHER}")
        assert ok.returncode == 0, ok.stderr
        saved = gfwlab("lab", "save", str(folder))
        assert saved.returncode == 0, saved.stderr
        events = [json.loads(x) for x in gfwlab("lab", "events").stdout.splitlines()]
    finally:
        gfwlab("lab", "down")
        assert leftovers() == []
    run = json.loads((folder / "run.json").read_text())
    assert run["kind"] == "lab" and run["date"] == "2024-06-01" and run["seed"] == 3
    assert ingest_dir(folder).counts["events"] == len(events)
    sni = [e for e in events if e["mechanism"] == "tls_sni" and e["action"] == "rst"]
    assert [e["flow"]["dst"] for e in sni] == [SITE]
    assert q(folder, "SELECT count(*) FROM verdicts WHERE mechanism = 'tls_sni'") == 1
    p = open_report(browser, Path(write_report(folder)), "lab-session")
    check_censor(p, folder)


@pytest.mark.slow
def test_live_demo_ends_with_its_report(browser: Any, tmp_path: Path) -> None:
    folder = tmp_path / "demo"
    res = gfwlab("demo", "--dir", str(folder), timeout=300)
    assert res.returncode == 0, res.stderr
    assert leftovers() == []
    assert res.stdout.strip().splitlines()[-1] == f"report: {folder / 'report.html'}"
    # The live demo probes a small list through the lab, so its folder is a probe run: the
    # probe's OONI measurements, graded against the lab session's events.
    assert json.loads((folder / "run.json").read_text())["kind"] == "probe"
    assert q(folder, "SELECT count(*) FROM verdicts WHERE mechanism = 'tls_sni'") >= 1
    assert q(folder, "SELECT count(*) FROM measurements") >= 20
    assert q(folder, "SELECT count(*) FROM measurements WHERE blocking NOT IN ('false')") >= 1
    p = open_report(browser, folder / "report.html", "demo-live")
    assert p.rows("sites") == q(folder, "SELECT count(*) FROM measurements")
    check_censor(p, folder)
