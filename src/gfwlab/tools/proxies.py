"""Recipes of the proxies: shadowsocks-libev (plain AEAD, simple-obfs HTTP), v2ray VMess (TCP,
TLS, WebSocket), trojan, obfs4proxy and stunnel4, all from Debian.

Each server listens on the wildcard address in the server namespace (so it answers on every
trial address, see :mod:`gfwlab.tools.recipe`) and forwards to the lab's nginx; each client runs
in the client namespace and reaches the server at ``VIRTUAL``. Passwords, UUIDs, keys and
certificates are made per run; TLS tools get a certificate for ``tools.lab.test`` from the lab
CA (:mod:`gfwlab.lab.ca`) and their clients verify it.

What the spec says of each (the cells' citations): Shadowsocks, VMess and obfs4 are "fully
encrypted" and were hit by the FET's dynamic blocking (spec §6, "Affected protocols"; §7b);
Shadowsocks draws active probes (spec §7a); a first packet that looks like HTTP or TLS is exempt
from the FET (spec §6, Ex5); TLS proxies were reported blocked from October 2022 (spec §8,
anecdotal) and TLS-in-TLS detection is a hypothesis (spec §14h).
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import time
import uuid

from gfwlab.lab import ca
from gfwlab.lab.state import state_dir
from gfwlab.tools.recipe import (
    ORIGIN,
    TOOL_NAME,
    VIRTUAL,
    ForwardTool,
    RecipeError,
    Session,
    SocksTool,
)

CIPHER = "chacha20-ietf-poly1305"


def lab_ca() -> tuple[str, str]:
    directory = os.path.join(state_dir(), "ca")
    return os.path.join(directory, "ca.pem"), os.path.join(directory, "ca.key")


def tool_cert(session: Session) -> tuple[str, str]:
    """A fresh certificate and key for ``tools.lab.test`` signed by the lab CA (per run)."""
    ca_cert, ca_key = lab_ca()
    if not os.path.exists(ca_key):
        raise RecipeError("the lab CA is missing (is the lab up?)")
    return ca.make_server_cert(session.path("tls"), ca_cert, ca_key, [TOOL_NAME], [])


class Shadowsocks(SocksTool):
    """ss-server and ss-local (AEAD), optionally with the simple-obfs plugin in HTTP mode."""

    port = 8388
    plugin: tuple[str, str, str, str] | None = None

    def start(self) -> None:
        password = secrets.token_urlsafe(16)
        common = ["-k", password, "-m", CIPHER]
        server = ["ss-server", "-s", "0.0.0.0", "-p", str(self.port), *common]
        client = ["ss-local", "-s", VIRTUAL, "-p", str(self.port), "-l", str(self.socks_port),
                  "-b", "127.0.0.1", *common]  # fmt: skip
        if self.plugin is not None:
            s_plugin, s_opts, c_plugin, c_opts = self.plugin
            server += ["--plugin", s_plugin, "--plugin-opts", s_opts]
            client += ["--plugin", c_plugin, "--plugin-opts", c_opts]
        self.setup_redirect()
        proc = self.spawn("server", server)
        self.wait_listening("server", self.port, proc)
        proc = self.spawn("client", client)
        self.wait_listening("client", self.socks_port, proc)


class ShadowsocksObfsHttp(Shadowsocks):
    port = 8389
    plugin = ("obfs-server", "obfs=http", "obfs-local", f"obfs=http;obfs-host={TOOL_NAME}")


class VMess(SocksTool):
    """v2ray (4.x) with a VMess inbound (AEAD headers: alterId 0) and a SOCKS client."""

    port = 10086
    socks_port = 1081
    stream = "tcp"

    def stream_settings(self, server: bool) -> dict[str, object]:
        return {"network": "tcp", "security": "none"}

    def start(self) -> None:
        user = str(uuid.uuid4())
        server = {
            "log": {"loglevel": "warning"},
            "inbounds": [{
                "listen": "0.0.0.0", "port": self.port, "protocol": "vmess",
                "settings": {"clients": [{"id": user, "alterId": 0}]},
                "streamSettings": self.stream_settings(True),
            }],
            "outbounds": [{"protocol": "freedom"}],
        }  # fmt: skip
        client = {
            "log": {"loglevel": "warning"},
            "inbounds": [{
                "listen": "127.0.0.1", "port": self.socks_port, "protocol": "socks",
                "settings": {"udp": False},
            }],
            "outbounds": [{
                "protocol": "vmess",
                "settings": {"vnext": [{
                    "address": VIRTUAL, "port": self.wire_port,
                    "users": [{"id": user, "alterId": 0, "security": "aes-128-gcm"}],
                }]},
                "streamSettings": self.stream_settings(False),
            }],
        }  # fmt: skip
        self.setup_redirect()
        s = self.write("server.json", json.dumps(server))
        c = self.write("client.json", json.dumps(client))
        proc = self.spawn("server", ["v2ray", "-config", s])
        self.wait_listening("server", self.port, proc)
        proc = self.spawn("client", ["v2ray", "-config", c])
        self.wait_listening("client", self.socks_port, proc)


class VMessTls(VMess):
    port = 10087
    public_port = 443

    def stream_settings(self, server: bool) -> dict[str, object]:
        if server:
            cert, key = tool_cert(self)
            tls: dict[str, object] = {"certificates": [{"certificateFile": cert, "keyFile": key}]}
        else:
            tls = {
                "serverName": TOOL_NAME,
                "certificates": [{"usage": "verify", "certificateFile": lab_ca()[0]}],
            }
        return {"network": "tcp", "security": "tls", "tlsSettings": tls}


class VMessWs(VMess):
    port = 10088

    def stream_settings(self, server: bool) -> dict[str, object]:
        ws: dict[str, object] = {"path": "/ws"}
        if not server:
            ws["headers"] = {"Host": TOOL_NAME}
        return {"network": "ws", "security": "none", "wsSettings": ws}


class Trojan(SocksTool):
    """trojan (TLS, a password; non-trojan requests fall back to the lab's nginx)."""

    port = 4443
    public_port = 443
    socks_port = 1082

    def start(self) -> None:
        password = secrets.token_urlsafe(16)
        cert, key = tool_cert(self)
        server = {
            "run_type": "server", "local_addr": "0.0.0.0", "local_port": self.port,
            "remote_addr": ORIGIN, "remote_port": 80, "password": [password], "log_level": 2,
            "ssl": {"cert": cert, "key": key, "alpn": ["http/1.1"]},
        }  # fmt: skip
        client = {
            "run_type": "client", "local_addr": "127.0.0.1", "local_port": self.socks_port,
            "remote_addr": VIRTUAL, "remote_port": self.wire_port, "password": [password],
            "log_level": 2,
            "ssl": {"verify": True, "verify_hostname": True, "cert": lab_ca()[0],
                    "sni": TOOL_NAME, "alpn": ["h2", "http/1.1"]},
        }  # fmt: skip
        self.setup_redirect()
        proc = self.spawn("server", ["trojan", "-c", self.write("server.json", json.dumps(server))])
        self.wait_listening("server", self.port, proc)
        proc = self.spawn("client", ["trojan", "-c", self.write("client.json", json.dumps(client))])
        self.wait_listening("client", self.socks_port, proc)


class Stunnel(ForwardTool):
    """stunnel4: a TLS tunnel from a local port in the client to the origin's HTTPS port."""

    port = 8444
    public_port = 443
    local_port = 8443

    def start(self) -> None:
        cert, key = tool_cert(self)
        server = (
            "foreground = yes\npid =\n[tools]\n"
            f"accept = 0.0.0.0:{self.port}\nconnect = {ORIGIN}:443\ncert = {cert}\nkey = {key}\n"
        )
        client = (
            "foreground = yes\npid =\n[tools]\nclient = yes\n"
            f"accept = 127.0.0.1:{self.local_port}\nconnect = {VIRTUAL}:{self.wire_port}\n"
            f"sni = {TOOL_NAME}\nverifyChain = yes\nCAfile = {lab_ca()[0]}\n"
            f"checkHost = {TOOL_NAME}\n"
        )
        self.setup_redirect()
        proc = self.spawn("server", ["stunnel4", self.write("server.conf", server)])
        self.wait_listening("server", self.port, proc)
        proc = self.spawn("client", ["stunnel4", self.write("client.conf", client)])
        self.wait_listening("client", self.local_port, proc)


class Obfs4(SocksTool):
    """obfs4proxy as a managed pluggable transport (pt-spec): the server in front of the
    origin's HTTPS port, the client a SOCKS5 proxy that takes the bridge's arguments."""

    port = 9443

    def start(self) -> None:
        self.setup_redirect()
        server = self._pt(
            "server",
            {
                "TOR_PT_SERVER_TRANSPORTS": "obfs4",
                "TOR_PT_SERVER_BINDADDR": f"obfs4-0.0.0.0:{self.port}",
                "TOR_PT_ORPORT": f"{ORIGIN}:443",
            },
        )
        args = server.split("ARGS:", 1)[1].strip()
        self.auth = ";".join(a for a in args.split(",") if a).encode()
        line = self._pt("client", {"TOR_PT_CLIENT_TRANSPORTS": "obfs4"})
        self.socks_port = int(line.split()[-1].rsplit(":", 1)[1])
        self.target = (VIRTUAL, self.port)

    def _pt(self, role: str, env: dict[str, str]) -> str:
        state = self.path(f"pt-{role}")
        os.makedirs(state, mode=0o700, exist_ok=True)
        env = {"TOR_PT_MANAGED_TRANSPORT_VER": "1", "TOR_PT_STATE_LOCATION": state, **env}
        proc = self.spawn(role, ["obfs4proxy"], env=env, stdout=subprocess.PIPE,
                          stdin=subprocess.PIPE)  # fmt: skip
        assert proc.stdout is not None
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            line = proc.stdout.readline().decode(errors="replace").strip()
            if line.startswith(("SMETHOD ", "CMETHOD ")):
                return line
            if not line and proc.poll() is not None:
                break
        raise RecipeError(f"obfs4proxy ({role}) did not report its method: {self.tail()}")
