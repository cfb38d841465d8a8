"""Live: tls_in_tls (a hypothesis, spec §14h) against a real TLS-tunnelling proxy (trojan, from
Debian) through the lab. On: the proxy's flows are detected, its port is null-routed after K
detections, then its address once it moved ports; plain HTTPS with curl and headless Chromium
is not detected. Off (the default): the proxy works and nothing is reported."""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from gfwlab.lab.state import state_dir
from gfwlab.live.topology import CLIENT_NS, SERVER_NS
from testenv import LAB_MARKS, client, curl, gfwlab, leftovers, needs_tools

pytestmark = [*LAB_MARKS, needs_tools("trojan", "chromium")]
PROXY, SITE = "198.19.0.6", "198.19.0.3"
PASSWORD = "gfwlab-lab-password"
ON = ("--set", "tls_in_tls.enabled=true", "--set", "tls_in_tls.block_after=2")


@contextmanager
def lab(*args: str) -> Iterator[None]:
    gfwlab("lab", "down")
    up = gfwlab("lab", "up", "--date", "2024-06-01", "--seed", "3", *args)
    assert up.returncode == 0, up.stderr
    try:
        yield
    finally:
        gfwlab("lab", "down")
        assert leftovers() == []


@contextmanager
def trojan(tmp: Path, port: int) -> Iterator[None]:
    """A trojan server on PROXY:port (the lab's certificate) and a trojan client (SOCKS5 on the
    client's 127.0.0.1:1080) that verifies it with the lab CA."""
    ca = os.path.join(state_dir(), "ca")
    server = {
        "run_type": "server",
        "local_addr": PROXY,
        "local_port": port,
        "remote_addr": "198.19.0.2",
        "remote_port": 80,
        "password": [PASSWORD],
        "log_level": 1,
        "ssl": {"cert": f"{ca}/server.pem", "key": f"{ca}/server.key", "alpn": ["http/1.1"]},
    }
    cli = {
        "run_type": "client",
        "local_addr": "127.0.0.1",
        "local_port": 1080,
        "remote_addr": PROXY,
        "remote_port": port,
        "password": [PASSWORD],
        "log_level": 1,
        "ssl": {"verify": True, "verify_hostname": False, "cert": f"{ca}/ca.pem"},
    }
    procs = []
    for ns, conf, name in ((SERVER_NS, server, "server"), (CLIENT_NS, cli, "client")):
        path = tmp / f"trojan-{name}-{port}.json"
        path.write_text(json.dumps(conf))
        log = open(tmp / f"trojan-{name}-{port}.log", "wb")  # noqa: SIM115 - closed below
        procs.append(
            (
                subprocess.Popen(
                    ["ip", "netns", "exec", ns, "trojan", "-c", str(path)], stdout=log, stderr=log
                ),
                log,
            )
        )
    time.sleep(1.0)
    try:
        yield
    finally:
        for proc, log in procs:
            proc.terminate()
            proc.wait(timeout=10)
            log.close()


def _proxied() -> bool:
    got = curl(
        "https://example.org/",
        "--socks5",
        "127.0.0.1:1080",
        "--resolve",
        f"example.org:443:{SITE}",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
    )
    return got.returncode == 0 and got.stdout.strip() == "200"


def _direct(url: str, *extra: str) -> bool:
    got = curl(url, "-o", "/dev/null", "-w", "%{http_code}", *extra)
    return got.returncode == 0 and got.stdout.strip() == "200"


def _chromium() -> bool:
    with tempfile.TemporaryDirectory() as profile:
        got = client(
            "timeout",
            "40",
            "chromium",
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={profile}",
            "--ignore-certificate-errors",
            f"--host-resolver-rules=MAP example.org {SITE}",
            "--dump-dom",
            "https://example.org/",
            timeout=60,
        )
    return got.returncode == 0 and "gfwlab lab server" in got.stdout


def _detections() -> list[dict[str, object]]:
    events = [json.loads(x) for x in gfwlab("lab", "events").stdout.splitlines()]
    return [e for e in events if e["mechanism"] == "tls_in_tls"]


# Slow (45-90 s, among the longest live tests): runs in the matrix stage (scripts/test).
@pytest.mark.slow
def test_trojan_detected_port_then_address_blocked(tmp_path: Path) -> None:
    with lab(*ON):
        # Plain HTTPS: curl and Chromium, never detected.
        for _ in range(3):
            assert _direct("https://example.org/", "--resolve", f"example.org:443:{SITE}")
        assert _chromium()
        assert _detections() == []
        with trojan(tmp_path, 4443):
            assert _proxied()  # a detection at most: nothing is blocked before K
            _fetch_until_blocked("port")
            assert not _proxied()  # the port is null-routed
            assert _direct(f"http://{PROXY}/")  # the address still answers on other ports
        found = [e for e in _detections() if "flights" in e]  # not the residual drops
        assert [e["blocked"] for e in found] == ["none", "port"]  # K = 2 detections
        assert all(e["evidence"] == "hypothesis" for e in found)
        # The user moves the proxy to another port: K more detections block the address.
        with trojan(tmp_path, 5443):
            _fetch_until_blocked("address")
            assert not _proxied()
        assert not _direct(f"http://{PROXY}/")
        assert _direct("https://example.org/", "--resolve", f"example.org:443:{SITE}")
        detected = [e for e in _detections() if "flights" in e]
        assert [e["blocked"] for e in detected] == ["none", "port", "none", "address"]


def _fetch_until_blocked(what: str, tries: int = 6) -> None:
    """Fetch through the proxy until the policy blocks ``what`` (each fetch is a new flow; the
    flights of a flow vary with timing, so a fetch is not certain to be detected)."""
    for _ in range(tries):
        _proxied()
        if any(e.get("blocked") == what for e in _detections()):
            return
    raise AssertionError(f"no {what} block after {tries} fetches: {_detections()}")


def test_off_by_default_the_proxy_works(tmp_path: Path) -> None:
    with lab(), trojan(tmp_path, 4443):
        assert all(_proxied() for _ in range(3))
        assert _detections() == []
