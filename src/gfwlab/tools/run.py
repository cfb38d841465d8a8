"""Run the matrix: for each date, bring the lab up, run every tool's trials, read the censor's
events, take the lab down.

Cost. The lab is made once per date (``lab up`` is the expensive step, a few seconds), not per
cell: the cells of one date stay independent because each uses its own server addresses, and
the censor's state (residual blocks, probes, null routes) is keyed on server addresses (spec §6
residual: server address and port; §7a and §8: a null-routed port or address). A tool's
processes stay up across its trials; each trial is a new tunnel connection to a fresh address
(see :mod:`gfwlab.tools.recipe`), so the cost of a trial is one connection and one short HTTPS
request (tens of milliseconds), or a timeout when the censor drops it.

Addresses. Trials take addresses from 198.19.240.0/20 in order, across the whole run, never
twice: cell by cell in run order (date by date, tool by tool), each cell a fixed block of its
trials' count plus DOWNLOAD_TRIES addresses (its trials first, then its download attempts), see
:func:`cell_addresses`. An event belongs to the cell whose address its flow reaches (or comes
from, for probes and injected packets), so ``events.jsonl`` maps back to cells by address.
"""

from __future__ import annotations

import ipaddress
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from gfwlab.errors import LabError
from gfwlab.lab import lifecycle, netns
from gfwlab.lab.state import LabState, state_dir
from gfwlab.tools.matrix import Cell, When, judge
from gfwlab.tools.recipe import DOWNLOAD_BYTES, TOOL_RANGE, VIRTUAL, Recipe, RecipeError

FET_TARGETS = "fet.targets=['198.19.0.0/24', '2001:db8:5::/64', '198.19.240.0/20']"
"""The tool servers stand at addresses the FET targets (spec §6: "certain popular foreign data
centers"); the lab's default targets are its server link, so the tool range is added."""
DOWNLOAD_TRIES = 3
MAX_WAIT_S = 600.0
"""The longest residual block ``--wait-residuals`` waits out (the FET's is 180 s, spec §6);
longer blocks (a null-routed port, days in spec §8) are not waited for: the next trials meet
them, and their events say so."""


def addresses() -> Iterator[str]:
    """The trial addresses, in order: 198.19.240.1 onwards, skipping each /24's .0 and .255
    and the clients' configured address (VIRTUAL)."""
    for addr in ipaddress.ip_network(TOOL_RANGE).hosts():
        text = str(addr)
        if text.endswith((".0", ".255")) or text == VIRTUAL:
            continue
        yield text


CAPACITY = sum(1 for _ in addresses())


@dataclass
class Plan:
    tools: list[Recipe]
    whens: list[When]
    trials: int = 50
    tool_trials: dict[str, int] = field(default_factory=dict)
    timeout: float = 3.0
    download: bool = True
    profile: str = "gfw"
    sets: list[str] = field(default_factory=list)
    seed: int = 0
    wait_residuals: bool = False
    """Trials reuse one server address per cell and wait out every residual block the censor
    reports on it (``trial_mode: waited``) instead of taking fresh addresses."""

    def trials_of(self, tool: str) -> int:
        return self.tool_trials.get(tool, self.trials)

    def addresses_needed(self) -> int:
        per_date = sum(self.trials_of(r.name) + DOWNLOAD_TRIES for r in self.tools)
        return per_date * len(self.whens)

    def lab_sets(self) -> list[str]:
        sets = list(self.sets)
        if not any(s.strip().startswith("fet.targets") for s in sets):
            sets.insert(0, FET_TARGETS)
        return sets


Progress = Callable[[str, int], None]
"""Called with a status text and the number of trials just finished."""


def run(plan: Plan, progress: Progress | None = None) -> tuple[list[Cell], list[str]]:
    """Every cell of the plan, and the censor's events (``lab events`` lines) of every date."""
    if plan.addresses_needed() > CAPACITY:
        raise ValueError(
            f"{plan.addresses_needed()} trial addresses needed, {CAPACITY} in {TOOL_RANGE}: "
            "fewer --trials, tools or dates"
        )
    note = progress or (lambda _text, _n: None)
    blocks = iter(cell_addresses(plan))
    cells: list[Cell] = []
    lines: list[str] = []
    for when in plan.whens:
        if netns.existing_namespaces():
            raise LabError("a lab is already up (gfwlab lab down removes it)")
        note(f"{when.label}: lab up", 0)
        options = lifecycle.UpOptions(
            profile=plan.profile,
            date=None if when.at else when.date,
            at=when.at,
            sets=plan.lab_sets(),
            seed=plan.seed,
        )
        lifecycle.up(options, log=lambda _msg: None)
        try:
            owned: list[tuple[Cell, Recipe, set[str]]] = []
            for recipe in plan.tools:
                cell, used = run_cell(recipe, when, plan, next(blocks)[2], note)
                owned.append((cell, recipe, used))
            time.sleep(0.5)  # events of the last packets reach the file
            date_lines = list(_events())
        finally:
            lifecycle.down()
        lines += date_lines
        parsed = [_parse(x) for x in date_lines]
        for cell, recipe, used in owned:
            if cell.outcome != "skipped":
                cell.events = [e for e in parsed if e is not None and _touches(e, used)]
                judge(cell, recipe.citation)
            cells.append(cell)
    return cells, lines


def cell_addresses(plan: Plan) -> list[tuple[str, str, list[str]]]:
    """(tool, date label, addresses) of every cell, in run order."""
    pool = addresses()
    return [
        (r.name, w.label, [next(pool) for _ in range(plan.trials_of(r.name) + DOWNLOAD_TRIES)])
        for w in plan.whens
        for r in plan.tools
    ]


def run_cell(
    recipe: Recipe, when: When, plan: Plan, block: list[str], note: Progress
) -> tuple[Cell, set[str]]:
    cell = Cell(recipe.name, when.label)
    used: set[str] = set()
    n = plan.trials_of(recipe.name)
    missing = recipe.missing()
    if missing:
        cell.outcome = "skipped"
        cell.skip_reason = f"{', '.join(missing)} missing (apt-get install {recipe.package})"
        note(f"{recipe.name} {when.label}: skipped", n)
        return cell, used
    pool = iter(block)
    if plan.wait_residuals:
        cell.trial_mode = "waited"
        pool = iter([block[0]] * n + block[n:])
    started = time.monotonic()
    session = recipe.make()
    try:
        session.start()
        for _ in range(n):
            address = next(pool)
            used.add(address)
            result = session.trial(address, plan.timeout)
            cell.trials += 1
            cell.successes += result.ok
            if not result.ok:
                cell.failures.append(
                    {"address": address, "error": result.error, "seconds": result.seconds}
                )
                if plan.wait_residuals:
                    note(f"{recipe.name} {when.label}: waiting out a residual block", 0)
                    wait_out(address)
            note(f"{recipe.name} {when.label}", 1)
        if plan.download:
            cell.download = False
            for _ in range(DOWNLOAD_TRIES):
                address = next(pool)
                used.add(address)
                if session.download(address, DOWNLOAD_BYTES, max(plan.timeout, 30.0)).ok:
                    cell.download = True
                    break
    except RecipeError as exc:
        cell.outcome = "skipped"
        cell.skip_reason = f"did not start: {exc}"
        note(f"{recipe.name} {when.label}: did not start", n - cell.trials)
    finally:
        session.stop()
    cell.seconds = time.monotonic() - started
    return cell, used


def wait_out(address: str) -> None:
    """Sleep until every residual block the censor reported on ``address`` has ended (event
    times are the censor's clock: the wall clock plus ``lab up --at``'s offset)."""
    time.sleep(0.3)  # the event of the failed trial reaches the file
    offset = float(LabState.load().config.get("clock_offset_s") or 0.0)
    until = 0.0
    for line in _events():
        e = _parse(line)
        if e is None or not _touches(e, {address}):
            continue
        residual = e.get("residual_until")
        if isinstance(residual, int | float):
            until = max(until, float(residual))
    delay = until - (time.time() + offset)
    if 0 < delay <= MAX_WAIT_S:
        time.sleep(delay + 0.2)


def _events() -> Iterator[str]:
    path = os.path.join(state_dir(), "events.jsonl")
    if not os.path.exists(path):
        return
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            if line.strip():
                yield line.rstrip("\n")


def _parse(line: str) -> dict[str, Any] | None:
    import json  # noqa: PLC0415

    try:
        value = json.loads(line)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def _touches(event: dict[str, Any], used: set[str]) -> bool:
    flow = event.get("flow")
    if not isinstance(flow, dict):
        return False
    return flow.get("dst") in used or flow.get("src") in used
