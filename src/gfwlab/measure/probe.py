"""``gfwlab probe``: measure each URL of a list through the censor, with a control beside it.

In the lab (:func:`lab_setup`) the probe runs in the client namespace (inside the border) and
resolves with the lab's DNS server through the censor. The **control** is what the same steps
see from outside the censor: it runs in the server namespace, queries the same DNS server there
and fetches each site on its own address, on a path that never crosses the censor. That is the
lab's counterpart of OONI's control (a test helper abroad, reached without the censor): it sees
the site as it is, so any difference the probe sees was made on the probe's path.

``--system`` (:func:`system_setup`) measures from the machine's own network with its own
resolver (``/etc/resolv.conf``); its control runs in another network namespace given by the
caller (``control_netns``) with its own resolver, or is missing, and then every verdict is a
control failure (null), never a guess.

Verdicts come from observations only (:mod:`gfwlab.measure.verdict`); the censor's events are
read after all verdicts are made (:mod:`gfwlab.measure.grade`).
"""

from __future__ import annotations

import ipaddress
import os
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from gfwlab.measure import dnscheck, sniff, web
from gfwlab.measure.lists import Entry
from gfwlab.measure.verdict import Observation, Verdict, decide

RESIDUAL_CHECK_NAME = "residual-check.gfwlab.test"
"""The harmless SNI and Host of the residual check (on no list)."""
LAB_NET = ipaddress.ip_network("198.18.0.0/15")


@dataclass
class Setup:
    """Where the probe and its control run and what they talk to."""

    probe_netns: str | None
    control_netns: str | None
    resolver: str
    control_resolver: str | None
    ca_file: str | None
    server_netns: str | None = None
    """Where :func:`gfwlab.measure.sniff.syn_arrived` looks (None: not checked)."""
    client_address: str | None = None
    lab: bool = False
    """Only addresses in 198.18.0.0/15 are ever contacted."""
    timeout: float = 2.0
    linger: float = 0.25
    h3: bool = True


@dataclass
class SiteResult:
    entry: Entry
    obs: Observation
    verdict: Verdict
    started: float
    runtime: float
    probe_ip: str | None = None
    extra: dict[str, object] = field(default_factory=dict)


def lab_setup(control_resolver: str | None = None) -> Setup:
    """The lab's probe: client namespace, the lab's resolver through the censor, the control
    in the server namespace (see the module docstring)."""
    from gfwlab.lab.state import state_dir  # noqa: PLC0415
    from gfwlab.live.topology import CLIENT_NS, CLIENT_V4, SERVER_NS, SERVER_V4  # noqa: PLC0415

    return Setup(
        probe_netns=CLIENT_NS,
        control_netns=SERVER_NS,
        resolver=SERVER_V4,
        control_resolver=control_resolver or SERVER_V4,
        ca_file=os.path.join(state_dir(), "ca", "ca-bundle.pem"),
        server_netns=SERVER_NS,
        client_address=CLIENT_V4,
        lab=True,
    )


def system_resolver() -> str:
    """The first ``nameserver`` of ``/etc/resolv.conf`` (in the current mount namespace)."""
    try:
        with open("/etc/resolv.conf", encoding="utf-8") as fh:
            for line in fh:
                parts = line.split()
                if len(parts) >= 2 and parts[0] == "nameserver":
                    return parts[1]
    except OSError:
        pass
    return "127.0.0.1"


def system_setup(
    control_netns: str | None,
    control_resolver: str | None,
    ca_file: str | None = None,
    resolver: str | None = None,
) -> Setup:
    """The machine's own network and resolver; the control in ``control_netns``."""
    return Setup(
        probe_netns=None,
        control_netns=control_netns,
        resolver=resolver or system_resolver(),
        control_resolver=control_resolver,
        ca_file=ca_file or os.environ.get("SSL_CERT_FILE"),
        server_netns=control_netns,
    )


def _contactable(setup: Setup, addr: str) -> bool:
    if not setup.lab:
        return True
    try:
        return ipaddress.ip_address(addr) in LAB_NET
    except ValueError:
        return False


class _Pools:
    """The probe's threads (in the probe's namespace) and the namespaces they move between.

    A thread moves into the control's namespace for the control's steps (``setns(2)`` on a
    descriptor opened once: a few microseconds) and back, instead of handing the control to a
    thread of its own and waiting for it: no second pool, no hand-off between threads per
    site. A socket stays in the namespace it was made in, so each step's sockets are made
    after the move."""

    def __init__(self, setup: Setup, workers: int) -> None:
        self.probe_ns = sniff.netns_fd(setup.probe_netns)
        self.control_ns = sniff.netns_fd(setup.control_netns)
        self.probe = ThreadPoolExecutor(workers, "probe", sniff.enter_netns, (setup.probe_netns,))

    def close(self) -> None:
        self.probe.shutdown(cancel_futures=True)
        os.close(self.probe_ns)
        os.close(self.control_ns)


def _control(
    setup: Setup, entry: Entry, address: str | None
) -> tuple[dnscheck.DnsResult | None, web.WebResult | None, web.H3Result | None]:
    if setup.control_resolver is None:
        return None, None, None
    cdns = dnscheck.lookup(entry.host, setup.control_resolver, timeout=setup.timeout, linger=0.0)
    target = address or (cdns.addrs[0] if cdns.addrs else None)
    if cdns.failure is not None or target is None:
        return cdns, None, None
    cweb = web.fetch(entry.url, entry.host, target, ca_file=setup.ca_file, timeout=setup.timeout)
    ch3 = None
    if setup.h3 and entry.scheme == "https":
        ch3 = web.fetch_h3(entry.url, target, ca_file=setup.ca_file, timeout=setup.timeout)
    return cdns, cweb, ch3


def measure(
    setup: Setup, pools: _Pools, sniffer: sniff.RstSniffer | None, entry: Entry
) -> SiteResult:
    """Measure one URL (called in a probe-namespace thread)."""
    t0, started = time.monotonic(), time.time()
    sniff.setns_fd(pools.control_ns)  # the control first, from its own namespace
    try:
        cdns, cweb, ch3 = _control(setup, entry, None)
    finally:
        sniff.setns_fd(pools.probe_ns)
    pdns = dnscheck.lookup(entry.host, setup.resolver, timeout=setup.timeout, linger=setup.linger)
    analysis = dnscheck.analyse(pdns, cdns)
    obs = Observation(pdns, cdns, analysis, None, cweb, h3=None, control_h3=ch3)
    # Connect where the probe's DNS pointed, unless that is a forged answer: then to the
    # control's address (as OONI does with the union of addresses), so the TCP/TLS/HTTP path
    # is measured too; never outside the lab's addresses in lab mode.
    addrs = [a for a in pdns.addrs if ":" not in a]
    target = (
        addrs[0]
        if addrs and not analysis.injected and analysis.consistent is not False
        else (cdns.addrs[0] if cdns is not None and cdns.addrs else None)
    )
    if target is not None and not _contactable(setup, target):
        obs.skipped, target = f"{target} is outside the lab: not contacted", None
    if target is not None:
        res = web.fetch(entry.url, entry.host, target, ca_file=setup.ca_file, timeout=setup.timeout)
        obs.web = res
        step = res.failed_step
        if (
            step == "tcp"
            and res.tcp.failure == "generic_timeout_error"
            and setup.server_netns is not None
            and setup.client_address is not None
        ):
            obs.syn_arrived = sniff.syn_arrived(
                setup.server_netns, target, res.port, setup.client_address
            )
        if step in ("tls", "http"):
            check = web.fetch(
                f"{entry.scheme}://{RESIDUAL_CHECK_NAME}/",
                RESIDUAL_CHECK_NAME,
                target,
                ca_file=None,
                timeout=setup.timeout,
                verify=False,
            )
            obs.residual_check = check
        if step is None and setup.h3 and entry.scheme == "https":
            obs.h3 = web.fetch_h3(entry.url, target, ca_file=setup.ca_file, timeout=setup.timeout)
        if sniffer is not None and step is not None:
            time.sleep(0.05)  # the other copies of a burst (type II sends three)
            obs.resets = sniffer.resets(target, res.port, res.local_port)
            if obs.residual_check is not None:
                obs.residual_resets = sniffer.resets(
                    target, res.port, obs.residual_check.local_port
                )
            obs.injector = sniff.classify(obs.resets)
    verdict = decide(obs)
    return SiteResult(entry, obs, verdict, started, time.monotonic() - t0, probe_ip=None)


def run(
    setup: Setup,
    entries: Sequence[Entry],
    *,
    concurrency: int = 16,
    progress: Callable[[int], None] | None = None,
    stop: threading.Event | None = None,
) -> list[SiteResult]:
    """Measure every entry, ``concurrency`` at a time; results in list order."""
    pools = _Pools(setup, concurrency)
    sniffer = sniff.RstSniffer(setup.probe_netns)
    done = 0
    lock = threading.Lock()
    try:
        futures = [pools.probe.submit(measure, setup, pools, sniffer, e) for e in entries]
        out: list[SiteResult] = []
        for fut in futures:
            out.append(fut.result())
            with lock:
                done += 1
            if progress is not None:
                progress(done)
            if stop is not None and stop.is_set():
                break
        return out
    finally:
        sniffer.close()
        pools.close()
