"""Which network the emulated client sits on (``--network``), and the emulated moment (``--at``).

The GFW is not one box: spec §14d reports networks that reassemble more than the national
border. A network is a set of ``--set`` overrides layered on the profile, each with the day it
starts to hold (so ``--date`` still chooses the era). Composition, from weakest to strongest:

1. the profile (``--profile``): the national GFW as measured;
2. the network (``--network``): its overrides replace the profile's values;
3. the user's ``--set``: replaces both (so ``--set tls_sni.record_reassembly_from=''`` undoes
   CERNET's record reassembly);
4. ``--date`` / ``--at`` choose the day (and moment) against which every date above is read:
   a network's change dated after that day does not apply.

========  ======================================================  ============  =====
network   what differs                                            from          St
========  ======================================================  ============  =====
national  nothing: TCP segments reassembled, TLS records not      (2024-04-04)  V
cernet    ClientHellos split into TLS records are joined, reset   2025-12-01    V (anecdote)
mobile    same (a ClientHello in 400 records still reset)         2025-12-01    V (anecdote)
unicom    as national (resets despite fragmentation reported,     —             anecdote
          varying with time of day: not modelled)
telecom   as national (same reports as unicom)                    —             anecdote
========  ======================================================  ============  =====

Sources: net4people #550; maoist2009/TlsFragment #95 (December 2025; the day within the month
is not given, so the 1st: U); S&P'25 for the national behaviour (2024-04-04).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from gfwlab.errors import ConfigError


@dataclass(frozen=True, slots=True)
class Network:
    """One network's differences from the national GFW, as ``--set`` overrides."""

    description: str
    sets: tuple[str, ...] = ()
    source: str = ""


NETWORKS: dict[str, Network] = {
    "national": Network("The national border GFW: TCP reassembled, TLS records not (S&P'25)."),
    "cernet": Network(
        "CERNET (education network): ClientHellos split into TLS records reset from Dec 2025.",
        ("tls_sni.record_reassembly_from='2025-12-01'",),
        "net4people #550; maoist2009/TlsFragment #95",
    ),
    "mobile": Network(
        "China Mobile (AS56040): a ClientHello split into 400 TLS records reset, Dec 2025.",
        ("tls_sni.record_reassembly_from='2025-12-01'",),
        "net4people #550; maoist2009/TlsFragment #95",
    ),
    "unicom": Network(
        "China Unicom: as national; resets despite fragmentation reported, by time of day.",
        (),
        "maoist2009/TlsFragment #95 (anecdote, not modelled)",
    ),
    "telecom": Network(
        "China Telecom: as national; resets despite fragmentation reported, by time of day.",
        (),
        "maoist2009/TlsFragment #95 (anecdote, not modelled)",
    ),
}
"""The networks ``--network`` accepts, as data."""


def network_sets(name: str) -> tuple[str, ...]:
    """The overrides of network ``name``; raises ConfigError naming ``--network``."""
    try:
        return NETWORKS[name].sets
    except KeyError:
        known = ", ".join(NETWORKS)
        raise ConfigError("--network", None, f"unknown network {name!r} (known: {known})") from None


def parse_moment(text: str) -> dt.datetime:
    """An ``--at`` value, YYYY-MM-DDTHH:MM in UTC (a trailing Z is accepted)."""
    try:
        moment = dt.datetime.strptime(text.strip().removesuffix("Z"), "%Y-%m-%dT%H:%M")
    except ValueError:
        raise ConfigError("--at", None, f"expected YYYY-MM-DDTHH:MM (UTC), got {text!r}") from None
    return moment.replace(tzinfo=dt.UTC)
