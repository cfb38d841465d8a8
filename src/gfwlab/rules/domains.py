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
from collections.abc import Iterable
from typing import Final

import ahocorasick

from gfwlab.errors import ConfigError


class DomainSet:
    """A set of domain rules; :meth:`match` returns the rule that matched, or None."""

    def __init__(self, rules: Iterable[str] = (), *, source: str = "<inline>") -> None:
        self._suffix: set[str] = set()
        self._exact: set[str] = set()
        self._prefixes: set[str] = set()
        self._prefix_lengths: tuple[int, ...] = ()
        self._auto: ahocorasick.Automaton | None = None
        self.source = source
        self.size = 0
        substrings: list[str] = []
        lengths: set[int] = set()
        suffix = self._suffix
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
            with open(path, encoding="utf-8", errors="strict") as fh:
                text = fh.read()
        except FileNotFoundError:
            raise ConfigError(path, None, "list file not found") from None
        except IsADirectoryError:
            raise ConfigError(path, None, "list path is a directory") from None
        except PermissionError:
            raise ConfigError(path, None, "list file is not readable") from None
        except UnicodeDecodeError as exc:
            raise ConfigError(path, None, f"not UTF-8 text (byte {exc.start})") from None
        return cls._from_text(text, path)

    @classmethod
    def _from_text(cls, text: str, source: str) -> DomainSet:
        """A list file's text (read with universal newlines, as iterating the file splits it).

        A published blocklist is bare domains only: then the whole list goes into the suffix
        set in a few passes over the text, without a Python step per rule's characters. Any
        other rule (or a bad line, for its error message) takes the line-by-line path.
        """
        lowered = text.lower()
        if (
            lowered.isascii()
            and not any(c in lowered for c in _ASCII_SPACE)
            and not (any(mark in lowered for mark in _MARKS) and _marked(lowered))
        ):  # no whitespace but newlines, no marked rule: every line is a bare domain as it is
            rules = lowered.split("\n")
            if rules[-1] == "":  # the last line's newline
                rules.pop()
            if "" in rules:  # blank lines
                rules = [line for line in rules if line]
            dotted = ".\n" in lowered or lowered.endswith(".")
            if dotted:
                rules = [rule.rstrip(".") for rule in rules]
            if not (dotted and "" in rules) and max(map(len, rules), default=0) <= MAX_RULE:
                out = cls((), source=source)
                out._suffix = set(rules)
                out.size = len(rules)
                return out
        return cls(text.split("\n"), source=source)

    def __len__(self) -> int:
        return self.size

    def names(self) -> list[str]:
        """The plain names of the end-anchored and exact rules (for lab certificates)."""
        return sorted(self._suffix | self._exact)

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
_ASCII_SPACE: Final = tuple(c for c in map(chr, range(128)) if c.isspace() and c != "\n")
_HAS_SPACE: Final = re.compile(r"\s").search
"""Finds any character ``str.isspace`` accepts (``\\s`` on a str pattern is Unicode whitespace)."""


MAX_RULE: Final = 253
"""The longest rule: a DNS name is at most 253 characters as text (RFC 1035 §2.3.4), so a longer
rule can match nothing and is taken for a mistake (or a hostile list)."""


def _marked(lowered: str) -> bool:
    """Whether a line of ``lowered`` starts with a mark (``#=^*``). Asked only when a mark is in
    the text at all: one character is found fast, a newline and a mark slowly (a newline
    every few dozen characters)."""
    joined = "\n" + lowered
    return any("\n" + mark in joined for mark in _MARKS)


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
