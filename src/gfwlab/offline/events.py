"""An analysis's events as they are reported: each written as a JSON line and counted in the
summary's rows of verdicts by flow.

Compiled (:mod:`gfwlab._build`): every event of a capture passes here, tens of thousands of them
where many flows are blocked; run interpreted, the same steps took about 8% of a flow-heavy
capture's analysis with the 2024 lists loaded (67,000 events, 0.65 s of `perf` samples). The
summary's classes stay in :mod:`.analyze`, which hands its row class in.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final, Generic, Protocol, TypeVar

from gfwlab._json import json_line_bytes
from gfwlab.engine.actions import Event

ACTED: Final = ("rst", "drop", "dns-inject", "null-route", "probe")
"""The actions that make a row of the summary (the rest are observations)."""


class Row(Protocol):
    """A row of the summary (:class:`gfwlab.offline.analyze.FlowVerdict`): one flow's events of
    one mechanism and action."""

    events: int


R = TypeVar("R", bound=Row)


class Recorder(Generic[R]):
    """Records each event it is called with: written (``write_event``: one JSON line as bytes),
    handed to ``on_event``, counted in ``anomaly_kinds`` (anomalies) or in its flow's row of
    ``rows`` (the actions of :data:`ACTED`)."""

    def __init__(
        self,
        rows: dict[tuple[Any, ...], R],
        anomaly_kinds: dict[str, int],
        write_event: Callable[[bytes], int] | None,
        on_event: Callable[[Event], None] | None,
        make_row: Callable[[dict[str, Any], str, str, str, str, float, int, float | None], R],
    ) -> None:
        """``make_row`` makes a row from the flow, direction, mechanism, action, rule, first
        time, events and residual end, in that order."""
        self.rows = rows
        self.anomaly_kinds = anomaly_kinds
        self.write_event = write_event
        self.on_event = on_event
        self.make_row = make_row

    def __call__(self, event: Event) -> None:
        # The flow's dict is made once, for the line and the row.
        flow: dict[str, Any] | None = None
        if self.write_event is not None:
            line = event.as_dict()
            flow = line["flow"]
            self.write_event(json_line_bytes(line))
        if self.on_event is not None:
            self.on_event(event)
        action = event.action
        if action == "anomaly":
            kinds = self.anomaly_kinds
            kinds[event.rule] = kinds.get(event.rule, 0) + 1
            return
        if action not in ACTED:
            return
        f = event.flow
        key = (f.proto, f.src, f.sport, f.dst, f.dport, event.mechanism, action)
        row = self.rows.get(key)
        if row is None:
            self.rows[key] = self.make_row(
                f.as_dict() if flow is None else flow,
                event.direction,
                event.mechanism,
                action,
                event.rule,
                event.ts,
                1,
                event.residual_until,
            )
        else:
            row.events += 1
