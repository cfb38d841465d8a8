"""What the engine tells its adapter to do (Actions) and what it reports (Event).

Actions are imperative and frozen: the adapter carries each out and never interprets the
engine's state. Exactly one verdict (:class:`Accept` or :class:`Drop`) is returned for each fed
packet; :class:`Inject` and :class:`Report` may accompany it or come later from
``Censor.on_timer``. :class:`Bypass` says the flow's verdict is final so that an inline adapter
can let the kernel forward the rest of it.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Final, Literal, Protocol

from mypy_extensions import mypyc_attr

from gfwlab._frozen import Frozen

Direction = Literal["inside-out", "outside-in"]
ActionName = Literal["rst", "drop", "dns-inject", "probe", "null-route", "pass", "anomaly"]


_SCALES: Final = tuple(10.0**i for i in range(23))  # each exact


def _halves(a: float) -> tuple[float, float]:
    """``a`` as the sum of two floats of at most 26 significant bits each (Veltkamp)."""
    c = 134217729.0 * a  # 2**27 + 1
    hi = c - (c - a)
    return hi, a - hi


_SCALE_HALVES: Final = tuple(_halves(s) for s in _SCALES)
_MARGINS: Final = tuple(max(2.0 ** (k - 54), 2.0**-52) for k in range(53))
"""``max(math.ulp(y) / 2, 2**-52)`` for ``|y|`` in ``[2**(k-1), 2**k)`` (``k``, the bit length of
``int(|y|)``; ``|y|`` below 1 for 0), by ``k``: no call."""


def rounded(x: float, digits: int) -> float:
    """``round(x, digits)``, the same float, without its decimal conversion where the answer is
    plain (``round`` writes and reads back a correctly rounded decimal string, about half a
    microsecond, for every event's time and several of its fields).

    ``y``, the product ``x * 10**digits``, is within half a unit in its last place (``ulp``) of
    the exact product, and its distance above ``floor(y)`` is exact for ``|y|`` of 1 or more
    (and below 1 wrong by less than 2**-53): ``margin``, half an ulp of ``y`` and at least
    2**-52, bounds both. If ``y`` lies more than ``margin`` from a half, the exact product rounds
    to the integer ``n`` that ``y`` rounds to; nearer a half, ``n`` is the exact product (``y``
    and its rounding error, both exact) rounded half to even, as ``round`` rounds.
    ``n / 10**digits`` (one correctly rounded division of exact operands) is then the float
    nearest to the decimal ``round`` reads back. At 2**52 and beyond, or not finite, ``round``
    itself answers. ``tests/test_actions.py`` compares the two on arbitrary floats; ``digits``
    is at most 22 (``10.0**digits`` exact).
    """
    scale = _SCALES[digits]
    y = x * scale
    if not -4503599627370496.0 < y < 4503599627370496.0:  # 2**52 (and not NaN)
        return round(x, digits)
    n = int(y)  # compiled, a machine integer: |y| < 2**52
    margin = _MARGINS[(n if n >= 0 else -n).bit_length()]
    if n > y:
        n -= 1  # floor
    frac = y - n
    if frac > 0.5 + margin:
        n += 1
    elif frac >= 0.5 - margin:  # near a half: decided on the exact product
        # x * scale is exactly y + err (Dekker's product of Veltkamp halves, each product and
        # sum exact: here |y| >= 1/4, so no part is subnormal). d, y's distance above
        # n + 1/2, is exact (the two are within a factor of two). A time near 2**31 s in
        # microseconds is near 2**50, where floats are a quarter apart: one in four of the
        # times that are not whole microseconds (an injection's, a block's end) comes here.
        # as_integer_ratio and divmod took about 6,000 instructions for it, this a few dozen.
        xh, xl = _halves(x)  # compiled, a pair of machine floats: no tuple made
        sh, sl = _SCALE_HALVES[digits]
        err = ((xh * sh - y) + xh * sl + xl * sh) + xl * sl
        d = y - (n + 0.5)
        if d > -err or (d == -err and n & 1):  # above the half, or on it and n odd: to even
            n += 1
    if n == 0:
        return math.copysign(0.0, x)
    return n / scale


@dataclass(frozen=True, kw_only=True)
@mypyc_attr(allow_interpreted_subclasses=True)  # mechanisms subclass it
class EventFields(Frozen):
    """The fields an event adds to the DESIGN.md contract, declared and typed.

    Each mechanism (and the engine, for its own events) declares a subclass per kind of event it
    reports, with a docstring per field, and hands an instance to its Decision. In the JSON a
    field appears under its own name, in declared order; a field whose default is None is left
    out while it is None (it does not apply to that event), any other field is always present.
    """

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name, optional, plain in _layout(type(self)):
            value = getattr(self, name)
            if value is None and optional:
                continue
            out[name] = value if plain else _plain(value)
        return out


_LAYOUTS: Final[dict[type, tuple[tuple[str, bool, bool], ...]]] = {}

_PLAIN_TYPES: Final = frozenset({"str", "int", "float", "bool"})
"""Annotations (as written: the module's annotations are strings) of the fields whose values
are JSON's own, put in an event as they are."""


def _layout(cls: type) -> tuple[tuple[str, bool, bool], ...]:
    """An EventFields class's fields in declared order, each with whether it is left out while
    None and whether its annotation says its value is plain (a ``str``, ``int``, ``float`` or
    ``bool``, or None: :func:`_plain` is then not asked; the types are checked, and compiled,
    enforced). ``dataclasses.fields`` builds its answer anew on every call: too slow per
    event."""
    layout = _LAYOUTS.get(cls)
    if layout is None:
        layout = _LAYOUTS[cls] = tuple(
            (f.name, f.default is None, _plain_annotation(f.type)) for f in dataclasses.fields(cls)
        )
    return layout


def _plain_annotation(annotation: object) -> bool:
    if not isinstance(annotation, str):
        return annotation in (str, int, float, bool)
    kinds = {part.strip() for part in annotation.split("|")}
    kinds.discard("None")
    return bool(kinds) and kinds <= _PLAIN_TYPES


_SCALARS: Final = frozenset({str, int, float, bool, type(None)})


def _plain(value: Any) -> Any:
    kind = type(value)
    if kind in _SCALARS:  # most fields: checked first, by type (isinstance costs more)
        return value
    if kind is list or kind is tuple:
        return [_plain(v) for v in value]
    if isinstance(value, EventFields):
        return value.as_dict()
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


@dataclass(frozen=True, kw_only=True, init=False)
class FlowId(Frozen):
    """A flow as events name it: ``src`` is the client (the side that opened the flow)."""

    proto: Literal["tcp", "udp", "ip"]
    """Transport protocol."""
    src: str
    """Client address, as text."""
    sport: int
    """Client port (0 if none)."""
    dst: str
    """Server address, as text."""
    dport: int
    """Server port (0 if none)."""

    # Written out: a dataclass's generated __init__ runs interpreted even where the class is
    # compiled (gfwlab._build); this one is compiled with it.
    def __init__(
        self, *, proto: Literal["tcp", "udp", "ip"], src: str, sport: int, dst: str, dport: int
    ) -> None:
        object.__setattr__(self, "proto", proto)
        object.__setattr__(self, "src", src)
        object.__setattr__(self, "sport", sport)
        object.__setattr__(self, "dst", dst)
        object.__setattr__(self, "dport", dport)

    def as_dict(self) -> dict[str, Any]:
        return {
            "proto": self.proto,
            "src": self.src,
            "sport": self.sport,
            "dst": self.dst,
            "dport": self.dport,
        }


@dataclass(frozen=True, kw_only=True, init=False)
class Event(Frozen):
    """One censor decision or observation, in the DESIGN.md event contract."""

    ts: float
    """When it happened (the time of the packet that caused it), seconds."""
    flow: FlowId
    """The flow it concerns."""
    direction: Direction
    """Whether the client is inside the border (``inside-out``) or outside (``outside-in``)."""
    mechanism: str
    """Registry name of the mechanism (or ``engine`` for anomalies the engine itself found)."""
    action: ActionName
    """What the censor did."""
    rule: str
    """What matched: a domain, keyword, exemption test or anomaly kind."""
    residual_until: float | None = None
    """Until when later connections on the residual key are blocked, or None."""
    citation: str = ""
    """Where the behaviour was measured."""
    extra: dict[str, Any] = field(default_factory=dict)
    """Mechanism-specific details (injector, probability draw, offsets...)."""
    censor: str = ""
    """Which censor of a chain acted (its profile's name); empty for a single censor."""

    # Written out: a dataclass's generated __init__ runs interpreted even where the class is
    # compiled (gfwlab._build); this one is compiled with it.
    def __init__(
        self,
        *,
        ts: float,
        flow: FlowId,
        direction: Direction,
        mechanism: str,
        action: ActionName,
        rule: str,
        residual_until: float | None = None,
        citation: str = "",
        extra: dict[str, Any] | None = None,
        censor: str = "",
    ) -> None:
        object.__setattr__(self, "ts", ts)
        object.__setattr__(self, "flow", flow)
        object.__setattr__(self, "direction", direction)
        object.__setattr__(self, "mechanism", mechanism)
        object.__setattr__(self, "action", action)
        object.__setattr__(self, "rule", rule)
        object.__setattr__(self, "residual_until", residual_until)
        object.__setattr__(self, "citation", citation)
        object.__setattr__(self, "extra", {} if extra is None else extra)
        object.__setattr__(self, "censor", censor)

    def as_dict(self, ts: float | None = None) -> dict[str, Any]:
        """The event in the DESIGN.md JSON shape. Its time is rounded to the microsecond, or is
        ``ts`` as given (the live censor gives the wall clock's, rounded)."""
        out: dict[str, Any] = {
            "ts": rounded(self.ts, 6) if ts is None else ts,
            "flow": self.flow.as_dict(),
            "direction": self.direction,
            "mechanism": self.mechanism,
            "action": self.action,
            "rule": self.rule,
            "residual_until": None
            if self.residual_until is None
            else rounded(self.residual_until, 6),
            "citation": self.citation,
        }
        if self.censor:
            out["censor"] = self.censor
        for key, value in self.extra.items():
            out.setdefault(key, value)
        return out


@dataclass(frozen=True, kw_only=True, init=False)
class Accept(Frozen):
    """Forward the packet."""

    hold_until: float | None = None
    """Forward it no earlier than this: forged packets it triggered are due then. The GFW sits
    nearer to both ends than they are to each other, so its forgeries arrive first; an inline
    adapter whose peers are one hop apart holds the trigger to keep that order."""

    # Written out: a dataclass's generated __init__ runs interpreted even where the class is
    # compiled (gfwlab._build); this one is compiled with it.
    def __init__(self, *, hold_until: float | None = None) -> None:
        object.__setattr__(self, "hold_until", hold_until)


@dataclass(frozen=True, kw_only=True, init=False)
class Drop(Frozen):
    """Silently discard the packet."""

    mechanism: str
    """Which mechanism dropped it."""

    # Written out: a dataclass's generated __init__ runs interpreted even where the class is
    # compiled (gfwlab._build); this one is compiled with it.
    def __init__(self, *, mechanism: str) -> None:
        object.__setattr__(self, "mechanism", mechanism)


@dataclass(frozen=True, kw_only=True, init=False)
class Inject(Frozen):
    """Send a forged IP packet."""

    packet: bytes
    """The whole IP packet, checksums computed, with the injector's fingerprint."""
    at: float
    """When to send it (absolute time, same clock as ``now``)."""
    toward: Literal["client", "server"]
    """Which endpoint it is addressed to."""
    mechanism: str
    """Which mechanism forged it."""

    # Written out: a dataclass's generated __init__ runs interpreted even where the class is
    # compiled (gfwlab._build); this one is compiled with it.
    def __init__(
        self, *, packet: bytes, at: float, toward: Literal["client", "server"], mechanism: str
    ) -> None:
        object.__setattr__(self, "packet", packet)
        object.__setattr__(self, "at", at)
        object.__setattr__(self, "toward", toward)
        object.__setattr__(self, "mechanism", mechanism)


@dataclass(frozen=True, kw_only=True, init=False)
class Probe(Frozen):
    """Connect to a suspected server as the GFW's active prober does and send ``payload``.

    The adapter reports what the server did with ``Censor.on_probe_result(probe_id, ...)``; an
    adapter that cannot connect (offline analysis) just records that the probe would be sent.
    """

    probe_id: int
    """Identifies the probe in ``on_probe_result``."""
    kind: str
    """Probe type: ``R1``-``R5`` (replays, IMC'20), ``NR1``, ``NR2`` (random)."""
    server: str
    """The suspected server's address."""
    port: int
    """Its port."""
    payload: bytes
    """What the prober sends after the handshake."""
    at: float
    """When to send it."""
    ttl: int
    """IP TTL of the prober's packets (IMC'20: 46-50)."""
    sport: int
    """The prober's source port (IMC'20: 32768-60999 for ~90%)."""
    tsval_hz: int
    """Rate of the prober's TCP timestamp clock (IMC'20: 250 Hz)."""
    linger: float
    """Seconds the prober waits for a reaction before it closes with FIN/ACK (IMC'20: < 10 s)."""
    mechanism: str
    """Which mechanism sent it."""

    # Written out: a dataclass's generated __init__ runs interpreted even where the class is
    # compiled (gfwlab._build); this one is compiled with it.
    def __init__(
        self,
        *,
        probe_id: int,
        kind: str,
        server: str,
        port: int,
        payload: bytes,
        at: float,
        ttl: int,
        sport: int,
        tsval_hz: int,
        linger: float,
        mechanism: str,
    ) -> None:
        object.__setattr__(self, "probe_id", probe_id)
        object.__setattr__(self, "kind", kind)
        object.__setattr__(self, "server", server)
        object.__setattr__(self, "port", port)
        object.__setattr__(self, "payload", payload)
        object.__setattr__(self, "at", at)
        object.__setattr__(self, "ttl", ttl)
        object.__setattr__(self, "sport", sport)
        object.__setattr__(self, "tsval_hz", tsval_hz)
        object.__setattr__(self, "linger", linger)
        object.__setattr__(self, "mechanism", mechanism)


class Named(Protocol):
    """What names a flow when asked (a :class:`~gfwlab.engine.flows.Flow`)."""

    def id(self) -> FlowId: ...


def _bypass(flow: FlowId) -> Bypass:
    return Bypass(flow=flow)


class Bypass(Frozen):
    """The flow's verdict is final (it passes): later packets need not be shown to the engine.

    Made with the flow itself, it names it (:attr:`flow`) when first asked. The engine says it
    for every flow it finishes, and naming one writes out its two addresses (a dictionary
    lookup each, missed for most of a capture's clients): no adapter of gfwlab's reads the
    name, so none pays for it. Compared, hashed, shown and pickled by the name."""

    def __init__(self, *, flow: FlowId | Named) -> None:
        self._of: Final = flow

    @property
    def flow(self) -> FlowId:
        """The flow to bypass."""
        of = self._of
        return of if isinstance(of, FlowId) else of.id()

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Bypass) and self.flow == other.flow

    def __hash__(self) -> int:
        return hash(self.flow)

    def __repr__(self) -> str:
        return f"Bypass(flow={self.flow!r})"

    def __reduce__(self) -> tuple[Any, ...]:
        return (_bypass, (self.flow,))


@dataclass(frozen=True, kw_only=True, init=False)
class Report(Frozen):
    """Record an event."""

    event: Event
    """The event."""

    # Written out: a dataclass's generated __init__ runs interpreted even where the class is
    # compiled (gfwlab._build); this one is compiled with it.
    def __init__(self, *, event: Event) -> None:
        object.__setattr__(self, "event", event)


Action = Accept | Drop | Inject | Probe | Bypass | Report
