"""The sans-I/O censor engine: the censor, its actions and events, and the mechanism contract."""

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
from gfwlab.engine.censor import Censor
from gfwlab.engine.mechanism import (
    HOOKS,
    Decision,
    Forged,
    Mechanism,
    Needs,
    PlannedProbe,
    ProbeResult,
    Residual,
    Seen,
)
from gfwlab.engine.verdicts import Stats

__all__ = [
    "HOOKS",
    "Accept",
    "Action",
    "Bypass",
    "Censor",
    "Decision",
    "Drop",
    "Event",
    "FlowId",
    "Forged",
    "Inject",
    "Mechanism",
    "Needs",
    "PlannedProbe",
    "Probe",
    "ProbeResult",
    "Report",
    "Residual",
    "Seen",
    "Stats",
]
