"""gfwlab: the Great Firewall of China rebuilt for the lab.

The engine (:class:`gfwlab.engine.Censor`) is sans-I/O: it takes raw IP packets and their
timestamps and returns :mod:`actions <gfwlab.engine.actions>`; adapters do the I/O.
"""

__version__ = "0.1.0"
