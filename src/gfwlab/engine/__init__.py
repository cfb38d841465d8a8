"""The sans-I/O censor engine.

``Censor`` and ``Stats`` are imported on first use, so that low-level modules (the TCB, the
actions) can be imported by the profile loader without pulling in the whole engine.
"""

from typing import TYPE_CHECKING, Any

from gfwlab.engine.actions import (
    Accept,
    Action,
    Bypass,
    Drop,
    Event,
    FlowId,
    Inject,
    Probe,
    Report,
)

if TYPE_CHECKING:
    from gfwlab.engine.censor import Censor, Stats

__all__ = [
    "Accept",
    "Action",
    "Bypass",
    "Censor",
    "Drop",
    "Event",
    "FlowId",
    "Inject",
    "Probe",
    "Report",
    "Stats",
]


def __getattr__(name: str) -> Any:
    if name in ("Censor", "Stats"):
        from gfwlab.engine import censor  # noqa: PLC0415

        return getattr(censor, name)
    raise AttributeError(name)
