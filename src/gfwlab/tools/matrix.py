"""The matrix's cells: what one tool on one date came to, explained by the censor's events.

No I/O here: :mod:`gfwlab.tools.run` runs the trials and hands each cell its counts and events.

What one trial is. The FET decides per connection (spec §6: the first data packet of each TCP
connection; 26.3% of non-exempt connections to targeted servers are blocked). A trial is one
new tunnel connection to a fresh server address carrying a short HTTPS request; it succeeds if
the answer came back through the tunnel. A cell's blocked share is (trials - successes) /
trials, so for a tool whose every connection the FET judges it estimates the published 26.3%.
A failed trial whose address no blocking event reached is not the censor's doing (the tool or
the lab failed); the cell's label, its explanation and ``failures`` in ``tools.jsonl`` (each
failed trial's address, the workload's step and error, and its seconds) say so.

Outcomes (``outcome`` in ``tools.jsonl``):

=========================  ======================================================================
``works``                  every trial got through, and some mechanism judged the tool's traffic
                           (an exemption, a probability draw that spared it, active probes)
``no-published-mechanism`` every trial got through and no mechanism acted on or judged its
                           traffic: "passes here: no published mechanism", which says nothing of
                           the real GFW's treatment
``degraded``               some trials failed, others got through
``blocked``                no trial got through
``hypothesis-only``        trials failed, and only hypothesis mechanisms (opt-in, such as
                           ``tls_in_tls``, spec §14h) blocked them
``skipped``                the tool is not installed (the row names the package)
=========================  ======================================================================
"""

from __future__ import annotations

import datetime as dt
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from gfwlab.evade.simulate import wilson

BLOCKING = ("drop", "rst", "null-route", "dns-inject")
"""Event actions that stop traffic."""
HYPOTHESES = ("tls_in_tls",)
"""Mechanisms that model a hypothesis, not a measurement (their events say so, too)."""


@dataclass(frozen=True)
class When:
    """One column of the matrix: a date, or a moment (``--at``) for dated events."""

    label: str
    date: str
    at: str | None
    era: str


BUILTIN: tuple[When, ...] = (
    When("2020-06-01", "2020-06-01", None, "before FET detection (spec §6: from 2021-11)"),
    When("2022-06-01", "2022-06-01", None, "the FET era (2021-11 to 2023-03-15, spec §6)"),
    When("2023-06-01", "2023-06-01", None, "after 2023-03-15: dynamic FET blocking stopped"),
    When("2024-06-01", "2024-06-01", None, "the QUIC SNI era (from 2024-04-07, spec §5)"),
    When("2025-08-19T17:00", "2025-08-19", "2025-08-19T17:00",
         "the 2025-08-20 port-443 event (00:34-01:48 CST, spec §14a), with --at"),
)  # fmt: skip
"""The built-in date set: the eras the spec describes."""


def parse_when(text: str) -> When:
    """``YYYY-MM-DD`` (a date) or ``YYYY-MM-DDTHH:MM`` (a UTC moment, ``lab up --at``)."""
    for known in BUILTIN:
        if text == known.label:
            return known
    try:
        if "T" in text:
            moment = dt.datetime.strptime(text, "%Y-%m-%dT%H:%M")
            return When(text, moment.date().isoformat(), text, "")
        day = dt.date.fromisoformat(text)
    except ValueError:
        raise ValueError(f"--date {text!r}: expected YYYY-MM-DD or YYYY-MM-DDTHH:MM") from None
    return When(day.isoformat(), day.isoformat(), None, "")


@dataclass
class Cell:
    tool: str
    date: str
    trials: int = 0
    successes: int = 0
    outcome: str = "works"
    events: list[dict[str, Any]] = field(default_factory=list)
    first_packet: dict[str, Any] | None = None
    mechanisms: list[str] = field(default_factory=list)
    citation: str = ""
    trial_mode: str = "fresh-address"
    explanation: str = ""
    download: bool | None = None
    """Whether the multi-megabyte download got through (None: not tried)."""
    seconds: float = 0.0
    skip_reason: str = ""
    unexplained: int = 0
    """How many failed trials no blocking event explains (:func:`unexplained_failures`)."""
    failures: list[dict[str, Any]] = field(default_factory=list)
    """Each failed trial: its server ``address`` (fresh-address trials: one address each), the
    ``error`` the workload met (the step and the exception) and its ``seconds``."""

    @property
    def rate(self) -> float:
        return self.successes / self.trials if self.trials else 0.0

    @property
    def ci(self) -> tuple[float, float]:
        if not self.trials:
            return 0.0, 1.0
        return wilson(self.successes, self.trials, 0.99)

    def row(self) -> dict[str, Any]:
        """The ``tools.jsonl`` line (keys fixed: the results store ingests them)."""
        lo, hi = self.ci
        return {
            "tool": self.tool,
            "date": self.date,
            "trials": self.trials,
            "successes": self.successes,
            "outcome": self.outcome,
            "rate": round(self.rate, 6),
            "ci": [round(lo, 6), round(hi, 6)],
            "mechanisms": self.mechanisms,
            "first_packet": self.first_packet,
            "citation": self.citation,
            "trial_mode": self.trial_mode,
            "failures": self.failures,
        }

    def label(self) -> str:
        """A short text for the terminal table and docs/tools.md."""
        if self.outcome == "skipped":
            return f"skipped: {self.skip_reason}"
        failed = self.trials - self.successes
        share = f"{failed}/{self.trials} blocked"
        if self.unexplained:
            share = f"{failed}/{self.trials} failed, {failed - self.unexplained} by the censor"
        text = {
            "works": "works",
            "no-published-mechanism": "passes here: no published mechanism",
            "degraded": f"degraded ({share})",
            "blocked": f"blocked ({share})",
            "hypothesis-only": f"blocked by a hypothesis only ({share})",
        }[self.outcome]
        return text


def hypothesis(event: dict[str, Any]) -> bool:
    return event.get("evidence") == "hypothesis" or event.get("mechanism") in HYPOTHESES


def judge(cell: Cell, fallback_citation: str) -> Cell:
    """Fill in ``cell``'s outcome, mechanisms, first packet, citation and explanation from its
    counts and its events (those whose flow touches the cell's addresses)."""
    events = sorted(cell.events, key=lambda e: e.get("ts", 0.0))
    blocking = [e for e in events if e.get("action") in BLOCKING]
    unexplained = unexplained_failures(events, cell)
    cell.unexplained = len(unexplained)
    cell.mechanisms = list(dict.fromkeys(str(e["mechanism"]) for e in events))
    first = blocking[0] if blocking else None
    cell.first_packet = None if first is None else {
        k: v for k, v in first.items() if k != "citation"
    }  # fmt: skip
    if cell.successes == cell.trials:
        cell.outcome = "works" if events else "no-published-mechanism"
    elif blocking and all(hypothesis(e) for e in blocking):
        cell.outcome = "hypothesis-only"
    else:
        cell.outcome = "blocked" if cell.successes == 0 else "degraded"
    cited = blocking or events
    citations = list(dict.fromkeys(str(e.get("citation", "")) for e in cited if e.get("citation")))
    cell.citation = "; ".join(citations) if citations else fallback_citation
    cell.explanation = explain(events, unexplained)
    return cell


def _rule(event: dict[str, Any]) -> str:
    """The event's rule; for an exemption, every exemption that held (``ex1+ex5``)."""
    exempt = event.get("exempt")
    if isinstance(exempt, list) and exempt:
        return "exempt: " + "+".join(str(x).split("-", 1)[0] for x in exempt)
    return str(event.get("rule", ""))


def explain(events: list[dict[str, Any]], unexplained: list[dict[str, Any]]) -> str:
    """Per mechanism, what it did how often: ``fet drop x13 (fet:no-exemption), ...``; then the
    ``unexplained`` failed trials (:func:`unexplained_failures`) and their errors."""
    counts: Counter[tuple[str, str, str]] = Counter(
        (str(e["mechanism"]), str(e["action"]), _rule(e)) for e in events
    )
    parts = [f"{m} {a} ×{n} ({r})" for (m, a, r), n in counts.most_common()]
    if unexplained:
        errors = Counter(str(f.get("error") or "no error recorded") for f in unexplained)
        why = ", ".join(f"{e} ×{n}" for e, n in errors.most_common())
        parts.append(
            f"{len(unexplained)} failed trials without a censor event on their address (no "
            f"censorship decision: the tool or the lab): {why}"
        )
    return "; ".join(parts) if parts else "no event"


def unexplained_failures(events: list[dict[str, Any]], cell: Cell) -> list[dict[str, Any]]:
    """The failed trials no blocking event of the censor explains: in fresh-address trials,
    those whose address no blocking event reached; in waited trials (one address), all of them
    if the cell has no blocking event at all."""
    acted = {str((e.get("flow") or {}).get("dst")) for e in events if e.get("action") in BLOCKING}
    if cell.trial_mode == "fresh-address":
        return [f for f in cell.failures if str(f.get("address")) not in acted]
    return [] if acted else list(cell.failures)


def markdown(cells: list[Cell], whens: list[When], command: str, generated: str) -> str:
    """The matrix as docs/tools.md: a table of outcomes, then each cell's explanation."""
    tools = list(dict.fromkeys(c.tool for c in cells))
    by = {(c.tool, c.date): c for c in cells}
    out = [
        "# The circumvention-tool matrix",
        "",
        f"Generated {generated} by `{command}` (root; it makes and removes the lab once per",
        "date); `scripts/tools-matrix` regenerates this page. Each cell is one tool on one",
        "date: N trials, each a new tunnel connection to a fresh server address",
        "(198.19.240.0/20, so no trial meets an earlier trial's residual block) carrying a",
        "short HTTPS request, plus one 10 MB download. The interval is the 99%",
        'Wilson interval of the success rate. "passes here: no published mechanism" means no',
        "mechanism of the lab acted on or even judged the tool's traffic: it says nothing about",
        "the real GFW. See `gfwlab.tools.matrix` for the outcomes and `gfwlab.tools.run` for",
        "what one trial is. Fresh addresses make trials independent but also mean each",
        "connection meets a new server: a per-server policy that needs several connections to one",
        "server (the hypothesis `tls_in_tls` blocks a port after K detections, spec §14h; a",
        "null route after an answered replay, spec §7a) cannot act; `gfwlab tools run",
        "--wait-residuals` reuses one address per cell and waits out each residual block instead.",
        "The TLS tools (vmess-tls, trojan, stunnel) are deployed on port 443, as users do.",
        "",
        "| tool | " + " | ".join(w.label for w in whens) + " |",
        "|---|" + "---|" * len(whens),
    ]
    for tool in tools:
        row = []
        for w in whens:
            c = by.get((tool, w.label))
            if c is None:
                row.append("")
            elif c.outcome == "skipped":
                row.append(c.label())
            else:
                lo, hi = c.ci
                row.append(f"{c.label()}: {c.successes}/{c.trials} [{lo:.2f}, {hi:.2f}]")
        out.append(f"| {tool} | " + " | ".join(row) + " |")
    out += ["", "Eras: " + "; ".join(f"{w.label}: {w.era}" for w in whens if w.era) + ".", ""]
    out += ["## Each cell, explained by the censor's events", ""]
    for c in cells:
        if c.outcome == "skipped":
            continue
        first = ""
        if c.first_packet is not None:
            fp = c.first_packet
            flow = fp.get("flow", {})
            first = (
                f" First packet that gave it away: {fp.get('mechanism')} {fp.get('action')} "
                f"({fp.get('rule')}) on tcp/{flow.get('dport')}"
                + (
                    f", {fp['length']} bytes, {fp['popcount']:.2f} bits/byte"
                    if "length" in fp
                    else ""
                )
                + "."
            )
        download = (
            "" if c.download is None else f" 10 MB download: {'ok' if c.download else 'failed'}."
        )
        out.append(
            f"- **{c.tool}, {c.date}**: {c.label()}. Events: {c.explanation}.{first}{download}"
            f" Source: {c.citation}."
        )
    return "\n".join(out) + "\n"
