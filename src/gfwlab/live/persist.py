"""The live censor's block state on disk, so blocks outlive a crash of the censor process.

On the real border a block does not end because one box restarts: residual windows (spec §10b),
null routes (spec §8, §7a) and static blocks (spec §7a, net4people #69) stay in force. The lab's
censor keeps them in its engine's residual table (:class:`~gfwlab.engine.residual.ResidualTable`:
residual windows of every mechanism, the null routes that Shadowsocks probing orders, the
static blocks that start days after detection). This module writes that table to
``<state dir>/blocks.json`` (``/run/gfwlab/blocks.json`` unless ``GFWLAB_STATE_DIR`` says
otherwise), atomically, whenever it changed (the daemon checks twice a second), and reads it
back when the censor starts again (``gfwlab lab restart-censor``), with each block's remaining
time: the time the censor was down counts against it. Blocks named in the profile (the static
``null_route.targets``, the IP blocklists) come back from the profile itself. ``lab down`` removes
the file with the rest of the state folder.

What is not kept: the flow table (a connection the censor had blocked by flow state alone is
seen afresh after a restart, as a mid-stream flow), scheduled probes and delayed injections.

Times: the engine's clock is the monotonic clock; a block is saved with its end on the wall
clock, so that the restarted process (same machine, another process) can place it on its own
monotonic clock.
"""

from __future__ import annotations

import contextlib
import json
import os
from typing import Any

from gfwlab.engine import Censor
from gfwlab.engine.residual import SERVER_AT, ResidualEntry
from gfwlab.offline.chain import Chain

FILE = "blocks.json"
VERSION = 1


def censors_of(censor: Censor | Chain) -> list[Censor]:
    return [c for _, c in censor.censors] if isinstance(censor, Chain) else [censor]


def _encode(item: object) -> object:
    if isinstance(item, bytes):
        return {"hex": item.hex()}
    if isinstance(item, int | str):
        return item
    raise TypeError(f"cannot save a residual key part {item!r}")


def _decode(item: object) -> object:
    if isinstance(item, dict):
        return bytes.fromhex(str(item["hex"]))
    return item


def snapshot(censor: Censor | Chain, now: float, wall: float) -> dict[str, Any]:
    """The block state of every censor in the path, with ends on the wall clock."""
    tables = []
    for c in censors_of(censor):
        entries = []
        for (mech, kind, policy, key), e in c.residual.entries.items():
            if e.until <= now:
                continue
            entries.append(
                {
                    "mechanism": mech,
                    "kind": kind,
                    "policy": policy,
                    "key": [_encode(k) for k in key],
                    "rule": e.rule,
                    "start_wall": round(wall + (e.start - now), 6),
                    "until_wall": round(wall + (e.until - now), 6),
                    "probability": e.probability,
                }
            )
        tables.append({"profile": c.profile.name, "residual": entries})
    return {"version": VERSION, "saved_wall": round(wall, 6), "censors": tables}


def restore_snapshot(censor: Censor | Chain, data: dict[str, Any], now: float, wall: float) -> int:
    """Put the blocks of ``data`` back into ``censor``'s tables; return how many are in force.

    Blocks that ended while the censor was down, and blocks of a mechanism that is not active
    now (the profile changed), are left out.
    """
    restored = 0
    if data.get("version") != VERSION:
        return 0
    for c, table in zip(censors_of(censor), data.get("censors", []), strict=False):
        if table.get("profile") != c.profile.name:
            continue
        res = c.residual
        for item in table.get("residual", []):
            until = now + (float(item["until_wall"]) - wall)
            mech = str(item["mechanism"])
            kind, policy = item["kind"], str(item["policy"])
            if until <= now or mech not in c.mechanisms or kind not in SERVER_AT:
                continue
            key = tuple(_decode(k) for k in item["key"])
            entry = ResidualEntry(
                mechanism=mech,
                rule=str(item["rule"]),
                until=until,
                policy=policy,
                probability=float(item["probability"]),
                start=now + (float(item["start_wall"]) - wall),
            )
            res.put(kind, key, entry, journal=False)
            restored += 1
    return restored


class BlockStore:
    """``blocks.json`` in the lab's state folder: saved when the blocks change, read at start."""

    def __init__(self, state_dir: str, name: str = FILE) -> None:
        self.path = os.path.join(state_dir, name)
        self._last: object = None
        self.restored = 0

    def restore(self, censor: Censor | Chain, now: float, wall: float) -> int:
        """Load the saved blocks into ``censor`` (none if there is no readable file)."""
        try:
            with open(self.path, encoding="utf-8") as fh:
                data = json.load(fh)
        except (OSError, ValueError):
            return 0
        if not isinstance(data, dict):
            return 0
        self.restored = restore_snapshot(censor, data, now, wall)
        return self.restored

    def save(self, censor: Censor | Chain, now: float, wall: float) -> bool:
        """Write the blocks if they changed since the last save; True if written."""
        shape = [
            [(k, e.until, e.start) for k, e in c.residual.entries.items()]
            for c in censors_of(censor)
        ]
        if shape == self._last:
            return False
        data = snapshot(censor, now, wall)
        tmp = self.path + ".tmp"
        try:
            with open(tmp, "w", encoding="utf-8") as fh:
                fh.write(json.dumps(data))  # not dump: it makes a reference cycle
            os.replace(tmp, self.path)
        except OSError:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            return False
        self._last = shape
        return True
