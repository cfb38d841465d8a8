"""TLS-in-TLS detection, a HYPOTHESIS: a TLS handshake carried inside an encrypted tunnel.

Source: spec §14h and §8; D. Xue, M. Kallitsis, A. Houmansadr, R. Ensafi, *Fingerprinting
Obfuscated Proxy Traffic with Encapsulated TLS Handshakes*, USENIX Security 2024 (features: the
sizes, directions and timing of a flow's first packets); net4people #129 (October 2022: TLS-based
proxies blocked, first by port, then by address, after the user moved ports).

**No measurement shows the GFW running such a detector** (spec §12.11, §14h: anecdotes only).
This mechanism is off in the built-in profile (``enabled = false``); every event it reports
carries ``"evidence": "hypothesis"``, and every threshold below is a parameter (status U).

The detector follows the paper's reading of an encapsulated handshake on the flights of a flow
(consecutive data packets one way; a flight ends when the other side sends data), among the
first ``max_flights``:

1. the client's first flight (the outer ClientHello), then the server's (the outer handshake);
2. a later client flight carries the inner ClientHello with the proxy's header (and often the
   outer Finished; the outer server's session tickets may split them): ``inner_hello_bytes``;
3. the server answers with the inner server handshake, certificate included:
   at least ``inner_server_bytes``;
4. the client's next flight is the inner Finished (perhaps with the first request), sent within
   ``max_gap_ms`` of the server's flight: ``inner_finished_bytes`` (min, max).

Plain HTTPS differs at step 2 (the outer Finished and a request are smaller than a ClientHello)
or step 3-4 (a first response smaller than a certificate-bearing handshake; nothing, or an
HTTP/2 SETTINGS acknowledgement, after it). In the lab, trojan's flights were 517, 1797, 1294,
1990, 291 (full), 517, 241, 687, 1911, 102 (resumed), and 517, 241, 170, 79, 539, 1832, 102
(the outer tickets splitting the client's flight); curl's 517, 1813, 225, 636, 31; headless
Chromium's 1951, 2144, 621, 729, 197. Known false positive: a browser whose first request is
ClientHello-sized and whose first response exceeds ``inner_server_bytes`` before it sends a
small flight (Chromium fetching a page over 1000 bytes would match). The paper's classifier
uses more features than these thresholds; raise ``inner_server_bytes`` to trade detections for
fewer false positives.
Padding from small ranges only weakens the detection in the paper (0.859 to 0.687 for
vmess-ws-tls); multiplexing defeats it more often. Neither is modelled beyond the thresholds.

The per-server policy (October 2022 reports): after ``block_after`` detections on one server
port within ``window_s``, the port is null-routed (server-to-client drops) for ``port_block_s``;
once ``address_after_ports`` ports of one address have been blocked, the whole address is, for
``address_block_s``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from mypy_extensions import mypyc_attr

from gfwlab.engine.actions import EventFields
from gfwlab.engine.mechanism import Decision, Mechanism, Needs, Residual, Seen
from gfwlab.mechanisms import register_mechanism
from gfwlab.packet.ip import SYN, addr_text
from gfwlab.rules import CommonParams


@mypyc_attr(native_class=False)
@dataclass(frozen=True, slots=True, kw_only=True)
class TlsInTlsParams(CommonParams):
    enabled: bool = False
    """Off unless a profile or ``--set tls_in_tls.enabled=true`` turns it on (a hypothesis)."""
    direction: Literal["both", "inside-out", "outside-in"] = "inside-out"
    """The October 2022 reports concern proxies abroad used from China."""
    ports: tuple[int, ...] = ()
    """Server ports inspected; empty: every port."""
    watch_packets: int = 60
    """Packets per flow (both directions) the detector looks at before it gives up."""
    max_flights: int = 8
    """Flights per flow searched for the inner handshake: with 8, it may start at the client's
    second or third flight (the outer server's session tickets can split the second)."""
    inner_hello_bytes: tuple[int, int] = (300, 4000)
    """Bytes of the client's second flight (outer Finished + inner ClientHello): min, max."""
    inner_server_bytes: int = 1000
    """Least bytes of the server's second flight (the inner handshake, with a certificate)."""
    inner_finished_bytes: tuple[int, int] = (80, 400)
    """Bytes of the client flight after the inner server handshake: min, max. A TLS 1.3
    Finished with its ChangeCipherSpec (64 or 80 bytes) in one outer record (+22), alone or
    with the first request (trojan in the lab: 102, 210, 291); plain HTTPS sends less here (an
    HTTP/2 SETTINGS ack, 31)."""
    max_gap_ms: float = 500.0
    """Most milliseconds from the end of the server's second flight to the client's third."""
    block_after: int = 3
    """Detections on one server port (within ``window_s``) before the port is blocked (K)."""
    window_s: float = 600.0
    """How far back detections count."""
    port_block_s: float = 3600.0
    """How long a blocked port stays blocked."""
    address_after_ports: int = 2
    """Blocked ports of one address before the whole address is blocked."""
    address_block_s: float = 86400.0
    """How long a blocked address stays blocked."""


@dataclass(frozen=True, kw_only=True, init=False)
class TlsInTlsFields(EventFields):
    """A flow whose first flights look like a TLS handshake inside a tunnel (hypothesis)."""

    evidence: str = "hypothesis"
    """Always ``hypothesis``: no measurement shows the GFW doing this (spec §14h)."""
    flights: tuple[int, ...]
    """Bytes of the flow's first five flights, client first (the features it matched)."""
    detections: int
    """Detections on this server port within the window, this one included."""
    blocked: str
    """What the policy blocked now: ``none``, ``port`` or ``address``."""

    # Written out: a dataclass's generated __init__ runs interpreted even where the class is
    # compiled (gfwlab._build); this one is compiled with it.
    def __init__(
        self,
        *,
        evidence: str = "hypothesis",
        flights: tuple[int, ...],
        detections: int,
        blocked: str,
    ) -> None:
        object.__setattr__(self, "evidence", evidence)
        object.__setattr__(self, "flights", flights)
        object.__setattr__(self, "detections", detections)
        object.__setattr__(self, "blocked", blocked)


@dataclass
class _Flight:
    """Consecutive data packets one way."""

    client: bool
    size: int
    first: float
    last: float


@dataclass
class _Trace:
    last: float
    """When the flow was last seen (traces idle for ``window_s`` are dropped)."""
    flights: list[_Flight] = field(default_factory=list)
    done: bool = False
    """Decided (detected, or searched to ``max_flights``): later packets are not looked at."""


class TlsInTls(Mechanism[TlsInTlsParams]):
    citation = (
        "spec §14h (hypothesis); Xue, Kallitsis, Houmansadr, Ensafi, Fingerprinting Obfuscated "
        "Proxy Traffic with Encapsulated TLS Handshakes, USENIX Security 2024; net4people #129"
    )
    params_cls = TlsInTlsParams
    shared_state = (
        "per-server detection times and blocked ports: updated once per detected flow, in the "
        "order flows are detected (packet-time order offline, arrival order live)",
        "per-flow flight traces (emptied once a flow is decided, dropped when it is idle for "
        "window_s), so a flow is counted at most once",
    )
    shard_scope = "server"

    def setup(self) -> None:
        self._traces: dict[tuple[bytes, int, bytes, int], _Trace] = {}
        self._detections: dict[tuple[bytes, int], list[float]] = {}
        self._blocked_ports: dict[bytes, set[int]] = {}
        self._last_sweep = 0.0

    def needs(self) -> Needs:
        return Needs(watch_packets=self.params.watch_packets)

    def on_tcp_packet(self, seen: Seen) -> Decision | None:
        p, flow, pkt = self.params, seen.flow, seen.pkt
        if p.ports and flow.sport not in p.ports:
            return None
        key = (flow.client, flow.cport, flow.server, flow.sport)
        self._sweep(seen.now)
        trace = self._traces.get(key)
        # A new connection on the 4-tuple, or a trace idle past the window (forgotten whether or
        # not a sweep has dropped it yet: the sweep only frees memory, so its timing, which
        # depends on the other flows, never changes a verdict).
        if (
            trace is None
            or (seen.c2s and pkt.flags & SYN)
            or seen.now - trace.last > self.params.window_s
        ):
            trace = self._traces[key] = _Trace(seen.now)
        trace.last = seen.now
        if trace.done or not pkt.payload:
            return None
        fl = trace.flights
        if fl and fl[-1].client == seen.c2s:
            fl[-1].size += len(pkt.payload)
            fl[-1].last = seen.now
            return None
        fl.append(_Flight(seen.c2s, len(pkt.payload), seen.now, seen.now))
        # A flight has just ended: the candidate inner handshake is the client flight i (inner
        # ClientHello), the server flight i+1 and the client flight i+2, all complete now.
        i = len(fl) - 4
        if i < 2 or i % 2:
            return None
        if self._matches(fl[i : i + 3]):
            trace.done, sizes = True, tuple(f.size for f in fl[: i + 3])
            fl.clear()
            return self._detected(seen, sizes)
        if len(fl) >= self.params.max_flights:
            trace.done = True
            fl.clear()
        return None

    def _matches(self, three: list[_Flight]) -> bool:
        p = self.params
        if [f.client for f in three] != [True, False, True]:
            return False
        c2, s2, c3 = three
        gap_ms = (c3.first - s2.last) * 1000.0
        return (
            p.inner_hello_bytes[0] <= c2.size <= p.inner_hello_bytes[1]
            and s2.size >= p.inner_server_bytes
            and p.inner_finished_bytes[0] <= c3.size <= p.inner_finished_bytes[1]
            and gap_ms <= p.max_gap_ms
        )

    def _detected(self, seen: Seen, flights: tuple[int, ...]) -> Decision:
        p, flow, now = self.params, seen.flow, seen.now
        times = self._detections.setdefault((flow.server, flow.sport), [])
        times[:] = [t for t in times if now - t < p.window_s] + [now]
        blocked: Literal["none", "port", "address"] = "none"
        residual = None
        count = len(times)
        if count >= p.block_after:
            times.clear()
            ports = self._blocked_ports.setdefault(flow.server, set())
            ports.add(flow.sport)
            if len(ports) >= p.address_after_ports:
                blocked = "address"
                residual = Residual(key="server-ip", seconds=p.address_block_s, policy="drop-s2c")
            else:
                blocked = "port"
                residual = Residual(key="server", seconds=p.port_block_s, policy="drop-s2c")
        fields = TlsInTlsFields(flights=flights, detections=count, blocked=blocked)
        rule = f"tls-in-tls:{addr_text(flow.server)}:{flow.sport}"
        if residual is None:
            return Decision(action="pass", rule=rule, fields=fields)
        return Decision(
            action="null-route", rule=rule, block="s2c", residual=residual, fields=fields
        )

    def _sweep(self, now: float) -> None:
        if now - self._last_sweep < self.params.window_s:
            return
        self._last_sweep = now
        stale = [k for k, t in self._traces.items() if now - t.last > self.params.window_s]
        for k in stale:
            del self._traces[k]


register_mechanism("tls_in_tls", TlsInTls)
