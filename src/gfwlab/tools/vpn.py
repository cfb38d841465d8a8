"""Recipes of the VPNs: OpenVPN over TCP and WireGuard (wireguard-go, in user space).

Both put a TUN device in each namespace and route the origin (198.19.0.2) through it from the
client, so the workload (HTTPS to the lab's nginx) travels inside the tunnel. Tunnel addresses
come from the client side's benchmarking range (198.18.240.0/24 for OpenVPN, 198.18.241.0/24
for WireGuard), which leaves the lab's own addresses alone.

A trial is a new tunnel connection, which is what a censor could judge: OpenVPN's client is
started anew for each trial (a new TCP connection to the trial's address and a new TLS
handshake); WireGuard's client peer is pointed at the trial's address (``wg set ... endpoint``),
so the censor sees a new UDP flow to a fresh address. The spec documents no mechanism for
either protocol (no OpenVPN or WireGuard row in spec §6-§8, §14): what the lab's mechanisms do to
them (the FET judges OpenVPN's first TCP packet like any other) is what the cells show.
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import os
import subprocess
import time

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from gfwlab.lab import ca
from gfwlab.lab.services import wait_until
from gfwlab.tools.proxies import lab_ca, tool_cert
from gfwlab.tools.recipe import (
    ORIGIN,
    VIRTUAL,
    Attempt,
    RecipeError,
    ToolSession,
    _check_size,
    attempt,
    plain_fetch,
)

OVPN_DEV = "gfwovpn0"
OVPN_NET = "198.18.240.0"
WG_SERVER_DEV, WG_CLIENT_DEV = "gfwwgs0", "gfwwgc0"
WG_SERVER_IP, WG_CLIENT_IP = "198.18.241.1", "198.18.241.2"
WG_UAPI = "/var/run/wireguard"


class OpenVpnTcp(ToolSession):
    """OpenVPN 2.6 in server mode over TCP (TLS with the lab CA; clients need no certificate)."""

    port = 1194
    ready_s = 8.0

    def start(self) -> None:
        cert, key = tool_cert(self)
        server = [
            "openvpn", "--mode", "server", "--tls-server", "--proto", "tcp-server",
            "--port", str(self.port), "--dev", OVPN_DEV, "--dev-type", "tun",
            "--topology", "subnet", "--server", OVPN_NET, "255.255.255.0",
            "--push", f"route {ORIGIN} 255.255.255.255", "--ca", lab_ca()[0], "--cert", cert,
            "--key", key, "--dh", "none", "--remote-cert-tls", "client",
            "--keepalive", "10", "60", "--verb", "3",
        ]  # fmt: skip
        self.client_cert = client_cert(self.path("tls"))
        self.setup_redirect()
        proc = self.spawn("server", server)
        self.wait_listening("server", self.port, proc)

    def _start_client(self) -> tuple[str, subprocess.Popen[bytes]]:
        argv = [
            "openvpn", "--client", "--proto", "tcp-client", "--remote", VIRTUAL, str(self.port),
            "--dev", OVPN_DEV, "--dev-type", "tun", "--nobind", "--ca", lab_ca()[0],
            "--cert", self.client_cert[0], "--key", self.client_cert[1],
            "--verify-x509-name", ca.SERVER_COMMON_NAME, "name", "--remote-cert-tls", "server",
            "--connect-retry-max", "1",
            "--server-poll-timeout", "10", "--verb", "3",
        ]  # fmt: skip
        self.spawn("client", argv)
        return self.procs[-1]

    def _connected(self, log: str, timeout: float) -> bool:
        def done() -> bool:
            with open(log, "rb") as fh:
                return b"Initialization Sequence Completed" in fh.read()

        return wait_until(done, timeout, interval=0.02, proc=self.procs[-1][1])

    def _tunnel(self, address: str, timeout: float, path: str, size: int | None) -> Attempt:
        self.retarget(address)
        started = time.monotonic()
        entry = self._start_client()
        try:
            if not self._connected(entry[0], timeout):
                return Attempt.since(started, f"tunnel: not connected within {timeout:g} s")
            if size is None:
                return attempt(lambda: plain_fetch(ORIGIN, 443, path, timeout))
            return attempt(lambda: _check_size(plain_fetch(ORIGIN, 443, path, timeout), size))
        finally:
            self.stop_procs([entry])

    def trial(self, address: str, timeout: float) -> Attempt:
        return self._tunnel(address, timeout, "/", None)

    def download(self, address: str, size: int, timeout: float) -> Attempt:
        return self._tunnel(address, timeout, f"/bytes/{size}", size)


def client_cert(directory: str) -> tuple[str, str]:
    """A client certificate (EKU clientAuth) from the lab CA, for OpenVPN's client."""
    ca_cert, ca_key = ca.load_ca(*lab_ca())
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "gfwlab tools client")]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(min(now + dt.timedelta(days=2), ca_cert.not_valid_after_utc))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(ca.LEAF_KEY_USAGE, critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    os.makedirs(directory, mode=0o700, exist_ok=True)
    cert_path, key_path = (
        os.path.join(directory, "client.pem"),
        os.path.join(directory, "client.key"),
    )
    with open(cert_path, "wb") as fh:
        fh.write(cert.public_bytes(serialization.Encoding.PEM))
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
    return cert_path, key_path


def _x25519() -> tuple[str, str]:
    key = X25519PrivateKey.generate()
    private = key.private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )
    public = key.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )
    return base64.b64encode(private).decode(), base64.b64encode(public).decode()


class WireGuard(ToolSession):
    """wireguard-go (user space: these kernels have no WireGuard module) configured by wg."""

    port = 51820
    client_port = 41820

    def start(self) -> None:
        s_priv, s_pub = _x25519()
        c_priv, c_pub = _x25519()
        self.server_pub = s_pub
        for role, dev, priv, port, peer, allowed, ip in (
            ("server", WG_SERVER_DEV, s_priv, self.port, c_pub, f"{WG_CLIENT_IP}/32",
             WG_SERVER_IP),
            ("client", WG_CLIENT_DEV, c_priv, self.client_port, s_pub,
             f"{WG_SERVER_IP}/32,{ORIGIN}/32", WG_CLIENT_IP),
        ):  # fmt: skip
            proc = self.spawn(role, ["wireguard-go", "-f", dev])
            sock = os.path.join(WG_UAPI, f"{dev}.sock")
            if not wait_until(lambda s=sock: os.path.exists(s), 10.0, proc=proc):  # type: ignore[misc]
                raise RecipeError(f"wireguard-go ({role}) did not start: {self.tail()}")
            key_file = self.write(f"{role}.key", priv + "\n")
            self.run(role, ["wg", "set", dev, "private-key", key_file, "listen-port", str(port),
                            "peer", peer, "allowed-ips", allowed])  # fmt: skip
            self.run(role, ["ip", "address", "add", f"{ip}/24", "dev", dev])
            self.run(role, ["ip", "link", "set", dev, "up"])
        self.run("client", ["ip", "route", "add", f"{ORIGIN}/32", "dev", WG_CLIENT_DEV])

    def _point(self, address: str) -> None:
        self.run("client", ["wg", "set", WG_CLIENT_DEV, "peer", self.server_pub,
                            "endpoint", f"{address}:{self.port}"])  # fmt: skip

    def trial(self, address: str, timeout: float) -> Attempt:
        self._point(address)
        return attempt(lambda: plain_fetch(ORIGIN, 443, "/", timeout))

    def download(self, address: str, size: int, timeout: float) -> Attempt:
        self._point(address)
        return attempt(
            lambda: _check_size(plain_fetch(ORIGIN, 443, f"/bytes/{size}", timeout), size)
        )

    def stop(self) -> None:
        try:
            super().stop()
        finally:
            for dev in (WG_SERVER_DEV, WG_CLIENT_DEV):  # wireguard-go removes them on exit
                with contextlib.suppress(OSError):
                    os.unlink(os.path.join(WG_UAPI, f"{dev}.sock"))
