"""What the tests need from the machine: the shared data folder and the CI policy on skips.

A plain module, not a test module: test modules import from it (and from ``helpers``), never
from each other. It imports nothing from gfwlab, so conftest.py can load it whatever shape the
package has.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# --- the shared data folder ----------------------------------------------------------------


def shared_dir() -> Path:
    """``$GFWLAB_SHARED`` if set, else ``<repo>/../shared`` (where CI puts its read-only copy)."""
    env = os.environ.get("GFWLAB_SHARED")
    return Path(env).resolve() if env else REPO.parent / "shared"


SHARED = shared_dir()
SHARED_PCAPS = SHARED / "data" / "pcaps"
SHARED_BLOCKLISTS = SHARED / "data" / "blocklists"


def missing_shared(path: str | Path) -> str:
    """The skip reason for shared data that is not there; it names the path (CI fails on it)."""
    return f"shared data missing: {path} (set GFWLAB_SHARED to the shared folder)"


def needs_shared(path: str | Path) -> pytest.MarkDecorator:
    """Skip (fail under CI) unless ``path`` exists."""
    return pytest.mark.skipif(not os.path.exists(path), reason=missing_shared(path))


def shared_pcaps(*patterns: str) -> list[str]:
    """The shared captures matching any of ``patterns``, sorted; empty if the folder is missing."""
    return sorted({str(p) for pat in patterns for p in SHARED_PCAPS.glob(pat)})


# --- CI: skips are failures ----------------------------------------------------------------

MAY_SKIP = "may skip:"
"""Prefix of the skip reasons CI allows: a test that cannot mean anything on this machine."""


def ci_mode() -> bool:
    """True when ``$CI`` is set to anything but empty, ``0`` or ``false``."""
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false")


unprivileged = pytest.mark.skipif(
    os.geteuid() == 0, reason=f"{MAY_SKIP} root ignores directory permissions"
)
"""For tests of permission errors: root never gets them, so the test skips, even under CI."""


def missing_tools(*tools: str) -> list[str]:
    return [t for t in tools if shutil.which(t) is None]


def needs_tools(*tools: str) -> pytest.MarkDecorator:
    missing = missing_tools(*tools)
    return pytest.mark.skipif(bool(missing), reason=f"missing programs: {', '.join(missing)}")
