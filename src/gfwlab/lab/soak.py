"""A soak: real clients in a loop through the censor for minutes, its memory, descriptors and
events sampled as it goes.

    python -m gfwlab.lab.soak --minutes 20 [--sample 60] [--json PATH]

Needs a lab that is up (``scripts/soak`` brings one up with the settings below, runs this and
takes it down). Each round, from the client namespace: HTTPS to an unblocked name (must load),
HTTPS to a blocked SNI (must be reset; spec §4a), HTTP with a blocked keyword (must be reset;
spec §3), a DNS query for an unblocked name (the real answer) and for a blocked one (a forged
answer; spec §2). Every ``--sample`` seconds: the censor's resident memory (VmRSS), its open
file descriptors, its packet count and the events written so far. At the end the events are
counted against the traffic: one ``tls_sni`` reset per blocked HTTPS connection, one
``http_keyword`` reset per blocked request, at least one ``dns-inject`` per blocked query, and
no verdict on the unblocked traffic. The settings ``scripts/soak`` uses make every verdict
deterministic (residual windows off, keyword probability 1), so the event counts must match
exactly; unblocked traffic must always work, and blocked attempts must look blocked to the client
at least 95% of the time (on a loaded machine the client now and then sees the race otherwise).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from gfwlab.lab.state import state_dir
from gfwlab.live.topology import CLIENT_NS

SOAK_SETS = (
    "tls_sni.residual_s=0",
    "tls_sni.delay_tail=false",
    "http_keyword.probability=1.0",
    "http_keyword.residual_s=0",
    "http_keyword.delay_tail=false",
    "dns_injection.injectors=[{name='i3', pool_v4=['198.19.99.7'], latency_ms=[1.0, 2.0]}]",
)
"""The ``--set`` values of ``scripts/soak``: every verdict deterministic."""

UNBLOCKED_IP, BLOCKED_IP, KEYWORD_IP = "198.19.0.3", "198.19.0.4", "198.19.0.5"
Run = subprocess.CompletedProcess[str]


@dataclass
class Sample:
    t: float
    """Seconds since the start."""
    rss_kib: int
    fds: int
    queued_packets: int
    events: int


@dataclass
class Result:
    seconds: float = 0.0
    rounds: int = 0
    sent: dict[str, int] = field(default_factory=dict)
    """Client attempts per kind."""
    outcomes: dict[str, int] = field(default_factory=dict)
    """Attempts that got the expected outcome, per kind."""
    events: dict[str, int] = field(default_factory=dict)
    """Events per mechanism/action at the end."""
    samples: list[Sample] = field(default_factory=list)
    odd: dict[str, list[str]] = field(default_factory=dict)
    """What the client saw, for the first few attempts of each kind that went otherwise."""
    problems: list[str] = field(default_factory=list)


def _client(*argv: str, timeout: float = 15) -> subprocess.CompletedProcess[str]:
    bundle = os.path.join(state_dir(), "ca", "ca-bundle.pem")
    return subprocess.run(
        ["ip", "netns", "exec", CLIENT_NS, "env", f"CURL_CA_BUNDLE={bundle}", *argv],
        capture_output=True, text=True, timeout=timeout, check=False,
    )  # fmt: skip


def _curl(url: str, name: str, ip: str) -> subprocess.CompletedProcess[str]:
    port = 443 if url.startswith("https") else 80
    return _client("curl", "-sS", "--max-time", "5", "--resolve", f"{name}:{port}:{ip}", url)


def one_round(result: Result) -> None:
    def dig(name: str) -> subprocess.CompletedProcess[str]:
        return _client("dig", "+time=2", "+tries=1", "+short", "@198.19.0.2", name, "A")

    fb, kw = "www.facebook.com", "http://example.org/?q=ultrasurf"
    attempts: dict[str, tuple[Callable[[], Run], Callable[[Run], bool]]] = {
        "https-ok": (lambda: _curl("https://example.org/", "example.org", UNBLOCKED_IP),
                     lambda r: r.returncode == 0),
        "https-blocked": (lambda: _curl(f"https://{fb}/", fb, BLOCKED_IP),
                          lambda r: "reset" in r.stderr.lower()),
        "http-keyword": (lambda: _curl(kw, "example.org", KEYWORD_IP),
                         lambda r: "reset" in r.stderr.lower()),
        "dns-ok": (lambda: dig("example.org"), lambda r: r.stdout.strip() == "198.19.0.2"),
        "dns-blocked": (lambda: dig("www.google.com"), lambda r: "198.19.99.7" in r.stdout),
    }  # fmt: skip
    for kind, (attempt, expected) in attempts.items():
        result.sent[kind] = result.sent.get(kind, 0) + 1
        res = attempt()
        if expected(res):
            result.outcomes[kind] = result.outcomes.get(kind, 0) + 1
        elif len(seen := result.odd.setdefault(kind, [])) < 3:
            seen.append(f"exit {res.returncode}: {(res.stdout + res.stderr).strip()[:200]}")


def censor_pid() -> int:
    with open(os.path.join(state_dir(), "lab.json"), encoding="utf-8") as fh:
        made = json.load(fh)["made"]
    return int(next(e["pid"] for e in made if e.get("name") == "censor"))


def sample(pid: int, t: float) -> Sample:
    with open(f"/proc/{pid}/status", encoding="ascii") as fh:
        rss = next(int(line.split()[1]) for line in fh if line.startswith("VmRSS:"))
    fds = len(os.listdir(f"/proc/{pid}/fd"))
    with open(os.path.join(state_dir(), "stats.json"), encoding="utf-8") as fh:
        stats = json.load(fh)
    with open(os.path.join(state_dir(), "events.jsonl"), "rb") as fh:
        events = sum(1 for _ in fh)
    return Sample(round(t, 1), rss, fds, int(stats.get("queued_packets", 0)), events)


def count_events() -> dict[str, int]:
    counts: dict[str, int] = {}
    with open(os.path.join(state_dir(), "events.jsonl"), encoding="utf-8") as fh:
        for line in fh:
            e = json.loads(line)
            key = f"{e['mechanism']}/{e['action']}"
            counts[key] = counts.get(key, 0) + 1
    return counts


def check(result: Result, rss_bound_kib: int) -> list[str]:
    """What went wrong: outcomes, events against traffic, memory growth, descriptor growth."""
    problems = []
    for kind, n in result.sent.items():
        got = result.outcomes.get(kind, 0)
        # Unblocked traffic must always work. A blocked attempt's client may, rarely, see the
        # race otherwise (the real answer or response first, on a loaded machine): the censor's
        # verdict is counted exactly below, the client's view must agree 95% of the time.
        if got != n if kind in ("https-ok", "dns-ok") else got < 0.95 * n:
            problems.append(f"{kind}: {got} of {n} as expected")
    ev = result.events
    if ev.get("tls_sni/rst", 0) != result.sent.get("https-blocked", 0):
        problems.append(f"tls_sni/rst events {ev.get('tls_sni/rst', 0)} for "
                        f"{result.sent.get('https-blocked', 0)} blocked connections")  # fmt: skip
    if ev.get("http_keyword/rst", 0) != result.sent.get("http-keyword", 0):
        problems.append(f"http_keyword/rst events {ev.get('http_keyword/rst', 0)} for "
                        f"{result.sent.get('http-keyword', 0)} blocked requests")  # fmt: skip
    if ev.get("dns_injection/dns-inject", 0) < result.sent.get("dns-blocked", 0):
        problems.append("fewer dns-inject events than blocked queries")
    s = result.samples
    if len(s) >= 2:
        warm = s[1] if len(s) > 2 else s[0]  # the first minute warms caches and tables
        growth = max(x.rss_kib for x in s[1:]) - warm.rss_kib
        if growth > rss_bound_kib:
            problems.append(f"memory grew {growth} KiB after warm-up (bound {rss_bound_kib})")
        if s[-1].fds > s[0].fds + 2:
            problems.append(f"file descriptors {s[0].fds} -> {s[-1].fds}")
    return problems


def soak(seconds: float, every: float, rss_bound_kib: int, log: Any = print) -> Result:
    pid = censor_pid()
    result = Result()
    start = time.monotonic()
    next_sample = start
    while True:
        now = time.monotonic()
        if now >= next_sample:
            result.samples.append(sample(pid, now - start))
            s = result.samples[-1]
            log(f"t={s.t:7.1f}s rss={s.rss_kib} KiB fds={s.fds} packets={s.queued_packets} "
                f"events={s.events} rounds={result.rounds}")  # fmt: skip
            next_sample += every
        if now - start >= seconds:
            break
        one_round(result)
        result.rounds += 1
    time.sleep(0.7)  # the censor writes its counters twice a second
    result.seconds = round(time.monotonic() - start, 1)
    result.samples.append(sample(pid, result.seconds))
    result.events = count_events()
    result.problems = check(result, rss_bound_kib)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="gfwlab-soak", description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=20.0)
    parser.add_argument("--sample", type=float, default=60.0, help="seconds between samples")
    parser.add_argument("--rss-bound-mib", type=float, default=16.0)
    parser.add_argument("--json", default=None, help="write the result here")
    args = parser.parse_args(argv)
    result = soak(args.minutes * 60, args.sample, int(args.rss_bound_mib * 1024))
    data = asdict(result)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump(data, fh, indent=1)
    print(json.dumps({k: v for k, v in data.items() if k != "samples"}))
    for p in result.problems:
        print(f"problem: {p}", file=sys.stderr)
    return 1 if result.problems else 0


if __name__ == "__main__":
    sys.exit(main())
