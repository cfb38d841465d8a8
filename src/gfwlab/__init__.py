"""gfwlab: the Great Firewall of China rebuilt for the lab.

The engine (:class:`gfwlab.engine.Censor`) is sans-I/O: it takes raw IP packets and their
timestamps and returns :mod:`actions <gfwlab.engine.actions>`; adapters do the I/O.
"""

from pathlib import Path

from gfwlab import _build

__version__ = "0.1.0"

ENGINE_BUILD = _build.choose(Path(__file__).parent)
"""How the engine's modules run: "compiled", "interpreted" or "interpreted (stale)"
(:mod:`gfwlab._build`)."""
