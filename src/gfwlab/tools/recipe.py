"""What every tool recipe shares: its workspace, its processes, the client redirect, workloads.

A recipe (one per tool, in :mod:`gfwlab.tools.recipes`) writes the tool's server configuration
and starts the server in ``gfwlab-server``, writes the client configuration and starts the
client in ``gfwlab-client`` (never on the host), pushes a real workload through the tunnel and
stops both. Keys and certificates are generated per run in the recipe's workspace, a folder
under the lab's state directory (``/run/gfwlab/tools/<tool>``), and removed by :meth:`stop`
(also on Ctrl-C: the runner stops a session in a ``finally``); ``lab down`` removes the state
directory and kills every process in the lab namespaces in any case.

Trials and fresh addresses. The FET judges the first data packet of each TCP connection and its
residual block (180 s) is keyed on the server address and port (spec §6), so a trial that
reused the address of an earlier blocked trial would be decided by that trial. Every trial
therefore reaches the server at a fresh address from 198.19.240.0/20 (all of it is local to the
server namespace, ``topology.SITES_V4``; the tool servers listen on the wildcard address). TCP
clients are configured with one fixed address, :data:`VIRTUAL`, and an nftables DNAT rule in the
client namespace maps each new connection to the trial's address, so the tool's processes stay
up across the trials of a cell while the censor sees each connection go to a new server address.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import ssl
import struct
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import IO, ClassVar

from gfwlab.lab.services import in_netns, tool_path, wait_until
from gfwlab.lab.state import state_dir
from gfwlab.live.topology import CLIENT_NS, SERVER_NS, SERVER_V4

VIRTUAL = "198.19.255.254"
"""The server address TCP clients are configured with; DNAT maps it to each trial's address."""
ORIGIN = SERVER_V4
"""The lab's web server (nginx in the server namespace), the far end of every workload."""
WEB_NAME = "example.org"
"""The name the workload asks for over TLS inside the tunnel (the lab certificate covers it)."""
TOOL_NAME = "tools.lab.test"
"""The name on the certificates the TLS tools get (no domain list holds it)."""
NFT_TABLE = "gfwlab_tools"
TOOL_RANGE = "198.19.240.0/20"
"""The trial addresses (``topology.SITES_V4``: the tool trials' range)."""
DOWNLOAD_BYTES = 10 << 20
"""The multi-megabyte download, once per cell (nginx serves ``/bytes/<N>``)."""


class RecipeError(Exception):
    """A tool would not start or configure; the message says what and where its log is."""


def workspace_root() -> str:
    return os.path.join(state_dir(), "tools")


@dataclass
class Session:
    """One running instance of a tool: its folder, its processes and its per-trial redirect."""

    name: str
    directory: str = ""
    procs: list[tuple[str, subprocess.Popen[bytes]]] = field(default_factory=list)
    redirect: bool = False
    port: ClassVar[int] = 0
    """The port the tool's server listens on."""
    public_port: ClassVar[int] = 0
    """The port its clients connect to, as the censor sees it (0: ``port``). TLS proxies are
    deployed on 443; their servers listen on ``port`` and the server namespace redirects the
    tool range's port 443 to it (nginx holds 443 on the lab's own addresses)."""

    def __post_init__(self) -> None:
        self.directory = os.path.join(workspace_root(), self.name)
        shutil.rmtree(self.directory, ignore_errors=True)
        os.makedirs(self.directory, mode=0o700)

    # -- files and processes -------------------------------------------------------------

    def path(self, name: str) -> str:
        return os.path.join(self.directory, name)

    def write(self, name: str, text: str, mode: int = 0o600) -> str:
        path = self.path(name)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        return path

    def spawn(
        self,
        role: str,
        argv: list[str],
        *,
        env: dict[str, str] | None = None,
        stdout: int | IO[bytes] | None = None,
        stdin: int | None = None,
    ) -> subprocess.Popen[bytes]:
        """Start ``argv`` in the server or client namespace, logging to ``<role>-N.log``."""
        ns = {"server": SERVER_NS, "client": CLIENT_NS}[role]
        log_path = self.path(f"{role}-{len(self.procs)}.log")
        prefix = ["env", *[f"{k}={v}" for k, v in (env or {}).items()]] if env else []
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(
                ["ip", "netns", "exec", ns, *prefix, tool_path(argv[0]), *argv[1:]],
                stdout=log if stdout is None else stdout,
                stderr=log,
                stdin=subprocess.DEVNULL if stdin is None else stdin,
                start_new_session=True,  # Ctrl-C reaches the runner, which stops it in order
            )
        self.procs.append((log_path, proc))
        return proc

    def run(self, role: str, argv: list[str], timeout: float = 20.0) -> str:
        """Run a short command in a namespace; its stdout, or RecipeError with its stderr."""
        ns = {"server": SERVER_NS, "client": CLIENT_NS}[role]
        res = subprocess.run(
            ["ip", "netns", "exec", ns, tool_path(argv[0]), *argv[1:]],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if res.returncode != 0:
            raise RecipeError(f"{self.name}: {' '.join(argv)}: {res.stderr.strip()[:300]}")
        return res.stdout

    def wait_listening(self, role: str, port: int, proc: subprocess.Popen[bytes]) -> None:
        """Wait until a TCP port answers on 127.0.0.1 (client) or the server address."""
        ns = {"server": SERVER_NS, "client": CLIENT_NS}[role]
        host = "127.0.0.1" if role == "client" else ORIGIN

        def check() -> bool:
            def probe() -> bool:
                with socket.create_connection((host, port), timeout=0.3):
                    return True

            return in_netns(ns, probe)

        if not wait_until(check, 10.0, proc=proc):
            raise RecipeError(f"{self.name}: {role} did not listen on port {port}: {self.tail()}")

    def tail(self) -> str:
        """The last lines of the newest logs, for error messages."""
        out = []
        for log, _ in self.procs[-2:]:
            with contextlib.suppress(OSError), open(log, "rb") as fh:
                text = fh.read()[-400:].decode(errors="replace").strip()
                out.append(f"{os.path.basename(log)}: {text}")
        return " | ".join(out) or "no log"

    def stop_procs(self, procs: list[tuple[str, subprocess.Popen[bytes]]] | None = None) -> None:
        chosen = self.procs if procs is None else procs
        for _, proc in reversed(chosen):
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signal.SIGTERM)
        for _, proc in reversed(chosen):
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                proc.wait(timeout=5)
        if procs is not None:
            self.procs = [p for p in self.procs if p not in procs]

    # -- the per-trial redirect ------------------------------------------------------------

    @property
    def wire_port(self) -> int:
        return self.public_port or self.port

    def setup_redirect(self) -> None:
        self.redirect = True
        self.retarget(VIRTUAL)
        if self.public_port and self.public_port != self.port:
            self._nft(
                SERVER_NS,
                f"table ip {NFT_TABLE} {{\n chain pre {{\n  type nat hook prerouting priority "
                f"-100; policy accept;\n  ip daddr {TOOL_RANGE} tcp dport {self.public_port} "
                f"redirect to :{self.port}\n }}\n}}\n",
            )

    def retarget(self, address: str) -> None:
        """New TCP connections to VIRTUAL go to ``address`` from now on (earlier ones keep
        theirs: NAT applies per connection)."""
        script = (
            f"table ip {NFT_TABLE} {{\n chain out {{\n  type nat hook output priority -100;"
            f" policy accept;\n }}\n}}\nflush chain ip {NFT_TABLE} out\n"
            f"add rule ip {NFT_TABLE} out ip daddr {VIRTUAL} dnat to {address}\n"
        )
        self._nft(CLIENT_NS, script)

    def _nft(self, ns: str, script: str) -> None:
        res = subprocess.run(
            ["ip", "netns", "exec", ns, tool_path("nft"), "-f", "-"],
            input=script,
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
        if res.returncode != 0:
            raise RecipeError(f"nft in {ns}: {res.stderr.strip()}")

    def stop(self) -> None:
        """Stop every process, remove the redirect, the configurations, keys and logs."""
        try:
            self.stop_procs()
        finally:
            if self.redirect:
                self.redirect = False
                for ns in (CLIENT_NS, SERVER_NS):
                    subprocess.run(
                        ["ip", "netns", "exec", ns, tool_path("nft"), "delete", "table", "ip",
                         NFT_TABLE],
                        capture_output=True, timeout=10, check=False,
                    )  # fmt: skip
            shutil.rmtree(self.directory, ignore_errors=True)
            with contextlib.suppress(OSError):
                os.rmdir(workspace_root())


# -- workloads -----------------------------------------------------------------------------


def _tls_context() -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=os.path.join(state_dir(), "ca", "ca.pem"))
    ctx.set_alpn_protocols(["http/1.1"])
    return ctx


def _https_get(sock: socket.socket, path: str, timeout: float) -> int:
    """An HTTPS GET for ``path`` over ``sock`` (to the lab's nginx); the body's length."""
    deadline = time.monotonic() + timeout
    with step("TLS handshake"):
        try:
            tls = _tls_context().wrap_socket(sock, server_hostname=WEB_NAME)
        except BaseException:
            sock.close()
            raise
    with tls:
        with step("request"):
            tls.sendall(
                f"GET {path} HTTP/1.1\r\nHost: {WEB_NAME}\r\nConnection: close\r\n\r\n".encode()
            )
        data = bytearray()
        with step("answer"):
            while chunk := tls.recv(1 << 16):
                data += chunk
                if time.monotonic() > deadline:
                    raise TimeoutError("download too slow")
    head, _, body = bytes(data).partition(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.1 200"):
        raise OSError(f"unexpected answer {head[:40]!r}")
    return len(body)


def _socks_connect(
    port: int, host: str, dport: int, timeout: float, auth: bytes | None
) -> socket.socket:
    """A SOCKS5 CONNECT to ``host:dport`` through the proxy on 127.0.0.1:``port``.

    ``auth`` (user, then password, each at most 255 bytes) is how obfs4proxy takes the bridge's
    arguments (pt-spec: the client's arguments in the SOCKS username and password)."""
    with step("connect to the SOCKS proxy"):
        s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    try:
        with step("SOCKS greeting"):
            s.sendall(b"\x05\x01" + (b"\x02" if auth is not None else b"\x00"))
            if _recv_exact(s, 2)[1] != (2 if auth is not None else 0):
                raise OSError("SOCKS method refused")
            if auth is not None:
                user, pw = auth[:255], auth[255:] or b"\x00"
                s.sendall(b"\x01" + bytes([len(user)]) + user + bytes([len(pw)]) + pw)
                if _recv_exact(s, 2)[1] != 0:
                    raise OSError("SOCKS authentication refused")
        with step("SOCKS connect"):
            s.sendall(b"\x05\x01\x00\x01" + socket.inet_aton(host) + struct.pack("!H", dport))
            reply = _recv_exact(s, 10)
            if reply[1] != 0:
                raise OSError(f"SOCKS connect failed ({reply[1]})")
    except BaseException:
        s.close()
        raise
    return s


def _recv_exact(s: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = s.recv(n - len(data))
        if not chunk:
            raise OSError("connection closed")
        data += chunk
    return data


def socks_fetch(
    port: int,
    path: str = "/",
    timeout: float = 3.0,
    auth: bytes | None = None,
    target: tuple[str, int] = (ORIGIN, 443),
) -> int:
    """HTTPS from the client namespace through a SOCKS5 proxy to ``target`` (the origin's
    HTTPS port; for obfs4proxy, the bridge, which forwards to it); the body length (raises on
    failure). Runs in this process (a thread in the client namespace): no process per trial."""

    def go() -> int:
        sock = _socks_connect(port, target[0], target[1], timeout, auth)
        return _https_get(sock, path, timeout)

    return in_netns(CLIENT_NS, go)


def plain_fetch(host: str, port: int, path: str = "/", timeout: float = 3.0) -> int:
    """HTTPS from the client namespace to ``host:port`` (a local tunnel entrance, or the origin
    routed through a VPN's interface); the body length (raises on failure)."""

    def go() -> int:
        with step("connect"):
            sock = socket.create_connection((host, port), timeout=timeout)
        return _https_get(sock, path, timeout)

    return in_netns(CLIENT_NS, go)


@contextlib.contextmanager
def step(name: str) -> Iterator[None]:
    """Name the step of a workload an exception comes from (the innermost step names it)."""
    try:
        yield
    except BaseException as exc:
        if not getattr(exc, "__notes__", None):
            exc.add_note(name)
        raise


@dataclass(frozen=True)
class Attempt:
    """How one trial or download ended."""

    error: str = ""
    """Empty if the workload got its answer; else the step and the failure, such as
    ``TLS handshake: TimeoutError: _ssl.c:999: The handshake operation timed out``."""
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.error

    @staticmethod
    def since(started: float, error: str = "") -> Attempt:
        """How a workload begun at ``started`` (``time.monotonic``) ended now."""
        return Attempt(error, round(time.monotonic() - started, 3))


def attempt(fn: Callable[[], int]) -> Attempt:
    """Run a workload: whether it got its answer through the tunnel, and if not, why."""
    started = time.monotonic()
    try:
        fn()
    except (OSError, ssl.SSLError, TimeoutError, ValueError) as exc:
        what = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        where = getattr(exc, "__notes__", None)
        return Attempt.since(started, f"{where[0]}: {what}" if where else what)
    return Attempt.since(started)


@dataclass(frozen=True)
class Recipe:
    """One tool: how to find it, install it and run it."""

    name: str
    summary: str
    package: str
    """The Debian package(s) that provide it (``apt-get install ...``)."""
    programs: tuple[str, ...]
    transport: str
    """``tcp`` or ``udp``: what the censor sees between client and server."""
    port: int
    citation: str
    """Where the spec speaks of this tool or its kind of traffic (``—`` where it does not)."""
    make: Callable[[], ToolSession]

    def missing(self) -> list[str]:
        return [p for p in self.programs if shutil.which(tool_path(p)) is None]


class ToolSession(Session):
    """A running tool: subclasses implement start, trial and download."""

    def start(self) -> None:
        raise NotImplementedError

    def trial(self, address: str, timeout: float) -> Attempt:
        """One new tunnel connection to the server at ``address`` carrying a short HTTPS GET."""
        raise NotImplementedError

    def download(self, address: str, size: int, timeout: float) -> Attempt:
        """A multi-megabyte HTTPS download through the tunnel via ``address``."""
        raise NotImplementedError


class SocksTool(ToolSession):
    """A tool whose client is a local SOCKS5 proxy and whose server is reached at VIRTUAL."""

    socks_port = 1080
    auth: bytes | None = None
    target: tuple[str, int] = (ORIGIN, 443)

    def fetch(self, path: str, timeout: float) -> int:
        return socks_fetch(self.socks_port, path, timeout, self.auth, self.target)

    def trial(self, address: str, timeout: float) -> Attempt:
        self.retarget(address)
        return attempt(lambda: self.fetch("/", timeout))

    def download(self, address: str, size: int, timeout: float) -> Attempt:
        self.retarget(address)
        return attempt(lambda: _check_size(self.fetch(f"/bytes/{size}", timeout), size))


class ForwardTool(ToolSession):
    """A tool whose client forwards a local port (plain TCP) to the origin's HTTPS port."""

    local_port = 8443

    def trial(self, address: str, timeout: float) -> Attempt:
        self.retarget(address)
        return attempt(lambda: plain_fetch("127.0.0.1", self.local_port, "/", timeout))

    def download(self, address: str, size: int, timeout: float) -> Attempt:
        self.retarget(address)
        return attempt(
            lambda: _check_size(
                plain_fetch("127.0.0.1", self.local_port, f"/bytes/{size}", timeout), size
            )
        )


def _check_size(got: int, want: int) -> int:
    if got != want:
        raise ValueError(f"got {got} bytes of {want}")
    return got
