"""What the tests need from the machine: the shared data folder, the CI policy on skips, and the
live lab's helpers (the ``gfwlab`` command, the lab client, leftovers after ``lab down``).

A plain module, not a test module: test modules import from it (and from ``helpers``), never
from each other. It imports nothing from gfwlab, so conftest.py can load it whatever shape the
package has.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]

# --- the shared data folder ----------------------------------------------------------------


def shared_dir() -> Path:
    """``$GFWLAB_SHARED`` if set, else ``<repo>/../shared`` (where CI puts its read-only copy)."""
    env = os.environ.get("GFWLAB_SHARED")
    return Path(env).resolve() if env else REPO.parent / "shared"


SHARED = shared_dir()
SHARED_PCAPS = SHARED / "data" / "pcaps"
SHARED_BLOCKLISTS = SHARED / "data" / "blocklists"
REAL_LIST_SETS = tuple(
    f"{key}={SHARED_BLOCKLISTS}/gfw-2024-{name}-blocklist.txt"
    for key, name in (
        ("tls_sni.domains", "https"),
        ("http_keyword.domains", "http"),
        ("dns_injection.domains", "dns"),
        ("quic_sni.domains", "quic"),
    )
)
"""``--set`` overrides that load the real 2024 lists into the mechanisms that use them."""


def missing_shared(path: str | Path) -> str:
    """The skip reason for shared data that is not there; it names the path (CI fails on it)."""
    return f"shared data missing: {path} (set GFWLAB_SHARED to the shared folder)"


def needs_shared(path: str | Path) -> pytest.MarkDecorator:
    """Skip (fail under CI) unless ``path`` exists."""
    return pytest.mark.skipif(not os.path.exists(path), reason=missing_shared(path))


def shared_pcaps(*patterns: str) -> list[str]:
    """The shared captures matching any of ``patterns``, sorted; empty if the folder is missing."""
    return sorted({str(p) for pat in patterns for p in SHARED_PCAPS.glob(pat)})


# --- CI: skips are failures ----------------------------------------------------------------

MAY_SKIP = "may skip:"
"""Prefix of the skip reasons CI allows: a test that cannot mean anything on this machine."""


def ci_mode() -> bool:
    """True when ``$CI`` is set to anything but empty, ``0`` or ``false``."""
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false")


unprivileged = pytest.mark.skipif(
    os.geteuid() == 0, reason=f"{MAY_SKIP} root ignores directory permissions"
)
"""For tests of permission errors: root never gets them, so the test skips, even under CI."""


def missing_tools(*tools: str) -> list[str]:
    return [t for t in tools if shutil.which(t) is None]


def needs_tools(*tools: str) -> pytest.MarkDecorator:
    missing = missing_tools(*tools)
    return pytest.mark.skipif(bool(missing), reason=f"missing programs: {', '.join(missing)}")


# --- the live lab --------------------------------------------------------------------------

LAB_TOOLS = ("ip", "iptables", "nft", "ipset", "nginx", "dnsmasq", "curl", "dig", "tcpdump")
LAB_MARKS = [
    pytest.mark.live,
    pytest.mark.skipif(os.geteuid() != 0, reason="the lab needs root"),
    needs_tools(*LAB_TOOLS),
]
"""The marks of every test that makes the lab: ``pytestmark = LAB_MARKS``."""

SETS = [
    "tls_sni.residual_s=3",
    "tls_sni.injector='type2'",
    "tls_sni.delay_tail=false",  # the >0.5 s tail (2.1%) would outlast the tests' timeouts
    "http_keyword.probability=1.0",
    "http_keyword.injector='type3'",
    "http_keyword.residual_s=2",
    "http_keyword.delay_tail=false",  # the same tail in the HTTP resets' delays
    "dns_injection.injectors=[{name='i3', pool_v4=['198.19.99.7'], latency_ms=[1.0, 2.0]}]",
]
UP = ["--date", "2024-06-01", "--seed", "3", *[x for s in SETS for x in ("--set", s)]]


TEARDOWN_S = 120
"""How long a gfwlab command interrupted with the tests is given to take down what it made."""


def gfwlab(*args: str, timeout: float = 120, **kw: object) -> subprocess.CompletedProcess[str]:
    """Run a gfwlab command; its output captured. Interrupted (Ctrl-C, or a stage's time limit:
    SIGINT to the process group, so to the command too), the command is given time to take
    down what it made (a lab) before the interrupt goes on: ``subprocess.run`` gave it a
    quarter of a second and then SIGKILL, which left the lab of a ``gfwlab tools run`` up."""
    with subprocess.Popen(
        [sys.executable, "-m", "gfwlab", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kw,
    ) as proc:  # type: ignore[call-overload]
        try:
            out, err = proc.communicate(timeout=timeout)
        except KeyboardInterrupt:
            try:
                proc.communicate(timeout=TEARDOWN_S)  # read on: a full pipe would stall it
            except subprocess.TimeoutExpired:
                proc.kill()
            raise
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def censor_stats() -> dict[str, Any]:
    """The live censor's counters (``stats.json``) as written after this call: it writes them
    every half second or so, between passes of its loop (at most 5 s is waited)."""
    from gfwlab.lab.state import LabState  # noqa: PLC0415  (nothing from gfwlab at load)

    asked, path = time.time(), LabState.load().file("stats.json")
    while True:
        time.sleep(0.2)
        with open(path, encoding="utf-8") as fh:
            out: dict[str, Any] = json.load(fh)
        if out["updated"] > asked or time.time() > asked + 5:
            return out


def engine_packets() -> list[int]:
    """The packets each engine of the lab's censor has fed its engine so far, as its counters
    last said (``stats.json``, at most half a second old; one number for one engine)."""
    from gfwlab.lab.state import LabState  # noqa: PLC0415  (nothing from gfwlab at load)

    with open(LabState.load().file("stats.json"), encoding="utf-8") as fh:
        stats = json.load(fh)
    each: list[int] = stats.get("engine_packets_each", [stats["engine_packets"]])
    return each


def lab_for_module(*up: str) -> Iterator[None]:
    """The body of a module-scoped ``lab`` fixture: the lab brought up with ``up`` (after taking
    down any a crashed run left) for the module's tests, and taken down after them, also when
    one fails."""
    gfwlab("lab", "down")
    res = gfwlab("lab", "up", *up)
    assert res.returncode == 0, res.stderr + res.stdout
    try:
        yield
    finally:
        gfwlab("lab", "down")


def client(*argv: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return gfwlab("lab", "exec", "client", "--", *argv, timeout=timeout)


def curl(url: str, *extra: str) -> subprocess.CompletedProcess[str]:
    return client("curl", "-sS", "--max-time", "5", *extra, url)


def leftovers() -> list[str]:
    found = []
    out = subprocess.run(
        ["ip", "netns", "list"], capture_output=True, text=True, check=False
    ).stdout
    found += [line for line in out.splitlines() if line.startswith("gfwlab-")]
    if os.path.isdir("/etc/netns"):
        found += [n for n in os.listdir("/etc/netns") if n.startswith("gfwlab-")]
    ps = subprocess.run(
        ["ps", "-eo", "pid,args"], capture_output=True, text=True, check=False
    ).stdout
    found += [
        line
        for line in ps.splitlines()
        if ("gfwlab.live.daemon" in line or "/run/gfwlab" in line or "gfwlab.lab.h3" in line)
        and "ps -eo" not in line
    ]
    if os.path.exists("/run/gfwlab"):
        found.append("/run/gfwlab")
    if shutil.which("ipset"):  # the residual block sets live in the censor namespace only
        sets = subprocess.run(["ipset", "list", "-n"], capture_output=True, text=True, check=False)
        found += [f"ipset {n}" for n in sets.stdout.split() if n.startswith("gfwlab")]
    return found


def _verdicts(events: list[dict[str, object]]) -> list[tuple[object, ...]]:
    """The verdicts in a list of JSON events, comparable between a live and an offline run."""
    out = []
    for e in events:
        if e["action"] in ("rst", "drop", "dns-inject", "null-route", "pass"):
            f = e["flow"]
            assert isinstance(f, dict)
            out.append((e["mechanism"], e["action"], e["rule"], f["src"], f["dst"], f["dport"]))
    return sorted(out)
