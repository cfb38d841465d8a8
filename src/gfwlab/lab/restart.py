"""``gfwlab lab restart-censor``: bring the censor back without taking the lab down.

After the censor process dies (``kill -9``, a crash), the lab keeps its namespaces, services
and queue rules: with fail-open (the default) forwarded traffic passes uncensored, with
``--fail-closed`` it is dropped (``netns.install_queue_rules``), and ``gfwlab lab status`` says
the lab is ``degraded``. This module starts the censor again with the command line ``lab up``
recorded for it, in the censor namespace; the new process binds the same NFQUEUE and reads the
blocks the dead one saved (``blocks.json``, :mod:`gfwlab.live.persist`), so residual windows,
null routes and static blocks active before the crash are in force after it (spec §10b, §8).
A censor that is still running is stopped first (SIGTERM, then SIGKILL after 5 s).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from typing import Any

from gfwlab.errors import LabError
from gfwlab.lab import netns
from gfwlab.lab.state import LabState, locked, process_start_time
from gfwlab.live.topology import CENSOR_NS


def censor_entry(st: LabState) -> dict[str, Any] | None:
    return next((e for e in st.processes() if e.get("name") == "censor"), None)


def censor_alive(st: LabState) -> bool:
    """Whether the recorded censor process runs (the pid, with its start time, not a zombie)."""
    from gfwlab.lab.lifecycle import _alive  # noqa: PLC0415

    entry = censor_entry(st)
    return entry is not None and _alive(entry)


def _stop(entry: dict[str, Any], grace: float = 5.0) -> None:
    from gfwlab.lab.lifecycle import _alive  # noqa: PLC0415

    with contextlib.suppress(ProcessLookupError):
        os.kill(entry["pid"], signal.SIGTERM)
    deadline = time.monotonic() + grace
    while _alive(entry) and time.monotonic() < deadline:
        time.sleep(0.05)
    if _alive(entry):
        with contextlib.suppress(ProcessLookupError):
            os.kill(entry["pid"], signal.SIGKILL)
        while _alive(entry):
            time.sleep(0.02)


def restart_censor(timeout: float = 20.0) -> dict[str, Any]:
    """Start the lab's censor again; returns its new process entry (name, pid, argv)."""
    if os.geteuid() != 0:
        raise LabError("needs root (network namespaces); run it with sudo")
    if not os.path.exists(LabState.load().path):  # checked first: locking makes the folder
        raise LabError("the lab is not up (gfwlab lab up)")
    with locked():
        st = LabState.load()
        if st.status != "up" or CENSOR_NS not in netns.existing_namespaces():
            raise LabError("the lab is not up (gfwlab lab up)")
        entry = censor_entry(st)
        if entry is None or not entry.get("argv"):
            raise LabError("the lab's record names no censor process (gfwlab lab down, then up)")
        from gfwlab.lab.lifecycle import _alive, _tail  # noqa: PLC0415

        if _alive(entry):
            _stop(entry)
        sock = st.file("censor.sock")
        with contextlib.suppress(FileNotFoundError):
            os.unlink(sock)  # left by a killed censor; the new one makes it when ready
        with open(st.file("censor.log"), "ab") as logf:
            proc = subprocess.Popen(
                netns.in_ns(CENSOR_NS, *entry["argv"]),
                stdin=subprocess.DEVNULL,
                stdout=logf,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        entry["pid"] = proc.pid
        entry["start"] = process_start_time(proc.pid)
        entry["restarts"] = int(entry.get("restarts", 0)) + 1
        st.save()
        deadline = time.monotonic() + timeout
        while not os.path.exists(sock):
            if proc.poll() is not None or not _alive(entry):
                raise LabError(f"the censor exited on restart: {_tail(st.file('censor.log'))}")
            if time.monotonic() > deadline:
                raise LabError("timed out waiting for the censor to start")
            time.sleep(0.05)
        return entry
