"""Henan chained with the GFW in the lab, with real curl (spec §1, §14b).

``lab up -p henan -p gfw``: a request leaving the client crosses Henan's firewall, then the
GFW. Linux sends TCP timestamps, so its data packets have 32-byte TCP headers, which Henan's
parser ignores: with timestamps on, only the GFW acts; with them off in the client's namespace,
Henan's RST+ACK with its 10-byte payload reaches the client first.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import pytest

from gfwlab.live.topology import SERVER_V4
from testenv import LAB_MARKS, client, curl, gfwlab

pytestmark = LAB_MARKS

UP = ["--profile", "henan", "--profile", "gfw", "--date", "2024-06-01", "--seed", "3",
      "--set", "http_keyword.probability=1.0", "--set", "http_keyword.residual_s=1",
      "--set", "http_keyword.delay_tail=false"]  # fmt: skip


@pytest.fixture(scope="module")
def lab() -> Iterator[None]:
    gfwlab("lab", "down")
    res = gfwlab("lab", "up", *UP)
    assert res.returncode == 0, res.stderr + res.stdout
    try:
        yield
    finally:
        client("sysctl", "-q", "-w", "net.ipv4.tcp_timestamps=1")
        gfwlab("lab", "down")


def events() -> list[dict[str, object]]:
    time.sleep(0.3)
    out = gfwlab("lab", "events").stdout
    return [json.loads(line) for line in out.splitlines() if line.strip()]


@pytest.mark.usefixtures("lab")
def test_henan_acts_only_on_20_byte_headers_and_events_name_the_censor() -> None:
    url = f"http://{SERVER_V4}/"
    # Timestamps on (Linux's default): Henan's parser skips the request; a host only Henan
    # lists passes.
    ok = curl(url, "-H", "Host: shop.example.com.au", "-o", "/dev/null", "-w", "%{http_code}")
    assert ok.returncode == 0 and ok.stdout == "200", ok.stderr
    assert not [e for e in events() if e.get("censor") == "henan" and e["action"] == "rst"]
    # Timestamps off: the same request is reset by Henan, and only by Henan.
    off = client("sysctl", "-q", "-w", "net.ipv4.tcp_timestamps=0")
    assert off.returncode == 0, off.stderr
    blocked = curl(url, "-H", "Host: shop.example.com.au")
    assert blocked.returncode != 0, blocked.stdout
    acted = [e for e in events() if e["action"] == "rst"]
    assert [(e["censor"], e["mechanism"], e["rule"]) for e in acted] == [
        ("henan", "henan", "com.au")
    ]
    # A keyword only the GFW knows: the GFW acts, named as such.
    gfw = curl(f"{url}?q=ultrasurf", "-H", "Host: plain.example.net")
    assert gfw.returncode != 0
    assert ("gfw", "http_keyword") in {(e["censor"], e["mechanism"]) for e in events()}
