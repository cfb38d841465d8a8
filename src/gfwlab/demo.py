"""The live tour: real clients against real servers through the emulated GFW, in the lab.

``gfwlab demo`` runs this when it can make the lab (root, iproute2, iptables with NFQUEUE,
nginx, dnsmasq, curl, dig); otherwise it falls back to the offline tour. Each step runs a real
client in the client namespace and says what happened to it and which mechanism did it; the
lab is always taken down at the end, also after Ctrl-C.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass

from gfwlab.lab import lifecycle
from gfwlab.live.topology import SERVER_EXTRA_V4, SERVER_V4

NEEDS = ("ip", "iptables", "nginx", "dnsmasq", "curl", "dig")


def can_run_live() -> str | None:
    """None if the live demo can run here, else why not (one line)."""
    if os.geteuid() != 0:
        return "not root"
    missing = [t for t in NEEDS if shutil.which(t) is None and not os.path.exists(f"/usr/sbin/{t}")]
    if missing:
        return f"missing {', '.join(missing)}"
    try:
        import netfilterqueue  # noqa: F401, PLC0415
    except ImportError:
        return "the netfilterqueue Python package is not installed"
    return None


@dataclass
class Step:
    what: str
    argv: list[str]
    expect: str
    """What the real GFW does to it, in words."""


def steps() -> list[Step]:
    ip = iter(SERVER_EXTRA_V4)
    h3 = [sys.executable, "-m", "gfwlab.lab.h3", "get"]
    return [
        Step(
            "HTTPS to an unblocked name",
            _curl("https://example.org/", next(ip), "example.org"),
            "passes",
        ),
        Step(
            "HTTPS to www.facebook.com (SNI on the list)",
            _curl("https://www.facebook.com/", next(ip), "www.facebook.com"),
            "reset by injector type I, II or III (S&P'25)",
        ),
        Step(
            "HTTPS to the same server again, any name",
            _curl("https://example.org/", SERVER_EXTRA_V4[1], "example.org"),
            "reset: 180 s residual block on (client, server, port)",
        ),
        Step(
            "HTTP GET /?q=ultrasurf",
            ["curl", "-sS", "--max-time", "5", f"http://{next(ip)}/?q=ultrasurf"],
            "reset 75% of the time (Rambert et al.)",
        ),
        Step(
            "DNS query for www.google.com",
            ["dig", "+time=2", "+tries=1", "+short", "www.google.com", "A"],
            "forged answer first (Triplet Censors)",
        ),
        Step(
            "DNS query for example.org",
            ["dig", "+time=2", "+tries=1", "+short", "example.org", "A"],
            "real answer",
        ),
        Step(
            "HTTPS with a ClientHello split across two TLS records",
            [sys.executable, "-m", "gfwlab.evade.tls_split", "www.facebook.com", next(ip)],
            "passes: the GFW does not reassemble TLS records",
        ),
        Step(
            "HTTP/3 to an unblocked name",
            [*h3, "https://example.org/", "--connect-ip", next(ip), "--timeout", "5"],
            "passes",
        ),
    ]


def _curl(url: str, ip: str, host: str) -> list[str]:
    return ["curl", "-sS", "--max-time", "5", "--resolve", f"{host}:443:{ip}", url]


def run_live(
    report: Callable[[str, str, str, str], None],
    *,
    seed: int = 1,
    probe_into: str | None = None,
) -> list[dict[str, object]]:
    """Make the lab, run each step, report (what, expected, outcome, detail); with
    ``probe_into``, then probe a small list through it (``gfwlab probe``) and put the
    measurements in that folder; take the lab down."""
    lifecycle.down()
    lifecycle.up(lifecycle.UpOptions(date="2024-06-01", seed=seed), log=lambda _m: None)
    try:
        for step in steps():
            argv = lifecycle.exec_argv("client", step.argv)
            try:
                res = subprocess.run(argv, capture_output=True, text=True, timeout=20, check=False)
                outcome, detail = _outcome(res)
                if step.argv[0] == "dig" and outcome == "ok":
                    real = detail in (SERVER_V4, *SERVER_EXTRA_V4)
                    outcome = "real answer" if real else "forged answer"
            except subprocess.TimeoutExpired:
                outcome, detail = "timed out", "no answer in 20 s"
            report(step.what, step.expect, outcome, detail)
            time.sleep(0.2)
        if probe_into is not None:
            _probe(probe_into)
        time.sleep(0.5)
        events = [json.loads(line) for line in lifecycle.follow_events(False)]
    finally:
        lifecycle.down()
    return events


def _probe(folder: str) -> None:
    """The demo's probe, written to a scratch folder (a probe publishes whole folders) and its
    measurements and site addresses moved into ``folder``, beside the session's events."""
    from gfwlab.measure.session import demo_probe  # noqa: PLC0415

    scratch = tempfile.mkdtemp(prefix="gfwlab-demo-probe-")
    try:
        demo_probe(os.path.join(scratch, "probe"))
        for name in ("measurements.jsonl", "sites.json"):
            shutil.move(os.path.join(scratch, "probe", name), os.path.join(folder, name))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def save_results(
    folder: str,
    kind: str,
    *,
    started: str,
    seed: int,
    events: list[dict[str, object]] | None = None,
    capture: str | None = None,
) -> str:
    """Write the demo's results folder (run.json, events.jsonl unless already there, the DuckDB
    file) and its HTML report; returns the report's path.

    The live demo passes its lab session's events; the offline demo has already written
    ``events.jsonl`` and ``censored.pcap`` there with its analyze run. A live demo that also
    probes a list (``gfwlab probe``) writes its ``measurements.jsonl`` into the same folder
    before this is called, and the report shows it beside the events.
    """
    from gfwlab.report.html import write_report  # noqa: PLC0415
    from gfwlab.results.folder import write_jsonl, write_run  # noqa: PLC0415

    os.makedirs(folder, exist_ok=True)
    if events is not None:
        write_jsonl(os.path.join(folder, "events.jsonl"), events)
    write_run(folder, kind, started=started, profile=["gfw"], date="2024-06-01", seed=seed,
              capture=capture)  # fmt: skip
    return write_report(folder)


def _outcome(res: subprocess.CompletedProcess[str]) -> tuple[str, str]:
    text = (res.stdout.strip() or res.stderr.strip()).splitlines()
    first = text[0] if text else ""
    if res.returncode == 0:
        return "ok", first[:80]
    low = res.stderr.lower()
    if "reset" in low or res.returncode == 7:
        return "reset", first[:80]
    if res.returncode == 28 or "timed out" in low:
        return "timed out", first[:80]
    return f"failed ({res.returncode})", first[:80]
