"""The error hierarchy, drawn once.

::

    GfwlabError
    ├── ConfigError       the user's fault: a bad profile, option or list file (raised at load)
    ├── MalformedPacket   the traffic's fault: never escapes Censor.feed(), becomes an anomaly event
    └── AdapterError      I/O: an unreadable capture, an unwritable output path
        └── LabError      the lab cannot be made or used: not root, already up, a missing tool

Anything else that escapes is a bug.
"""

from __future__ import annotations


class GfwlabError(Exception):
    """Base of every error gfwlab raises on purpose."""


class ConfigError(GfwlabError):
    """A profile, list file or command-line setting is wrong.

    ``source`` names the file (or ``--set``), ``key`` the dotted key, ``reason`` what is wrong.
    """

    def __init__(self, source: str, key: str | None, reason: str) -> None:
        self.source = source
        self.key = key
        self.reason = reason
        where = f"{_one_line(source)}: {_one_line(key)}" if key else _one_line(source)
        super().__init__(f"{where}: {_one_line(reason, 300)}")


def _one_line(text: str, limit: int = 120) -> str:
    """``text`` on one line (line breaks and other control characters escaped) and at most about
    ``limit`` characters: a hostile or over-long value still gives a one-line error."""
    if text.isprintable() and len(text) <= limit:
        return text
    flat = "".join(c if c.isprintable() else repr(c)[1:-1] for c in text[: limit + 1])
    if len(text) > limit:
        return f"{flat[:limit]}... ({len(text)} characters)"
    return flat


class MalformedPacket(GfwlabError):
    """Bytes that cannot be what they claim to be.

    ``kind`` is a dotted anomaly name such as ``"dns.label_overrun"``; ``offset`` is where in the
    dissected bytes the problem was found.
    """

    def __init__(self, kind: str, offset: int = 0, detail: str = "") -> None:
        self.kind = kind
        self.offset = offset
        self.detail = detail
        super().__init__(f"{kind} at offset {offset}" + (f": {detail}" if detail else ""))


class AdapterError(GfwlabError):
    """An I/O problem: a capture that cannot be read, an output that cannot be written.

    ``path`` names the file; ``offset`` (bytes into the file) says where, when known.
    """

    def __init__(self, path: str, reason: str, offset: int | None = None) -> None:
        self.path = path
        self.reason = reason
        self.offset = offset
        at = f" at byte {offset}" if offset is not None else ""
        super().__init__(f"{path}{at}: {reason}")


class LabError(AdapterError):
    """The live lab cannot be made or used (not root, already up, a missing tool or feature)."""

    def __init__(self, reason: str) -> None:
        super().__init__("lab", reason)
        self.args = (f"lab: {reason}",)

    def __str__(self) -> str:
        return f"lab: {self.reason}"
