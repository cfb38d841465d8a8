"""``lab up``, ``down``, ``status``, ``exec``, ``events`` and ``record``.

``up`` records each namespace, file and process on disk before making it, so ``down`` can remove
everything, also after ``kill -9`` of any lab process or an interrupted ``up``. ``down`` does not
need the record to be complete: it also removes every ``gfwlab-*`` namespace with all the
processes in it, and the namespaces take their links, addresses and firewall rules with them.
Nothing is made in the host's own network namespace.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from gfwlab.errors import LabError
from gfwlab.lab import attached, netns
from gfwlab.lab.state import LabState, locked, process_start_time, state_dir
from gfwlab.live import kernel
from gfwlab.live.loop import request
from gfwlab.live.topology import (
    CENSOR_NS,
    CLIENT_NS,
    DEFAULT_HOPS,
    INSIDE,
    NAMESPACES,
    QUEUE_NUM,
    ROLES,
    SERVER_EXTRA_V4,
    SERVER_NS,
    SERVER_V4,
    SERVER_V6,
    STANDS_FOR_1111,
)
from gfwlab.profiles import Profile, load_profile, load_profiles, parse_date, parse_moment
from gfwlab.rules.domains import DomainSet

ETC_NETNS = "/etc/netns"
DEFAULT_NAMES = ("example.org", "example.com", "example.net", "lab.test", "localhost.test")


@dataclass
class UpOptions:
    profile: str = "gfw"
    more_profiles: list[str] = field(default_factory=list)
    """Further censors in series after ``profile``, in path order from the client."""
    date: str | None = None
    sets: list[str] = field(default_factory=list)
    seed: int = 0
    fail_open: bool = True
    names: list[str] = field(default_factory=list)
    """Extra host names the lab's certificate must cover."""
    hops: int = DEFAULT_HOPS
    """Routers between the censor and the server, for TTLs (see ``netns.install_path_hops``)."""
    client_hops: int = 0
    """Routers between the client and the censor, for TTLs."""
    client_timestamps: bool = True
    """Whether the client's TCP sends timestamps (see ``netns.set_client_timestamps``)."""
    at: str | None = None
    """The UTC moment (YYYY-MM-DDTHH:MM) the censor's clock shows at lab up (dated events)."""
    network: str = "national"
    """The client's network (``--network``)."""
    clock_offset_s: float = 0.0
    """Seconds the censor's clock runs ahead of the wall clock (set from ``at`` by lab up)."""
    engines: int = 1
    """Censor engines, one per queue (``live/engines.py``)."""


def lab_sets(options: UpOptions) -> list[str]:
    """The user's ``--set`` values, with the lab's inside prefixes unless the user set them."""
    sets = list(options.sets)
    if not any(s.strip().startswith("engine.inside") for s in sets):
        sets.insert(0, "engine.inside=[" + ", ".join(f"'{p}'" for p in INSIDE) + "]")
    if not any(s.strip().startswith("ip_port_rst.targets") for s in sets) and "ip_port_rst" in (
        load_profile(options.profile).mechanisms
    ):  # a lab address stands for 1.1.1.1, which is never contacted
        sets.insert(1, f"ip_port_rst.targets=['{STANDS_FOR_1111}/32']")
    return sets


def load_lab_profile(options: UpOptions) -> Profile:
    """The first censor's profile; every profile is loaded, so a bad one fails here."""
    if options.at:
        moment = parse_moment(options.at)
        options.date = moment.date().isoformat()
        options.clock_offset_s = round(moment.timestamp() - time.time(), 3)
    date = parse_date(options.date) if options.date else None
    names = [options.profile, *options.more_profiles]
    sets = lab_sets(options)
    return load_profiles(names, date=date, overrides=sets, network=options.network)[0]


def up(options: UpOptions, log: Any = print) -> LabState:
    """Make the lab; on any failure or interrupt, remove what was made and re-raise."""
    netns.check_host()
    profile = load_lab_profile(options)  # a bad profile fails before anything is made
    from gfwlab.lab import ca, services  # noqa: PLC0415

    try:
        return _up_locked(options, profile, log, ca, services)
    except BaseException:
        _remove_state_dir()
        raise


def _up_locked(options: UpOptions, profile: Profile, log: Any, ca: Any, services: Any) -> LabState:
    with locked():
        old = LabState.load()
        if old.status in ("starting", "up") or netns.existing_namespaces():
            raise LabError("a lab is already up (gfwlab lab down removes it)")
        st = LabState(path=old.path, status="starting")
        st.config = {
            "profile": options.profile,
            "profiles": [options.profile, *options.more_profiles],
            "date": options.date,
            "sets": lab_sets(options),
            "seed": options.seed,
            "fail_open": options.fail_open,
            "hops": options.hops,
            "client_hops": options.client_hops,
            "client_timestamps": options.client_timestamps,
            "network": options.network,
            "at": options.at,
            "clock_offset_s": options.clock_offset_s,
            "engines": options.engines,
        }
        st.save()
        try:
            for ns in NAMESPACES:
                st.record(kind="netns", name=ns)
                netns.make_namespace(ns)
            log("namespaces and links")
            netns.make_topology()
            netns.install_queue_rules(CENSOR_NS, QUEUE_NUM, fail_open=options.fail_open)
            netns.untrack_fragments(CENSOR_NS)
            netns.install_path_hops(options.hops, options.client_hops)
            if not options.client_timestamps:
                netns.set_client_timestamps(False)
            for ns in (CLIENT_NS, SERVER_NS):  # both resolve with the lab's DNS server
                etc = os.path.join(ETC_NETNS, ns)
                st.record(kind="path", path=etc)
                os.makedirs(etc, exist_ok=True)
                with open(os.path.join(etc, "resolv.conf"), "w", encoding="ascii") as fh:
                    fh.write(f"nameserver {SERVER_V4}\nnameserver {SERVER_V6}\noptions timeout:2\n")
            log("lab CA and server certificate")
            ca_dir = st.file("ca")
            os.makedirs(ca_dir, exist_ok=True)
            ca_cert, ca_key = ca.make_ca(ca_dir)
            v4 = [SERVER_V4, *SERVER_EXTRA_V4]
            certs = ca.make_server_certs(
                ca_dir, ca_cert, ca_key, cert_names(profile, options), [*v4, SERVER_V6]
            )
            cert, key, extra = certs[0].cert, certs[0].key, certs[1:]
            ca.ca_bundle(ca_dir, ca_cert)
            log("services: nginx, dnsmasq, HTTP/3, the censor")
            spawn(
                st,
                "nginx",
                SERVER_NS,
                services.nginx_argv(
                    st.dir,
                    cert,
                    key,
                    listen_v4=[*v4, "0.0.0.0"],  # and every site address (SITES_V4)
                    listen_v6=[SERVER_V6],
                    sni_certs=extra,
                    site_cert_map=st.file("site-certs.map"),
                ),
            )
            spawn(
                st,
                "dnsmasq",
                SERVER_NS,
                services.dnsmasq_argv(
                    st.dir,
                    answer_v4=SERVER_V4,
                    answer_v6=SERVER_V6,
                    listen=[SERVER_V4, SERVER_V6],
                    hosts_file=st.file("sites.hosts"),  # probe sites (gfwlab.measure.sites)
                ),
            )
            spawn(
                st,
                "h3",
                SERVER_NS,
                services.h3_server_argv(st.dir, cert, key, host=[*v4, SERVER_V6], sni_certs=extra),
            )
            spawn(st, "censor", CENSOR_NS, censor_argv(st, options))
            wait_ready(st, services)
            st.status = "up"
            st.save()
        except BaseException:
            _down_locked()
            raise
    return st


def _remove_state_dir() -> None:
    """Remove the (emptied) state folder and its lock, once no lab is recorded in it."""
    if os.path.exists(os.path.join(state_dir(), "lab.json")):
        return
    with contextlib.suppress(OSError):
        os.unlink(os.path.join(state_dir(), "lock"))
    with contextlib.suppress(OSError):
        os.rmdir(state_dir())


def cert_names(profile: Profile, options: UpOptions) -> list[str]:
    """Every name of the profile's domain lists, so any listed name is a working website."""
    names: list[str] = [*DEFAULT_NAMES, *options.names]
    for params in profile.mechanisms.values():
        for attr in ("domains", "inside_out_only"):
            lst = getattr(params, attr, None)
            if isinstance(lst, DomainSet):
                names.extend(lst.names())
    return list(dict.fromkeys(n.lower().strip(".") for n in names))


def censor_argv(st: LabState, options: UpOptions) -> list[str]:
    argv = [
        sys.executable,
        "-m",
        "gfwlab.live.daemon",
        "--state-dir",
        st.dir,
        *[x for name in (options.profile, *options.more_profiles) for x in ("--profile", name)],
        "--seed",
        str(options.seed),
        "--queue",
        str(QUEUE_NUM),
    ]
    if options.date:
        argv += ["--date", options.date]
    argv += ["--network", options.network, "--clock-offset", str(options.clock_offset_s)]
    if options.engines > 1:
        argv += ["--engines", str(options.engines)]
    if not options.fail_open:
        argv.append("--fail-closed")
    for item in lab_sets(options):
        argv += ["--set", item]
    return argv


def spawn(st: LabState, name: str, ns: str, argv: list[str]) -> int:
    """Start ``argv`` in ``ns`` in its own session, its output going to ``<name>.log``."""
    entry = st.record(kind="process", name=name, ns=ns, argv=argv, pid=None)
    with open(st.file(f"{name}.log"), "ab") as logf:
        proc = subprocess.Popen(
            netns.in_ns(ns, *argv),
            stdin=subprocess.DEVNULL,
            stdout=logf,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    entry["pid"] = proc.pid
    entry["start"] = process_start_time(proc.pid)
    st.save()
    return proc.pid


def wait_ready(st: LabState, services: Any, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    checks: dict[str, Callable[[], bool]] = {
        "nginx": lambda: services.wait_tcp(SERVER_NS, SERVER_V4, 443, 0.2),
        "dnsmasq": lambda: services.wait_dns(SERVER_NS, SERVER_V4, 0.2),
        "h3": lambda: services.wait_quic(SERVER_NS, SERVER_V4, 443, 0.2),
        "censor": lambda: os.path.exists(st.file("censor.sock")),
    }
    pending = dict(checks)
    while pending:
        for entry in st.processes():
            if not _alive(entry):
                log = _tail(st.file(f"{entry['name']}.log"))
                raise LabError(f"{entry['name']} exited during start-up: {log}")
        for name, check in list(pending.items()):
            if check():
                del pending[name]
        if time.monotonic() > deadline:
            raise LabError(f"timed out waiting for {', '.join(pending)} to start")
        time.sleep(0.05)


def _tail(path: str) -> str:
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            lines = [line.strip() for line in fh if line.strip()]
    except OSError:
        return "no log"
    return lines[-1] if lines else "no output"


def _alive(entry: dict[str, Any]) -> bool:
    pid = entry.get("pid")
    if not isinstance(pid, int):
        return False
    start = process_start_time(pid)
    if start is None or (entry.get("start") is not None and start != entry["start"]):
        return False
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def down() -> list[str]:
    """Remove everything the lab made; returns what was removed. Safe to run at any time."""
    if os.geteuid() != 0:
        raise LabError("needs root (network namespaces and iptables); run it with sudo")
    with locked():
        removed = attached.detach() + _down_locked()
    _remove_state_dir()
    return removed


def _down_locked() -> list[str]:
    st = LabState.load()
    removed: list[str] = []
    for entry in reversed(st.processes()):
        if _alive(entry):
            with contextlib.suppress(ProcessLookupError):
                os.kill(entry["pid"], signal.SIGTERM)
            removed.append(f"process {entry['name']} ({entry['pid']})")
    for ns in netns.existing_namespaces():
        netns.kill_namespace_processes(ns)
        netns.delete_namespace(ns)
        removed.append(f"namespace {ns}")
    for entry in reversed(st.made):
        if entry.get("kind") == "path":
            path = str(entry.get("path", ""))
            if path.startswith(os.path.join(ETC_NETNS, "gfwlab-")) and os.path.exists(path):
                shutil.rmtree(path, ignore_errors=True)
                removed.append(f"path {path}")
    for ns in NAMESPACES:  # also after a crash that lost the record
        path = os.path.join(ETC_NETNS, ns)
        if os.path.exists(path):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(f"path {path}")
    directory = state_dir()
    if os.path.isdir(directory):
        for name in os.listdir(directory):
            if name == "lock":
                continue
            path = os.path.join(directory, name)
            if os.path.isdir(path) and not os.path.islink(path):
                shutil.rmtree(path, ignore_errors=True)
            else:
                with contextlib.suppress(OSError):
                    os.unlink(path)
    return removed


@dataclass
class Status:
    up: bool
    state: str
    namespaces: list[str]
    processes: list[dict[str, Any]]
    stats: dict[str, Any]
    config: dict[str, Any]
    notes: list[str]


def status() -> Status:
    detached = attached.detach() if os.geteuid() == 0 else []  # left by a killed ``evade``
    st = LabState.load()
    namespaces = netns.existing_namespaces() if shutil.which("ip") else []
    procs = [{"name": e["name"], "pid": e.get("pid"), "alive": _alive(e)} for e in st.processes()]
    stats: dict[str, Any] = {}
    with contextlib.suppress(OSError, ValueError), open(st.file("stats.json")) as fh:
        stats = json.load(fh)
    if CENSOR_NS in namespaces and os.geteuid() == 0:
        # Fail-open: what the queue rules took minus what the censor read passed uninspected
        # (no censor reading the queue); the censor's count is at most half a second old.
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            counters = kernel.queue_counters(netns.in_ns(CENSOR_NS))
            stats.update(counters)
            read = int(stats.get("queued_packets", 0))
            # SYN copies the kernel could not deliver: SYNs it forwarded that the engine missed.
            lost = int(stats.get("syn_copies_lost", 0))
            stats["uninspected"] = max(0, counters["kernel_queued"] - read) + lost
    notes: list[str] = []
    censor = next((p for p in procs if p["name"] == "censor"), None)
    if censor is not None and not censor["alive"]:
        if st.config.get("fail_open", True):
            notes.append(
                "the censor process is not running: traffic passes uncensored "
                "(fail-open); gfwlab lab restart-censor restarts it"
            )
        else:
            notes.append(
                "the censor process is not running: forwarded traffic is dropped (fail-closed); "
                "gfwlab lab restart-censor restarts it"
            )
    dead = int(stats.get("engines_dead", 0) or 0)
    if censor is not None and censor["alive"] and dead:
        notes.append(
            f"{dead} of the censor's {stats.get('engines')} engines exited: the traffic of their "
            "share of the servers passes uninspected (fail-open) or is dropped (fail-closed); "
            "gfwlab lab restart-censor restarts them all"
        )
    for p in procs:
        if not p["alive"] and p["name"] != "censor":
            notes.append(f"{p['name']} is not running")
    failed = int(stats.get("kernel_errors", 0) or 0)
    if failed:
        notes.append(
            f"the censor could not write {failed} kernel rules or entries: a block may miss "
            f"flows the kernel forwards without the engine (which ones: {st.file('censor.log')})"
        )
    if detached:
        notes.append("removed what a killed evade left attached: " + "; ".join(detached))
    offset = float(st.config.get("clock_offset_s") or 0.0)
    if offset:
        now = dt.datetime.fromtimestamp(time.time() + offset, dt.UTC)
        notes.append(
            f"censor clock: wall clock {offset:+.0f} s (lab up --at {st.config.get('at')}); "
            f"it emulates {now:%Y-%m-%dT%H:%M:%SZ} now"
        )
    degraded = st.status == "up" and censor is not None and (not censor["alive"] or dead > 0)
    return Status(
        up=st.status == "up" and bool(namespaces),
        state="degraded" if degraded else st.status,  # the censor died (lab/restart.py)
        namespaces=namespaces,
        processes=procs,
        stats=stats,
        config=st.config,
        notes=notes,
    )


def exec_argv(role: str, argv: list[str]) -> list[str]:
    """The command line that runs ``argv`` in the lab namespace of ``role``."""
    if role not in ROLES:
        raise LabError(f"unknown namespace {role!r} (client, censor, server)")
    if not argv:
        raise LabError("nothing to run: give a command after --")
    ns = ROLES[role]
    if ns not in netns.existing_namespaces():
        raise LabError("the lab is not up (gfwlab lab up)")
    bundle = os.path.join(state_dir(), "ca", "ca-bundle.pem")
    env = [f"SSL_CERT_FILE={bundle}", f"CURL_CA_BUNDLE={bundle}", f"GFWLAB_CA={bundle}"]
    return netns.in_ns(ns, "env", *env, *argv)


def follow_events(follow: bool) -> Iterator[str]:
    path = os.path.join(state_dir(), "events.jsonl")
    if not os.path.exists(path):
        if not follow:
            raise LabError("no events yet (is the lab up?)")
        while not os.path.exists(path):
            time.sleep(0.2)
    with open(path, encoding="utf-8") as fh:
        while True:
            line = fh.readline()
            if line:
                yield line.rstrip("\n")
            elif not follow:
                return
            else:
                time.sleep(0.1)


def control(command: str, timeout: float = 10.0) -> str:
    """Send one command to the censor's control socket; returns its reply."""
    path = os.path.join(state_dir(), "censor.sock")
    if not os.path.exists(path):
        raise LabError("the censor is not running (gfwlab lab status)")
    try:
        reply = request(path, command, timeout)
    except OSError as exc:
        raise LabError(f"the censor did not answer: {exc}") from None
    if not reply.startswith("ok"):
        raise LabError(reply.removeprefix("error ").strip() or "the censor refused")
    return reply
