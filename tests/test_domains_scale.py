"""Domain lists at scale: loading a published list in bulk gives the same set as rule by rule."""

from __future__ import annotations

import io
import pickle
from pathlib import Path

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from gfwlab.errors import ConfigError
from gfwlab.rules._names import NameSet
from gfwlab.rules.domains import DomainSet
from testenv import SHARED_BLOCKLISTS, needs_shared


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


PIECES = ["a", "b.", "x" * 126, "x" * 252, ".", "\n", "\r\n", "\r", "#", "=", "^", "*", " ", "\t",
          "Ü", "-", "\x00", "\x7f"]  # fmt: skip


@settings(max_examples=400, deadline=None)
@given(st.lists(st.sampled_from(PIECES), max_size=12))
@example(["x" * 252, "a", "\n", "a"])  # 253 characters: the longest rule
@example(["x" * 252, "a", "a"])  # 254: one too many
@example(["x" * 252, "a", ".", "\n"])  # 253 and a trailing dot
def test_bulk_load_is_rule_by_rule_on_any_text(pieces: list[str]) -> None:
    """Whatever the text, the bulk load keeps the same rules as the line-by-line one, or fails
    with the same error: long rules (253 characters and more), lines
    of dots, marks, spaces, blank lines and non-ASCII letters, in any order."""
    text = "".join(pieces)
    lines = io.StringIO(text, newline=None).read().split("\n")
    try:
        by_line: DomainSet | str = DomainSet(lines, source="t")
    except ConfigError as exc:
        by_line = str(exc)
    try:
        bulk: DomainSet | str = DomainSet._from_bytes(text.encode("utf-8"), "t")
    except ConfigError as exc:
        bulk = str(exc)
    if isinstance(by_line, str) or isinstance(bulk, str):
        assert bulk == by_line
        return
    assert (bulk.names(), len(bulk)) == (by_line.names(), len(by_line))
    for name in {line.strip().lower().strip("=^*.") for line in lines}:
        assert bulk.match(name) == by_line.match(name)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.text(alphabet="ab.-\x00", max_size=8), max_size=40),
    st.lists(st.text(alphabet="ab.-\x00é", max_size=9), max_size=20),
)
def test_a_nameset_is_the_set_of_its_lines(lines: list[str], asked: list[str]) -> None:
    """NameSet (C) against a Python set of the same lines: blank lines skipped, trailing dots
    not part of a name, repeats counted as lines, each name once; any str asked is in both or
    in neither; it pickles; a line of dots or a name too long is refused."""
    text = "\n".join(lines).encode()
    names = [line.rstrip(".") for line in lines if line]
    if any(not name or len(name) > 6 for name in names):
        with pytest.raises(ValueError, match="name at byte"):
            NameSet(text, 6)
        return
    got = NameSet(text, 6)
    want = set(names)
    assert (len(got), got.lines, sorted(got)) == (len(want), len(names), sorted(want))
    assert list(got) == list(dict.fromkeys(names))  # the text's order
    for name in [*lines, *asked, *want, "", "a" * 300]:
        assert (name in got) == (name in want), name
    assert 1 not in got and b"a" not in got
    again = pickle.loads(pickle.dumps(got))
    assert (sorted(again), again.lines) == (sorted(got), got.lines)


@needs_shared(SHARED_BLOCKLISTS / "gfw-2024-dns-blocklist.txt")
def test_a_nameset_of_a_published_list_holds_its_names() -> None:
    """The DNS list of 2024 (107,000 names), read the way a list file is: every line is in it,
    and a name a letter longer or shorter, or with a dot changed, is in it as in a Python set
    of the lines."""
    path = SHARED_BLOCKLISTS / "gfw-2024-dns-blocklist.txt"
    lines = [line for line in path.read_text().lower().split("\n") if line]
    got = DomainSet.from_file(str(path))
    assert isinstance(got._suffix, NameSet) and len(got) == len(lines) > 100_000
    assert all(got.match(name) == name for name in lines)
    want = set(lines)
    for name in lines:
        for other in (name + "x", "x" + name, name[:-1], name.replace(".", "-", 1)):
            assert (other in got._suffix) == (other in want), other
