"""TCP connect, TLS handshake with the SNI, HTTP(S) fetch and an HTTP/3 attempt, on sockets.

Each step records what OONI's Web Connectivity records (the ``tcp_connect``,
``tls_handshakes`` and ``requests`` entries, with OONI's failure strings) and the local port,
so the RST packets a sniffer saw on the connection can be matched to it
(:mod:`gfwlab.measure.sniff`). The HTTP client is a plain HTTP/1.1 GET written on the socket
(``Connection: close``, the body read up to :data:`MAX_BODY`): what a measurement needs is the
status, the body and its title, and which step failed how.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import os
import re
import socket
import ssl
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

MAX_BODY = 1 << 20
USER_AGENT = "gfwlab-probe/1"
_TITLE = re.compile(rb"<title[^>]*>(.*?)</title>", re.I | re.S)


def failure_string(exc: BaseException) -> str:
    """OONI's failure string for an exception (``connection_reset``, ``generic_timeout_error``
    ...)."""
    if isinstance(exc, TimeoutError | socket.timeout):
        return "generic_timeout_error"
    if isinstance(exc, ssl.SSLCertVerificationError):
        code = getattr(exc, "verify_code", 0)
        return "ssl_invalid_hostname" if code == 62 else "ssl_unknown_authority"
    if isinstance(exc, ssl.SSLEOFError):
        return "eof_error"
    if isinstance(exc, ssl.SSLError):
        return "ssl_failed_handshake"
    if isinstance(exc, ConnectionRefusedError):
        return "connection_refused"
    if isinstance(exc, ConnectionResetError | BrokenPipeError):
        return "connection_reset"
    if isinstance(exc, OSError):
        if exc.errno in (errno.EHOSTUNREACH, errno.ENETUNREACH):
            return "host_unreachable"
        if exc.errno == errno.ETIMEDOUT:
            return "generic_timeout_error"
        return f"unknown_failure: {exc.strerror or exc}"
    return f"unknown_failure: {exc}"


@dataclass(slots=True)
class Step:
    """One step's outcome: ``failure`` is None on success."""

    failure: str | None = None
    t: float = 0.0
    """Seconds from the start of the measurement to the end of the step."""


@dataclass(slots=True)
class HttpResult:
    status: int | None = None
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    title: str = ""

    @property
    def body_length(self) -> int:
        return len(self.body)


@dataclass(slots=True)
class WebResult:
    """The TCP, TLS and HTTP steps of one fetch of one URL on one address."""

    url: str
    address: str
    port: int
    local_port: int | None = None
    tcp: Step = field(default_factory=Step)
    tls: Step | None = None
    tls_version: str | None = None
    cipher: str | None = None
    http: Step | None = None
    response: HttpResult | None = None
    started: float = 0.0
    """time.time() when the connection started."""

    @property
    def failed_step(self) -> str | None:
        """``tcp``, ``tls``, ``http`` or None."""
        if self.tcp.failure:
            return "tcp"
        if self.tls is not None and self.tls.failure:
            return "tls"
        if self.http is not None and self.http.failure:
            return "http"
        return None

    @property
    def failure(self) -> str | None:
        step = self.failed_step
        return None if step is None else getattr(self, step).failure


def _request(host: str, path: str) -> bytes:
    return (
        f"GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: {USER_AGENT}\r\n"
        "Accept: */*\r\nConnection: close\r\n\r\n"
    ).encode("ascii")


def parse_response(raw: bytes) -> HttpResult:
    """Status, headers, body (de-chunked) and title of a raw HTTP/1.1 response."""
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    out = HttpResult()
    parts = lines[0].split(" ", 2) if lines else []
    if len(parts) >= 2 and parts[0].startswith("HTTP/") and parts[1].isdigit():
        out.status = int(parts[1])
    for line in lines[1:]:
        k, sep, v = line.partition(":")
        if sep:
            out.headers[k.strip().lower()] = v.strip()
    if out.headers.get("transfer-encoding", "").lower() == "chunked":
        body = _dechunk(body)
    out.body = body
    m = _TITLE.search(body[:65536])
    if m:
        out.title = m.group(1).decode("utf-8", "replace").strip()[:200]
    return out


def _dechunk(data: bytes) -> bytes:
    out = bytearray()
    while data:
        size_line, _, rest = data.partition(b"\r\n")
        try:
            size = int(size_line.split(b";")[0], 16)
        except ValueError:
            break
        if size == 0:
            break
        out += rest[:size]
        data = rest[size + 2 :]
    return bytes(out)


def tls_context(ca_file: str | None, verify: bool = True) -> ssl.SSLContext:
    """One client context per trust file (and version of it), shared by every fetch: loading
    a CA bundle costs tens of milliseconds, and an SSLContext may serve several threads. A
    new lab writes a new CA to the same path, so the file's mtime and size are in the key."""
    stamp: tuple[int, int] = (0, 0)
    if ca_file is not None:
        try:
            st = os.stat(ca_file)
            stamp = (st.st_mtime_ns, st.st_size)
        except OSError:
            pass
    return _context(ca_file, stamp, verify)


@functools.lru_cache(maxsize=8)
def _context(ca_file: str | None, _stamp: tuple[int, int], verify: bool) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=ca_file) if verify else ssl._create_unverified_context()
    ctx.set_alpn_protocols(["http/1.1"])
    return ctx


def fetch(
    url: str,
    host: str,
    address: str,
    *,
    ca_file: str | None,
    timeout: float = 3.0,
    sni: str | None = None,
    verify: bool = True,
) -> WebResult:
    """Connect to ``address`` (the URL's port), TLS with ``sni`` (default the host) for
    https, then GET the URL's path with ``Host: host``."""
    parts = urlsplit(url)
    https = parts.scheme == "https"
    port = parts.port or (443 if https else 80)
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    res = WebResult(url, address, port, started=time.time())
    start = time.monotonic()
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    conn: socket.socket = sock
    try:
        try:
            sock.connect((address, port))
        except OSError as exc:
            res.tcp = Step(failure_string(exc), time.monotonic() - start)
            with contextlib.suppress(OSError):
                res.local_port = sock.getsockname()[1] or None
            return res
        res.local_port = sock.getsockname()[1]
        res.tcp = Step(None, time.monotonic() - start)
        if https:
            ctx = tls_context(ca_file, verify)
            try:
                conn = ctx.wrap_socket(sock, server_hostname=sni or host)
            except OSError as exc:
                res.tls = Step(failure_string(exc), time.monotonic() - start)
                return res
            res.tls = Step(None, time.monotonic() - start)
            if isinstance(conn, ssl.SSLSocket):
                res.tls_version = conn.version()
                c = conn.cipher()
                res.cipher = c[0] if c else None
        try:
            conn.sendall(_request(host, path))
            chunks: list[bytes] = []
            size = 0
            while size < MAX_BODY + 65536:
                data = conn.recv(65536)
                if not data:
                    break
                chunks.append(data)
                size += len(data)
        except OSError as exc:
            res.http = Step(failure_string(exc), time.monotonic() - start)
            return res
        raw = b"".join(chunks)
        if not raw:
            res.http = Step("eof_error", time.monotonic() - start)
            return res
        res.response = parse_response(raw)
        res.http = Step(
            None if res.response.status else "http_invalid_response", time.monotonic() - start
        )
        return res
    finally:
        conn.close()


@dataclass(slots=True)
class H3Result:
    failure: str | None = None
    status: int | None = None
    body_length: int | None = None
    t: float = 0.0


def fetch_h3(url: str, address: str, *, ca_file: str | None, timeout: float = 2.0) -> H3Result:
    """One HTTP/3 GET with the lab's client (:mod:`gfwlab.lab.h3`)."""
    from gfwlab.lab import h3  # noqa: PLC0415 - aioquic is slow to import

    start = time.monotonic()
    try:
        status, body = h3.get(url, ca=ca_file, connect_ip=address, timeout=timeout)
    except TimeoutError:
        return H3Result("generic_timeout_error", t=time.monotonic() - start)
    except (ConnectionError, OSError, ValueError) as exc:
        return H3Result(
            failure_string(exc) if isinstance(exc, OSError) else f"unknown_failure: {exc}",
            t=time.monotonic() - start,
        )
    return H3Result(None, status, len(body), time.monotonic() - start)


def as_ooni_http(res: WebResult) -> dict[str, Any]:
    """The ``requests`` entry of a fetch (OONI's HTTP request/response format)."""
    resp = res.response
    body = resp.body if resp is not None else b""
    text = body[:MAX_BODY].decode("utf-8", "replace")
    return {
        "failure": None if res.failed_step is None else res.failure,
        "request": {
            "url": res.url,
            "method": "GET",
            "tor": {"is_tor": False, "exit_ip": None, "exit_name": None},
            "headers": {"User-Agent": USER_AGENT},
            "body": "",
            "x_transport": "tcp",
        },
        "response": {
            "code": resp.status if resp is not None else None,
            "headers": dict(resp.headers) if resp is not None else {},
            "body": text if resp is not None else None,
            "body_is_truncated": len(body) > MAX_BODY,
        },
        "t": round(res.http.t if res.http else res.tcp.t, 6),
    }
