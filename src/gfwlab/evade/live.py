"""``gfwlab evade run`` in the lab: a strategy on the client's real packets, curl through the lab.

Attaching: an NFQUEUE rule in the client namespace (mangle OUTPUT for the outbound forest,
mangle PREROUTING for the inbound one) hands the client's packets to a worker process running
in that namespace (``python -m gfwlab.evade.live worker``), which applies the strategy and sends
what it makes as Ethernet frames on the client's link (AF_PACKET, so no checksum or length is
fixed up by the kernel and nothing is queued twice). What is attached is written to
``<state dir>/evade.json`` *before* it is attached (:mod:`gfwlab.lab.attached`), whose
``detach`` removes it, and runs at the
end of ``evade`` (also after Ctrl-C) and at the start of the next ``evade``, ``lab status`` and
``lab down`` (after a ``kill -9``). The strategy string reaches the worker as one argv element,
never a shell.

Independent trials: trial i fetches from the server address that was used longest ago (the lab
serves on 198.19.0.2-9); if every address is inside its residual window (the profile's
``http_keyword.residual_s``), the trial waits it out. The result says how many trials waited.
"""

from __future__ import annotations

import argparse
import contextlib
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Any

from gfwlab.errors import LabError
from gfwlab.evade.interp import Interpreter
from gfwlab.evade.strategy import parse_strategy
from gfwlab.lab import netns
from gfwlab.lab.attached import detach, save
from gfwlab.lab.state import LabState
from gfwlab.live.topology import CLIENT_LINK, CLIENT_NS, SERVER_EXTRA_V4, SERVER_V4

EVADE_QUEUE = 17
ADDRESSES = (SERVER_V4, *SERVER_EXTRA_V4)


@dataclass
class LiveResult:
    successes: int = 0
    trials: int = 0
    waited: int = 0
    waited_s: float = 0.0
    addresses: list[str] = field(default_factory=list)


def run_live(strategy: str, trials: int, residual_s: float, port: int = 80) -> LiveResult:
    """N fetches of ``http://<server>/?q=ultrasurf`` through the lab with the strategy attached."""
    parsed = parse_strategy(strategy)
    st = LabState.load()
    if st.status != "up":
        raise LabError("the lab is not up (gfwlab lab up)")
    detach()
    rules: list[list[str]] = []
    if parsed.outbound:
        rules.append(["OUTPUT", "-p", "tcp", "-d", "198.19.0.0/16", "--dport", str(port),
                      "-j", "NFQUEUE", "--queue-num", str(EVADE_QUEUE)])  # fmt: skip
    if parsed.inbound:
        rules.append(["PREROUTING", "-p", "tcp", "-s", "198.19.0.0/16", "--sport", str(port),
                      "-j", "NFQUEUE", "--queue-num", str(EVADE_QUEUE)])  # fmt: skip
    argv = [sys.executable, "-m", "gfwlab.evade.live", "worker", "--strategy", strategy]
    save({"rules": rules, "pid": None})  # on disk before anything is attached
    proc = subprocess.Popen(
        netns.in_ns(CLIENT_NS, *argv), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        start_new_session=True,
    )  # fmt: skip
    save({"rules": rules, "pid": proc.pid})
    result = LiveResult(trials=trials)
    last: dict[str, float] = {}
    try:
        time.sleep(0.5)  # the worker binds its queue
        if proc.poll() is not None:
            err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
            raise LabError(f"the evade worker did not start: {err.strip()[:200]}")
        for rule in rules:
            netns.run(netns.in_ns(CLIENT_NS, "iptables", "-w", "-t", "mangle", "-A", *rule))
        for _ in range(trials):
            addr = min(ADDRESSES, key=lambda a: last.get(a, 0.0))
            free_at = last.get(addr, 0.0) + residual_s
            if addr in last and time.monotonic() < free_at:
                wait = free_at - time.monotonic()
                result.waited += 1
                result.waited_s += wait
                time.sleep(wait)
            result.successes += _fetch(addr, port)
            last[addr] = time.monotonic()
            result.addresses.append(addr)
    finally:
        detach()
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        proc.wait()
    return result


def _fetch(addr: str, port: int) -> bool:
    argv = netns.in_ns(CLIENT_NS, "curl", "-sS", "--max-time", "3", "-o", "/dev/null",
                       "-w", "%{http_code}", f"http://{addr}:{port}/?q=ultrasurf")  # fmt: skip
    res = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=10)
    return res.returncode == 0 and res.stdout.strip() == "200"


# ------------------------------------------------------------------ the worker (client netns)


def worker(strategy: str) -> int:
    from netfilterqueue import NetfilterQueue  # noqa: PLC0415 - only the live worker needs it

    interp = Interpreter(parse_strategy(strategy))
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
    sock.bind((CLIENT_LINK.a, 0))
    eth = _mac(CLIENT_LINK.b_mac) + _mac(CLIENT_LINK.a_mac) + b"\x08\x00"

    def on_packet(nfpkt: Any) -> None:
        raw: bytes = nfpkt.get_payload()
        outbound = raw[12:16] == socket.inet_aton("198.18.0.2")
        out = interp.outbound(raw) if outbound else interp.inbound(raw)
        if out == [raw]:
            nfpkt.accept()
            return
        nfpkt.drop()
        if outbound:
            for pkt in out:
                sock.send(eth + pkt)
        # inbound: what the strategy keeps is re-injected by accepting only unchanged packets

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
    args = parser.parse_args(argv)
    return worker(args.strategy)


if __name__ == "__main__":
    sys.exit(main())
