"""Test lists in the Citizen Lab CSV format, read and written, and the built-in curated list.

The format is the one of ``citizenlab/test-lists`` (``lists/*.csv``): a header line
``url,category_code,category_description,date_added,source,notes`` and one URL per line.
Reading is strict about what a probe needs (a URL with an http or https scheme and a valid host
name, a category code of letters) and forgiving about the rest: a malformed line is skipped with
a warning that names the file and the line number, so one bad line does not cost a whole list.

The built-in list (:func:`builtin_list`, ``gfwlab/measure/data/curated-cn.csv``) is a curated
list of a few hundred URLs written for this project: the categories China's "Clearing the
Internet" campaign targeted (gambling ``GMB``, weapons ``ALDR``/``MILX``, adult ``PORN``, fraud
and piracy ``MISC``) and the ones the GFW is known for (news ``NEWS``, political criticism
``POLR``, human rights ``HUMR``, circumvention tools ``ANON``, social networks ``GRP``,
communication tools ``COMM``). Most names were picked, a few dozen per category, from the
categorised SNI blocklist of 2024 (spec §4a; ``shared/data/blocklists``), which stays where it
is; the human-rights, circumvention and best-known names were written by hand.
"""

from __future__ import annotations

import csv
import io
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from importlib import resources
from urllib.parse import urlsplit

from gfwlab._outfile import OutputFile
from gfwlab.errors import GfwlabError

HEADER = ("url", "category_code", "category_description", "date_added", "source", "notes")
MAX_URL = 2048
MAX_FIELD = 1024
MAX_HOST = 253
_LABEL = re.compile(r"(?!-)[a-z0-9-]{1,63}(?<!-)$")
_CODE = re.compile(r"[A-Z][A-Z0-9_]{0,15}$")
BUILTIN = "curated-cn.csv"


class ListError(GfwlabError):
    """A test list that cannot be used at all (missing, unreadable, no header, no URL)."""


@dataclass(frozen=True, slots=True)
class Entry:
    """One line of a test list."""

    url: str
    category_code: str = "MISC"
    category_description: str = ""
    date_added: str = ""
    source: str = ""
    notes: str = ""

    @property
    def host(self) -> str:
        """The URL's host name, lower case."""
        return (urlsplit(self.url).hostname or "").lower()

    @property
    def scheme(self) -> str:
        return urlsplit(self.url).scheme.lower()

    def row(self) -> list[str]:
        return [
            self.url,
            self.category_code,
            self.category_description,
            self.date_added,
            self.source,
            self.notes,
        ]


@dataclass
class TestList:
    """The entries of a list and the warnings about the lines that were skipped."""

    __test__ = False  # not a pytest class
    entries: list[Entry] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def hosts(self) -> list[str]:
        """Distinct host names in list order."""
        return list(dict.fromkeys(e.host for e in self.entries))


def check_host(host: str) -> str | None:
    """Why ``host`` is not a usable DNS name, or None when it is."""
    if not host:
        return "no host name"
    if len(host) > MAX_HOST:
        return f"host name longer than {MAX_HOST} characters"
    try:
        ascii_host = host.encode("idna").decode("ascii") if not host.isascii() else host
    except UnicodeError:
        return f"host name {host[:60]!r} is not valid IDNA"
    labels = ascii_host.lower().rstrip(".").split(".")
    if len(labels) < 2 or not all(_LABEL.match(x) for x in labels):
        return f"host name {host[:60]!r} is not a valid DNS name"
    if labels[-1].isdigit():
        return f"{host[:60]!r} is an address, not a host name"
    return None


def check_url(url: str) -> str | None:
    """Why ``url`` cannot be probed, or None."""
    if len(url) > MAX_URL:
        return f"URL longer than {MAX_URL} characters"
    if any(c.isspace() or ord(c) < 0x20 for c in url):
        return "URL contains white space or control characters"
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        return f"bad URL ({exc})"
    if parts.scheme.lower() not in ("http", "https"):
        return f"URL scheme must be http or https, not {parts.scheme or 'none'!r}"
    if port is not None:
        return "URLs with an explicit port are not supported"
    return check_host(parts.hostname or "")


def parse_entry(row: list[str]) -> Entry | str:
    """An :class:`Entry` from one CSV row, or why the row is malformed."""
    if len(row) != len(HEADER):
        return f"{len(row)} fields, expected {len(HEADER)}"
    for name, value in zip(HEADER, row, strict=True):
        if len(value) > (MAX_URL if name == "url" else MAX_FIELD):
            return f"{name} is too long ({len(value)} characters)"
    url, code = row[0].strip(), row[1].strip()
    why = check_url(url)
    if why is not None:
        return why
    if not _CODE.match(code):
        return f"category_code {code[:20]!r} is not a category code (like NEWS or GMB)"
    return Entry(url, code, *(v.strip() for v in row[2:]))


def parse(text: str, name: str = "<list>") -> TestList:
    """Parse a Citizen Lab CSV test list; malformed lines become warnings naming their line."""
    out = TestList()
    reader = csv.reader(io.StringIO(text))
    header_seen = False
    try:
        for row in reader:
            line = reader.line_num
            if not row or all(not c.strip() for c in row):
                continue
            if not header_seen:
                if [c.strip().lower() for c in row] != list(HEADER):
                    raise ListError(
                        f"{name}: line {line}: not a Citizen Lab test list (the header must be "
                        f"{','.join(HEADER)})"
                    )
                header_seen = True
                continue
            got = parse_entry(row)
            if isinstance(got, str):
                out.warnings.append(f"{name}: line {line}: {got}; skipped")
            else:
                out.entries.append(got)
    except csv.Error as exc:
        out.warnings.append(f"{name}: line {reader.line_num}: {exc}; the rest is skipped")
    if not header_seen:
        raise ListError(f"{name}: empty test list (no header line)")
    return out


def read(path: str) -> TestList:
    """Read a test list file (UTF-8); a missing or unreadable file is a :class:`ListError`."""
    try:
        with open(path, encoding="utf-8", newline="") as fh:
            text = fh.read(64 << 20)
    except OSError as exc:
        raise ListError(f"{path}: cannot read the test list ({exc.strerror or exc})") from None
    except UnicodeDecodeError as exc:
        raise ListError(f"{path}: not UTF-8 text (byte {exc.start})") from None
    return parse(text, path)


def render(entries: Iterable[Entry]) -> str:
    """The CSV text of a test list."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(HEADER)
    for e in entries:
        writer.writerow(e.row())
    return buf.getvalue()


def write(path: str, entries: Iterable[Entry]) -> None:
    """Write a test list atomically."""
    out = OutputFile(path)
    try:
        out.write(render(entries).encode("utf-8"))
        out.commit()
    except BaseException:
        out.abort()
        raise


def builtin_list() -> TestList:
    """The curated list shipped with gfwlab (see the module docstring)."""
    text = resources.files("gfwlab.measure").joinpath("data", BUILTIN).read_text("utf-8")
    return parse(text, f"gfwlab:{BUILTIN}")


def load(spec: str) -> TestList:
    """A list by path, or ``builtin`` for the curated list."""
    if spec == "builtin" and not os.path.exists(spec):
        return builtin_list()
    return read(spec)


def synthetic(count: int, *, scheme: str = "https", code: str = "MISC") -> list[Entry]:
    """``count`` distinct made-up host names under ``.lab.test`` (scale runs)."""
    return [
        Entry(
            f"{scheme}://s{i}.site{i % 97}.lab.test/",
            code,
            "Miscellaneous content",
            "",
            "gfwlab synthetic",
            "",
        )
        for i in range(count)
    ]
