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

_MAX_METHOD = 20  # the longest registered method, UPDATEREDIRECTREF, has 17 characters
_CONTROL = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")
_CONTROL_BYTES = bytes([*range(0x09), *range(0x0A, 0x20), 0x7F])  # what _CONTROL matches
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

    Written for a compiled build (``gfwlab._build``): every clean HTTP connection of the live
    lab is read here, so the common request costs few calls (bytes methods and byte tests, no
    regular expression); :func:`_check_line_chars` keeps one for the offset of a bad byte.
    """
    method_end = _method_end(data)
    if method_end < 0:
        return None  # the method is still arriving: no line end yet, nothing else to check
    first_nl = data.find(b"\n", 0, MAX_HEADER)
    if first_nl < 0:
        _check_line_chars(_strip_cr(data[:MAX_HEADER]))
        if len(data) >= MAX_HEADER:
            raise MalformedPacket("http.header_too_long", MAX_HEADER, "no end of request line")
        return None
    request_line = _strip_cr(data[:first_nl])
    _check_line_chars(request_line)
    # METHOD SP target SP HTTP/x.y; a space inside the target is tolerated. The method ends at
    # the first space, before any line end.
    last_sp = request_line.rfind(b" ")
    target = request_line[method_end + 1 : max(method_end + 1, last_sp)].strip(b" ")
    if not target or not _version(request_line, last_sp + 1):
        raise MalformedPacket("http.not_http", 0, "request line is not METHOD target HTTP/x.y")

    # The header block ends at the first line that is empty once its ``\r`` is stripped: the
    # first "\n\n" or "\n\r\n" after the request line (one starts with the line's own end if no
    # header follows it).
    blank, blank_end = data.find(b"\n\n", first_nl, MAX_HEADER), 2
    crlf = data.find(b"\n\r\n", first_nl, MAX_HEADER if blank < 0 else blank + 2)
    if crlf >= 0:
        blank, blank_end = crlf, 3
    if blank < 0:
        if len(data) >= MAX_HEADER:
            raise MalformedPacket("http.header_too_long", MAX_HEADER, "no end of headers")
        return None
    # The slice is clamped by hand: compiled, a bytes slice whose end is before its start
    # raises SystemError instead of giving b"".
    headers = data[first_nl + 1 : max(first_nl + 1, blank)]
    host_raw, anomalies = _find_host(headers.split(b"\n") if headers else [])
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
        header_end=blank + blank_end,
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


def _check_line_chars(line: bytes) -> None:
    if len(line.translate(None, _CONTROL_BYTES)) == len(line):
        return  # the usual line: one pass at C speed, no match object
    bad = _CONTROL.search(line)
    if bad is not None:
        raise MalformedPacket("http.not_http", bad.start(), "control byte in request line")


def _version(line: bytes, at: int) -> bool:
    """Whether ``line[at:]`` is exactly ``HTTP/`` digit ``.`` digit."""
    return (
        len(line) - at == 8
        and line.startswith(b"HTTP/", at)
        and 0x30 <= line[at + 5] <= 0x39
        and line[at + 6] == 0x2E
        and 0x30 <= line[at + 7] <= 0x39
    )


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
        if line and (line[0] == 0x20 or line[0] == 0x09):
            _note(anomalies, "http.obs_fold")
            continue
        name, colon, value = line.partition(b":")
        # The name starts with neither (above), so a space or tab around it is one at its end.
        if not colon or not name or name[-1] == 0x20 or name[-1] == 0x09:
            _note(anomalies, "http.bad_header_line")
            continue
        if len(name) == 4 and name.lower() == b"host":
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
