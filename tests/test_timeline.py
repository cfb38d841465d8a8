"""The timeline picture: one mark per mechanism window, and docs/timeline.svg is current."""

from __future__ import annotations

import html
import re
import subprocess
import sys
from pathlib import Path

from gfwlab.profiles import load_profile
from gfwlab.profiles.timeline import draw, mark_artists, marks, write

DOC = Path(__file__).resolve().parent.parent / "docs" / "timeline.svg"


def test_one_mark_per_window() -> None:
    prof = load_profile("gfw")
    fig, drawn = draw(prof)
    assert [m.mechanism for m in drawn] == list(prof.mechanisms)
    assert sorted(mark_artists(fig)) == sorted(f"gfwlab-mark-{n}" for n in prof.mechanisms)
    kinds = {m.mechanism: m.kind for m in marks(prof)}
    assert kinds["unconditional_rst_443"] == "event" and kinds["ip_port_rst"] == "event"
    assert kinds["tls_in_tls"] == "off" and kinds["tls_sni"] == "span"


def test_docs_timeline_is_current(tmp_path: Path) -> None:
    fresh = tmp_path / "timeline.svg"
    got = subprocess.run(
        [sys.executable, "-m", "gfwlab", "mechanisms", "--timeline", str(fresh)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert got.returncode == 0, got.stderr
    svg = fresh.read_text()
    for name in load_profile("gfw").mechanisms:
        assert f'id="gfwlab-mark-{name}"' in svg
    # What the chart says (its marks and its text), not its bytes: another matplotlib may draw
    # the same chart with other path data.
    assert _content(DOC.read_text()) == _content(svg), (
        "docs/timeline.svg is stale: python -m gfwlab.profiles.timeline docs/timeline.svg"
    )


def _content(svg: str) -> tuple[list[str], list[str]]:
    ids = re.findall(r'id="(gfwlab-mark-[^"]+)"', svg)
    texts = [html.unescape(t).strip() for t in re.findall(r"<text[^>]*>([^<]*)</text>", svg)]
    return ids, [t for t in texts if t]


def test_png_and_network(tmp_path: Path) -> None:
    png = tmp_path / "t.png"
    write(load_profile("gfw", network="cernet"), str(png), "cernet")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
