"""Domain lists at scale: loading a published list in bulk gives the same set as rule by rule."""

from __future__ import annotations

from pathlib import Path

import pytest

from gfwlab.errors import ConfigError
from gfwlab.rules.domains import DomainSet


def _both(tmp_path: Path, text: str) -> tuple[DomainSet, DomainSet]:
    path = tmp_path / "list.txt"
    path.write_text(text, encoding="utf-8")
    with open(path, encoding="utf-8") as fh:
        by_line = DomainSet(fh, source=str(path))
    return DomainSet.from_file(str(path)), by_line


@pytest.mark.parametrize(
    "text",
    [
        "example.com\nWWW.Google.COM\n\nfoo.cn.\n",
        "a.com\r\nb.com\r\n",  # CRLF: universal newlines
        "a.com\n# comment\n=exact.org\n^start.net\n*69.mu*\nb.com.\n",
        "  spaced.com  \n\tb.org\n",
        "ünïcode.example\nxn--bcher-kva.example\n",
        "",
    ],
)
def test_bulk_load_matches_rule_by_rule(tmp_path: Path, text: str) -> None:
    bulk, by_line = _both(tmp_path, text)
    assert len(bulk) == len(by_line)
    assert bulk.names() == by_line.names()
    for name in ("example.com", "www.example.com", "foo.cn", "start.net.x", "a69.mu", "b.org"):
        assert bulk.match(name) == by_line.match(name)


@pytest.mark.parametrize("bad", ["a.com\n.\n", "a.com\nb c.com\n", "a.com\nb\x0cc.com\n"])
def test_bad_line_named(tmp_path: Path, bad: str) -> None:
    path = tmp_path / "list.txt"
    path.write_text(bad, encoding="utf-8")
    with pytest.raises(ConfigError, match="line 2"):
        DomainSet.from_file(str(path))


def test_large_list_lookup(tmp_path: Path) -> None:
    path = tmp_path / "big.txt"
    path.write_text("".join(f"host{i:x}.site{i % 997}.com\n" for i in range(200_000)))
    big = DomainSet.from_file(str(path))
    assert len(big) == 200_000
    assert big.match("www.host1f.site31.com") == "host1f.site31.com"
    assert big.match("site31.com") is None
