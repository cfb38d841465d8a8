"""Residual blocks: after a mechanism acts, later flows on a key are hit for a while.

Keys (spec §10b "Residual tables"): ``3-tuple`` is (client IP, server IP, server port), the
key of the HTTP, SNI, ESNI and QUIC residuals; ``2-tuple`` (client IP, server IP);
``server`` (server IP, server port) and ``server-ip`` for blocks that ignore the client, and
``5-tuple`` for one connection. Entries outlive the flow that made them and are forgotten when
they end.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from gfwlab.engine.flows import Flow
from gfwlab.rules.profile import ResidualKey

Key = tuple[object, ...]


@dataclass(init=False)
class ResidualEntry:
    mechanism: str
    rule: str
    until: float
    policy: str
    probability: float
    start: float = 0.0
    """When the block begins (static blocking starts days after detection)."""

    # Written out: a dataclass's generated __init__ runs interpreted even where the class is
    # compiled (gfwlab._build); this one is compiled with it.
    def __init__(
        self,
        mechanism: str,
        rule: str,
        until: float,
        policy: str,
        probability: float,
        start: float = 0.0,
    ) -> None:
        self.mechanism = mechanism
        self.rule = rule
        self.until = until
        self.policy = policy
        self.probability = probability
        self.start = start


SERVER_AT: Final = {"3-tuple": 2, "2-tuple": 1, "server": 1, "server-ip": 0, "5-tuple": 3}
"""Where the server's address is in a key of each kind (:func:`residual_key`): every kind has
it."""


def residual_key(flow: Flow, kind: ResidualKey) -> Key:
    if kind == "3-tuple":
        return (flow.proto, flow.client, flow.server, flow.sport)
    if kind == "2-tuple":
        return (flow.client, flow.server)
    if kind == "server":
        return (flow.proto, flow.server, flow.sport)
    if kind == "server-ip":
        return (flow.server,)
    return (flow.proto, flow.client, flow.cport, flow.server, flow.sport)


class ResidualTable:
    """Residual entries by (mechanism, key kind, policy, key)."""

    def __init__(self) -> None:
        self.entries: dict[tuple[str, ResidualKey, str, Key], ResidualEntry] = {}
        self.kinds: dict[tuple[str, ResidualKey, str], None] = {}
        """Every (mechanism, key kind, policy) in use, in the order first used (a dict, so
        lookups are deterministic), so lookups try only those."""
        self.drops = False
        """Whether any drop block (either direction) is held (the engine's fast path checks it)."""
        self.journal: list[tuple[ResidualKey, Key, ResidualEntry]] | None = None
        """If a list, every entry added or lengthened is appended to it as (key kind, key,
        entry): an inline adapter drains it to mirror drop blocks in the kernel (which then
        shows it the packets of flows it had let bypass it). None: nothing is kept."""
        self.servers: set[object] = set()
        """The server address of every entry held (and of some that ended since the last
        :meth:`expire`): every key names its server, so a flow whose server is not here is
        covered by nothing, which :meth:`lookup` knows after one set lookup (most flows)."""

    def __len__(self) -> int:
        return len(self.entries)

    def add(self, flow: Flow, kind: ResidualKey, entry: ResidualEntry) -> None:
        """Hold ``entry`` on ``flow``'s key of ``kind``, unless a longer one is held there."""
        self.put(kind, residual_key(flow, kind), entry)

    def put(
        self, kind: ResidualKey, key: Key, entry: ResidualEntry, *, journal: bool = True
    ) -> None:
        """Hold ``entry`` on ``key`` (of ``kind``), unless a longer one is held there;
        ``journal`` off: not in :attr:`journal` (an entry restored, not made)."""
        self.kinds.setdefault((entry.mechanism, kind, entry.policy), None)
        self.drops = self.drops or entry.policy != "rst"
        self.servers.add(key[SERVER_AT[kind]])
        full = (entry.mechanism, kind, entry.policy, key)
        old = self.entries.get(full)
        if old is None or old.until < entry.until:
            self.entries[full] = entry
            if journal and self.journal is not None:
                self.journal.append((kind, key, entry))

    def lookup(self, flow: Flow, policy: str, now: float) -> ResidualEntry | None:
        """The live entry of ``policy`` that covers ``flow``, if any."""
        if flow.server not in self.servers:
            return None
        for mech, kind, pol in self.kinds:
            if pol != policy:
                continue
            entry = self.entries.get((mech, kind, pol, residual_key(flow, kind)))
            if entry is not None and entry.start <= now < entry.until:
                return entry
        return None

    def expire(self, now: float) -> int:
        dead = [k for k, e in self.entries.items() if e.until <= now]
        for key in dead:
            del self.entries[key]
        self.drops = any(e.policy != "rst" for e in self.entries.values())
        if dead:
            self.servers = {key[3][SERVER_AT[key[1]]] for key in self.entries}
        return len(dead)
