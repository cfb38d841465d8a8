"""The live lab, for real: namespaces, nginx, dnsmasq, the HTTP/3 server, curl, dig, the censor.

These tests need root, iproute2, iptables with NFQUEUE, nginx, dnsmasq, curl, dig and tcpdump;
they are skipped where any is missing. Residual windows are shortened with --set; no test
sleeps for the real 180 s.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import dns.message
import pytest

from gfwlab.lab.netns import in_ns
from gfwlab.live.chains import SEEN_CHAIN, SKIP_CHAIN
from gfwlab.live.topology import (
    CENSOR_NS,
    CLIENT_GW_V4,
    CLIENT_GW_V6,
    SERVER_GW_V4,
    SERVER_GW_V6,
    SERVER_LINK,
    SERVER_V4,
    SERVER_V6,
)
from gfwlab.packet.ip import ACK, RST, parse
from gfwlab.packet.pcap import CaptureReader
from testenv import LAB_MARKS, UP, censor_stats, client, curl, gfwlab, leftovers

pytestmark = LAB_MARKS


def host_snapshot() -> dict[str, str]:
    """The host's own network settings, to compare before up and after down."""
    cmds = {
        "addr": ["ip", "-d", "addr"],
        "route": ["ip", "route", "show", "table", "all"],
        "route6": ["ip", "-6", "route", "show", "table", "all"],
        "rule": ["ip", "rule"],
        "links": ["ip", "-d", "link"],
        "netns": ["ip", "netns", "list"],
        "iptables": ["iptables-save"],
        "ip6tables": ["ip6tables-save"],
        "sysctl": ["sysctl", "net.ipv4.ip_forward", "net.ipv6.conf.all.forwarding"],
    }
    snap = {}
    for key, argv in cmds.items():
        out = subprocess.run(argv, capture_output=True, text=True, check=False).stdout
        snap[key] = "\n".join(line for line in out.splitlines() if not line.startswith("#"))
    snap["etc_netns"] = (
        " ".join(sorted(os.listdir("/etc/netns"))) if os.path.isdir("/etc/netns") else ""
    )
    return snap


@pytest.fixture(scope="module")
def host_before() -> dict[str, str]:
    gfwlab("lab", "down")
    return host_snapshot()


@pytest.fixture(scope="module")
def lab(host_before: dict[str, str]) -> Iterator[None]:
    res = gfwlab("lab", "up", *UP)
    assert res.returncode == 0, res.stderr + res.stdout
    try:
        yield
    finally:
        gfwlab("lab", "down")


class Capture:
    """tcpdump in a lab namespace, written to a pcap we read with our own reader."""

    def __init__(self, role: str, path: Path, bpf: str) -> None:
        dev = {"client": "gfwc0", "server": "gfws0"}[role]
        self.path = path
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "gfwlab",
                "lab",
                "exec",
                role,
                "--",
                "tcpdump",
                "--immediate-mode",
                "-i",
                dev,
                "-U",
                "-n",
                "-w",
                str(path),
                bpf,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        deadline = time.monotonic() + 10
        while not (path.exists() and path.stat().st_size >= 24):
            assert time.monotonic() < deadline, "tcpdump did not start"
            time.sleep(0.05)
        time.sleep(0.3)

    def stop(self) -> list[tuple[float, bytes]]:
        time.sleep(0.5)  # forged packets arrive ~18 ms late; let them land
        self.proc.send_signal(signal.SIGINT)
        self.proc.wait(timeout=10)
        with CaptureReader(str(self.path)) as reader:
            return list(reader)


def test_https_blocked_sni_is_reset_and_unblocked_works(lab: None) -> None:
    ok = curl("https://example.org/", "--resolve", "example.org:443:198.19.0.3")
    assert ok.returncode == 0, ok.stderr
    assert "gfwlab lab server: example.org" in ok.stdout
    bad = curl("https://www.facebook.com/", "--resolve", "www.facebook.com:443:198.19.0.4")
    assert bad.returncode != 0
    assert "reset" in bad.stderr.lower(), bad.stderr


def test_residual_block_then_release(lab: None) -> None:
    ip = "198.19.0.5"
    first = curl("https://www.youtube.com/", "--resolve", f"www.youtube.com:443:{ip}")
    assert "reset" in first.stderr.lower(), first.stderr
    t0 = time.monotonic()
    again = curl("https://example.org/", "--resolve", f"example.org:443:{ip}")
    assert time.monotonic() - t0 < 3.0
    # The residual block resets the new connection on its SYN: curl sees the connection refused.
    assert again.returncode == 7, again.stderr
    time.sleep(max(0.0, 3.3 - (time.monotonic() - t0)))
    later = curl("https://example.org/", "--resolve", f"example.org:443:{ip}")
    assert later.returncode == 0, later.stderr


def test_http_keyword_resets_carry_the_injector_fingerprint(lab: None, tmp_path: Path) -> None:
    ip = "198.19.0.6"
    cap_c = Capture("client", tmp_path / "c.pcap", f"tcp and host {ip}")
    cap_s = Capture("server", tmp_path / "s.pcap", f"tcp and host {ip}")
    res = curl(f"http://{ip}/search?q=ultrasurf")
    seen = {"client": cap_c.stop(), "server": cap_s.stop()}
    assert res.returncode != 0 and "reset" in res.stderr.lower(), res.stderr
    for side, pkts in seen.items():
        resets = [p for p in (parse(raw) for _t, raw in pkts) if p.flags & RST]
        forged = [p for p in resets if p.ttl == 248]
        assert forged, (side, len(pkts), [(p.ttl, p.ip_id, p.flags) for p in resets])
        for p in forged:  # injector type III (S&P'25): RST+ACK, DF=0, IP-ID 0x9916-0x9933
            assert p.flags == RST | ACK and not p.df and 0x9916 <= p.ip_id <= 0x9933


def test_dig_gets_the_forged_answer_first_then_the_real_one(lab: None, tmp_path: Path) -> None:
    cap = Capture("client", tmp_path / "dns.pcap", "udp port 53")
    res = client("dig", "+time=3", "+tries=1", "www.google.com", "A")
    other = client("dig", "+time=3", "+tries=1", "www.example.org", "A")
    pkts = [parse(raw) for _t, raw in cap.stop()]
    assert res.returncode == 0 and "198.19.99.7" in res.stdout, res.stdout
    assert other.returncode == 0 and "198.19.0.2" in other.stdout
    answers = [p for p in pkts if p.sport == 53]
    by_name: dict[str, list[str]] = {}
    for p in answers:
        msg = dns.message.from_wire(p.payload)
        name = str(msg.question[0].name).rstrip(".")
        by_name.setdefault(name, []).append(msg.answer[0][0].address)
    assert by_name["www.google.com"] == ["198.19.99.7", "198.19.0.2"]
    assert by_name["www.example.org"] == ["198.19.0.2"]


def _skip_rule_state() -> tuple[bool, int]:
    """Whether a residual drop block holds the skips off, and the packets the DNS answer skip
    rule has let through (``live/chains.py`` ``skip_rules``)."""
    out = subprocess.run(
        in_ns(CENSOR_NS, "iptables", "-w", "-t", "mangle", "-L", SKIP_CHAIN, "-v", "-x", "-n"),
        capture_output=True, text=True, timeout=10, check=True,
    ).stdout.splitlines()  # fmt: skip
    rules = out[2:]
    armed = bool(rules) and SEEN_CHAIN in rules[0].split()[2]
    answers = [int(r.split()[0]) for r in rules if "sports 53" in r and "ctdir REPLY" in r]
    assert len(answers) == 1, out
    return armed, answers[0]


def test_dns_answers_skip_the_queue_and_blocked_names_are_still_answered(lab: None) -> None:
    """Answers from port 53 change nothing in the engine (``Censor.plan.ports``): the
    kernel forwards them, and only the queries reach the censor's queue."""
    deadline = time.monotonic() + 15
    while _skip_rule_state()[0]:  # an earlier test's residual drop block holds every skip off
        assert time.monotonic() < deadline, "a residual drop block outlasted 15 s"
        time.sleep(0.5)
    _, before = _skip_rule_state()
    queued_before = censor_stats()["queued_packets"]
    names = ["www.google.com", "www.example.org"] * 10
    script = "; ".join(f"dig +time=3 +tries=1 +short {n} A | head -1" for n in names)
    res = client("sh", "-c", script)
    firsts = res.stdout.split()
    armed, after = _skip_rule_state()
    queued = censor_stats()["queued_packets"] - queued_before
    assert not armed
    assert firsts == ["198.19.99.7", "198.19.0.2"] * 10, res.stdout  # forged first, as before
    assert after - before == len(names), (before, after)  # one real answer each, unqueued
    # The queries, and at most one ICMP error per blocked name: dig stops at the forged answer,
    # and the client's kernel may answer the real one's arrival at a closed port.
    assert len(names) <= queued <= len(names) + names.count("www.google.com"), queued


def _prerouting_packets(dev: str) -> tuple[int, int]:
    """The packets from ``dev`` that mangle PREROUTING sent to the queue chain by their
    connection's bypass mark, and those it sent there by their address types."""
    out = subprocess.run(
        in_ns(CENSOR_NS, "iptables", "-w", "-t", "mangle", "-L", "PREROUTING", "-v", "-x", "-n"),
        capture_output=True, text=True, timeout=10, check=True,
    ).stdout.splitlines()[2:]  # fmt: skip
    rows = [(int(r[0]), " ".join(r[9:]).lower()) for r in map(str.split, out) if r[5:6] == [dev]]
    by_mark = [packets for packets, matches in rows if "connmark" in matches]
    by_type = [packets for packets, matches in rows if "addrtype" in matches]
    assert len(by_mark) == 1 and len(by_type) == 1, out
    return by_mark[0], by_type[0]


def test_a_bypassed_connection_skips_the_address_type_lookups(lab: None) -> None:
    """Once the censor has bypassed a connection, its packets reach the queue chain by their
    mark alone, before the address type matches (a route lookup each, a tenth of bulk
    throughput): a 10 MiB download's packets from the server nearly all take that rule."""
    dev = SERVER_LINK.a
    marked_before, typed_before = _prerouting_packets(dev)
    size = 10 << 20
    res = curl(f"http://{SERVER_V4}/bytes/{size}", "-o", "/dev/null", "-w", "%{size_download}")
    marked_after, typed_after = _prerouting_packets(dev)
    assert res.returncode == 0 and res.stdout == str(size), res.stderr
    marked, typed = marked_after - marked_before, typed_after - typed_before
    assert marked >= 50 and marked > 10 * typed, (marked, typed)


def test_packets_to_the_censor_itself_skip_the_queue(lab: None) -> None:
    """Only traffic that crosses the censor is the GFW's to judge: pings of the censor's own
    addresses on both links, IPv4 and IPv6 (with the neighbour discovery they bring), reach no
    queue; the same pings across the censor do."""
    own = [("client", CLIENT_GW_V4), ("client", CLIENT_GW_V6), ("server", SERVER_GW_V4),
           ("server", SERVER_GW_V6)]  # fmt: skip
    across = [("client", SERVER_V4), ("client", SERVER_V6)]

    def pings(targets: list[tuple[str, str]]) -> int:
        before = censor_stats()["queued_packets"]
        for role, addr in targets:
            res = gfwlab("lab", "exec", role, "--", "ping", "-c", "3", "-i", "0.2", "-W", "2", addr)
            assert res.returncode == 0, res.stdout + res.stderr
        queued: int = censor_stats()["queued_packets"] - before
        return queued

    assert pings(own) == 0
    assert pings(across) >= 2 * 3  # each echo request at least


def test_http3_to_an_unblocked_name_works(lab: None) -> None:
    res = client(
        sys.executable,
        "-m",
        "gfwlab.lab.h3",
        "get",
        "https://example.org/",
        "--connect-ip",
        "198.19.0.7",
        "--timeout",
        "5",
    )
    assert res.returncode == 0, res.stderr
    assert "example.org" in res.stdout


def test_status_and_events(lab: None) -> None:
    res = gfwlab("lab", "status", "--json")
    assert res.returncode == 0, res.stderr
    st = json.loads(res.stdout)
    assert st["up"] and len(st["namespaces"]) == 3
    assert all(p["alive"] for p in st["processes"])
    assert st["stats"]["queued_packets"] > 0
    events = [json.loads(x) for x in gfwlab("lab", "events").stdout.splitlines()]
    assert {"tls_sni", "http_keyword", "dns_injection"} <= {e["mechanism"] for e in events}


def test_up_twice_is_refused(lab: None) -> None:
    res = gfwlab("lab", "up")
    assert res.returncode == 2 and "already up" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1


def test_zz_down_after_kill_9_of_the_censor_leaves_nothing(
    lab: None, host_before: dict[str, str]
) -> None:
    st = json.loads(gfwlab("lab", "status", "--json").stdout)
    pid = next(p["pid"] for p in st["processes"] if p["name"] == "censor")
    os.kill(pid, signal.SIGKILL)
    time.sleep(0.3)
    status = gfwlab("lab", "status")
    assert "fail-open" in status.stdout
    # Fail-open: with no censor, a blocked name now passes.
    assert (
        curl("https://www.facebook.com/", "--resolve", "www.facebook.com:443:198.19.0.8").returncode
        == 0
    )
    stats = json.loads(gfwlab("lab", "status", "--json").stdout)["stats"]
    assert stats["uninspected"] >= 4  # at least the handshake and the request passed unread
    assert gfwlab("lab", "down").returncode == 0
    assert leftovers() == []
    assert host_snapshot() == host_before


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT])
def test_interrupted_up_then_down_leaves_nothing(host_before: dict[str, str], sig: int) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "gfwlab", "lab", "up", *UP],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 20
    while (
        "gfwlab-censor"
        not in subprocess.run(
            ["ip", "netns", "list"], capture_output=True, text=True, check=False
        ).stdout
    ):
        assert time.monotonic() < deadline and proc.poll() is None
        time.sleep(0.01)
    time.sleep(0.2)
    proc.send_signal(sig)
    proc.communicate(timeout=60)
    if sig == signal.SIGINT:
        assert proc.returncode == 130
        assert leftovers() == []  # an interrupted up cleans up after itself
    assert gfwlab("lab", "down").returncode == 0
    assert leftovers() == []
    assert host_snapshot() == host_before


def test_non_root_and_missing_tools_get_one_line(tmp_path: Path) -> None:
    nobody = [
        shutil.which("setpriv") or "setpriv",
        "--reuid=65534",
        "--regid=65534",
        "--clear-groups",
        sys.executable,
    ]
    env = {**os.environ, "GFWLAB_STATE_DIR": str(tmp_path / "st")}
    probe = subprocess.run(
        [*nobody, "-c", "import gfwlab.cli"], capture_output=True, env=env, check=False
    )
    if probe.returncode == 0:  # the interpreter and packages are readable by nobody
        res = subprocess.run(
            [*nobody, "-m", "gfwlab", "lab", "up"],
            capture_output=True,
            text=True,
            check=False,
            env=env,
        )
        assert res.returncode == 2 and "needs root" in res.stderr, res.stderr
        assert len(res.stderr.strip().splitlines()) == 1
    res = subprocess.run(
        [sys.executable, "-m", "gfwlab", "lab", "up"],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "PATH": str(tmp_path)},
    )
    assert res.returncode == 2 and "not found" in res.stderr, res.stderr
    assert leftovers() == []
