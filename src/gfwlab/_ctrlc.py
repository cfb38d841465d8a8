"""A Ctrl-C is never lost.

Python raises KeyboardInterrupt in whatever Python code the main thread runs when SIGINT comes,
and a finalizer (``__del__``, such as :class:`~gfwlab.packet.pcap.PcapWriter`'s, run when the
last reference goes) cannot pass an exception on: Python prints it ("Exception ignored in") and
the command carries on, to its end, publishing its outputs as if no one had pressed Ctrl-C.

:func:`keep` hands such a dropped KeyboardInterrupt back: the unraisable hook notes it (without
printing it) and a timer sends SIGINT again a millisecond later, once the finalizer is done,
through whatever SIGINT handler is then in place (``commit_together``'s holds it back until its
renames are done). Should the new one land in a finalizer too, the same happens again.
"""

from __future__ import annotations

import signal
import sys
from types import FrameType
from typing import Any

AGAIN_S = 0.001
"""How long after a dropped Ctrl-C it is sent again."""


def keep() -> None:
    """From now on, a Ctrl-C dropped by a finalizer comes again (see the module docstring).
    In the main thread only: the timer's signal is handled there."""
    before = sys.unraisablehook

    def dropped(info: Any) -> None:
        if isinstance(info.exc_value, KeyboardInterrupt):
            signal.setitimer(signal.ITIMER_REAL, AGAIN_S)
        else:
            before(info)

    signal.signal(signal.SIGALRM, _again)
    sys.unraisablehook = dropped


def settled() -> None:
    """The command is about to exit with its own status: a Ctrl-C it caught must not turn into
    a death by SIGINT.

    When a KeyboardInterrupt comes out of code run from text (``exec`` or ``eval`` of a string:
    the methods a dataclass or a named tuple makes as its class is created, at import), CPython
    marks the interrupt unhandled (``run_eval_code_obj``) even if a caller then catches it; under
    ``python -m`` (how ``gfwlab`` runs), ``Py_RunMain`` sees the mark at exit and kills the
    process with SIGINT instead of returning its status. An interrupted demo did so in 7 of 120
    runs here (``perf record -e signal:signal_generate``: the process sent itself SIGINT some
    50 ms after printing that it was interrupted); with this, none of 156. Code run from text
    clears the mark before it runs, so an empty string does. An interrupt that leaves ``main``
    uncaught is marked again after this, by the ``-m`` runner itself.
    """
    exec("")


def _again(_signum: int, _frame: FrameType | None) -> None:
    signal.raise_signal(signal.SIGINT)
