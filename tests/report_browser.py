"""Open an HTML report in Debian's chromium through Playwright, and count what it drew.

A plain module (like ``helpers``): the report tests import from it. A report is opened from
disk with every network request refused; opening waits for the page to say its charts are
drawn, fails on any console error or page error, and keeps a screenshot in
``test-artifacts/report-NAME.png`` (ignored by git; the path is printed).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gfwlab.report.html import TABLE_LIMIT
from gfwlab.results.store import connect

CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"

needs_chromium = pytest.mark.skipif(
    not Path(CHROMIUM).exists(), reason=f"{CHROMIUM} missing (apt-get install chromium)"
)

COUNT_MARKS = """(id) => {
  const out = {};
  document.querySelectorAll('#' + id + ' g.role-mark').forEach((g) => {
    const kind = [...g.classList].find((c) => c.startsWith('mark-'));
    const items = g.querySelectorAll(':scope > path, :scope > text, :scope > line');
    out[kind] = (out[kind] || 0) + items.length;
  });
  return out;
}"""


class Page:
    """One report, opened and drawn."""

    def __init__(self, page: Any, errors: list[str], requests: list[str]) -> None:
        self.page, self.errors, self.requests = page, errors, requests

    def marks(self, key: str) -> dict[str, int]:
        got: dict[str, int] = self.page.evaluate(COUNT_MARKS, f"chart-{key}")
        return got

    def rows(self, key: str) -> int:
        n: int = self.page.locator(f"#table-{key} tbody tr").count()
        return n

    def charts(self) -> list[str]:
        ids: list[str] = self.page.evaluate(
            "Array.from(document.querySelectorAll('.chart')).map((e) => e.id)"
        )
        return ids


def launch() -> Iterator[Any]:
    """Chromium under Playwright, for a module-scoped ``browser`` fixture (``yield from``)."""
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield b
        b.close()


def open_report(browser: Any, report: Path, name: str) -> Page:
    errors: list[str] = []
    requests: list[str] = []
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.on(
        "console",
        lambda m: errors.append(f"console.{m.type}: {m.text}") if m.type == "error" else None,
    )
    page.on("pageerror", lambda e: errors.append(f"pageerror: {e}"))

    def refuse(route: Any) -> None:
        if not route.request.url.startswith("file://"):
            requests.append(route.request.url)
            route.abort()
        else:
            route.continue_()

    page.route("**/*", refuse)
    page.goto(report.as_uri())
    page.wait_for_selector("body[data-rendered=yes], body[data-rendered=error]", timeout=60_000)
    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / f"report-{name}.png"
    page.screenshot(path=str(shot), full_page=True)
    print(f"screenshot: {shot}")
    assert page.evaluate("document.body.dataset.rendered") == "yes", errors
    assert errors == []
    assert requests == [], "the report asked the network for " + ", ".join(requests)
    return Page(page, errors, requests)


def q(folder: Path, sql: str) -> Any:
    con = connect(folder, read_only=True)
    try:
        row = con.execute(sql).fetchone()
        return row[0] if row else None
    finally:
        con.close()


def check_censor(p: Page, folder: Path) -> None:
    events = q(folder, "SELECT count(*) FROM events")
    windows = q(
        folder, "SELECT count(*) FROM events WHERE residual_until IS NOT NULL AND NOT residual"
    )
    marks = p.marks("timeline")
    assert marks.get("mark-symbol") == events
    assert marks.get("mark-rect", 0) == windows
    flows = q(folder, "SELECT count(*) FROM (SELECT DISTINCT mechanism, action FROM verdicts)")
    assert p.marks("flows") == {"mark-rect": flows}
    assert p.rows("verdicts") == min(TABLE_LIMIT, q(folder, "SELECT count(*) FROM verdicts"))
    assert p.rows("events") == q(
        folder, "SELECT count(*) FROM (SELECT DISTINCT mechanism, action FROM events)"
    )
    injectors = q(
        folder,
        "SELECT count(*) FROM (SELECT DISTINCT mechanism, coalesce(injector, '?'), action "
        "FROM events WHERE action IN ('rst', 'dns-inject'))",
    )
    assert p.marks("injectors") == {"mark-rect": injectors}
