"""The GFW mechanisms, one module each, and their registry.

Every public module of this package defines one mechanism and ends with one
:func:`register_mechanism` call. :func:`registry` imports the modules it finds here (so adding a
mechanism is adding its module, with nothing to edit in this file) and returns the classes by
name; the profile loader resolves names against it and hands it to the engine.
"""

from __future__ import annotations

import importlib
import pkgutil
from typing import Any

from gfwlab import _build
from gfwlab.engine.mechanism import Mechanism

__all__ = ["Mechanism", "register_mechanism", "registry"]

_REGISTRY: dict[str, type[Mechanism[Any]]] = {}


def register_mechanism(name: str, cls: type[Mechanism[Any]]) -> None:
    """Make ``cls`` available to profiles under ``name``."""
    if cls.__module__.startswith(_build.COPY_PREFIX):
        return  # a compiled module's source copy, read for its docs and annotations
    if name in _REGISTRY and _REGISTRY[name] is not cls:
        raise RuntimeError(f"mechanism {name!r} registered twice")
    cls.name = name
    _REGISTRY[name] = cls


def registry() -> dict[str, type[Mechanism[Any]]]:
    """Every mechanism by name: the modules of this package (not ``_private`` ones), imported on
    first use so that nothing runs at import time."""
    for info in pkgutil.iter_modules(__path__):
        if not info.name.startswith("_"):
            importlib.import_module(f"{__name__}.{info.name}")
    return dict(sorted(_REGISTRY.items()))
