"""Fixtures for the shared data folder."""

from __future__ import annotations

from pathlib import Path

import pytest

from testenv import SHARED, SHARED_BLOCKLISTS, SHARED_PCAPS, missing_shared


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
