# ruff: noqa: E501 - each strategy stays on one line, as published
"""The built-in library: the baseline and the 24 China rows of Geneva's ``strategies.md`` (spec
§14c), with their published China success rates, and the matrix ``gfwlab evade library`` prints
and writes to ``docs/evasion.md``.

Each row passes when its count of successes lies in the two-sided 99.9% binomial interval of
its published rate (the criterion of issue 8). Where ``library.py`` gives another rate for the
same strategy (spec §14c, in brackets) the row accepts either.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from gfwlab.evade.simulate import Result, binomial_counts, run
from gfwlab.rules.profile import Profile


@dataclass(frozen=True, slots=True)
class Entry:
    family: str
    strategy: str
    published: float
    also: float | None = None
    """library.py's rate for the same strategy, where it differs (spec §14c, in brackets)."""

    def bounds(self, n: int) -> tuple[int, int]:
        rates = [self.published] + ([self.also] if self.also is not None else [])
        return min(binomial_counts(n, r)[0] for r in rates), max(
            binomial_counts(n, r)[1] for r in rates
        )


_PA, _A = "[TCP:flags:PA]-", "[TCP:flags:A]-"
CHINA: tuple[Entry, ...] = (
    Entry("baseline", "\\/", 0.03),
    Entry("desync, data offset", _PA + "duplicate(tamper{TCP:dataofs:replace:10}(tamper{TCP:chksum:corrupt},),)-| \\/", 0.98),
    Entry("desync, data offset", _PA + "duplicate(tamper{TCP:dataofs:replace:10}(tamper{IP:ttl:replace:10},),)-| \\/", 0.98),
    Entry("desync, data offset", _PA + "duplicate(tamper{TCP:dataofs:replace:10}(tamper{TCP:ack:corrupt},),)-| \\/", 0.94),
    Entry("desync, data offset", _PA + "duplicate(tamper{TCP:options-wscale:corrupt}(tamper{TCP:dataofs:replace:8},),)-| \\/", 0.98),
    Entry("desync, payload", _PA + "duplicate(tamper{TCP:load:corrupt}(tamper{TCP:chksum:corrupt},),)-| \\/", 0.80, 0.98),
    Entry("desync, payload", _PA + "duplicate(tamper{TCP:load:corrupt}(tamper{IP:ttl:replace:8},),)-| \\/", 0.98),
    Entry("desync, payload", _PA + "duplicate(tamper{TCP:load:corrupt}(tamper{TCP:ack:corrupt},),)-| \\/", 0.87, 0.93),
    Entry("teardown, RST", _A + "duplicate(,tamper{TCP:flags:replace:R}(tamper{TCP:chksum:corrupt},))-| \\/", 0.95),
    Entry("teardown, RST", _A + "duplicate(,tamper{TCP:flags:replace:R}(tamper{IP:ttl:replace:10},))-| \\/", 0.87),
    Entry("teardown, RST", _A + "duplicate(,tamper{TCP:options-md5header:corrupt}(tamper{TCP:flags:replace:R},))-| \\/", 0.86),
    Entry("teardown, RST", _A + "duplicate(,tamper{TCP:options-md5header:corrupt}(tamper{TCP:flags:replace:R},))-| \\/", 0.94),
    Entry("teardown, RST+ACK", _A + "duplicate(,tamper{TCP:flags:replace:RA}(tamper{TCP:chksum:corrupt},))-| \\/", 0.80, 0.90),
    Entry("teardown, RST+ACK", _A + "duplicate(,tamper{TCP:flags:replace:RA}(tamper{IP:ttl:replace:10},))-| \\/", 0.94),
    Entry("teardown, odd flags", _A + "duplicate(,tamper{TCP:flags:replace:FRAPUEN}(tamper{TCP:chksum:corrupt},))-| \\/", 0.89),
    Entry("teardown, odd flags", _A + "duplicate(,tamper{TCP:flags:replace:FREACN}(tamper{IP:ttl:replace:10},))-| \\/", 0.96),
    Entry("teardown, odd flags", _A + "duplicate(,tamper{TCP:flags:replace:FRAPUN}(tamper{TCP:options-md5header:corrupt},))-| \\/", 0.94),
    Entry("segmentation", _PA + "fragment{tcp:8:False}-| [TCP:flags:A]-tamper{TCP:seq:corrupt}-| \\/", 0.94),
    Entry("segmentation", _PA + "fragment{tcp:8:True}(,fragment{tcp:4:True})-| \\/", 0.98),
    Entry("segmentation", _PA + "fragment{tcp:-1:True}-| \\/", 0.03),
    Entry("FIN, bad IP length", _PA + "duplicate(tamper{TCP:flags:replace:F}(tamper{IP:len:replace:78},),)-| \\/", 0.53),
    Entry("no effect", "[TCP:flags:S]-duplicate(,tamper{TCP:load:corrupt})-| \\/", 0.03),
    Entry("no effect", _PA + "duplicate(tamper{IP:len:replace:64},)-| \\/", 0.03),
    Entry("no effect", "[TCP:flags:S]-duplicate(tamper{TCP:flags:replace:SA},)-| \\/", 0.03),
    Entry("no effect", _PA + "tamper{TCP:options-uto:corrupt}-| \\/", 0.03),
)  # fmt: skip
"""Baseline and China rows of Geneva's strategies.md (Bock et al., CCS 2019), test type http."""


@dataclass(frozen=True, slots=True)
class Row:
    entry: Entry
    successes: int
    trials: int
    day: dt.date | None
    note: str = ""
    """How the trials were kept independent (live)."""

    @property
    def passes(self) -> bool:
        lo, hi = self.entry.bounds(self.trials)
        return lo <= self.successes <= hi


def matrix(profiles: list[Profile], trials: int, seed: int) -> list[Row]:
    """Every library entry against every profile (one per date), offline."""
    rows = []
    for prof in profiles:
        for entry in CHINA:
            res: Result = run(entry.strategy, "http_keyword", prof, trials, seed)
            rows.append(Row(entry, res.successes, trials, prof.date))
    return rows


OFFLINE = (
    "**Offline** (`--offline`): scripted HTTP connections (Geneva's `GET /?q=ultrasurf`), the "
    "strategy applied to the client's packets by gfwlab's own interpreter, every packet on the "
    "wire fed to a fresh censor per trial, HTTP keyword probability 0.97 (Geneva's 3% "
    "baseline), residual off. The endpoints are scripted, so what the server does with an "
    "insertion packet (a TTL-limited one dying on the way, one with a bad checksum dropped) is "
    "not part of these verdicts: the live matrix is where it is."
)
LIVE = (
    "**Live**: the lab (`lab up`{setup}), real curl "
    "from the client namespace fetching `http://<server>/?q=ultrasurf`, the strategy applied "
    "to the client's real packets through NFQUEUE by gfwlab's interpreter, the censor daemon "
    "deciding from the packets on the wire; HTTP keyword probability 0.97 (Geneva's 3% "
    "baseline). Independence: each trial on the server address used longest ago, waiting out "
    "the residual window when none is free (the lab's residual is shortened with --set; the "
    "'independence' column says how many trials waited)."
)


def lab_setup(config: dict[str, object]) -> str:
    """What of the lab's set-up (``lab up`` options, from its state) decides endpoint behaviour:
    the routers behind the censor (TTL-limited insertions) and the client's TCP timestamps."""
    hops = config.get("hops", 12)
    stamps = config.get("client_timestamps", True)
    return f", {hops} routers behind the censor, the client's TCP " + (
        "sending timestamps" if stamps else "sending no timestamps (`--no-client-timestamps`)"
    )


def render(
    rows: list[Row], trials: int, seed: int, command: str, live: bool = False, setup: str = ""
) -> str:
    """The matrix as Markdown; ``setup``: :func:`lab_setup` of the live lab."""
    out = [
        "# Evasion matrix: Geneva's China strategies against gfwlab",
        "",
        f"Generated by `{command}`; do not edit by hand.",
        "",
        LIVE.format(setup=setup) if live else OFFLINE,
        "",
        f"{trials} trials per row, seed {seed}"
        + ("" if live else f" (seeds {seed}..{seed + trials - 1})")
        + ". A row passes when its successes lie in the two-sided 99.9% binomial interval of "
        "the published rate (of either rate where strategies.md and library.py differ).",
        "",
        "| date | family | strategy | published | successes | 99.9% interval | |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        e, n = r.entry, r.trials
        lo, hi = e.bounds(n)
        pub = f"{e.published:.0%}" + (f" [{e.also:.0%}]" if e.also is not None else "")
        strat = e.strategy.replace("|", "\\|")
        mark = "ok" if r.passes else "**differs**"
        day = r.day.isoformat() if r.day else "any"
        out.append(
            f"| {day} | {e.family} | `{strat}` | {pub} | {r.successes}/{n} | "
            f"{lo}..{hi} | {mark}{' (' + r.note + ')' if r.note else ''} |"
        )
    out.append("")
    return "\n".join(out)
