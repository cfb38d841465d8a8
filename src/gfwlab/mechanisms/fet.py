"""Fully encrypted traffic (FET): drop connections whose first data packet looks random.

Source: spec §6 and §12.1; M. Wu, J. Sippe, D. Sivakumar, J. Burg, P. Anderson, X. Wang,
K. Bock, A. Houmansadr, D. Levin, E. Wustrow, *How the Great Firewall of China Detects and
Blocks Fully Encrypted Traffic*, USENIX Security 2023 (Algorithm 1; artifact
``gfw-report/usenixsecurity23-artifact``, whose ``artifacts/utils/detect.py`` is the authors'
reading of the exemptions); the 26.3% block rate from the authors' OONI write-up (OONI PR #1026,
ooni/spec #271); the residual and the end of dynamic blocking from the artifact's
``ceased-dynamic-blocking/README.md`` and net4people #69.

Measured, and emulated here:

- active from early November 2021 until dynamic blocking stopped between 2023-03-07 and
  2023-03-15 (``active``);
- seen on connections from China to some foreign data centres (``direction = "inside-out"``;
  the targeted ranges are ``targets``);
- only the client's first TCP data packet is inspected, as sent (not reassembled); later
  packets never are;
- it is exempt (Ex1-Ex5, in that order) if its set bits per byte are ≤ 3.4 or ≥ 4.6; its first
  6 bytes are printable ASCII (0x20-0x7e); more than half its bytes are printable; it holds a
  printable run longer than 20 bytes; or it starts like TLS (0x16 or 0x17, 0x03, 0x00-0x0f) or
  with ``GET ``, ``PUT ``, ``POST `` or ``HEAD ``;
- a non-exempt first packet to a targeted server is blocked with probability 0.263: that packet
  and every later client-to-server packet are dropped, so the connection times out (no reset);
  TCP only;
- residual: a new connection to the same server port is dropped from its SYN for 180 s
  ("usually 120 s or 180 s"), while other ports on the server still work.

Every first packet to a targeted server yields an event: ``pass`` with the exemption that held
(``fet:exempt:ex1-popcount`` ...), ``pass`` with the draw that spared a non-exempt packet, or
``drop``; each carries the measured values.

Differences: the real targeted ranges (Alibaba Cloud HK/SG, DigitalOcean SFO, Vultr; 142,827
IPs on port 80 as of 2022-08-22) are not published as a list, so the built-in profile targets
the lab's outside prefixes and captures need ``targets`` set. Whether the residual key holds
the client address is unknown (spec §12.1): ``residual_key`` is ``3-tuple`` by default,
``server`` for the other reading. The measured exception (one payload at 4.26 bits/byte never
blocked) is not modelled. Static blocking (from 2022-08, whole server IP, server-to-client, days
or weeks) is a separate mechanism: use ``null_route``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Final, Literal

from mypy_extensions import mypyc_attr

from gfwlab.engine.actions import EventFields, rounded
from gfwlab.engine.mechanism import Decision, Mechanism, Residual, Seen
from gfwlab.mechanisms import register_mechanism
from gfwlab.rules import CommonParams, ResidualKey
from gfwlab.rules.schema import Prefixes

_MARKS: Final = bytes(1 if 0x20 <= b <= 0x7E else 0 for b in range(256))
"""Byte to 1 if printable (0x20-0x7e), else 0: the table :func:`measure` translates with."""

EX1: Final = "ex1-popcount"
EX2: Final = "ex2-printable-prefix"
EX3: Final = "ex3-printable-fraction"
EX4: Final = "ex4-printable-run"
EX5: Final = "ex5-protocol"
_EXEMPT_RULES: Final = {ex: f"fet:exempt:{ex}" for ex in (EX1, EX2, EX3, EX4, EX5)}
"""The rule of a pass by its first exemption, made once (one per clean connection)."""


@mypyc_attr(native_class=False)
@dataclass(frozen=True, slots=True, kw_only=True)
class FetParams(CommonParams):
    direction: Literal["both", "inside-out", "outside-in"] = "inside-out"
    """Blocking was observed on connections from China to foreign data centres (spec §6)."""
    targets: Prefixes = Prefixes()
    """Server prefixes the GFW targets; connections to other servers are not inspected (and
    report nothing). Empty: nothing is targeted, so nothing is blocked."""
    probability: float = 0.263
    """Chance that a non-exempt first packet to a targeted server is blocked (OONI, ooni/spec
    #271)."""
    residual_s: float = 180.0
    """How long new connections on the residual key are dropped ("usually 120 s or 180 s")."""
    residual_key: ResidualKey = "3-tuple"
    """Residual key: ``3-tuple`` (client IP, server IP, server port) or ``server`` (server IP
    and port); which one is unknown (spec §12.1)."""
    static_block: bool = False
    """Also block the whole server address statically (net4people #69, from August 2022):
    server-to-client packets of every protocol, after ``static_delay_s``, for ``static_block_s``."""
    static_delay_s: float = 3 * 86400.0
    """Delay before static blocking starts ("days or weeks"; unverified, a parameter)."""
    static_block_s: float = 14 * 86400.0
    """How long static blocking lasts ("days or weeks"; unverified, a parameter)."""
    popcount_low: float = 3.4
    """Ex1: exempt if the set bits per byte are at most this."""
    popcount_high: float = 4.6
    """Ex1: exempt if the set bits per byte are at least this."""
    printable_prefix: int = 6
    """Ex2: exempt if at least this many leading bytes are printable (0x20-0x7e)."""
    printable_fraction: float = 0.5
    """Ex3: exempt if more than this fraction of the bytes is printable."""
    printable_run: int = 20
    """Ex4: exempt if a run of printable bytes is longer than this."""
    tls_prefix: tuple[tuple[int, int], ...] = ((0x16, 0x17), (0x03, 0x03), (0x00, 0x0F))
    """Ex5: inclusive ranges the first bytes must fall in to be exempt as TLS: content type
    0x16-0x17, version 0x03 then 0x00-0x0f (detect.py's ``range(0x00, 0x10)``; its comment says
    0x00-0x09). Alerts (0x15) are not exempt. Empty: no TLS exemption."""
    http_prefixes: tuple[str, ...] = ("GET ", "PUT ", "POST ", "HEAD ")
    """Ex5: exact prefixes exempt as HTTP (``GET!`` is not exempt)."""
    _http: tuple[bytes, ...] = field(default=(), init=False, repr=False)

    def __post_init__(self) -> None:
        if not 0.0 <= self.probability <= 1.0:
            raise ValueError(f"probability must be between 0 and 1, got {self.probability}")
        if self.residual_s < 0:
            raise ValueError(f"residual_s must not be negative, got {self.residual_s}")
        for lo, hi in self.tls_prefix:
            if not 0 <= lo <= hi <= 0xFF:
                raise ValueError(f"tls_prefix: bad byte range [{lo}, {hi}]")
        try:
            http = tuple(p.encode("ascii") for p in self.http_prefixes)
        except UnicodeEncodeError:
            raise ValueError("http_prefixes must be ASCII") from None
        if b"" in http:
            raise ValueError("http_prefixes: an empty prefix would exempt everything")
        object.__setattr__(self, "_http", http)


@dataclass(frozen=True, kw_only=True, init=False)
class FetFields(EventFields):
    """A first data packet to a targeted server, measured as Algorithm 1 measures it."""

    length: int
    """Payload bytes."""
    set_bits: int
    """Set bits in the payload."""
    popcount: float
    """Set bits per byte (Ex1: exempt if ≤ 3.4 or ≥ 4.6)."""
    printable_prefix: int
    """Leading printable bytes (Ex2: exempt from 6)."""
    printable_fraction: float
    """Share of printable bytes (Ex3: exempt above one half)."""
    printable_run: int
    """Longest run of printable bytes (Ex4: exempt above 20)."""
    protocol: str | None
    """The protocol its first bytes look like (Ex5: TLS or HTTP), or None."""
    exempt: tuple[str, ...]
    """The exemptions that held, in Algorithm 1's order."""
    draw: float | None = None
    """The draw, for a packet no exemption held; blocked when below ``probability``."""
    probability: float | None = None
    """The chance that a non-exempt first packet is blocked."""

    # Written out: a dataclass's generated __init__ runs interpreted even where the class is
    # compiled (gfwlab._build); this one is compiled with it.
    def __init__(
        self,
        *,
        length: int,
        set_bits: int,
        popcount: float,
        printable_prefix: int,
        printable_fraction: float,
        printable_run: int,
        protocol: str | None,
        exempt: tuple[str, ...],
        draw: float | None = None,
        probability: float | None = None,
    ) -> None:
        object.__setattr__(self, "length", length)
        object.__setattr__(self, "set_bits", set_bits)
        object.__setattr__(self, "popcount", popcount)
        object.__setattr__(self, "printable_prefix", printable_prefix)
        object.__setattr__(self, "printable_fraction", printable_fraction)
        object.__setattr__(self, "printable_run", printable_run)
        object.__setattr__(self, "protocol", protocol)
        object.__setattr__(self, "exempt", exempt)
        object.__setattr__(self, "draw", draw)
        object.__setattr__(self, "probability", probability)

    def as_dict(self) -> dict[str, Any]:
        # Written out: every clean TCP connection's first data packet reports these, and the
        # inherited as_dict reads each field by its name. The same dict (a test holds them equal).
        out: dict[str, Any] = {
            "length": self.length,
            "set_bits": self.set_bits,
            "popcount": self.popcount,
            "printable_prefix": self.printable_prefix,
            "printable_fraction": self.printable_fraction,
            "printable_run": self.printable_run,
            "protocol": self.protocol,
            "exempt": list(self.exempt),
        }
        if self.draw is not None:
            out["draw"] = self.draw
        if self.probability is not None:
            out["probability"] = self.probability
        return out


@dataclass(frozen=True, kw_only=True, init=False)
class Measures:
    """What Algorithm 1 measures of a first data packet."""

    length: int
    """Payload bytes."""
    set_bits: int
    """Bits set to 1 in the whole payload."""
    printable: int
    """Bytes in 0x20-0x7e."""
    printable_prefix: int
    """Leading bytes in 0x20-0x7e."""
    printable_run: int
    """The longest run of bytes in 0x20-0x7e."""
    protocol: str | None
    """The TLS or HTTP fingerprint the payload starts with (``tls:16 03 01``, ``http:GET``)."""

    # Written out: a dataclass's generated __init__ runs interpreted even where the class is
    # compiled (gfwlab._build); this one is compiled with it.
    def __init__(
        self,
        *,
        length: int,
        set_bits: int,
        printable: int,
        printable_prefix: int,
        printable_run: int,
        protocol: str | None,
    ) -> None:
        object.__setattr__(self, "length", length)
        object.__setattr__(self, "set_bits", set_bits)
        object.__setattr__(self, "printable", printable)
        object.__setattr__(self, "printable_prefix", printable_prefix)
        object.__setattr__(self, "printable_run", printable_run)
        object.__setattr__(self, "protocol", protocol)

    @property
    def popcount(self) -> float:
        """Set bits per byte."""
        return self.set_bits / self.length

    @property
    def printable_fraction(self) -> float:
        return self.printable / self.length

    def fields(
        self, exempt: list[str], draw: float | None = None, probability: float | None = None
    ) -> FetFields:
        """These measures as event fields, with the exemptions that held (and, with none, the
        draw against the blocking probability)."""
        return FetFields(
            length=self.length,
            set_bits=self.set_bits,
            popcount=self.popcount,
            printable_prefix=self.printable_prefix,
            printable_fraction=self.printable_fraction,
            printable_run=self.printable_run,
            protocol=self.protocol,
            exempt=tuple(exempt),
            draw=draw,
            probability=probability,
        )


def measure(payload: bytes, params: FetParams) -> Measures:
    """Measure a non-empty payload: a short one in one loop (:func:`_counted`), a longer one at
    C speed (one big-int popcount, one translation)."""
    # A plain loop rather than all(zip(...)): compiled, it builds no generator.
    n = len(payload)
    protocol = None
    tls = params.tls_prefix
    is_tls = 0 < len(tls) <= n
    if is_tls:
        for k, (lo, hi) in enumerate(tls):
            if not lo <= payload[k] <= hi:
                is_tls = False
                break
    if is_tls:
        protocol = "tls:" + payload[: len(tls)].hex(" ")
    else:
        for prefix in params._http:
            if payload.startswith(prefix):
                protocol = "http:" + prefix.decode().strip()
                break
    if n <= _SHORT:
        set_bits, printable, lead, run = _counted(payload)
    else:
        # One translation marks each byte printable (1) or not (0); counting, finding and
        # splitting on the marks are memchr-speed.
        marks = payload.translate(_MARKS)
        set_bits, printable = int.from_bytes(payload, "big").bit_count(), marks.count(1)
        lead = marks.find(b"\x00")
        if lead < 0:  # every byte printable
            lead = run = n
        else:
            run = 0
            for part in marks.split(b"\x00"):
                run = max(run, len(part))
    return Measures(
        length=n,
        set_bits=set_bits,
        printable=printable,
        printable_prefix=lead,
        printable_run=run,
        protocol=protocol,
    )


_SHORT: Final = 128
"""Up to this many bytes, :func:`measure` counts in one loop over the payload (:func:`_counted`):
compiled, a byte costs a few instructions, where each of the bytes methods of the long path
costs hundreds in its call alone. Beyond it those methods' C loops win."""

_SET_BITS: Final = bytes(bin(b).count("1") for b in range(256))
"""Byte to its set bits."""


def _counted(payload: bytes) -> tuple[int, int, int, int]:
    """Set bits, printable bytes, leading printable bytes and the longest printable run of
    ``payload``, in one pass: what :func:`measure` reads of a short payload (a test holds the
    two ways to the same numbers)."""
    set_bits = printable = run = longest = 0
    lead = -1
    table = _SET_BITS  # read once, not once a byte
    for i in range(len(payload)):
        byte = payload[i]
        set_bits += table[byte]
        if 0x20 <= byte <= 0x7E:
            printable += 1
            run += 1
            if run > longest:  # noqa: PLR1730 - compiled, a comparison; max() is a call
                longest = run
        else:
            if lead < 0:
                lead = i
            run = 0
    return set_bits, printable, len(payload) if lead < 0 else lead, longest


def exemptions(m: Measures, params: FetParams) -> list[str]:
    """The exemptions that hold, in Algorithm 1's order (Ex1-Ex5).

    The comparisons are detect.py's: ``set_bits / length`` is a correctly rounded division, so
    e.g. 170 bits in 50 bytes is exactly the float 3.4 and exempt, and a payload one bit over a
    threshold differs from it by at least 1/length, far above float rounding.
    """
    out = []
    p = m.popcount
    if p <= params.popcount_low or p >= params.popcount_high:
        out.append(EX1)
    if m.printable_prefix >= params.printable_prefix:
        out.append(EX2)
    if m.printable_fraction > params.printable_fraction:
        out.append(EX3)
    if m.printable_run > params.printable_run:
        out.append(EX4)
    if m.protocol is not None:
        out.append(EX5)
    return out


class Fet(Mechanism[FetParams]):
    citation = (
        "spec §6; Wu et al., How the Great Firewall of China Detects and Blocks Fully "
        "Encrypted Traffic, USENIX Security 2023"
    )
    params_cls = FetParams

    def on_first_data(self, seen: Seen, payload: bytes) -> Decision | None:
        # The engine calls this only for TCP and only with a non-empty payload.
        p = self.params
        if not p.targets.contains(seen.flow.server):
            return None
        m = measure(payload, p)
        held = exemptions(m, p)
        if held:
            return Decision(action="pass", rule=_EXEMPT_RULES[held[0]], fields=m.fields(held))
        draw = self.rng(seen).random()
        fields = m.fields(held, rounded(draw, 6), p.probability)
        if draw >= p.probability:
            return Decision(action="pass", rule="fet:no-exemption", fields=fields)
        return Decision(
            action="drop",
            rule="fet:no-exemption",
            drop=True,
            block="c2s",
            residual=Residual(key=p.residual_key, seconds=p.residual_s, policy="drop-c2s"),
            also=(
                Residual(
                    key="server-ip",
                    seconds=p.static_block_s,
                    policy="drop-s2c",
                    delay=p.static_delay_s,
                ),
            )
            if p.static_block
            else (),
            fields=fields,
        )


register_mechanism("fet", Fet)
