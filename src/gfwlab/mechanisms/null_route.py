"""Null routing: drop server-to-client packets of listed server addresses or address:ports.

Sources: spec §8 and §7a; Alice et al., *How China Detects and Blocks Shadowsocks*, IMC 2020
(blocking by port or by IP, by dropping server-to-client packets); net4people #129 (TLS proxies,
Oct 2022: the port first, then the whole IP); net4people #69 (static blocking, whole IP, days or
weeks).

Measured, and emulated here: only server-to-client packets are dropped, so a client's SYN still
reaches the server, which sits in SYN_RECV; for one port (``targets = ["IP:PORT"]``) or the
whole address (``targets = ["IP"]`` or a prefix). Both TCP and UDP are affected.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

from mypy_extensions import mypyc_attr

from gfwlab.engine.mechanism import Decision, Mechanism, Needs, Seen
from gfwlab.mechanisms import register_mechanism
from gfwlab.packet.ip import addr_bytes
from gfwlab.rules import CommonParams


@mypyc_attr(native_class=False)
@dataclass(frozen=True, slots=True, kw_only=True)
class NullRouteParams(CommonParams):
    targets: tuple[str, ...] = ()
    """Null-routed servers: "IP", "IP:PORT", "[IPv6]:PORT" or a prefix "NET/LEN"."""
    _ports: frozenset[tuple[bytes, int]] = field(default=frozenset(), init=False, repr=False)
    _hosts: frozenset[bytes] = field(default=frozenset(), init=False, repr=False)
    _nets: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = field(
        default=(), init=False, repr=False
    )

    def __post_init__(self) -> None:
        ports: set[tuple[bytes, int]] = set()
        hosts: set[bytes] = set()
        nets: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
        for target in self.targets:
            host, port = _split(target)
            if "/" in host:
                try:
                    nets.append(ipaddress.ip_network(host, strict=False))
                except ValueError:
                    raise ValueError(f"targets: not an address or prefix: {target!r}") from None
                continue
            try:
                packed = addr_bytes(host)
            except ValueError:
                raise ValueError(f"targets: not an address: {target!r}") from None
            if port is None:
                hosts.add(packed)
            else:
                ports.add((packed, port))
        object.__setattr__(self, "_ports", frozenset(ports))
        object.__setattr__(self, "_hosts", frozenset(hosts))
        object.__setattr__(self, "_nets", tuple(nets))


def _match(
    ports: frozenset[tuple[bytes, int]],
    hosts: frozenset[bytes],
    nets: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...],
    server: bytes,
    port: int,
) -> str | None:
    """The target a server and port fall under, as an event names it; None if none."""
    if (server, port) in ports:
        return f"{ipaddress.ip_address(server)}:{port}"
    if server in hosts:
        return str(ipaddress.ip_address(server))
    if nets:
        ip = ipaddress.ip_address(server)
        for net in nets:
            if ip.version == net.version and ip in net:
                return str(net)
    return None


def _split(target: str) -> tuple[str, int | None]:
    target = target.strip()
    if target.startswith("["):
        host, _, rest = target[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else ""
    elif target.count(":") == 1:
        host, _, port = target.partition(":")
    else:
        host, port = target, ""
    if not port:
        return host, None
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"targets: bad port in {target!r}")
    return host, int(port)


class NullRoute(Mechanism[NullRouteParams]):
    citation = (
        "spec §8, §7a; Alice et al., How China Detects and Blocks Shadowsocks, IMC 2020; "
        "net4people #69, #129"
    )
    params_cls = NullRouteParams

    def setup(self) -> None:
        # The targets as compiled code reads them for every new flow: the parameters class is a
        # Python class, whose fields it would look up by name.
        p = self.params
        self._ports, self._hosts, self._nets = p._ports, p._hosts, p._nets
        self._any = bool(p.targets)

    def needs(self) -> Needs:
        # Nothing listed: it never acts, and a SYN need not wait for it.
        return Needs(syn=self._any)

    def on_new_flow(self, seen: Seen) -> Decision | None:
        if not self._any:
            return None
        flow = seen.flow
        rule = _match(self._ports, self._hosts, self._nets, flow.server, flow.sport)
        if rule is None:
            return None
        return Decision(action="null-route", rule=rule, block="s2c", drop=not seen.c2s)


register_mechanism("null_route", NullRoute)
