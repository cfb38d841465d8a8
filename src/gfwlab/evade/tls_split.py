"""HTTPS with the ClientHello split across TLS records: an evasion that works on the GFW.

The GFW reassembles TCP but not TLS records (spec §4a; S&P'25, confirmed 2024-04-04; Niere et
al., CCS'23 poster), so a ClientHello whose handshake message spans two records hides its SNI
from the SNI filter while any correct TLS server accepts it (RFC 8446 §5.1 allows handshake
messages to be fragmented across records).

This client runs a real TLS handshake with Python's ``ssl`` module over memory BIOs, re-frames
only the first flight (the ClientHello record) into two records, and sends a GET::

    python -m gfwlab.evade.tls_split www.facebook.com 198.19.0.2 [--split 40] [--path /]
"""

from __future__ import annotations

import argparse
import socket
import ssl
import sys


def split_record(record: bytes, at: int) -> bytes:
    """One TLS record split into two records after ``at`` bytes of its fragment."""
    if len(record) < 5 or record[0] != 0x16:
        return record
    body = record[5:]
    at = max(1, min(at, len(body) - 1))
    head = record[:3]
    return (
        head
        + at.to_bytes(2, "big")
        + body[:at]
        + head
        + (len(body) - at).to_bytes(2, "big")
        + body[at:]
    )


def fetch(
    host: str,
    ip: str,
    *,
    port: int = 443,
    path: str = "/",
    split: int = 40,
    timeout: float = 5.0,
    cafile: str | None = None,
) -> bytes:
    """GET ``path`` from ``host`` at ``ip`` with a split ClientHello; returns the response."""
    ctx = ssl.create_default_context(cafile=cafile)
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = ctx.wrap_bio(incoming, outgoing, server_hostname=host)
    sock = socket.create_connection((ip, port), timeout=timeout)
    first = True
    try:
        while True:
            try:
                tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                data = outgoing.read()
                if data:
                    sock.sendall(split_record(data, split) if first else data)
                    first = False
                chunk = sock.recv(65536)
                if not chunk:
                    raise ConnectionError("connection closed during the handshake") from None
                incoming.write(chunk)
        tls.write(f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
        sock.sendall(outgoing.read())
        response = b""
        while True:
            try:
                data = tls.read(65536)
                if not data:  # the peer's close_notify
                    break
                response += data
            except ssl.SSLWantReadError:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                incoming.write(chunk)
            except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
                break
        return response
    finally:
        sock.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tls_split", description=__doc__.split("\n\n")[0])
    parser.add_argument("host")
    parser.add_argument("ip")
    parser.add_argument("--port", type=int, default=443)
    parser.add_argument("--path", default="/")
    parser.add_argument("--split", type=int, default=40, help="bytes in the first record")
    parser.add_argument("--timeout", type=float, default=5.0)
    parser.add_argument("--ca", default=None)
    args = parser.parse_args(argv)
    try:
        response = fetch(
            args.host,
            args.ip,
            port=args.port,
            path=args.path,
            split=args.split,
            timeout=args.timeout,
            cafile=args.ca,
        )
    except (OSError, ssl.SSLError, ConnectionError) as exc:
        print(f"tls_split: {exc}", file=sys.stderr)
        return 1
    sys.stdout.write(response.decode("utf-8", "replace"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
