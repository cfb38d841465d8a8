"""HTTP/1.x requests as the GFW's keyword filter reads them (spec §3).

The filter looks at only two places in a request: the request-line path and the Host header,
after %-decoding, in both their UTF-8 and their GB18030 readings (Rambert et al., WWW 2021).
Cookies, other headers and bodies are not inspected, so this dissector parses the request line
and the header block and nothing more. Only the first request of a stream is read.

The input is the censor's reassembled client byte stream. ``None`` means "need more data"; bytes
that are plainly not HTTP raise ``http.not_http`` as early as the first bytes show it (so a TLS
or random stream fails at once instead of after 16 KiB), and a header block that does not end
within 16 KiB raises ``http.header_too_long``.

Where this differs from a correct HTTP parser: ``path`` is the whole decoded request-target,
query string included (the censor scans the URL, not a normalised path); ``+`` is not a space;
invalid ``%`` escapes stay as they are; bare ``\\n`` line ends are accepted; with several Host
headers the first wins (reported as ``http.multiple_host``). How the real filter treats those
last cases is not documented (spec §12 unknowns).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final
from urllib.parse import unquote_to_bytes

from gfwlab._frozen import Frozen
from gfwlab.errors import MalformedPacket

MAX_HEADER: Final = 16 * 1024
"""Bytes of request line plus headers (blank line included) accepted before giving up."""

_MAX_METHOD: Final = 20  # the longest registered method, UPDATEREDIRECTREF, has 17 characters


@dataclass(frozen=True, init=False)
class HttpRequest(Frozen):
    """The first request of a client stream, as far as the keyword filter cares."""

    method: str
    """The method token, e.g. ``"GET"``."""
    target: str
    """The raw request-target, latin-1 decoded (no %-decoding)."""
    path: str
    """The %-decoded request-target, query included: UTF-8 if valid, else GB18030, else
    latin-1."""
    host: str | None
    """The first Host header: port stripped, %-decoded like ``path``, lower-cased. ``None`` if
    there is no Host header."""
    texts: tuple[str, ...]
    """What the keyword filter searches: every valid UTF-8 and GB18030 reading of ``path`` and
    ``host`` (latin-1 if neither is valid), without duplicates."""
    header_end: int
    """Offset just after the blank line that ends the header block."""
    anomalies: tuple[str, ...] = ()
    """Oddities seen: ``http.multiple_host``, ``http.bad_header_line``, ``http.obs_fold``."""

    # Written out: a dataclass's generated __init__ runs interpreted even where the class is
    # compiled (gfwlab._build); this one is compiled with it.
    def __init__(
        self,
        method: str,
        target: str,
        path: str,
        host: str | None,
        texts: tuple[str, ...],
        header_end: int,
        anomalies: tuple[str, ...] = (),
    ) -> None:
        object.__setattr__(self, "method", method)
        object.__setattr__(self, "target", target)
        object.__setattr__(self, "path", path)
        object.__setattr__(self, "host", host)
        object.__setattr__(self, "texts", texts)
        object.__setattr__(self, "header_end", header_end)
        object.__setattr__(self, "anomalies", anomalies)


def parse_request(data: bytes) -> HttpRequest | None:
    """Parse the first HTTP request in ``data`` (the client's reassembled stream).

    Returns ``None`` until the request line and the whole header block are present. Raises
    :class:`MalformedPacket` ``http.not_http`` for a stream that is not an HTTP request and
    ``http.header_too_long`` if no blank line ends the headers within :data:`MAX_HEADER` bytes.

    Written for a compiled build (``gfwlab._build``): every clean HTTP connection of the live
    lab is read here. The request line and the header block are each read in one loop over
    their bytes (compiled, a byte test costs a few instructions, where a call of a bytes
    method such as ``find`` or ``partition`` costs hundreds in its argument parsing alone); the
    only calls left are the decodings.
    """
    method_end = _method_end(data)
    if method_end < 0:
        return None  # the method is still arriving: no line end yet, nothing else to check
    limit = min(len(data), MAX_HEADER)
    # The request line: its end, its last space, its first control byte.
    first_nl = -1
    last_sp = -1
    bad = -1
    for i in range(method_end, limit):
        byte = data[i]
        if byte == 0x0A:
            first_nl = i
            break
        if byte == 0x20:
            last_sp = i
        elif bad < 0 and ((byte < 0x20 and byte != 0x09) or byte == 0x7F):
            bad = i
    line_end = first_nl if first_nl >= 0 else limit
    if line_end > 0 and data[line_end - 1] == 0x0D:
        line_end -= 1  # a CR before the line's end is its end, not a control byte in it
    if 0 <= bad < line_end:
        raise MalformedPacket("http.not_http", bad, "control byte in request line")
    if first_nl < 0:
        if len(data) >= MAX_HEADER:
            raise MalformedPacket("http.header_too_long", MAX_HEADER, "no end of request line")
        return None
    # METHOD SP target SP HTTP/x.y; a space inside the target is tolerated. The method ends at
    # the first space, before any line end.
    start, end = method_end + 1, max(method_end + 1, last_sp)
    while start < end and data[start] == 0x20:
        start += 1
    while end > start and data[end - 1] == 0x20:
        end -= 1
    if start == end or not _version(data, last_sp + 1, line_end):
        raise MalformedPacket("http.not_http", 0, "request line is not METHOD target HTTP/x.y")
    target = data[start:end]

    # The header block ends at the first line that is empty once its ``\r`` is stripped: a
    # "\n\n" or "\n\r\n" after the request line, whose last byte lies within MAX_HEADER.
    host_raw: bytes | None = None
    anomalies: list[str] = []
    header_end = -1
    line = first_nl + 1
    while line < limit:
        colon = -1
        nl = -1
        for i in range(line, limit):
            byte = data[i]
            if byte == 0x0A:
                nl = i
                break
            if byte == 0x3A and colon < 0:
                colon = i
        if nl < 0:
            break  # the line goes on past what is here (or past MAX_HEADER)
        stop = nl - 1 if nl > line and data[nl - 1] == 0x0D else nl
        if stop == line:
            header_end = nl + 1
            break
        first = data[line]
        if first == 0x20 or first == 0x09:  # noqa: PLR1714 - compiled, two int tests beat a set
            _note(anomalies, "http.obs_fold")
        elif colon < 0 or colon == line or data[colon - 1] == 0x20 or data[colon - 1] == 0x09:
            _note(anomalies, "http.bad_header_line")
        elif colon - line == 4 and _is_host(data, line):
            if host_raw is None:
                host_raw = _value(data, colon + 1, stop)
            else:
                _note(anomalies, "http.multiple_host")
        line = nl + 1
    if header_end < 0:
        if len(data) >= MAX_HEADER:
            raise MalformedPacket("http.header_too_long", MAX_HEADER, "no end of headers")
        return None
    path, texts = _decode(_unquote(target))
    host: str | None = None
    if host_raw is not None:
        host, host_texts = _decode(_unquote(_strip_port(host_raw)))
        host = host.lower()
        texts = texts + [text.lower() for text in host_texts]
    return HttpRequest(
        method=data[:method_end].decode("ascii"),
        target=target.decode("latin-1"),
        path=path,
        host=host,
        texts=tuple(dict.fromkeys(texts)),
        header_end=header_end,
        anomalies=tuple(anomalies),
    )


def _method_end(data: bytes) -> int:
    """Where the method ends (its space), or -1 while it may still be arriving. Fails fast: a
    request starts with 1-20 method characters and a space."""
    for i in range(min(len(data), _MAX_METHOD + 1)):
        byte = data[i]
        if byte == 0x20:
            if i == 0:
                raise MalformedPacket("http.not_http", 0, "empty method")
            return i
        if not (0x41 <= byte <= 0x5A or byte in (0x2D, 0x5F)):  # A-Z - _
            raise MalformedPacket("http.not_http", i, f"byte {byte:#04x} in method")
    if len(data) > _MAX_METHOD:
        raise MalformedPacket("http.not_http", _MAX_METHOD, "method too long")
    return -1


def _version(data: bytes, at: int, end: int) -> bool:
    """Whether ``data[at:end]`` is exactly ``HTTP/`` digit ``.`` digit."""
    return (
        end - at == 8
        and data[at] == 0x48  # H
        and data[at + 1] == 0x54  # T
        and data[at + 2] == 0x54  # T
        and data[at + 3] == 0x50  # P
        and data[at + 4] == 0x2F  # /
        and 0x30 <= data[at + 5] <= 0x39
        and data[at + 6] == 0x2E
        and 0x30 <= data[at + 7] <= 0x39
    )


def _is_host(data: bytes, at: int) -> bool:
    """Whether the four bytes at ``at`` are ``host`` in any case (``bytes.lower`` changes only
    A-Z, and ``x | 0x20`` is ``h`` only for ``H`` and ``h``, and so on)."""
    return (
        data[at] | 0x20 == 0x68
        and data[at + 1] | 0x20 == 0x6F
        and data[at + 2] | 0x20 == 0x73
        and data[at + 3] | 0x20 == 0x74
    )


def _value(data: bytes, start: int, stop: int) -> bytes:
    """``data[start:stop]`` without the spaces and tabs around it."""
    while start < stop and (data[start] == 0x20 or data[start] == 0x09):
        start += 1
    while stop > start and (data[stop - 1] == 0x20 or data[stop - 1] == 0x09):
        stop -= 1
    return data[start:stop]


def _unquote(raw: bytes) -> bytes:
    # find, not ``in``: ``b"%" in raw`` first tries b"%" as an integer and clears the error.
    return unquote_to_bytes(raw) if raw.find(b"%") >= 0 else raw


def _note(anomalies: list[str], kind: str) -> None:
    if kind not in anomalies:
        anomalies.append(kind)


def _strip_port(host: bytes) -> bytes:
    """``example.com:8080`` -> ``example.com``; ``[2001:db8::1]:443`` -> ``2001:db8::1``: a
    port is the digits (maybe none) after the only colon."""
    size = len(host)
    if size and host[0] == 0x5B:  # [
        for i in range(1, size):
            if host[i] == 0x5D:  # ]
                return host[1:i]
        return host
    colon = -1
    for i in range(size):
        byte = host[i]
        if byte == 0x3A:
            if colon >= 0:
                return host  # a second colon: no port
            colon = i
        elif colon >= 0 and not 0x30 <= byte <= 0x39:
            return host  # not a port, unless a second colon follows (then no port either)
    return host[:colon] if colon >= 0 else host


def _decode(raw: bytes) -> tuple[str, list[str]]:
    """The preferred reading of ``raw`` and every reading the filter tries."""
    if raw.isascii():  # UTF-8 and GB18030 both read ASCII as ASCII
        text = raw.decode("ascii")
        return text, [text]
    readings: list[str] = []
    for codec in ("utf-8", "gb18030"):
        try:
            readings.append(raw.decode(codec))
        except UnicodeDecodeError:
            continue
    if not readings:
        readings.append(raw.decode("latin-1"))
    return readings[0], readings
