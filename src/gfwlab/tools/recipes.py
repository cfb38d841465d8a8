"""The recipe table (one row per tool) and bring-your-own tools.

A user's own tool (``gfwlab tools run --client CMD --server CMD --port P``) runs the same way as
a built-in one: the server command runs for the whole cell in the server namespace (it must
listen on the wildcard address, port P); the client command runs once per trial in the client
namespace and the trial succeeded if it exits 0. Commands are split with :func:`shlex.split`
into argument lists and run without a shell; the placeholders ``{server}`` (the trial's server
address), ``{port}`` (P), ``{client}`` (the client's address) and ``{origin}`` (the lab's web
server, 198.19.0.2) are replaced in each argument.
"""

from __future__ import annotations

import shlex
import subprocess
import time
from dataclasses import dataclass

from gfwlab.live.topology import CLIENT_NS, CLIENT_V4
from gfwlab.tools import proxies, vpn
from gfwlab.tools.recipe import ORIGIN, Attempt, Recipe, RecipeError, ToolSession

FET = "spec §6 (FET: Shadowsocks, VMess, obfs4 are named)"
EX5_TLS = "spec §6 Ex5 (TLS-looking first packets are exempt); §8 (TLS proxies, Oct 2022, anecdotal); §14h (TLS-in-TLS, a hypothesis)"  # noqa: E501
NONE = "no published measurement of this protocol (spec §12: unknowns)"

RECIPES: dict[str, Recipe] = {
    r.name: r
    for r in (
        Recipe("ss-aead", "shadowsocks-libev, AEAD (chacha20-ietf-poly1305)",
               "shadowsocks-libev", ("ss-server", "ss-local"), "tcp", 8388,
               f"{FET}; §7a (active probing of Shadowsocks)",
               lambda: proxies.Shadowsocks("ss-aead")),
        Recipe("ss-obfs-http", "shadowsocks-libev with simple-obfs (HTTP mode)",
               "shadowsocks-libev simple-obfs",
               ("ss-server", "ss-local", "obfs-server", "obfs-local"), "tcp", 8389,
               "spec §6 Ex5 (an HTTP-looking first packet is exempt)",
               lambda: proxies.ShadowsocksObfsHttp("ss-obfs-http")),
        Recipe("vmess-tcp", "v2ray, VMess (AEAD) over TCP", "v2ray", ("v2ray",), "tcp", 10086,
               FET, lambda: proxies.VMess("vmess-tcp")),
        Recipe("vmess-tls", "v2ray, VMess over TLS, on port 443", "v2ray", ("v2ray",), "tcp",
               443, EX5_TLS, lambda: proxies.VMessTls("vmess-tls")),
        Recipe("vmess-ws", "v2ray, VMess over WebSocket (no TLS)", "v2ray", ("v2ray",), "tcp",
               10088, "spec §6 Ex5 (an HTTP-looking first packet is exempt)",
               lambda: proxies.VMessWs("vmess-ws")),
        Recipe("trojan", "trojan (TLS), on port 443", "trojan", ("trojan",), "tcp", 443, EX5_TLS,
               lambda: proxies.Trojan("trojan")),
        Recipe("stunnel", "stunnel4, a TLS tunnel, on port 443", "stunnel4", ("stunnel4",),
               "tcp", 443, EX5_TLS, lambda: proxies.Stunnel("stunnel")),
        Recipe("obfs4", "obfs4proxy (pluggable transport), iat-mode 0", "obfs4proxy",
               ("obfs4proxy",), "tcp", 9443, f"{FET}; §7b (obfs4)",
               lambda: proxies.Obfs4("obfs4")),
        Recipe("openvpn-tcp", "OpenVPN 2.6 over TCP (TLS, lab CA)", "openvpn", ("openvpn",),
               "tcp", 1194, NONE, lambda: vpn.OpenVpnTcp("openvpn-tcp")),
        Recipe("wireguard", "WireGuard (wireguard-go in user space, wg)",
               "wireguard-tools wireguard-go", ("wg", "wireguard-go"), "udp", 51820, NONE,
               lambda: vpn.WireGuard("wireguard")),
    )
}  # fmt: skip
"""Every built-in tool, in the matrix's row order."""


PLACEHOLDERS = ("{server}", "{port}", "{client}", "{origin}")


def split_command(what: str, command: str) -> list[str]:
    """``command`` as an argument list (shlex, no shell); RecipeError names a bad one."""
    try:
        argv = shlex.split(command)
    except ValueError as exc:
        raise RecipeError(f"{what}: cannot split {command!r}: {exc}") from None
    if not argv:
        raise RecipeError(f"{what}: empty command")
    return argv


def fill(argv: list[str], server: str, port: int) -> list[str]:
    values = {"{server}": server, "{port}": str(port), "{client}": CLIENT_V4, "{origin}": ORIGIN}
    out = []
    for arg in argv:
        filled = arg
        for key, value in values.items():
            filled = filled.replace(key, value)
        out.append(filled)
    return out


@dataclass
class Byo:
    """A bring-your-own tool: its commands (already split) and port."""

    name: str
    client: list[str]
    server: list[str]
    port: int
    transport: str = "tcp"

    def recipe(self) -> Recipe:
        spec = self
        return Recipe(self.name, "your own tool", "-", (self.client[0], self.server[0]),
                      self.transport, self.port, NONE,
                      lambda: ByoSession(spec.name, spec))  # fmt: skip


class ByoSession(ToolSession):
    def __init__(self, name: str, spec: Byo) -> None:
        super().__init__(name)
        self.spec = spec

    def start(self) -> None:
        proc = self.spawn("server", fill(self.spec.server, "0.0.0.0", self.spec.port))
        if self.spec.transport == "tcp":
            self.wait_listening("server", self.spec.port, proc)

    def trial(self, address: str, timeout: float) -> Attempt:
        argv = fill(self.spec.client, address, self.spec.port)
        started = time.monotonic()
        try:
            res = subprocess.run(
                ["ip", "netns", "exec", CLIENT_NS, *argv],
                capture_output=True,
                timeout=timeout,
                check=False,
            )
        except subprocess.TimeoutExpired:
            return Attempt.since(started, f"client: still running after {timeout:g} s")
        if res.returncode != 0:
            last = (res.stderr.decode(errors="replace").strip().splitlines() or [""])[-1]
            return Attempt.since(started, f"client: exit status {res.returncode}: {last[:200]}")
        return Attempt.since(started)

    def download(self, address: str, size: int, timeout: float) -> Attempt:
        return self.trial(address, timeout)
