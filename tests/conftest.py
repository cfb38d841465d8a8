"""Fixtures for the shared data folder, and the CI policy: under ``$CI`` a skip is a failure.

A test skips where this machine lacks something it needs (a program, root, network
namespaces, the shared captures). On a developer's machine that is a skip; under CI, where
everything is installed, it means the setup is broken, so the hook below turns such a skip into
a failure that names what is missing. Skips whose reason starts with ``testenv.MAY_SKIP`` (a
permission test run as root) stay skips. Expected failures (xfail) are left alone.
"""

from __future__ import annotations

import time
from collections.abc import Generator
from pathlib import Path

import pytest
from hypothesis import settings

from testenv import MAY_SKIP, SHARED, SHARED_BLOCKLISTS, SHARED_PCAPS, ci_mode, missing_shared

pytest_plugins = ["pytester"]

# Property tests check what is computed, never how fast: on a loaded 2-core machine a per-example
# deadline only adds flakes (speed is measured in benchmarks/).
settings.register_profile("gfwlab", deadline=None)
settings.load_profile("gfwlab")


def _require(path: Path) -> Path:
    if not path.is_dir():
        pytest.skip(missing_shared(path))
    return path


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """The shared data folder (``$GFWLAB_SHARED``, else ``<repo>/../shared``)."""
    return _require(SHARED)


@pytest.fixture(scope="session")
def shared_pcaps() -> Path:
    """The shared captures: ``<shared>/data/pcaps``."""
    return _require(SHARED_PCAPS)


@pytest.fixture(scope="session")
def shared_blocklists() -> Path:
    """The shared GFW block lists: ``<shared>/data/blocklists``."""
    return _require(SHARED_BLOCKLISTS)


def _skip_reason(report: pytest.TestReport | pytest.CollectReport) -> str:
    longrepr = report.longrepr
    text = longrepr[2] if isinstance(longrepr, tuple) else str(longrepr)
    return text.removeprefix("Skipped: ")


def _refuse_skip(report: pytest.TestReport | pytest.CollectReport) -> None:
    if not (ci_mode() and report.skipped) or hasattr(report, "wasxfail"):
        return
    reason = _skip_reason(report)
    if reason.startswith(MAY_SKIP):
        return
    report.outcome = "failed"
    report.longrepr = f"CI is set, so this skip is a failure: {reason}"


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """Skipif/skip marks (module-level ``pytestmark`` too), ``pytest.skip()`` in a test or a
    fixture: all end up as a skipped report of one of the three phases."""
    report = yield
    _refuse_skip(report)
    return report


@pytest.hookimpl(wrapper=True)
def pytest_make_collect_report(
    collector: pytest.Collector,
) -> Generator[None, pytest.CollectReport, pytest.CollectReport]:
    """``pytest.skip(allow_module_level=True)`` and ``pytest.importorskip`` at import time."""
    report = yield
    _refuse_skip(report)
    return report


# --- time budgets --------------------------------------------------------------------------

BUDGETS_S = {"live": 420.0, "slow": 1800.0, "": 300.0}
"""Seconds each group of tests may take on a 2-core machine (CI has 90 minutes for everything):
``live`` (the lab tests), ``slow`` (long runs, a stage of their own) and unmarked tests. The
summary prints each group's time against its budget, so a growing suite is seen before it is a
surprise; it never fails a test on time."""

_SPENT: dict[str, float] = {}
_SLOWEST: dict[str, list[tuple[float, str]]] = {}
"""Per group, each test's seconds and id: an over-budget group names its slowest tests."""


def _group(item: pytest.Item) -> str:
    return next((m for m in ("slow", "live") if item.get_closest_marker(m)), "")


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(
    item: pytest.Item, nextitem: pytest.Item | None
) -> Generator[None, object, object]:
    start = time.monotonic()
    try:
        return (yield)
    finally:
        group, took = _group(item), time.monotonic() - start
        _SPENT[group] = _SPENT.get(group, 0.0) + took
        _SLOWEST.setdefault(group, []).append((took, item.nodeid))


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not _SPENT:
        return
    terminalreporter.section("time budgets")
    for group, spent in sorted(_SPENT.items()):
        budget = BUDGETS_S[group]
        over = "  OVER BUDGET" if spent > budget else ""
        name = group or "unmarked"
        terminalreporter.write_line(f"{name}: {spent:.0f} s of {budget:.0f} s{over}")
        if over:
            for took, nodeid in sorted(_SLOWEST[group], reverse=True)[:10]:
                terminalreporter.write_line(f"  {took:6.1f} s  {nodeid}")
