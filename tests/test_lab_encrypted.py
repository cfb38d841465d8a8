"""Encrypted-traffic censorship live: FET and probing against shadowsocks-libev, QUIC SNI.

Real ss-local/ss-server (Debian shadowsocks-libev, an AEAD cipher) and the lab's HTTP/3 server
and client run through the censor. Skipped where the lab or shadowsocks-libev cannot run.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest
from test_lab import client, gfwlab, leftovers
from test_lab import pytestmark as lab_marks

from gfwlab.lab.topology import CLIENT_NS, SERVER_NS
from helpers import binomial_interval

pytestmark = [
    *lab_marks,
    pytest.mark.skipif(shutil.which("ss-server") is None, reason="shadowsocks-libev missing"),
]
SS_PORT = 8388
CIPHER = ["-k", "gfwlab-test", "-m", "chacha20-ietf-poly1305"]


class Lab:
    """A lab made for one test, with ss-server and ss-local, always taken down."""

    def __init__(self, *args: str) -> None:
        gfwlab("lab", "down")
        res = gfwlab("lab", "up", *args)
        assert res.returncode == 0, res.stderr
        self.procs: list[subprocess.Popen[str]] = []
        self.ss_log = "/run/gfwlab/ss-server-test.log"
        self.spawn(
            SERVER_NS,
            ["ss-server", "-s", "198.19.0.2", "-p", str(SS_PORT), *CIPHER, "-v"],
            self.ss_log,
        )
        self.spawn(
            CLIENT_NS,
            [
                "ss-local",
                "-s",
                "198.19.0.2",
                "-p",
                str(SS_PORT),
                "-l",
                "1080",
                "-b",
                "127.0.0.1",
                *CIPHER,
            ],
            "/run/gfwlab/ss-local-test.log",
        )
        time.sleep(0.5)

    def spawn(self, ns: str, argv: list[str], log: str) -> None:
        with open(log, "w") as fh:
            self.procs.append(
                subprocess.Popen(
                    ["ip", "netns", "exec", ns, *argv],
                    stdout=fh,
                    stderr=subprocess.STDOUT,
                    text=True,
                )
            )

    def via_ss(self, url: str = "http://example.org/", max_time: float = 2.0) -> bool:
        res = client(
            "curl", "-sS", "--max-time", str(max_time), "--socks5-hostname", "127.0.0.1:1080", url
        )
        return res.returncode == 0 and "gfwlab lab server" in res.stdout

    def events(self) -> list[dict[str, object]]:
        return [json.loads(x) for x in gfwlab("lab", "events").stdout.splitlines()]

    def close(self) -> None:
        for p in self.procs:
            p.terminate()
        gfwlab("lab", "down")


@pytest.fixture
def lab_factory() -> Iterator[list[Lab]]:
    labs: list[Lab] = []
    try:
        yield labs
    finally:
        for lab in labs:
            lab.close()
        assert leftovers() == []


def fet_events(events: list[dict[str, object]]) -> list[dict[str, object]]:
    return [e for e in events if e["mechanism"] == "fet" and e["rule"] == "fet:no-exemption"]


def test_shadowsocks_fet_share_and_residual_2022(lab_factory: list[Lab]) -> None:
    lab = Lab(
        "--date",
        "2022-06-01",
        "--seed",
        "7",
        "--set",
        "ss_probing.enabled=false",
        "--set",
        "fet.residual_s=0.01",
    )
    lab_factory.append(lab)
    n = 60
    ok = [lab.via_ss() for _ in range(n)]
    decisions = fet_events(lab.events())
    assert len(decisions) >= 0.9 * n  # (nearly) every ss-local connection's first packet
    dropped = sum(e["action"] == "drop" for e in decisions)
    lo, hi = binomial_interval(len(decisions), 0.263)
    assert lo <= dropped / len(decisions) <= hi, (dropped, len(decisions))
    assert n - sum(ok) >= dropped * 0.8  # a dropped first packet is a failed request


def test_shadowsocks_residual_after_a_block(lab_factory: list[Lab]) -> None:
    lab = Lab(
        "--date",
        "2022-06-01",
        "--seed",
        "7",
        "--set",
        "ss_probing.enabled=false",
        "--set",
        "fet.residual_s=30",
    )
    lab_factory.append(lab)
    for _ in range(40):
        if not lab.via_ss():
            break
    else:
        pytest.fail("no connection was blocked in 40 tries")
    assert not lab.via_ss()  # the next one hits the residual block
    residual = [e for e in lab.events() if e["mechanism"] == "fet" and e.get("residual")]
    assert residual


def test_shadowsocks_is_not_blocked_after_march_2023(lab_factory: list[Lab]) -> None:
    lab = Lab("--date", "2023-06-01", "--set", "ss_probing.enabled=false")
    lab_factory.append(lab)
    assert all(lab.via_ss() for _ in range(10))
    assert not [e for e in lab.events() if e["mechanism"] == "fet"]


def test_probes_reach_ss_server_and_events_name_them(lab_factory: list[Lab]) -> None:
    lab = Lab(
        "--date",
        "2024-06-01",
        "--set",
        "ss_probing.probability=1.0",
        "--set",
        "ss_probing.delay_scale=0.0005",
        "--set",
        "ss_probing.linger_s=2.0",
    )
    lab_factory.append(lab)
    lab.via_ss(max_time=5)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        events = lab.events()
        results = [e for e in events if e["mechanism"] == "ss_probing" and "reaction" in e]
        if len(results) >= 3:
            break
        time.sleep(0.5)
    planned = {e["probe"] for e in events if e["mechanism"] == "ss_probing" and "at" in e}
    assert {"R1", "R2"} <= planned
    assert results, events
    with open(lab.ss_log) as fh:
        log = fh.read()
    assert "198.18.1." in log  # ss-server saw connections from the prober's addresses


H3 = [sys.executable, "-m", "gfwlab.lab.h3", "get"]


def test_quic_sni_blocks_after_the_first_initial(lab_factory: list[Lab]) -> None:
    lab = Lab("--date", "2024-06-01", "--set", "quic_sni.residual_s=4")
    lab_factory.append(lab)
    ip = "198.19.0.9"

    def get(name: str, *extra: str) -> subprocess.CompletedProcess[str]:
        return client(*H3, f"https://{name}/", "--connect-ip", ip, "--timeout", "3", *extra)

    assert get("example.org").returncode == 0
    blocked = get("www.youtube.com")
    assert blocked.returncode == 28, blocked.stderr  # the handshake times out
    again = get("example.org")
    assert again.returncode == 28  # residual: same (client, server, port), any source port
    time.sleep(4.2)
    low = get("www.youtube.com", "--local-port", "400")  # source port below 443 evades
    assert low.returncode == 0, low.stderr
    drops = [e for e in lab.events() if e["mechanism"] == "quic_sni" and e["action"] == "drop"]
    assert drops and drops[0]["flow"]["dport"] == 443  # type: ignore[index]
