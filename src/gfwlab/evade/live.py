"""``gfwlab evade run`` in the lab: a strategy on one endpoint's real packets, real fetches.

Attaching: NFQUEUE rules in the namespace of the side the strategy runs on (``--side client``:
the client namespace; ``--side server``: the server namespace) hand that endpoint's packets of
the target's protocol and port to a worker process running in the same namespace
(``python -m gfwlab.evade.live worker``). Mangle OUTPUT feeds the outbound forest, mangle
PREROUTING the inbound one. The worker applies the strategy and sends what the outbound forest
makes as Ethernet frames on the endpoint's link (AF_PACKET, so no checksum or length is fixed up
by the kernel and nothing is queued twice); what the inbound forest keeps of a received packet
is handed back to the kernel (its first packet; an inbound ``duplicate`` delivers one copy).
What is attached is written to ``<state dir>/evade.json`` *before* it is attached
(:mod:`gfwlab.lab.attached`), whose ``detach`` removes it, and runs at the end of ``evade``
(also after Ctrl-C) and at the start of the next ``evade``, ``lab status`` and ``lab down``
(after a ``kill -9``). The strategy string reaches the worker as one argv element, never a
shell.

Trials: one trial is one real fetch (spec sections in brackets):

- ``http_keyword``: curl ``http://<server>/?q=ultrasurf`` (Geneva's test request, §3, §14c);
  evaded when an HTTP response comes back, whatever its status, and the connection was not
  reset: Geneva's own criterion (its HTTP client plugin, ``plugins/http/client.py``, scores
  any response to ``requests.get`` as a success);
- ``tls_sni``: curl ``https://www.facebook.com/`` with ``--resolve`` to the server address, so
  the SNI is the blocked name (§4a); evaded when the 200 comes back;
- ``dns_injection``: dig ``www.google.com A`` at the lab resolver (§2); evaded when the first
  answer dig accepts is the resolver's real one;
- ``quic_sni``: the project's HTTP/3 client (:mod:`gfwlab.lab.h3`) to
  ``https://www.youtube.com/`` (§5); evaded when the 2xx answer comes back.

Geneva's trigger gas (``[UDP:sport:53:2]``) counts per connection (per 5-tuple), as Geneva
restarts its engine for each trial: every trial starts with full gas.

Independent trials: trial i uses the server address that was used longest ago, by this run or an
earlier one (the lab serves on 198.19.0.2-9; the resolver only on 198.19.0.2); if that address
is still inside the target mechanism's residual window (the profile's ``residual_s``), the
trial waits it out. The result
says how many trials waited and for how long.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from gfwlab.errors import LabError
from gfwlab.evade.interp import Interpreter
from gfwlab.evade.strategy import parse_strategy
from gfwlab.lab import netns
from gfwlab.lab.attached import detach, save
from gfwlab.lab.lifecycle import exec_argv
from gfwlab.lab.state import LabState
from gfwlab.live.topology import (
    CLIENT_LINK,
    CLIENT_NS,
    CLIENT_V4,
    SERVER_EXTRA_V4,
    SERVER_LINK,
    SERVER_NS,
    SERVER_V4,
)

EVADE_QUEUE = 17
LAST_USED = "evade-addresses.json"
"""In the lab's state directory: when each server address last served a trial, so that the next
``evade run`` also keeps out of the residual windows the previous one left (``lab down`` empties
the state directory)."""
ADDRESSES = (SERVER_V4, *SERVER_EXTRA_V4)
SIDES = ("client", "server")
HTTP_PATH = "/?q=ultrasurf"
TLS_NAME = "www.facebook.com"
DNS_NAME = "www.google.com"
QUIC_NAME = "www.youtube.com"


@dataclass(frozen=True, slots=True)
class Target:
    """What one trial fetches: the mechanism it is censored by, its protocol and server port."""

    mechanism: str
    proto: str  # "tcp" or "udp"
    port: int
    addresses: tuple[str, ...]
    fetch: Callable[[str], bool]


def _run(argv: list[str], timeout: float = 15) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        exec_argv("client", argv), capture_output=True, text=True, check=False, timeout=timeout
    )


def _curl(url: str, *extra: str) -> str | None:
    """The HTTP status curl got, or None if it got no response (reset, timeout, TLS error)."""
    res = _run(["curl", "-sS", "--max-time", "3", "-o", "/dev/null", "-w", "%{http_code}",
                *extra, url])  # fmt: skip
    code = res.stdout.strip()
    return code if res.returncode == 0 and code.isdigit() and code != "000" else None


def fetch_http(addr: str) -> bool:
    return _curl(f"http://{addr}{HTTP_PATH}") is not None


def fetch_tls(addr: str) -> bool:
    return _curl(f"https://{TLS_NAME}/", "--resolve", f"{TLS_NAME}:443:{addr}") == "200"


def fetch_dns(addr: str) -> bool:
    res = _run(["dig", f"@{addr}", "+time=2", "+tries=1", "+short", DNS_NAME, "A"])
    return res.returncode == 0 and res.stdout.split() == [SERVER_V4]


def fetch_quic(addr: str) -> bool:
    res = _run([sys.executable, "-m", "gfwlab.lab.h3", "get", f"https://{QUIC_NAME}/",
                "--connect-ip", addr, "--timeout", "3"])  # fmt: skip
    return res.returncode == 0


TARGETS = {
    "http_keyword": Target("http_keyword", "tcp", 80, ADDRESSES, fetch_http),
    "tls_sni": Target("tls_sni", "tcp", 443, ADDRESSES, fetch_tls),
    "dns_injection": Target("dns_injection", "udp", 53, (SERVER_V4,), fetch_dns),
    "quic_sni": Target("quic_sni", "udp", 443, ADDRESSES, fetch_quic),
}


@dataclass
class TrialLog:
    """One live trial: the server address, its wall-clock span, the outcome."""

    addr: str
    start: float
    end: float
    evaded: bool


@dataclass
class LiveResult:
    successes: int = 0
    trials: int = 0
    waited: int = 0
    waited_s: float = 0.0
    addresses: list[str] = field(default_factory=list)
    log: list[TrialLog] = field(default_factory=list)


def queue_rules(side: str, proto: str, port: int, outbound: bool, inbound: bool) -> list[list[str]]:
    """The mangle rules that hand the side's packets of the target to the worker."""
    q = ["-j", "NFQUEUE", "--queue-num", str(EVADE_QUEUE)]
    p = ["-p", proto]
    rules: list[list[str]] = []
    if side == "client":
        if outbound:
            rules.append(["OUTPUT", *p, "-d", "198.19.0.0/16", "--dport", str(port), *q])
        if inbound:
            rules.append(["PREROUTING", *p, "-s", "198.19.0.0/16", "--sport", str(port), *q])
    else:
        if outbound:
            rules.append(["OUTPUT", *p, "-d", CLIENT_V4, "--sport", str(port), *q])
        if inbound:
            rules.append(["PREROUTING", *p, "-s", CLIENT_V4, "--dport", str(port), *q])
    return rules


def run_live(
    strategy: str,
    trials: int,
    residual_s: float,
    against: str = "http_keyword",
    side: str = "client",
    on_trial: Callable[[TrialLog], None] | None = None,
) -> LiveResult:
    """N real fetches of the target through the lab with the strategy attached on ``side``."""
    parsed = parse_strategy(strategy)
    target = TARGETS[against]
    st = LabState.load()
    if st.status != "up":
        raise LabError("the lab is not up (gfwlab lab up)")
    detach()
    ns = CLIENT_NS if side == "client" else SERVER_NS
    inbound = bool(parsed.inbound) or parsed.splits_tls  # a split's ACKs are shifted back
    rules = queue_rules(side, target.proto, target.port, bool(parsed.outbound), inbound)
    argv = [sys.executable, "-m", "gfwlab.evade.live", "worker", "--strategy", strategy,
            "--side", side]  # fmt: skip
    save({"ns": ns, "rules": rules, "pid": None})  # on disk before anything is attached
    proc = subprocess.Popen(
        netns.in_ns(ns, *argv), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        start_new_session=True,
    )  # fmt: skip
    save({"ns": ns, "rules": rules, "pid": proc.pid})
    result = LiveResult(trials=trials)
    last = _load_last(st.file(LAST_USED))
    try:
        time.sleep(0.5)  # the worker binds its queue
        if proc.poll() is not None:
            err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
            raise LabError(f"the evade worker did not start: {err.strip()[:200]}")
        for rule in rules:
            netns.run(netns.in_ns(ns, "iptables", "-w", "-t", "mangle", "-A", *rule))
        for _ in range(trials):
            addr = min(target.addresses, key=lambda a: last.get(a, 0.0))
            wait = residual_left(last, addr, residual_s, time.time())
            if wait > 0:
                result.waited += 1
                result.waited_s += wait
                time.sleep(wait)
            start = time.time()
            ok = target.fetch(addr)
            entry = TrialLog(addr, start, time.time(), ok)
            result.successes += ok
            result.log.append(entry)
            if on_trial is not None:
                on_trial(entry)
            last[addr] = time.time()
            _save_last(st.file(LAST_USED), last)
            result.addresses.append(addr)
    finally:
        detach()
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        proc.wait()
    return result


def residual_left(last: dict[str, float], addr: str, residual_s: float, now: float) -> float:
    """Seconds until ``addr``'s residual block from its last trial (at ``last[addr]``) is surely
    over; 0 if it was never used or the block is over. Computed from one reading of the clock,
    so it is never negative (a second reading could pass the end between the check and the
    sleep)."""
    if addr not in last:
        return 0.0
    return max(0.0, last[addr] + residual_s - now)


def _load_last(path: str) -> dict[str, float]:
    """When each server address was last used by a trial (wall clock), across runs."""
    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
    except (OSError, ValueError):
        return {}
    return {str(k): float(v) for k, v in data.items()} if isinstance(data, dict) else {}


def _save_last(path: str, last: dict[str, float]) -> None:
    with open(path + ".tmp", "w", encoding="utf-8") as fh:
        json.dump(last, fh)
    os.replace(path + ".tmp", path)


# ------------------------------------------------- the worker (in the netns of its side)

MAX_FLOWS = 4096


def worker(strategy: str, side: str) -> int:
    from netfilterqueue import NetfilterQueue  # noqa: PLC0415 - only the live worker needs it

    parsed = parse_strategy(strategy)
    interps: collections.OrderedDict[tuple[object, ...], Interpreter] = collections.OrderedDict()
    link = CLIENT_LINK
    dev, src_mac, dst_mac = link.a, link.a_mac, link.b_mac
    if side == "server":
        dev, src_mac, dst_mac = SERVER_LINK.b, SERVER_LINK.b_mac, SERVER_LINK.a_mac
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
    sock.bind((dev, 0))
    eth = _mac(dst_mac) + _mac(src_mac) + b"\x08\x00"
    client = socket.inet_aton(CLIENT_V4)

    def interp_for(raw: bytes) -> Interpreter:
        """The flow's interpreter: gas and the corrupt stream are per connection."""
        ihl = (raw[0] & 15) * 4 if raw else 20
        ports = raw[ihl : ihl + 4] if len(raw) >= ihl + 4 else b""
        a, b = (raw[12:16], ports[:2]), (raw[16:20], ports[2:])
        key = (raw[9:10], *min(a, b), *max(a, b))
        it = interps.get(key)
        if it is None:
            it = interps[key] = Interpreter(parsed, random.Random(f"evade:{key!r}"))
            if len(interps) > MAX_FLOWS:
                interps.popitem(last=False)
        return it

    def on_packet(nfpkt: Any) -> None:
        raw: bytes = nfpkt.get_payload()
        outbound = (raw[12:16] == client) == (side == "client")
        it = interp_for(raw)
        out = it.outbound(raw) if outbound else it.inbound(raw)
        if out == [raw]:
            nfpkt.accept()
        elif outbound:
            nfpkt.drop()
            for pkt in out:
                sock.send(eth + pkt)
        elif not out:
            nfpkt.drop()
        else:
            nfpkt.set_payload(out[0])
            nfpkt.accept()

    nfq = NetfilterQueue()
    nfq.bind(EVADE_QUEUE, on_packet, max_len=8192)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        nfq.run()
    finally:
        nfq.unbind()
    return 0


def _mac(text: str) -> bytes:
    return bytes(int(part, 16) for part in text.split(":"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="gfwlab-evade-worker")
    parser.add_argument("role", choices=["worker"])
    parser.add_argument("--strategy", required=True)
    parser.add_argument("--side", choices=SIDES, default="client")
    args = parser.parse_args(argv)
    return worker(args.strategy, args.side)


if __name__ == "__main__":
    sys.exit(main())
