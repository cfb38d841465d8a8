"""Domain rules and keyword sets that match in time independent of list size.

A domain rule is written the way the GFW's DNS injector's regexes are anchored (spec §2,
Wallbleed ``blackbox.c``)::

    example.com      end-anchored: the name and every subdomain, (^|\\.)example\\.com$
    =example.com     exact: that name only
    ^example.com     start-anchored: any name starting with this string, ^example\\.com
    *69.mu*          unanchored: any name containing this string

A list file holds one rule per line (``#`` comments and blank lines are ignored): the format of
the published blocklists, where a bare domain is end-anchored.

End-anchored and exact rules live in a hash set and a name is checked suffix by suffix, so a
lookup costs one probe per label whatever the list's size. Start-anchored rules are grouped by
length (one probe per distinct length); unanchored rules share one Aho-Corasick automaton.
"""

from __future__ import annotations

import os
import re
from collections.abc import Collection, Iterable
from typing import Final

import ahocorasick

from gfwlab.errors import ConfigError
from gfwlab.rules._names import NameSet


class DomainSet:
    """A set of domain rules; :meth:`match` returns the rule that matched, or None."""

    def __init__(self, rules: Iterable[str] = (), *, source: str = "<inline>") -> None:
        suffix: set[str] = set()
        self._suffix: Collection[str] = suffix
        """End-anchored rules: a set, or for a list file of bare domains a NameSet over its
        text (:mod:`gfwlab.rules._names`)."""
        self._exact: set[str] = set()
        self._prefixes: set[str] = set()
        self._prefix_lengths: tuple[int, ...] = ()
        self._auto: ahocorasick.Automaton | None = None
        self.source = source
        self.size = 0
        substrings: list[str] = []
        lengths: set[int] = set()
        add_suffix = suffix.add
        has_space = _HAS_SPACE
        for line_no, raw in enumerate(rules, 1):
            rule = raw.strip().lower()
            if not rule:
                continue
            first = rule[0]
            if first not in _MARKS:  # the common case: a bare, end-anchored domain
                plain = rule.rstrip(".")
                if not plain or len(plain) > MAX_RULE or has_space(plain):
                    _clean(rule, source, line_no)  # raises with the line's number
                add_suffix(plain)
                self.size += 1
                continue
            if first == "#":
                continue
            if first == "=":
                self._exact.add(_clean(rule[1:], source, line_no))
            elif first == "^":
                prefix = _clean(rule[1:], source, line_no)
                self._prefixes.add(prefix)
                lengths.add(len(prefix))
            elif rule.startswith("*") and rule.endswith("*") and len(rule) > 2:
                substrings.append(_clean(rule[1:-1], source, line_no))
            else:
                add_suffix(_clean(rule, source, line_no))
            self.size += 1
        self._prefix_lengths = tuple(sorted(lengths))
        if substrings:
            auto = ahocorasick.Automaton()
            for sub in substrings:
                auto.add_word(sub, sub)
            auto.make_automaton()
            self._auto = auto

    @classmethod
    def from_file(cls, path: str) -> DomainSet:
        """Load a list file (one rule per line, ``#`` comments allowed)."""
        try:
            with open(path, "rb") as fh:
                raw = fh.read()
        except FileNotFoundError:
            raise ConfigError(path, None, "list file not found") from None
        except IsADirectoryError:
            raise ConfigError(path, None, "list path is a directory") from None
        except PermissionError:
            raise ConfigError(path, None, "list file is not readable") from None
        return cls._from_bytes(raw, path)

    @classmethod
    def _from_bytes(cls, raw: bytes, source: str) -> DomainSet:
        """A list file's bytes.

        A published blocklist is bare ASCII domains only: then its names stay in its text, in a
        :class:`~gfwlab.rules._names.NameSet` built in one pass in C, without a str object per
        name (a 100,000-name list: 7 ms instead of 37-42). Any other rule, text that is not
        ASCII, or a bad line (for its error message) takes the line-by-line path, on the text
        decoded as UTF-8 with universal newlines (what iterating the file in text mode gives).
        """
        if raw.isascii():
            lowered = raw.lower()
            if b"\r" in lowered:
                lowered = lowered.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
            if not any(c in lowered for c in _ASCII_SPACE) and not (
                any(mark in lowered for mark in _MARK_BYTES) and _marked(lowered)
            ):  # no whitespace but newlines, no marked rule: every line is a bare domain
                try:
                    names = NameSet(lowered, MAX_RULE)
                except ValueError:
                    pass  # a line of dots, or a rule too long: the line-by-line path says which
                else:
                    out = cls((), source=source)
                    out._suffix = names
                    out.size = names.lines
                    return out
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ConfigError(source, None, f"not UTF-8 text (byte {exc.start})") from None
        if "\r" in text:
            text = text.replace("\r\n", "\n").replace("\r", "\n")
        return cls(text.split("\n"), source=source)

    def __len__(self) -> int:
        return self.size

    def names(self) -> list[str]:
        """The plain names of the end-anchored and exact rules (for lab certificates)."""
        return sorted({*self._suffix, *self._exact})

    def match(self, name: str) -> str | None:
        """The rule matching ``name`` (already lower-case, no trailing dot), or None."""
        if not name:
            return None
        if name in self._exact:
            return "=" + name
        suffix = self._suffix
        if suffix:
            candidate = name
            while True:
                if candidate in suffix:
                    return candidate
                dot = candidate.find(".")
                if dot < 0:
                    break
                candidate = candidate[dot + 1 :]
        for length in self._prefix_lengths:
            if len(name) >= length and name[:length] in self._prefixes:
                return "^" + name[:length]
        if self._auto is not None:
            for _end, sub in self._auto.iter(name):
                return f"*{sub}*"
        return None

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self.match(name) is not None


class KeywordSet:
    """Keywords matched anywhere in a text with one Aho-Corasick pass."""

    def __init__(self, keywords: Iterable[str] = (), *, source: str = "<inline>") -> None:
        self.source = source
        self.size = 0
        auto = ahocorasick.Automaton()
        for raw in keywords:
            word = raw.strip()
            if not word or word.startswith("#"):
                continue
            auto.add_word(word.lower(), word.lower())
            self.size += 1
        self._auto: ahocorasick.Automaton | None = None
        if self.size:
            auto.make_automaton()
            self._auto = auto

    @classmethod
    def from_file(cls, path: str) -> KeywordSet:
        try:
            with open(path, encoding="utf-8") as fh:
                return cls(fh, source=path)
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(path, None, f"cannot read keyword file: {exc}") from None

    def __len__(self) -> int:
        return self.size

    def match(self, text: str) -> str | None:
        """The first keyword found in ``text`` (case-insensitive), or None."""
        if self._auto is None or not text:
            return None
        for _end, word in self._auto.iter(text.lower()):
            return str(word)
        return None


_MARKS: Final = frozenset("#=^*")
_MARK_BYTES: Final = tuple(mark.encode() for mark in sorted(_MARKS))
_ASCII_SPACE: Final = tuple(bytes([c]) for c in range(128) if chr(c).isspace() and c != 10)
_HAS_SPACE: Final = re.compile(r"\s").search
"""Finds any character ``str.isspace`` accepts (``\\s`` on a str pattern is Unicode whitespace)."""


MAX_RULE: Final = 253
"""The longest rule: a DNS name is at most 253 characters as text (RFC 1035 §2.3.4), so a longer
rule can match nothing and is taken for a mistake (or a hostile list)."""


def _marked(lowered: bytes) -> bool:
    """Whether a line of ``lowered`` starts with a mark (``#=^*``). Asked only when a mark is in
    the text at all: one character is found fast, a newline and a mark slowly (a newline
    every few dozen characters)."""
    joined = b"\n" + lowered
    return any(b"\n" + mark in joined for mark in _MARK_BYTES)


def _clean(rule: str, source: str, line_no: int) -> str:
    rule = rule.rstrip(".")
    if len(rule) > MAX_RULE:
        raise ConfigError(
            source,
            f"line {line_no}",
            f"rule of {len(rule)} characters, over {MAX_RULE} (a DNS name's longest): "
            f"{rule[:40]!r}...",
        )
    if not rule or _HAS_SPACE(rule):
        raise ConfigError(source, f"line {line_no}", f"not a domain rule: {rule!r}")
    return rule


def resolve_path(value: str, base_dir: str | None) -> str:
    """A list path as written in a profile, made absolute relative to the profile's folder."""
    path = os.path.expanduser(value)
    if not os.path.isabs(path) and base_dir:
        path = os.path.join(base_dir, path)
    return path
