"""Which bypassed flows of the offline fast path (:mod:`gfwlab.offline.fast`) a residual drop
block could cover, kept up to date as the engine adds blocks."""

from __future__ import annotations

from typing import Final

from gfwlab.engine.censor import Censor
from gfwlab.engine.flows import Flow
from gfwlab.engine.residual import Key, ResidualEntry, residual_key
from gfwlab.rules.profile import ResidualKey

_DROP_POLICIES: Final = ("drop-c2s", "drop-s2c")


class DropWatch:
    """Which bypassed flows a residual drop entry could cover, without looking at each packet.

    The engine looks every packet of a bypassed flow up in the residual table while any drop
    block is held; an entry can only cover a flow whose residual key (of the entry's kind) is
    the entry's key. So each bypassed flow with packets still to come is registered under its
    key of every kind in use by drop entries, and each new drop entry names the flows it hits:
    only their later packets are looked up (with the engine's own lookup) and, if covered,
    fed. Entries are only added while a packet is fed and only removed by the timer's sweep.
    """

    def __init__(self, censor: Censor) -> None:
        self.residual = censor.residual
        self.known: set[tuple[str, ResidualKey, str, Key]] = set()
        self.keys: set[tuple[ResidualKey, Key]] = set()
        self.kinds: dict[ResidualKey, dict[Key, list[int]]] = {}
        self.flows: dict[int, Flow] = {}
        self.size = 0
        self.fresh: list[tuple[str, ResidualKey, str, Key]] = []
        self.added: list[tuple[ResidualKey, Key, ResidualEntry]] = []
        """The entries the table added or lengthened since the last :meth:`changed` (its
        journal): reading them costs what they are, where scanning the table for new ones
        cost every entry held, for each new one."""
        self._journal = self.residual.journal
        self.residual.journal = self.added
        # Drop entries held already (an earlier window's) are taken in with the first fed
        # packet's news, before any flow is registered.
        self.added.extend(
            (kind, key, e) for (_m, kind, _p, key), e in self.residual.entries.items()
        )

    def close(self) -> None:
        """Give the table its journal back."""
        self.residual.journal = self._journal

    def forget_expired(self) -> None:
        entries = self.residual.entries
        if len(entries) < self.size:
            self.known = {k for k in self.known if k in entries}
            self.keys = {(kind, key) for _m, kind, _p, key in self.known}
            self.size = len(entries)

    def changed(self) -> bool:
        """Take in the drop entries added since the last call; True if any is new."""
        self.size = len(self.residual.entries)
        fresh = []
        for kind, key, entry in self.added:
            if entry.policy in _DROP_POLICIES:
                full = (entry.mechanism, kind, entry.policy, key)
                if full not in self.known:
                    self.known.add(full)
                    fresh.append(full)
        self.added.clear()
        self.fresh = fresh
        self.keys.update((kind, key) for _m, kind, _p, key in fresh)
        return bool(fresh)

    def new_hits(self) -> list[int]:
        hits: list[int] = []
        for _mech, kind, _policy, key in self.fresh:
            table = self.kinds.get(kind)
            if table is None:  # a kind not used before: register every bypassed flow under it
                table = self.kinds[kind] = {}
                for life, flow in self.flows.items():
                    table.setdefault(residual_key(flow, kind), []).append(life)
            hits.extend(table.get(key, ()))
        return hits

    def register(self, life: int, flow: Flow) -> bool:
        """Register a newly bypassed flow; True if a drop entry already covers its key."""
        self.flows[life] = flow
        hit = False
        for kind, table in self.kinds.items():
            key = residual_key(flow, kind)
            table.setdefault(key, []).append(life)
            hit = hit or (kind, key) in self.keys
        return hit
