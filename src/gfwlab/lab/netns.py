"""Namespaces, links, addresses, routes and firewall rules, made with iproute2 and iptables.

Everything is made inside namespaces the lab creates; nothing here touches the host's own
interfaces, routes or rules. The commands are the standard tools (``ip``, ``iptables``,
``ip6tables``, ``sysctl``, ``ethtool``) run with ``ip netns exec``, which keeps each step visible
and easy to reproduce by hand.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time

from gfwlab.errors import LabError
from gfwlab.live import blocked, chains
from gfwlab.live.topology import (
    BYPASS_MARK,
    CENSOR_NS,
    CLIENT_GW_V4,
    CLIENT_GW_V6,
    CLIENT_LINK,
    CLIENT_NS,
    CLIENT_V4,
    CLIENT_V6,
    LINKS,
    MTU,
    NAMESPACES,
    PREFIX,
    PROBER_NET,
    SERVER_EXTRA_V4,
    SERVER_GW_V4,
    SERVER_GW_V6,
    SERVER_LINK,
    SERVER_NS,
    SERVER_V4,
    SERVER_V6,
    SITES_V4,
    SITES_V6,
)

REQUIRED_TOOLS = {
    "ip": "iproute2",
    "iptables": "iptables",
    "ip6tables": "iptables",
    "nft": "nftables",
    "ipset": "ipset",
}


def run(
    argv: list[str], *, check: bool = True, timeout: float = 30.0, stdin: str | None = None
) -> str:
    """Run a command (``stdin`` as its input); on failure raise LabError with its first line of
    stderr."""
    try:
        res = subprocess.run(
            argv, input=stdin, capture_output=True, text=True, timeout=timeout, check=False
        )
    except FileNotFoundError:
        raise LabError(f"{argv[0]} not found") from None
    except subprocess.TimeoutExpired:
        raise LabError(f"{' '.join(argv)} timed out") from None
    if check and res.returncode != 0:
        detail = (res.stderr.strip() or res.stdout.strip()).splitlines()
        raise LabError(f"{' '.join(argv)}: {detail[0] if detail else f'exit {res.returncode}'}")
    return res.stdout


def in_ns(ns: str, *argv: str) -> list[str]:
    return ["ip", "netns", "exec", ns, *argv]


def existing_namespaces() -> list[str]:
    out = run(["ip", "netns", "list"], check=False)
    return [line.split()[0] for line in out.splitlines() if line.startswith(PREFIX)]


def check_host() -> None:
    """Root and the tools: one clear line if something is missing."""
    if os.geteuid() != 0:
        raise LabError("needs root (network namespaces and iptables); run it with sudo")
    for tool, package in REQUIRED_TOOLS.items():
        if shutil.which(tool) is None:
            raise LabError(f"{tool} not found (install the Debian package {package})")
    if not os.path.isdir("/proc/self/ns") or not os.path.exists("/proc/self/ns/net"):
        raise LabError("this kernel has no network namespaces (CONFIG_NET_NS)")


def make_namespace(ns: str) -> None:
    run(["ip", "netns", "add", ns])
    run(in_ns(ns, "ip", "link", "set", "lo", "up"))


def make_topology() -> None:
    """Links, addresses, routes and forwarding between the three namespaces."""
    for link in LINKS:
        run(
            [
                "ip",
                "link",
                "add",
                link.a,
                "netns",
                link.a_ns,
                "address",
                link.a_mac,
                "mtu",
                str(MTU),
                "type",
                "veth",
                "peer",
                "name",
                link.b,
                "netns",
                link.b_ns,
                "address",
                link.b_mac,
                "mtu",
                str(MTU),
            ]
        )
    c, s = CLIENT_LINK, SERVER_LINK
    addrs = [
        (CLIENT_NS, c.a, f"{CLIENT_V4}/24"),
        (CLIENT_NS, c.a, f"{CLIENT_V6}/64"),
        (c.b_ns, c.b, f"{CLIENT_GW_V4}/24"),
        (c.b_ns, c.b, f"{CLIENT_GW_V6}/64"),
        (s.a_ns, s.a, f"{SERVER_GW_V4}/24"),
        (s.a_ns, s.a, f"{SERVER_GW_V6}/64"),
        (SERVER_NS, s.b, f"{SERVER_V4}/24"),
        (SERVER_NS, s.b, f"{SERVER_V6}/64"),
    ] + [(SERVER_NS, s.b, f"{a}/24") for a in SERVER_EXTRA_V4]
    for ns, dev, addr in addrs:
        extra = ["nodad"] if ":" in addr else []
        run(in_ns(ns, "ip", "addr", "add", addr, "dev", dev, *extra))
    for link in LINKS:
        run(in_ns(link.a_ns, "ip", "link", "set", link.a, "up"))
        run(in_ns(link.b_ns, "ip", "link", "set", link.b, "up"))
        # Correct checksums on the wire (so captures and the censor see real checksums) and no
        # segmentation offload (so packets are MTU-sized, as on a real path).
        if shutil.which("ethtool"):
            for ns, dev in ((link.a_ns, link.a), (link.b_ns, link.b)):
                run(
                    in_ns(
                        ns,
                        "ethtool",
                        "-K",
                        dev,
                        "tx",
                        "off",
                        "tso",
                        "off",
                        "gso",
                        "off",
                        "gro",
                        "off",
                    ),
                    check=False,
                )
    run(in_ns(CLIENT_NS, "ip", "route", "add", "default", "via", CLIENT_GW_V4))
    run(in_ns(CLIENT_NS, "ip", "-6", "route", "add", "default", "via", CLIENT_GW_V6))
    run(in_ns(SERVER_NS, "ip", "route", "add", "default", "via", SERVER_GW_V4))
    run(in_ns(SERVER_NS, "ip", "-6", "route", "add", "default", "via", SERVER_GW_V6))
    censor = CLIENT_LINK.b_ns
    # The lab's sites (topology.SITES_V4/V6): local to the server, routed to it by the censor.
    for net in SITES_V4:
        run(in_ns(SERVER_NS, "ip", "route", "add", "local", net, "dev", "lo"))
        run(in_ns(censor, "ip", "route", "add", net, "via", SERVER_V4))
    run(in_ns(SERVER_NS, "ip", "-6", "route", "add", "local", SITES_V6, "dev", "lo"))
    run(in_ns(censor, "ip", "-6", "route", "add", SITES_V6, "via", SERVER_V6))
    # The active prober's addresses: local to the censor namespace, inside the border.
    run(in_ns(censor, "ip", "addr", "add", f"{PROBER_NET}.0/24", "dev", "lo"))
    for key in (
        "net.ipv4.ip_forward=1",
        "net.ipv6.conf.all.forwarding=1",
        "net.ipv4.conf.all.rp_filter=0",
    ):
        run(in_ns(censor, "sysctl", "-q", "-w", key))


def install_queue_rules(censor_ns: str, queue: int, *, fail_open: bool) -> None:
    """Queue forwarded packets to the censor; let flows with a final verdict bypass it.

    The queue is read in mangle PREROUTING, not FORWARD: a packet whose TTL expires at the censor
    is dropped before FORWARD, and the real GFW sees TTL-limited insertion packets (spec §9 (b)).
    Only packets that cross the censor are its to judge: those addressed to its namespace itself
    (local, multicast or broadcast: IPv6 neighbour discovery and MLD on both links, the
    prober's replies, a ping of the gateway) are delivered without the queue.
    """
    bypass = f"0x{BYPASS_MARK:x}/0x{BYPASS_MARK:x}"
    try:
        run(in_ns(censor_ns, "ipset", "restore"), stdin=chains.create_commands())
    except LabError as exc:
        raise LabError(f"could not make the residual block sets (ipset): {exc}") from None
    for tool in ("iptables", "ip6tables"):
        ipt = in_ns(censor_ns, tool, "-w", "-t", "mangle")
        run([*ipt, "-N", chains.QUEUE_CHAIN])
        run([*ipt, "-N", chains.BYPASSED_CHAIN])
        # One addrtype match a type: for IPv6 a list of types is read as all of them at once (a
        # local multicast address), not as any of them.
        kinds = (
            ("LOCAL", "MULTICAST") if tool == "ip6tables" else ("LOCAL", "MULTICAST", "BROADCAST")
        )
        crossing = [x for kind in kinds for x in ("-m", "addrtype", "!", "--dst-type", kind)]
        bypassed = ["-m", "connmark", "--mark", bypass]
        for dev in (CLIENT_LINK.b, SERVER_LINK.a):
            # A bypassed connection crosses the censor (only forwarded packets get the mark): its
            # packets go to the queue chain without the address type matches, a route lookup
            # each. Measured with iperf3 through the lab (one stream, two rounds of three): 0.85
            # and 0.89 of plain forwarding with the lookups first, 0.95 and 1.02 with this rule.
            # In the queue chain they still meet a residual block's sets before they are let go.
            run([*ipt, "-A", "PREROUTING", "-i", dev, *bypassed, "-j", chains.QUEUE_CHAIN])
            run([*ipt, "-A", "PREROUTING", "-i", dev, *crossing, "-j", chains.QUEUE_CHAIN])
        run([*ipt, "-A", chains.QUEUE_CHAIN, *bypassed, "-j", "ACCEPT"])
        # While a residual drop block is in force, the censor puts a jump to this chain first
        # (live/kernel.py): a bypassed packet a block may cover loses its connection's bypass
        # mark and goes to the queue, so the engine sees it again.
        for rule in chains.bypassed_chain_rules(BYPASS_MARK, v6=tool == "ip6tables"):
            try:
                run([*ipt, "-A", chains.BYPASSED_CHAIN, *rule])
            except LabError as exc:
                raise LabError(f"the kernel refused the set match (xt_set): {exc}") from None
        if tool == "iptables":
            # The prober's own connections are not traffic the censor inspects (its addresses
            # are local: no queue, above), and the kernel must not reset the connections the
            # prober's userspace TCP makes.
            rst = ["-p", "tcp", "--tcp-flags", "RST", "RST", "-j", "DROP"]
            run(in_ns(censor_ns, tool, "-w", "-A", "OUTPUT", "-s", f"{PROBER_NET}.0/24", *rst))
        # Later packets of flows the engine blocked are dropped here (filled by the censor:
        # live/blocked.py), before anything is let through or queued.
        run([*ipt, "-N", blocked.CHAIN])
        run([*ipt, "-A", chains.QUEUE_CHAIN, "-j", blocked.CHAIN])
        # What no active mechanism needs is let through here (filled by the censor: live/kernel.py).
        run([*ipt, "-N", chains.SKIP_CHAIN])
        run([*ipt, "-A", chains.QUEUE_CHAIN, "-j", chains.SKIP_CHAIN])
        queue_rule = [*ipt, "-A", chains.QUEUE_CHAIN, "-j", "NFQUEUE", "--queue-num", str(queue)]
        if fail_open:
            queue_rule.append("--queue-bypass")
        try:
            run(queue_rule)
        except LabError as exc:
            raise LabError(f"the kernel refused the NFQUEUE target (xt_NFQUEUE): {exc}") from None
        # The censor marks a packet when its flow's verdict is final; remember it on the
        # connection so the flow's later packets skip the queue (Suricata's NFQ bypass).
        run(
            [
                *ipt,
                "-A",
                "FORWARD",
                "-m",
                "mark",
                "--mark",
                bypass,
                "-j",
                "CONNMARK",
                "--save-mark",
                "--mask",
                f"0x{BYPASS_MARK:x}",
            ]
        )


def untrack_fragments(censor_ns: str) -> None:
    """Let the censor's queue see IP fragments as sent, not the kernel's reassembly.

    Connection tracking (which the bypass connmark needs) makes the kernel reassemble fragments
    at prerouting priority -400, before any iptables table, and settle overlaps its own way
    (recent kernels drop a datagram whose fragments overlap). Reassembly is skipped for a packet
    already marked untracked, and an nftables chain at priority -450 can mark it (this kernel
    has no nftables queue, so the queue stays in iptables). The fragments then reach the queue
    in mangle PREROUTING one by one, the censor reassembles and judges them itself
    (``engine/defrag.py``), and they are forwarded as sent; the server reassembles them.
    """
    devs = ", ".join(f'"{dev}"' for dev in (CLIENT_LINK.b, SERVER_LINK.a))
    rules = "".join(
        f"table {family} gfwlab_frag {{\n"
        "  chain pre {\n"
        "    type filter hook prerouting priority -450; policy accept;\n"
        f"    iifname {{ {devs} }} {match} notrack\n"
        "  }\n"
        "}\n"
        for family, match in (("ip", "ip frag-off & 0x3fff != 0"), ("ip6", "exthdr frag exists"))
    )
    run(in_ns(censor_ns, "nft", "-f", "-"), stdin=rules)


def install_path_hops(server_hops: int, client_hops: int = 0) -> None:
    """Make the path ``server_hops`` routers long behind the censor (and ``client_hops`` before
    it), as far as TTLs go: a packet that would expire on the way is dropped where it would
    arrive, so TTL-limited insertion packets reach the censor and die before the server (spec §9
    (b), §14c), as on the real path.

    Done with the kernel's ``ttl``/``hl`` match in the raw PREROUTING chain (before the censor's
    queue) of the namespace a packet enters after crossing the emulated routers, both ways, not
    with a path namespace: a packet leaving a router with TTL t crosses n more only if t > n.
    Surviving packets keep their TTL, so the forged packets' fingerprints are unchanged.
    """
    rules = [(SERVER_NS, SERVER_LINK.b, server_hops), (CENSOR_NS, SERVER_LINK.a, server_hops)]
    if client_hops:
        rules += [(CENSOR_NS, CLIENT_LINK.b, client_hops), (CLIENT_NS, CLIENT_LINK.a, client_hops)]
    for ns, dev, hops in rules:
        if hops <= 0:
            continue
        for tool, match in (("iptables", ["ttl", "--ttl-lt"]), ("ip6tables", ["hl", "--hl-lt"])):
            rule = ["-t", "raw", "-A", "PREROUTING", "-i", dev, "-m", match[0], match[1]]
            try:
                run(in_ns(ns, tool, "-w", *rule, str(hops + 1), "-j", "DROP"))
            except LabError as exc:
                raise LabError(f"the kernel refused the {match[0]} match (--hops): {exc}") from None


def set_client_timestamps(on: bool) -> None:
    """Whether the client namespace's TCP sends timestamps (RFC 7323; Linux's default: on).

    ``net.ipv4.tcp_timestamps`` is per network namespace (it covers IPv6 too), so the host keeps
    its own. Off, the client's data packets carry no options, as those of a client whose stack
    does not send timestamps (Windows by default). Geneva's published China rates imply such a
    client: its window-scale/data-offset-8 insertion (98%) can only reach the server harmlessly
    without them (docs/evasion-live.md).
    """
    run(in_ns(CLIENT_NS, "sysctl", "-q", "-w", f"net.ipv4.tcp_timestamps={int(on)}"))


def kill_namespace_processes(ns: str, grace: float = 3.0) -> int:
    """SIGTERM every process in ``ns``, then SIGKILL what is left; returns how many there were."""
    pids = [int(p) for p in run(["ip", "netns", "pids", ns], check=False).split() if p.isdigit()]
    for pid in pids:
        _signal(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while pids and time.monotonic() < deadline:
        pids = [p for p in pids if _alive(p)]
        if pids:
            time.sleep(0.05)
    for pid in pids:
        _signal(pid, signal.SIGKILL)
    return len(pids)


def delete_namespace(ns: str) -> None:
    """Delete ``ns``: its links, addresses and firewall rules go with it."""
    run(["ip", "netns", "del", ns], check=False)


def _signal(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


__all__ = [
    "NAMESPACES",
    "check_host",
    "delete_namespace",
    "existing_namespaces",
    "in_ns",
    "install_path_hops",
    "install_queue_rules",
    "kill_namespace_processes",
    "make_namespace",
    "make_topology",
    "run",
    "set_client_timestamps",
    "untrack_fragments",
]
