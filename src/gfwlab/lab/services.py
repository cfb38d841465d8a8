"""The real services of the server namespace: nginx (HTTP, HTTPS), dnsmasq (DNS), HTTP/3.

Each ``*_argv`` function writes the service's configuration into a state directory and returns
the command line that runs it in the foreground (the caller prefixes ``ip netns exec NS``,
spawns it and records the pid: ``ip netns exec`` execs the command, so the pid is the
service's own). Nothing is written outside the state directory and no system configuration
(``/etc/nginx``, ``/etc/dnsmasq.conf``, ``/var/log``, ``/var/lib/nginx``) is read or written.

The ``wait_*`` helpers poll until a service answers, from inside a namespace: the probing
thread joins the namespace with ``setns(2)`` (root only), so no process is spawned per probe.

Files written into ``state_dir``:

=========================  ====================================================================
``nginx.conf``             by :func:`nginx_argv`; nginx then writes ``nginx.pid``,
                           ``nginx-error.log``, ``nginx-access.log`` and ``nginx-temp/``
``nginx-bytes/<N>``        sparse files of N zero bytes, served at ``/bytes/<N>``
``dnsmasq.pid``            written by dnsmasq (:func:`dnsmasq_argv`), with ``dnsmasq.log``
``h3-certs.json``          by :func:`h3_server_argv` when given ``sni_certs``; the server logs
                           to ``h3.log``
=========================  ====================================================================
"""

from __future__ import annotations

import ctypes
import functools
import ipaddress
import json
import os
import re
import shutil
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from gfwlab.lab.ca import ServerCert

T = TypeVar("T")

BYTES_SIZES = (0, 1, 1024, 10 * 1024, 100 * 1024, 1 << 20, 10 << 20, 100 << 20)
"""Sizes served at ``/bytes/<N>`` by default (sparse files: they cost no disk)."""
BODY_PREFIX = "gfwlab lab server: "
READY_QNAME = "ready.gfwlab.test"
CLONE_NEWNET = 0x40000000


def tool_path(name: str) -> str:
    """Absolute path of ``name`` if on PATH or in an sbin directory, else the bare name."""
    found = shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin:/usr/local/sbin")
    return found or name


@functools.cache
def nginx_version() -> tuple[int, ...]:
    """The installed nginx's version, e.g. ``(1, 22, 1)``; ``(0,)`` if unknown."""
    try:
        res = subprocess.run(
            [tool_path("nginx"), "-v"], capture_output=True, text=True, timeout=10, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return (0,)
    m = re.search(r"nginx/(\d+(?:\.\d+)*)", res.stderr + res.stdout)
    return tuple(int(p) for p in m.group(1).split(".")) if m else (0,)


def _path(path: str) -> str:
    """``path`` made absolute, checked to need no quoting in nginx's configuration."""
    path = os.path.abspath(path)
    if any(c in path for c in " \t\n;'\"{}$#\\"):
        raise ValueError(f"unsupported character in path: {path!r}")
    return path


def _host(address: str) -> str:
    """An address as nginx writes it in ``listen``: IPv6 in brackets."""
    ip = ipaddress.ip_address(address.strip("[]"))
    return f"[{ip}]" if ip.version == 6 else str(ip)


def _make_bytes(directory: str, sizes: Iterable[int]) -> None:
    os.makedirs(directory, exist_ok=True)
    os.chmod(directory, 0o755)
    for size in sizes:
        path = os.path.join(directory, str(int(size)))
        if not os.path.exists(path) or os.path.getsize(path) != size:
            with open(path, "wb") as fh:
                fh.truncate(size)
        os.chmod(path, 0o644)


def nginx_argv(
    state_dir: str,
    cert: str,
    key: str,
    *,
    listen_v4: list[str],
    listen_v6: list[str],
    access_log: bool = True,
    http_port: int = 80,
    https_port: int = 443,
    sni_certs: Sequence[ServerCert] = (),
    alt_svc_h3: int | None = None,
    bytes_sizes: Iterable[int] = BYTES_SIZES,
    site_cert_map: str | None = None,
) -> list[str]:
    """Write ``nginx.conf`` for a foreground nginx; return its argv.

    One default server answers every host name on HTTP (``http_port``) and HTTPS with HTTP/2
    (``https_port``) on each address of ``listen_v4`` and ``listen_v6``: 200, ``text/plain``,
    body ``gfwlab lab server: <host>\\n`` for any path, except ``/bytes/<N>`` which returns N
    zero bytes for each N in ``bytes_sizes`` (404 otherwise). ``cert``/``key`` is its
    certificate; each of ``sni_certs`` (from :func:`gfwlab.lab.ca.make_server_certs`, the
    first of which is usually ``cert`` itself) gets an HTTPS server chosen by SNI for its
    names. ``access_log=False`` turns the access log off (for benchmarks); ``alt_svc_h3`` set
    to a port adds ``Alt-Svc: h3=":PORT"`` so browsers try HTTP/3. Everything nginx writes
    (pid, logs, temp files) stays in ``state_dir``.

    ``site_cert_map`` names a file of nginx ``map`` lines (``NAME CERT;``, written by
    :mod:`gfwlab.measure.sites` for probe sites): the default server then picks its certificate
    by SNI from it (``CERT``, and ``CERT`` with ``.pem`` replaced by ``.key``), falling back to
    ``cert``; nginx rereads it on SIGHUP, so many thousands of names can be added to a running
    lab without a certificate list that clients would refuse as too large.
    """
    if not listen_v4 and not listen_v6:
        raise ValueError("nginx needs at least one listen address")
    state_dir, cert, key = _path(state_dir), _path(cert), _path(key)
    os.makedirs(state_dir, exist_ok=True)
    conf = os.path.join(state_dir, "nginx.conf")
    error_log = os.path.join(state_dir, "nginx-error.log")
    temp = os.path.join(state_dir, "nginx-temp")
    os.makedirs(temp, exist_ok=True)
    bytes_dir = os.path.join(state_dir, "nginx-bytes")
    _make_bytes(bytes_dir, bytes_sizes)
    addrs = [_host(a) for a in [*listen_v4, *listen_v6]]
    http2_directive = nginx_version() >= (1, 25, 1)
    h2_listen = "" if http2_directive else " http2"

    def listen(port: int, ssl: bool, default: bool) -> list[str]:
        opts = (" ssl" + h2_listen if ssl else "") + (" default_server" if default else "")
        return [f"    listen {a}:{port}{opts};" for a in addrs]

    body = [
        "    default_type text/plain;",
        *(["    http2 on;"] if http2_directive else []),
        *(
            [f"    add_header Alt-Svc 'h3=\":{alt_svc_h3}\"; ma=86400' always;"]
            if alt_svc_h3
            else []
        ),
        "    location / {",
        f'        return 200 "{BODY_PREFIX}$host\\n";',
        "    }",
        "    location /bytes/ {",
        f"        alias {bytes_dir}/;",
        "        default_type application/octet-stream;",
        "    }",
    ]
    tls = [
        "    ssl_protocols TLSv1.2 TLSv1.3;",
        "    ssl_session_cache shared:gfwlab:10m;",
    ]
    names = sum(len(c.names) for c in sni_certs)
    maps: list[str] = []
    default_cert = [f"    ssl_certificate {cert};", f"    ssl_certificate_key {key};"]
    if site_cert_map is not None:
        site_cert_map = _path(site_cert_map)
        if not os.path.exists(site_cert_map):
            with open(site_cert_map, "w", encoding="ascii"):
                pass
        maps = [
            "    map_hash_max_size 262144;",
            "    map_hash_bucket_size 256;",
            "    map $ssl_server_name $gfwlab_site_cert {",
            f"        default {cert};",
            f"        include {site_cert_map};",
            "    }",
            "    map $gfwlab_site_cert $gfwlab_site_key {",
            f"        default {key};",
            "        ~^(?<stem>.+)\\.pem$ $stem.key;",
            "    }",
        ]
        default_cert = [
            "    ssl_certificate $gfwlab_site_cert;",
            "    ssl_certificate_key $gfwlab_site_key;",
        ]
    lines = [
        "# Written by gfwlab; regenerated on every start.",
        "daemon off;",
        "master_process on;",
        "worker_processes 1;",
        *(["user root;"] if os.geteuid() == 0 else []),
        f"pid {os.path.join(state_dir, 'nginx.pid')};",
        f"error_log {error_log} notice;",
        "events {",
        "    worker_connections 4096;",
        "}",
        "http {",
        f"    client_body_temp_path {temp}/client_body;",
        f"    proxy_temp_path {temp}/proxy;",
        f"    fastcgi_temp_path {temp}/fastcgi;",
        f"    uwsgi_temp_path {temp}/uwsgi;",
        f"    scgi_temp_path {temp}/scgi;",
        "    log_format gfwlab '$remote_addr $remote_port [$time_iso8601] \"$request\" $status '",
        "                      '$body_bytes_sent host=$host sni=$ssl_server_name '",
        "                      'proto=$server_protocol tls=$ssl_protocol';",
        (
            f"    access_log {os.path.join(state_dir, 'nginx-access.log')} gfwlab;"
            if access_log
            else "    access_log off;"
        ),
        "    keepalive_requests 100000;",
        "    sendfile on;",
        "    server_tokens off;",
        "    server_names_hash_bucket_size 512;",
        f"    server_names_hash_max_size {max(1024, 4 * names)};",
        *maps,
        "    server {",
        *listen(http_port, False, True),
        *listen(https_port, True, True),
        "    server_name _;",
        *default_cert,
        *tls,
        *body,
        "    }",
    ]
    for shard in sni_certs:
        if not shard.names:
            continue
        server_names = " ".join(f".{n}" for n in shard.names)  # the name and subdomains
        lines += [
            "    server {",
            *listen(https_port, True, False),
            f"    server_name {server_names};",
            f"    ssl_certificate {_path(shard.cert)};",
            f"    ssl_certificate_key {_path(shard.key)};",
            *tls,
            *body,
            "    }",
        ]
    lines.append("}")
    with open(conf, "w", encoding="utf-8") as fh:
        fh.write("\n".join(lines) + "\n")
    return [tool_path("nginx"), "-p", state_dir + "/", "-c", conf, "-e", error_log]


def local_addresses() -> list[str]:
    """Every usable address of the current network namespace, from ``ip -j addr``.

    Link-local and tentative (still in DAD) addresses are left out: they cannot be bound.
    """
    res = subprocess.run(
        [tool_path("ip"), "-j", "addr", "show"],
        capture_output=True,
        text=True,
        timeout=10,
        check=True,
    )
    out: list[str] = []
    for iface in json.loads(res.stdout):
        for info in iface.get("addr_info", []):
            local = info.get("local")
            if local and info.get("scope") != "link" and not info.get("tentative"):
                out.append(str(local))
    return out


WILDCARDS = {"::": (4, 6), "0.0.0.0": (4,), "*": (4, 6)}
"""Wildcard listen addresses and the IP versions each stands for."""


def expand_wildcards(hosts: Iterable[str]) -> list[str]:
    """``hosts`` with each wildcard replaced by the matching :func:`local_addresses`.

    A UDP server bound to a wildcard answers from whatever source address the kernel picks,
    which is not the address the client wrote to when the namespace has several; QUIC
    clients then drop the answers. Binding every address explicitly avoids that (addresses
    added later are not served).
    """
    out: list[str] = []
    local: list[str] | None = None
    for given in hosts:
        host = given.strip("[]")
        if host not in WILDCARDS:
            out.append(host)
            continue
        if local is None:
            local = local_addresses()
        out += [a for a in local if ipaddress.ip_address(a).version in WILDCARDS[host]]
    return list(dict.fromkeys(out))


def nginx_check(argv: list[str], netns: str | None = None, timeout: float = 60.0) -> str | None:
    """Run ``nginx -t`` on the configuration of ``argv``: None if fine, else nginx's message.

    ``nginx -t`` binds the listen addresses (with SO_REUSEADDR, so a running instance does not
    matter), so it must run where they exist: pass the namespace as ``netns``.
    """
    prefix = ["ip", "netns", "exec", netns] if netns else []
    res = subprocess.run(
        [*prefix, *argv, "-t", "-q"], capture_output=True, text=True, timeout=timeout, check=False
    )
    if res.returncode == 0:
        return None
    return res.stderr.strip() or res.stdout.strip() or f"exit {res.returncode}"


def dnsmasq_argv(
    state_dir: str,
    *,
    answer_v4: str,
    answer_v6: str,
    listen: list[str],
    port: int = 53,
    ttl: int = 60,
    hosts_file: str | None = None,
) -> list[str]:
    """Return the argv of a foreground dnsmasq answering every A with ``answer_v4``.

    Every AAAA gets ``answer_v6`` (an empty string leaves AAAA unanswered); other types are
    REFUSED (dnsmasq has nowhere to forward them). There are no upstream servers, no hosts
    file, no DHCP and no configuration file. It listens only on the addresses in ``listen``
    (``--bind-dynamic``, so addresses that appear later, and IPv6 addresses still in DAD, are
    picked up) and runs as root (no ``dnsmasq`` user needed). Queries are logged to
    ``state_dir/dnsmasq.log``. ``hosts_file`` (``--addn-hosts``, created empty if missing)
    maps further names to their own addresses; its entries take precedence over the catch-all
    answers and dnsmasq rereads it on SIGHUP (probe sites, :mod:`gfwlab.measure.sites`).
    """
    if not listen:
        raise ValueError("dnsmasq needs at least one listen address")
    state_dir = os.path.abspath(state_dir)
    os.makedirs(state_dir, exist_ok=True)
    argv = [
        tool_path("dnsmasq"),
        "--keep-in-foreground",
        "--conf-file=/dev/null",
        "--no-resolv",
        "--no-hosts",
        "--no-poll",
        "--bind-dynamic",
        *(f"--listen-address={ipaddress.ip_address(a.strip('[]'))}" for a in listen),
        f"--port={port}",
        "--user=root",
        "--group=root",
        f"--pid-file={os.path.join(state_dir, 'dnsmasq.pid')}",
        "--log-queries",
        f"--log-facility={os.path.join(state_dir, 'dnsmasq.log')}",
        f"--local-ttl={ttl}",
        f"--address=/#/{ipaddress.IPv4Address(answer_v4)}",
    ]
    if answer_v6:
        argv.append(f"--address=/#/{ipaddress.IPv6Address(answer_v6)}")
    if hosts_file is not None:
        hosts_file = os.path.abspath(hosts_file)
        if not os.path.exists(hosts_file):
            with open(hosts_file, "w", encoding="ascii"):
                pass
        argv.append(f"--addn-hosts={hosts_file}")
    return argv


def h3_server_argv(
    state_dir: str,
    cert: str,
    key: str,
    *,
    host: str | Sequence[str],
    port: int = 443,
    sni_certs: Sequence[ServerCert] = (),
) -> list[str]:
    """Return the argv of the HTTP/3 server (:mod:`gfwlab.lab.h3`), logging to ``h3.log``.

    ``host`` is one address or several (the server listens on each); a wildcard (``::``,
    ``0.0.0.0``) is expanded when the server starts to every address the namespace has then
    (see :func:`expand_wildcards`). With ``sni_certs`` the list is written to
    ``h3-certs.json`` and the server picks the certificate by SNI.
    """
    state_dir = os.path.abspath(state_dir)
    os.makedirs(state_dir, exist_ok=True)
    hosts = [host] if isinstance(host, str) else list(host)
    if not hosts:
        raise ValueError("the HTTP/3 server needs at least one address")
    cert, key = os.path.abspath(cert), os.path.abspath(key)
    argv = [sys.executable, "-m", "gfwlab.lab.h3", "serve", "--cert", cert, "--key", key]
    for h in hosts:
        argv += ["--host", h]
    argv += ["--port", str(port), "--log", os.path.join(state_dir, "h3.log")]
    if sni_certs:
        path = os.path.join(state_dir, "h3-certs.json")
        with open(path, "w", encoding="utf-8") as fh:
            json.dump(
                [
                    {
                        "cert": os.path.abspath(c.cert),
                        "key": os.path.abspath(c.key),
                        "names": list(c.names),
                    }
                    for c in sni_certs
                ],
                fh,
            )
        argv += ["--sni-map", path]
    return argv


# --- running code inside a namespace ------------------------------------------------------


def netns_path(netns: str) -> str:
    """The bind mount ``ip netns add`` made for ``netns``."""
    return netns if netns.startswith("/") else os.path.join("/run/netns", netns)


def _setns(path: str) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        if libc.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns({path}): {os.strerror(err)}")
    finally:
        os.close(fd)


def in_netns(netns: str | None, fn: Callable[[], T]) -> T:
    """Call ``fn`` in network namespace ``netns`` (None: the current one) and return its result.

    ``fn`` runs in a fresh thread that joins the namespace (``setns(2)``, needs root), so
    sockets it opens live there; the rest of the process is unaffected. Exceptions propagate.
    """
    if netns is None:
        return fn()
    result: list[T] = []
    error: list[BaseException] = []

    def run() -> None:
        try:
            _setns(netns_path(netns))
            result.append(fn())
        except BaseException as exc:
            error.append(exc)

    thread = threading.Thread(target=run, name=f"netns-{netns}", daemon=True)
    thread.start()
    thread.join()
    if error:
        raise error[0]
    return result[0]


def wait_until(
    check: Callable[[], bool],
    timeout: float,
    *,
    interval: float = 0.05,
    proc: subprocess.Popen[Any] | None = None,
) -> bool:
    """Poll ``check`` until it returns True (True) or ``timeout`` passes (False).

    With ``proc``, give up at once (False) when that process has exited. Exceptions from
    ``check`` count as "not yet".
    """
    deadline = time.monotonic() + timeout
    while True:
        if proc is not None and proc.poll() is not None:
            return False
        try:
            if check():
                return True
        except OSError:
            pass
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)


def _family(host: str) -> socket.AddressFamily:
    return (
        socket.AF_INET6 if ipaddress.ip_address(host.strip("[]")).version == 6 else socket.AF_INET
    )


def tcp_open(host: str, port: int, timeout: float = 0.5) -> bool:
    """True if a TCP connection to ``host``:``port`` succeeds (in the calling namespace)."""
    with socket.socket(_family(host), socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        return sock.connect_ex((host.strip("[]"), port)) == 0


def dns_answers(
    server: str, port: int = 53, qname: str = READY_QNAME, timeout: float = 0.5
) -> bool:
    """True if ``server`` answers an A query for ``qname`` over UDP."""
    query = struct.pack("!HHHHHH", 0x6766, 0x0100, 1, 0, 0, 0)
    query += b"".join(bytes([len(p)]) + p.encode() for p in qname.split(".")) + b"\0"
    query += struct.pack("!HH", 1, 1)
    with socket.socket(_family(server), socket.SOCK_DGRAM) as sock:
        sock.settimeout(timeout)
        sock.connect((server.strip("[]"), port))
        sock.send(query)
        reply = sock.recv(4096)
    return len(reply) >= 12 and reply[:2] == query[:2] and bool(reply[2] & 0x80)


def quic_answers(host: str, port: int = 443, timeout: float = 0.5) -> bool:
    """True if a QUIC server at ``host``:``port`` answers a version-negotiation probe.

    The probe is a 1200-byte long-header packet with a reserved version (0x?a?a?a?a, RFC
    9000 §15); any QUIC server answers it with Version Negotiation without making state.
    """
    dcid, scid = os.urandom(8), os.urandom(8)
    probe = bytes([0xC0]) + bytes.fromhex("1a2a3a4a") + bytes([8]) + dcid + bytes([8]) + scid
    probe += b"\0" * (1200 - len(probe))
    with socket.socket(_family(host), socket.SOCK_DGRAM) as sock:
        sock.settimeout(timeout)
        sock.connect((host.strip("[]"), port))
        sock.send(probe)
        reply = sock.recv(4096)
    # Version Negotiation: long header, version 0, DCID = our SCID.
    return (
        len(reply) >= 7
        and reply[0] & 0x80 != 0
        and reply[1:5] == b"\0\0\0\0"
        and (reply[6 : 6 + reply[5]] == scid)
    )


def wait_tcp(
    netns: str | None,
    host: str,
    port: int,
    timeout: float,
    *,
    proc: subprocess.Popen[Any] | None = None,
) -> bool:
    """Wait until a TCP server accepts on ``host``:``port`` as seen from ``netns``."""
    return in_netns(netns, lambda: wait_until(lambda: tcp_open(host, port), timeout, proc=proc))


def wait_dns(
    netns: str | None,
    server: str,
    timeout: float,
    *,
    port: int = 53,
    proc: subprocess.Popen[Any] | None = None,
) -> bool:
    """Wait until a DNS server at ``server``:``port`` answers, as seen from ``netns``."""
    return in_netns(
        netns, lambda: wait_until(lambda: dns_answers(server, port), timeout, proc=proc)
    )


def wait_quic(
    netns: str | None,
    host: str,
    port: int,
    timeout: float,
    *,
    proc: subprocess.Popen[Any] | None = None,
) -> bool:
    """Wait until a QUIC server at ``host``:``port`` answers, as seen from ``netns``."""
    return in_netns(netns, lambda: wait_until(lambda: quic_answers(host, port), timeout, proc=proc))
