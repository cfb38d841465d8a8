"""A small HTTP/3 server and client on aioquic, for the lab's QUIC traffic.

Server (runs in the server namespace until SIGTERM or SIGINT, then exits 0)::

    python -m gfwlab.lab.h3 serve --cert server.pem --key server.key --host 198.19.0.2 \\
        [--host 2001:db8:5::2] [--port 443] [--log h3.log] [--sni-map h3-certs.json]

answers every request, whatever its ``:authority``, with 200 and the body
``gfwlab lab server over HTTP/3: <authority>\\n`` (``/bytes/<N>`` returns N zero bytes, up to
:data:`MAX_BYTES`). ALPN is ``h3``. With ``--sni-map`` (written by
:func:`gfwlab.lab.services.h3_server_argv`) the certificate is chosen by the client's SNI.
Each request is logged with the peer address, SNI, authority and path.

Client::

    python -m gfwlab.lab.h3 get https://www.example.com/ [--ca ca.pem] \\
        [--connect-ip 198.19.0.2] [--local-port 50000] [--timeout 5] [--insecure]

makes one GET and prints the body on stdout. Exit status: 0 for a 2xx answer, 28 on timeout
(as curl; the expected outcome when a censor drops the flow), 1 for any other failure (one
line on stderr). ``--connect-ip`` sends the datagrams to that address while the URL's host
stays the SNI and ``:authority``; ``--local-port`` fixes the UDP source port. From Python,
:func:`get` (or :func:`aget` inside a running event loop) does the same.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ipaddress
import json
import logging
import os
import signal
import socket
import ssl
import subprocess
import sys
import urllib.parse
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import aioquic.quic.connection as quic_connection
from aioquic._buffer import Buffer
from aioquic.asyncio.protocol import QuicConnectionProtocol
from aioquic.asyncio.server import QuicServer, serve
from aioquic.h3.connection import H3_ALPN, H3Connection
from aioquic.h3.events import DataReceived, H3Event, HeadersReceived
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import NetworkAddress, QuicConnection
from aioquic.quic.events import (
    ConnectionTerminated,
    HandshakeCompleted,
    ProtocolNegotiated,
    QuicEvent,
)
from aioquic.tls import load_pem_private_key, load_pem_x509_certificates, pull_client_hello
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from gfwlab._ctrlc import settled
from gfwlab.lab.ca import system_bundle
from gfwlab.lab.services import WILDCARDS, expand_wildcards

log = logging.getLogger("gfwlab.lab.h3")
# aioquic logs every failed handshake at WARNING; without a handler of its own that would reach
# stderr through logging's last resort. Records still propagate to handlers the program sets up.
for _name in ("quic", "http3"):
    logging.getLogger(_name).addHandler(logging.NullHandler())

BODY_PREFIX = "gfwlab lab server over HTTP/3: "
MAX_BYTES = 64 << 20
"""Largest ``/bytes/<N>`` the server answers (the whole body is buffered in memory)."""
EXIT_OK, EXIT_FAIL, EXIT_TIMEOUT, EXIT_INTERRUPTED = 0, 1, 28, 130
USER_AGENT = b"gfwlab-h3"
MAX_REASON = 200
"""Longest CONNECTION_CLOSE reason phrase sent (see :func:`_cap_close_reason`)."""


def _cap_close_reason(quic: QuicConnection, on_reason: Callable[[str], None] | None = None) -> None:
    """Shorten the reason phrase of every CONNECTION_CLOSE ``quic`` sends to MAX_REASON.

    aioquic puts the whole TLS alert text in the frame; when a certificate with thousands of
    names fails verification that text lists every name, cannot fit in a packet, and aioquic
    then fails on every transmit instead of closing. ``on_reason`` gets the full text.
    """
    close = quic.close

    def close_capped(
        error_code: int = 0, frame_type: int | None = None, reason_phrase: str = ""
    ) -> None:
        if on_reason is not None and reason_phrase:
            on_reason(reason_phrase)
        if len(reason_phrase) > MAX_REASON:
            reason_phrase = reason_phrase[: MAX_REASON - 3] + "..."
        close(error_code=error_code, frame_type=frame_type, reason_phrase=reason_phrase)

    setattr(quic, "close", close_capped)  # noqa: B010


# --- server -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Cert:
    """A certificate, its chain and key, loaded for aioquic's TLS."""

    cert: x509.Certificate
    chain: list[x509.Certificate]
    key: Any


def _load_cert(cert_path: str, key_path: str) -> _Cert:
    with open(cert_path, "rb") as fh:
        certs = load_pem_x509_certificates(fh.read())
    with open(key_path, "rb") as fh:
        key = load_pem_private_key(fh.read())
    if not certs:
        raise ValueError(f"{cert_path}: no certificate")
    return _Cert(certs[0], certs[1:], key)


class SniCerts:
    """Certificates by host name: each name covers itself and one level of subdomain."""

    def __init__(self) -> None:
        self._by_name: dict[str, _Cert] = {}
        self.largest = 0
        """Size in bytes of the largest certificate chain loaded."""

    @classmethod
    def load(cls, path: str) -> SniCerts:
        """Read a ``[{"cert": ..., "key": ..., "names": [...]}, ...]`` JSON file."""
        with open(path, encoding="utf-8") as fh:
            entries = json.load(fh)
        out = cls()
        for entry in entries:
            out.add(_load_cert(entry["cert"], entry["key"]), entry["names"])
        return out

    def add(self, cert: _Cert, names: Sequence[str]) -> None:
        size = sum(len(c.public_bytes(Encoding.DER)) for c in [cert.cert, *cert.chain])
        self.largest = max(self.largest, size)
        for name in names:
            self._by_name.setdefault(name.lower(), cert)

    def choose(self, server_name: str | None) -> _Cert | None:
        """The certificate for ``server_name``: its own name, else its parent's wildcard."""
        if not server_name:
            return None
        name = server_name.lower().rstrip(".")
        found = self._by_name.get(name)
        if found is None and "." in name:
            found = self._by_name.get(name.split(".", 1)[1])
        return found


def _hook_client_hello(
    quic: QuicConnection, on_hello: Callable[[str | None], _Cert | None]
) -> None:
    """Call ``on_hello(sni)`` when the ClientHello arrives; use the certificate it returns.

    aioquic has no SNI callback: this wraps the connection's TLS set-up so the server's
    ClientHello handler first peeks at the hello. If aioquic's internals differ from what is
    expected the hook is not installed and the configured certificate is always used.
    """
    initialize = getattr(quic, "_initialize", None)
    if initialize is None:
        return

    def initialize_and_hook(peer_cid: bytes) -> None:
        initialize(peer_cid)
        tls = getattr(quic, "tls", None)
        handle = getattr(tls, "_server_handle_hello", None)
        if tls is None or handle is None:
            return

        def handle_hello(input_buf: Buffer, *args: Any) -> Any:
            pos = input_buf.tell()
            server_name: str | None = None
            try:
                server_name = pull_client_hello(input_buf).server_name
            except Exception:  # a malformed hello: let aioquic reject it its own way
                pass
            finally:
                input_buf.seek(pos)
            chosen = on_hello(server_name)
            if chosen is not None:
                tls.certificate = chosen.cert
                tls.certificate_chain = chosen.chain
                tls.certificate_private_key = chosen.key
            return handle(input_buf, *args)

        setattr(tls, "_server_handle_hello", handle_hello)  # noqa: B010

    setattr(quic, "_initialize", initialize_and_hook)  # noqa: B010


class _ServerProtocol(QuicConnectionProtocol):
    """One QUIC connection of the server: answers every HTTP/3 request on it."""

    def __init__(
        self, quic: QuicConnection, stream_handler: Any = None, *, sni_certs: SniCerts | None = None
    ) -> None:
        super().__init__(quic, stream_handler)
        self._http: H3Connection | None = None
        self._requests: dict[int, dict[bytes, bytes]] = {}
        self._peer: NetworkAddress | None = None
        self._sni: str | None = None
        self._sni_certs = sni_certs
        _hook_client_hello(quic, self._on_hello)
        _cap_close_reason(quic)

    def _on_hello(self, server_name: str | None) -> _Cert | None:
        self._sni = server_name
        return self._sni_certs.choose(server_name) if self._sni_certs else None

    def datagram_received(self, data: bytes | str, addr: NetworkAddress) -> None:
        if self._peer is None:
            self._peer = addr
        super().datagram_received(data, addr)

    def quic_event_received(self, event: QuicEvent) -> None:
        if isinstance(event, ProtocolNegotiated) and event.alpn_protocol in H3_ALPN:
            self._http = H3Connection(self._quic)
        if self._http is None:
            return
        for h3_event in self._http.handle_event(event):
            self._h3_event_received(h3_event)

    def _h3_event_received(self, event: H3Event) -> None:
        if isinstance(event, HeadersReceived) and event.push_id is None:
            if event.stream_id not in self._requests:
                self._requests[event.stream_id] = dict(event.headers)
            if event.stream_ended:
                self._respond(event.stream_id)
        elif isinstance(event, DataReceived) and event.stream_ended:
            self._respond(event.stream_id)

    def _respond(self, stream_id: int) -> None:
        request = self._requests.pop(stream_id, None)
        if request is None or self._http is None:
            return
        authority = request.get(b":authority", b"").decode("utf-8", "replace")
        path = request.get(b":path", b"/").decode("utf-8", "replace")
        method = request.get(b":method", b"GET").decode("utf-8", "replace")
        status, body = 200, f"{BODY_PREFIX}{authority}\n".encode()
        content_type = b"text/plain"
        if path.startswith("/bytes/"):
            size = path[len("/bytes/") :].split("?", 1)[0]
            if size.isdigit() and int(size) <= MAX_BYTES:
                body, content_type = bytes(int(size)), b"application/octet-stream"
            else:
                status, body = 404, b"not found\n"
        if method == "HEAD":
            length, body = len(body), b""
        else:
            length = len(body)
        self._http.send_headers(
            stream_id,
            [
                (b":status", str(status).encode()),
                (b"server", USER_AGENT),
                (b"content-type", content_type),
                (b"content-length", str(length).encode()),
            ],
        )
        self._http.send_data(stream_id, body, end_stream=True)
        self.transmit()
        peer = f"{self._peer[0]} {self._peer[1]}" if self._peer else "- -"
        log.info(
            '%s sni=%s "%s %s" authority=%s %d %d',
            peer,
            self._sni or "-",
            method,
            path,
            authority or "-",
            status,
            len(body),
        )


async def run_server(
    cert: str,
    key: str,
    hosts: Sequence[str],
    port: int = 443,
    *,
    sni_map: str | None = None,
    stop: asyncio.Event | None = None,
) -> None:
    """Serve HTTP/3 on each of ``hosts`` at ``port`` until ``stop`` is set (or forever)."""
    config = QuicConfiguration(is_client=False, alpn_protocols=H3_ALPN)
    config.load_cert_chain(cert, key)
    sni_certs = SniCerts.load(sni_map) if sni_map else SniCerts()
    sni_certs.add(_Cert(config.certificate, config.certificate_chain, config.private_key), [])
    # aioquic writes each TLS flight into a fixed 16 kB buffer: a certificate naming many hosts
    # does not fit. Enlarge it (the name is read each time a connection starts).
    need = sni_certs.largest + 8192
    quic_connection.CRYPTO_BUFFER_SIZE = max(quic_connection.CRYPTO_BUFFER_SIZE, need)

    def create_protocol(quic: QuicConnection, stream_handler: Any = None) -> _ServerProtocol:
        return _ServerProtocol(quic, stream_handler, sni_certs=sni_certs)

    if any(h.strip("[]") in WILDCARDS for h in hosts):
        try:
            hosts = expand_wildcards(hosts)
        except (OSError, subprocess.SubprocessError, ValueError) as exc:
            log.warning("cannot list local addresses (%s): listening on the wildcard", exc)
    servers: list[QuicServer] = []
    try:
        for host in hosts:
            servers.append(
                await serve(
                    host.strip("[]"), port, configuration=config, create_protocol=create_protocol
                )
            )
            log.info("listening on %s port %d (udp)", host, port)
        await (stop or asyncio.Event()).wait()
    finally:
        for server in servers:
            server.close()


async def _serve_main(args: argparse.Namespace) -> int:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await run_server(args.cert, args.key, args.host, args.port, sni_map=args.sni_map, stop=stop)
    log.info("stopped")
    return EXIT_OK


# --- client -----------------------------------------------------------------------------------


class _ClientProtocol(QuicConnectionProtocol):
    """The client side of one connection carrying one request."""

    def __init__(self, quic: QuicConnection) -> None:
        super().__init__(quic)
        loop = asyncio.get_running_loop()
        self.handshake: asyncio.Future[None] = loop.create_future()
        self.response: asyncio.Future[tuple[int, bytes]] = loop.create_future()
        self._http = H3Connection(quic)
        self._stream_id: int | None = None
        self._status = 0
        self._body = bytearray()
        self._reason = ""
        _cap_close_reason(quic, self._set_reason)

    def _set_reason(self, reason: str) -> None:
        if not self._reason:
            self._reason = reason

    def request(self, headers: list[tuple[bytes, bytes]]) -> None:
        self._stream_id = self._quic.get_next_available_stream_id()
        self._http.send_headers(self._stream_id, headers, end_stream=True)
        self.transmit()

    def quic_event_received(self, event: QuicEvent) -> None:
        if isinstance(event, HandshakeCompleted):
            if not self.handshake.done():
                self.handshake.set_result(None)
        elif isinstance(event, ConnectionTerminated):
            text = self._reason or event.reason_phrase
            if len(text) > 2 * MAX_REASON:
                text = text[: 2 * MAX_REASON] + "..."
            reason = f": {text}" if text else ""
            self._fail(
                ConnectionError(f"QUIC connection closed, error 0x{event.error_code:x}{reason}")
            )
            return
        for h3_event in self._http.handle_event(event):
            if getattr(h3_event, "stream_id", None) != self._stream_id:
                continue
            if isinstance(h3_event, HeadersReceived):
                for name, value in h3_event.headers:
                    if name == b":status":
                        self._status = int(value)
            elif isinstance(h3_event, DataReceived):
                self._body += h3_event.data
            if getattr(h3_event, "stream_ended", False) and not self.response.done():
                self.response.set_result((self._status, bytes(self._body)))

    def error_received(self, exc: Exception) -> None:
        """An ICMP error for our datagrams (port unreachable, no route)."""
        self._fail(
            ConnectionError(f"{exc.strerror or exc}" if isinstance(exc, OSError) else str(exc))
        )

    def _fail(self, exc: Exception) -> None:
        for fut in (self.handshake, self.response):
            if not fut.done():
                fut.set_exception(exc)
                fut.exception()  # retrieved: no "never retrieved" warning if nobody waits


def _target(url: str) -> tuple[str, int, str, str]:
    """Host (IDNA), port, ``:authority`` and ``:path`` of an https URL."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme != "https" or not parts.hostname:
        raise ValueError(f"not an https URL: {url}")
    host = parts.hostname
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        host = host.encode("idna").decode("ascii")
        shown = host
    else:
        shown = f"[{ip}]" if ip.version == 6 else str(ip)
    port = parts.port or 443
    authority = shown if parts.port is None else f"{shown}:{port}"
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    return host, port, authority, path


async def aget(
    url: str,
    *,
    ca: str | None = None,
    connect_ip: str | None = None,
    local_port: int | None = None,
    timeout: float = 10.0,
    insecure: bool = False,
) -> tuple[int, bytes]:
    """One HTTP/3 GET of ``url``; return ``(status, body)``.

    ``ca`` is the trust bundle (default: the system's); ``insecure`` skips verification.
    ``connect_ip`` is where datagrams go (default: the URL's host, resolved), ``local_port``
    the UDP source port (default: any). Raises TimeoutError when no answer completes within
    ``timeout`` seconds (name resolution included), ConnectionError when the connection
    fails (TLS alert, certificate rejected, ICMP error, closed by the peer), ValueError for
    a URL that is not https.
    """
    host, port, authority, path = _target(url)
    config = QuicConfiguration(
        is_client=True, alpn_protocols=H3_ALPN, server_name=host, idle_timeout=max(timeout, 1.0)
    )
    # Inside the lab, `lab exec` points SSL_CERT_FILE at the bundle that holds the lab CA.
    ca = ca or os.environ.get("GFWLAB_CA") or os.environ.get("SSL_CERT_FILE")
    if insecure:
        config.verify_mode = ssl.CERT_NONE
    elif ca is not None:
        config.load_verify_locations(cafile=ca)
    else:
        bundle = system_bundle()
        if bundle is not None:
            config.load_verify_locations(cafile=bundle)
    loop = asyncio.get_running_loop()
    protocol: _ClientProtocol | None = None
    transport: asyncio.BaseTransport | None = None
    async with asyncio.timeout(timeout):
        try:
            try:
                infos = await loop.getaddrinfo(connect_ip or host, port, type=socket.SOCK_DGRAM)
            except socket.gaierror as exc:
                where = connect_ip or host
                raise ConnectionError(f"cannot resolve {where}: {exc.strerror}") from None
            family, _, _, _, addr = infos[0]
            sock = socket.socket(family, socket.SOCK_DGRAM)
            try:
                sock.bind(("::" if family == socket.AF_INET6 else "0.0.0.0", local_port or 0))
                # Connected, so ICMP errors (port unreachable) are reported to error_received
                # and the client fails at once instead of timing out.
                sock.connect(addr)
            except OSError:
                sock.close()
                raise
            quic = QuicConnection(configuration=config)
            protocol = _ClientProtocol(quic)
            made = protocol
            transport, _ = await loop.create_datagram_endpoint(lambda: made, sock=sock)
            protocol.connect(addr)
            await protocol.handshake
            protocol.request(
                [
                    (b":method", b"GET"),
                    (b":scheme", b"https"),
                    (b":authority", authority.encode()),
                    (b":path", path.encode()),
                    (b"user-agent", USER_AGENT),
                ]
            )
            return await protocol.response
        finally:
            if protocol is not None:
                with contextlib.suppress(Exception):
                    protocol.close()  # sends CONNECTION_CLOSE now; no need to wait
            if transport is not None:
                transport.close()


def get(
    url: str,
    *,
    ca: str | None = None,
    connect_ip: str | None = None,
    local_port: int | None = None,
    timeout: float = 10.0,
    insecure: bool = False,
) -> tuple[int, bytes]:
    """Blocking :func:`aget` (runs its own event loop; not for use inside one)."""
    return asyncio.run(
        aget(
            url,
            ca=ca,
            connect_ip=connect_ip,
            local_port=local_port,
            timeout=timeout,
            insecure=insecure,
        )
    )


def _get_main(args: argparse.Namespace) -> int:
    try:
        status, body = get(
            args.url,
            ca=args.ca,
            connect_ip=args.connect_ip,
            local_port=args.local_port,
            timeout=args.timeout,
            insecure=args.insecure,
        )
    except TimeoutError:
        print(f"h3: {args.url}: timed out after {args.timeout:g} s", file=sys.stderr)
        return EXIT_TIMEOUT
    except (ConnectionError, OSError, ValueError) as exc:
        print(f"h3: {args.url}: {exc}", file=sys.stderr)
        return EXIT_FAIL
    sys.stdout.buffer.write(body)
    sys.stdout.flush()
    if not 200 <= status < 300:
        print(f"h3: {args.url}: HTTP status {status}", file=sys.stderr)
        return EXIT_FAIL
    return EXIT_OK


# --- command line -----------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m gfwlab.lab.h3", description="HTTP/3 server and client for the lab."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    srv = sub.add_parser("serve", help="answer every HTTP/3 request with 200")
    srv.add_argument("--cert", required=True, help="PEM certificate (leaf first)")
    srv.add_argument("--key", required=True, help="PEM private key")
    srv.add_argument(
        "--host",
        action="append",
        required=True,
        help="address to listen on (repeat for several; :: means every address)",
    )
    srv.add_argument("--port", type=int, default=443)
    srv.add_argument("--log", help="append the request log here (default: stderr)")
    srv.add_argument("--sni-map", help="JSON list of {cert, key, names} to choose by SNI")
    cli = sub.add_parser("get", help="one GET over HTTP/3; body on stdout")
    cli.add_argument("url")
    cli.add_argument("--ca", help="CA bundle to verify the server with")
    cli.add_argument("--connect-ip", help="send to this address instead of resolving the host")
    cli.add_argument("--local-port", type=int, help="UDP source port")
    cli.add_argument("--timeout", type=float, default=10.0, help="seconds (default 10)")
    cli.add_argument("--insecure", "-k", action="store_true", help="skip verification")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m gfwlab.lab.h3``; returns the exit status."""
    args = _parser().parse_args(argv)
    try:
        if args.command == "serve":
            handler: logging.Handler = (
                logging.FileHandler(args.log) if args.log else logging.StreamHandler(sys.stderr)
            )
            handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
            log.addHandler(handler)
            log.setLevel(logging.INFO)
            log.propagate = False
            for name in ("quic", "http3"):  # failed handshakes and protocol errors
                logging.getLogger(name).addHandler(handler)
                logging.getLogger(name).setLevel(logging.WARNING)
            try:
                return asyncio.run(_serve_main(args))
            except (OSError, ValueError) as exc:
                log.error("cannot serve: %s", exc)
                if args.log:
                    print(f"h3: cannot serve: {exc}", file=sys.stderr)
                return EXIT_FAIL
        return _get_main(args)
    except KeyboardInterrupt:
        settled()  # exit with EXIT_INTERRUPTED, not by SIGINT (see gfwlab._ctrlc)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
