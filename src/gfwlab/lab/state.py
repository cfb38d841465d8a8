"""The lab's record of what it made, written to disk *before* each thing is made.

``lab down`` reads it to remove everything, also after ``kill -9`` of any lab process or an
interrupted ``lab up``. The record lives in ``/run/gfwlab`` (a tmpfs, like the namespaces it
describes, so a reboot clears both) unless ``GFWLAB_STATE_DIR`` says otherwise.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

DEFAULT_DIR = "/run/gfwlab"


def state_dir() -> str:
    return os.environ.get("GFWLAB_STATE_DIR", DEFAULT_DIR)


@dataclass
class LabState:
    """What the lab made, in the order it made it, and how it was configured."""

    path: str
    status: str = "down"
    """``starting``, ``up`` or ``down``."""
    made: list[dict[str, Any]] = field(default_factory=list)
    """Entries ``{"kind": "netns"|"path"|"process", ...}`` in creation order."""
    config: dict[str, Any] = field(default_factory=dict)
    """The options ``lab up`` was given (profile, date, sets, seed, fail_open)."""

    @property
    def dir(self) -> str:
        return os.path.dirname(self.path)

    def file(self, name: str) -> str:
        return os.path.join(self.dir, name)

    @classmethod
    def load(cls) -> LabState:
        path = os.path.join(state_dir(), "lab.json")
        try:
            with open(path, encoding="utf-8") as fh:
                data = json.load(fh)
        except FileNotFoundError:
            return cls(path=path)
        except (OSError, ValueError):
            # A state file cut short by a crash: down still removes everything by name.
            return cls(path=path, status="unknown")
        return cls(
            path=path,
            status=str(data.get("status", "unknown")),
            made=list(data.get("made", [])),
            config=dict(data.get("config", {})),
        )

    def save(self) -> None:
        os.makedirs(self.dir, mode=0o700, exist_ok=True)
        tmp = self.path + ".tmp"
        with open(tmp, "w", encoding="utf-8") as fh:
            json.dump(
                {"status": self.status, "made": self.made, "config": self.config}, fh, indent=1
            )
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self.path)

    def record(self, **entry: Any) -> dict[str, Any]:
        """Note ``entry`` on disk before the thing it describes is made."""
        self.made.append(entry)
        self.save()
        return entry

    def processes(self) -> list[dict[str, Any]]:
        return [e for e in self.made if e.get("kind") == "process"]


@contextlib.contextmanager
def locked() -> Iterator[None]:
    """Serialise ``lab up`` and ``lab down``."""
    directory = state_dir()
    os.makedirs(directory, mode=0o700, exist_ok=True)
    with open(os.path.join(directory, "lock"), "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def process_start_time(pid: int) -> int | None:
    """The start time of ``pid`` in clock ticks (field 22 of /proc/PID/stat), or None."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as fh:
            stat = fh.read()
    except OSError:
        return None
    try:
        return int(stat.rsplit(")", 1)[1].split()[19])
    except (IndexError, ValueError):
        return None
