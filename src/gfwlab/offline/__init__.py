"""The offline adapter: captures in, events and censored captures out."""

from gfwlab.offline.analyze import Summary, analyze

__all__ = ["Summary", "analyze"]
