"""Live: the censor as several engines (``lab up --engines``, ``live/engines.py``).

Each site address is judged by the engine its low bits name, a connection opened from outside
by the first; a residual block acts on the
flows of its server, in that engine, and no other; the engines live and die together (a
``kill -9`` of the first takes the others, ``lab restart-censor`` brings them all back), and
``lab down`` leaves nothing."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gfwlab.lab.netns import in_ns
from gfwlab.lab.state import LabState
from gfwlab.live.topology import CENSOR_NS, CLIENT_NS, CLIENT_V4
from testenv import LAB_MARKS, UP, curl, engine_packets, gfwlab, leftovers

pytestmark = [*LAB_MARKS, pytest.mark.slow]  # about 20 s: the matrix stage (scripts/test)

ENGINES = 4
SITES = ["198.19.0.4", "198.19.0.5", "198.19.0.6", "198.19.0.7"]
"""One site per engine (their last bits: 0, 1, 2, 3)."""


RESIDUAL = ["--set", "http_keyword.residual_s=20", "--set", "http_keyword.residual_probability=1.0"]
"""A residual block that lasts the test and resets every new connection on its key."""


def judged() -> list[int]:
    """The packets each engine has fed its engine so far (as last written: half a second)."""
    time.sleep(1.0)
    return engine_packets()


def queued_by_rule() -> dict[str, int]:
    """The IPv4 packets each rule of the engines' chain has queued so far, by the rule."""
    listing = subprocess.run(
        in_ns(CENSOR_NS, "iptables", "-w", "-t", "mangle", "-v", "-S", "GFWLAB_ENGINES"),
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    out = {}
    for line in listing.splitlines():
        rule, _, counted = line.partition(" -c ")
        if counted:
            packets, _bytes, target = counted.split(" ", 2)
            out[f"{rule} {target}"] = int(packets)
    return out


def censor_pids() -> list[int]:
    """The first engine's pid, and its children's (the other engines)."""
    first = next(p["pid"] for p in LabState.load().processes() if p["name"] == "censor")
    with open(f"/proc/{first}/task/{first}/children", encoding="ascii") as fh:
        return [first, *(int(x) for x in fh.read().split())]


def events() -> list[dict[str, object]]:
    return [json.loads(x) for x in gfwlab("lab", "events").stdout.splitlines()]


def test_engines_share_the_sites_and_live_and_die_together(tmp_path: Path) -> None:
    bad = gfwlab("lab", "up", "--engines", "3")
    assert bad.returncode == 2 and bad.stderr.strip().count("\n") == 0, bad.stderr
    assert "--engines: 3 is not 1, 2, 4, 8 or 16" in bad.stderr
    gfwlab("lab", "down")
    up = gfwlab("lab", "up", *UP, *RESIDUAL, "--engines", str(ENGINES))
    assert up.returncode == 0, up.stderr
    try:
        pids = censor_pids()
        assert len(pids) == ENGINES
        before = judged()
        for site in SITES:
            assert curl(f"http://{site}/").returncode == 0
        after = judged()
        # Each engine judged its own site's connection only.
        assert all(a > b for a, b in zip(after, before, strict=True)), (before, after)

        # A connection opened from outside (its server inside) is the first engine's, whatever
        # its client's address: a block on that server must see every client.
        listener = subprocess.Popen(
            in_ns(CLIENT_NS, sys.executable, "-m", "http.server", "8080", "--bind", CLIENT_V4),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            before = queued_by_rule()
            url = f"http://{CLIENT_V4}:8080/"
            for _ in range(50):  # until the listener is up
                res = gfwlab("lab", "exec", "server", "--", "curl", "-sS", "--max-time", "5",
                             "--interface", SITES[1], "-o", "/dev/null", url)  # fmt: skip
                if res.returncode == 0:
                    break
                time.sleep(0.1)
            assert res.returncode == 0, res.stderr
            after = queued_by_rule()
        finally:
            listener.kill()
            listener.wait()
        # Counted by the kernel's rules (IPv4; the engines' own counts include the namespace's
        # IPv6 neighbour discovery, which goes by its multicast address).
        grew = {rule: after[rule] - n for rule, n in before.items() if after[rule] != n}
        assert any("--ctdir" in rule for rule in grew), grew
        assert not any("--queue-num 8" in rule for rule in grew), grew  # SITES[1]'s engine

        # A keyword request to one site is reset, and its residual block (3-tuple) hits
        # that server's next connection; the engine next to it judges its site as before.
        assert curl(f"http://{SITES[1]}/?q=falun").returncode != 0
        assert curl(f"http://{SITES[1]}/").returncode != 0
        assert curl(f"http://{SITES[2]}/").returncode == 0
        acted = [
            (e["flow"]["dst"], e["mechanism"], e["action"])  # type: ignore[index]
            for e in events()
            if e["action"] == "rst"
        ]
        assert acted and all(a == (SITES[1], "http_keyword", "rst") for a in acted), acted
        lines = [x for x in gfwlab("lab", "events").stdout.splitlines() if x]
        assert all(json.loads(x) for x in lines)  # whole lines, whichever engine wrote them

        # A kill -9 of the first engine takes the others with it.
        os.kill(pids[0], signal.SIGKILL)
        deadline = time.monotonic() + 5
        while any(os.path.exists(f"/proc/{pid}") for pid in pids[1:]):
            assert time.monotonic() < deadline, "an engine outlived the first"
            time.sleep(0.05)
        status = json.loads(gfwlab("lab", "status", "--json").stdout)
        assert status["state"] == "degraded", status
        assert curl(f"http://{SITES[3]}/").returncode == 0  # fail-open: passes uninspected

        restarted = gfwlab("lab", "restart-censor")
        assert restarted.returncode == 0, restarted.stderr
        assert len(censor_pids()) == ENGINES
        before = judged()
        for site in SITES:
            # The residual block is back in force in its engine (its blocks-1.json).
            assert (curl(f"http://{site}/").returncode == 0) == (site != SITES[1]), site
        after = judged()
        assert all(a > b for a, b in zip(after, before, strict=True)), (before, after)
        stats = json.loads(gfwlab("lab", "status", "--json").stdout)["stats"]
        assert stats["engines"] == ENGINES and stats["engines_dead"] == 0, stats
        assert stats["engine_packets"] >= sum(after), (stats, after)

        # Another engine dies: lab status says so (its share passes uninspected).
        os.kill(censor_pids()[2], signal.SIGKILL)
        time.sleep(1.0)
        status = json.loads(gfwlab("lab", "status", "--json").stdout)
        assert status["state"] == "degraded", status
        assert any("1 of the censor's 4 engines exited" in n for n in status["notes"]), status
        # A recording needs every engine: refused in one line, nothing left behind.
        target = tmp_path / "rec.pcap"
        rec = gfwlab("lab", "record", str(target), "--duration", "1")
        assert rec.returncode == 2 and "engine 2 did not answer" in rec.stderr, rec.stderr
        assert rec.stderr.strip().count("\n") == 0, rec.stderr
        assert not target.exists()
        assert not [n for n in os.listdir(LabState.load().dir) if n.startswith("recording")]
    finally:
        gfwlab("lab", "down")
    assert leftovers() == []
