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

import re
from dataclasses import dataclass
from urllib.parse import unquote_to_bytes

from gfwlab._frozen import Frozen
from gfwlab.errors import MalformedPacket

MAX_HEADER = 16 * 1024
"""Bytes of request line plus headers (blank line included) accepted before giving up."""

_METHOD_CHARS = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZ-_")
_MAX_METHOD = 20  # the longest registered method, UPDATEREDIRECTREF, has 17 characters
_METHOD_SP = re.compile(rb"[A-Z_\-]{1,20} ")  # what _check_method accepts, as one match
_BLANK_LINE = re.compile(rb"\n\r?\n")
_VERSION = re.compile(rb"HTTP/\d\.\d")
_CONTROL = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")
_PORT = re.compile(rb"\d*")


@dataclass(frozen=True)
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
    """
    if _METHOD_SP.match(data) is None:
        _check_method(data)  # raises, unless the method is still arriving
    first_nl = data.find(b"\n", 0, MAX_HEADER)
    if first_nl < 0:
        _check_line_chars(_strip_cr(data[:MAX_HEADER]), 0)
        if len(data) >= MAX_HEADER:
            raise MalformedPacket("http.header_too_long", MAX_HEADER, "no end of request line")
        return None
    request_line = _strip_cr(data[:first_nl])
    method, target, version_ok = _split_request_line(request_line)
    if not version_ok:
        raise MalformedPacket("http.not_http", 0, "request line is not METHOD target HTTP/x.y")

    # The header block ends at the first line that is empty once its ``\r`` is stripped.
    blank = _BLANK_LINE.search(data, first_nl, MAX_HEADER)
    if blank is None:
        if len(data) >= MAX_HEADER:
            raise MalformedPacket("http.header_too_long", MAX_HEADER, "no end of headers")
        return None
    # The match may start at first_nl itself (a request line with no header after it). The
    # slice is clamped by hand: compiled (gfwlab._build), a bytes slice whose end is before its
    # start raises SystemError instead of giving b"".
    headers = data[first_nl + 1 : max(first_nl + 1, blank.start())]
    host_raw, anomalies = _find_host(headers.split(b"\n") if headers else [])
    path, path_texts = _decode(_unquote(target))
    texts = list(path_texts)
    host: str | None = None
    if host_raw is not None:
        host, host_texts = _decode(_unquote(_strip_port(host_raw)))
        host = host.lower()
        texts += [text.lower() for text in host_texts]
    return HttpRequest(
        method=method.decode("ascii"),
        target=target.decode("latin-1"),
        path=path,
        host=host,
        texts=tuple(dict.fromkeys(texts)),
        header_end=blank.end(),
        anomalies=tuple(anomalies),
    )


def _check_method(data: bytes) -> None:
    """Fail fast: a request starts with 1-20 method characters and a space."""
    for i, byte in enumerate(data[: _MAX_METHOD + 1]):
        if byte == 0x20:
            if i == 0:
                raise MalformedPacket("http.not_http", 0, "empty method")
            return
        if byte not in _METHOD_CHARS:
            raise MalformedPacket("http.not_http", i, f"byte {byte:#04x} in method")
    if len(data) > _MAX_METHOD:
        raise MalformedPacket("http.not_http", _MAX_METHOD, "method too long")


def _check_line_chars(line: bytes, base: int) -> None:
    bad = _CONTROL.search(line)
    if bad is not None:
        raise MalformedPacket("http.not_http", base + bad.start(), "control byte in request line")


def _split_request_line(line: bytes) -> tuple[bytes, bytes, bool]:
    """Split ``METHOD SP target SP HTTP/x.y``. A space inside the target is tolerated."""
    _check_line_chars(line, 0)
    method, _, rest = line.partition(b" ")
    target, _, version = rest.rpartition(b" ")
    ok = bool(target.strip(b" ")) and _VERSION.fullmatch(version) is not None
    return method, target.strip(b" "), ok


def _unquote(raw: bytes) -> bytes:
    # find, not ``in``: ``b"%" in raw`` first tries b"%" as an integer and clears the error.
    return unquote_to_bytes(raw) if raw.find(b"%") >= 0 else raw


def _strip_cr(line: bytes) -> bytes:
    return line[:-1] if line.endswith(b"\r") else line


def _find_host(lines: list[bytes]) -> tuple[bytes | None, list[str]]:
    """The first Host value and the header anomalies. ``lines`` may still end in ``\\r``: that
    only matters for a value, after the colon, so it is stripped from the Host value alone."""
    host: bytes | None = None
    anomalies: list[str] = []
    for line in lines:
        if line[:1] in (b" ", b"\t"):
            _note(anomalies, "http.obs_fold")
            continue
        name, colon, value = line.partition(b":")
        if not colon or not name or name != name.strip(b" \t"):
            _note(anomalies, "http.bad_header_line")
            continue
        if name.lower() == b"host":
            if host is None:
                host = _strip_cr(value).strip(b" \t")
            else:
                _note(anomalies, "http.multiple_host")
    return host, anomalies


def _note(anomalies: list[str], kind: str) -> None:
    if kind not in anomalies:
        anomalies.append(kind)


def _strip_port(host: bytes) -> bytes:
    """``example.com:8080`` -> ``example.com``; ``[2001:db8::1]:443`` -> ``2001:db8::1``."""
    if host.startswith(b"["):
        end = host.find(b"]")
        return host[1:end] if end > 0 else host
    name, colon, port = host.rpartition(b":")
    if colon and name.find(b":") < 0 and _PORT.fullmatch(port):
        return name
    return host


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
