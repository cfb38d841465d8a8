"""What ``gfwlab evade`` attaches to the client namespace, recorded on disk before it is
attached, so that whatever a killed ``evade`` left behind is removed by the next ``evade``,
``lab status`` or ``lab down``.

The record (``<state dir>/evade.json``) holds the namespace (``ns``: the client's, or the
server's for a server-side strategy), the mangle-table rules (as iptables arguments after
``-t mangle -A``) and the worker's pid.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
from typing import Any

from gfwlab.errors import LabError
from gfwlab.lab import netns
from gfwlab.lab.state import state_dir
from gfwlab.live.topology import CLIENT_NS, SERVER_NS

RECORD = "evade.json"


def record_path() -> str:
    return os.path.join(state_dir(), RECORD)


def save(rec: dict[str, Any]) -> None:
    """Write the record durably (before the things it names are attached)."""
    path = record_path()
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path + ".tmp", "w", encoding="utf-8") as fh:
        json.dump(rec, fh)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(path + ".tmp", path)


def detach() -> list[str]:
    """Remove what the record names (rules, the worker process) and the record; returns what
    was removed. Rules already gone and a worker already dead are fine."""
    path = record_path()
    try:
        with open(path, encoding="utf-8") as fh:
            rec = json.load(fh)
    except (OSError, ValueError):
        return []
    done: list[str] = []
    ns = rec.get("ns") if rec.get("ns") in (CLIENT_NS, SERVER_NS) else CLIENT_NS
    for rule in rec.get("rules", []):
        argv = netns.in_ns(ns, "iptables", "-w", "-t", "mangle", "-D", *rule)
        with contextlib.suppress(LabError):
            netns.run(argv, check=False)
        done.append("rule " + " ".join(rule))
    pid = rec.get("pid")
    if isinstance(pid, int) and pid > 0:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
            done.append(f"worker {pid}")
    with contextlib.suppress(OSError):
        os.unlink(path)
    return done
