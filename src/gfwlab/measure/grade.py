"""Grading: each verdict against what the censor did (its events), after the verdicts are made.

The ground truth of a site is the censor's events that concern it (DESIGN.md event JSON): a
``dns-inject`` whose ``qname`` is the site's name, and any ``rst``, ``drop`` or ``null-route``
on a flow to or from the site's own lab address (every site has its own, so one site's residual
block never shows in another's events), or naming it (``sni``, ``host``). From them, in time
order, the verdict a correct probe would give:

=====================================================  =====================  ============
first event                                            ``blocking``           mechanism
=====================================================  =====================  ============
``dns_injection`` dns-inject                           ``dns``                dns_injection
``rst`` marked ``residual`` (on the SYN)               ``tcp_ip``             residual
``ip_port_rst``, ``unconditional_rst_443`` rst         ``tcp_ip``             ip_port_rst
``null_route`` null-route                              ``tcp_ip``             null_route
``fet`` drop                                           ``tcp_ip``             fet
``tls_sni``, ``http_keyword``, ``henan``, ``esni``     ``http-failure``       its name
``quic_sni`` drop (and nothing else)                   false (TCP works)      quic_sni
none                                                   false                  none
=====================================================  =====================  ============

A result is right when its ``blocking`` is the expected one and, if it carries gfwlab's
attribution (``test_keys.x_gfwlab``), its mechanism too. A null ``blocking`` (a control
failure) is neither right nor wrong: it is counted apart.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from gfwlab.errors import GfwlabError

BLOCKING_ORDER = ("false", "dns", "tcp_ip", "http-failure", "http-diff", "null")
ACTIONS = ("dns-inject", "rst", "drop", "null-route")
HTTP_LEVEL = ("tls_sni", "http_keyword", "henan", "esni", "tls_in_tls")


class GradeError(GfwlabError):
    """Results or a session that cannot be graded."""


def blocking_key(value: object) -> str:
    """``blocking`` as a table key: ``false``, ``dns`` ... or ``null``."""
    if value is False:
        return "false"
    if value is None:
        return "null"
    return str(value)


def is_residual(event: dict[str, Any]) -> bool:
    """Whether an event is a residual block's hit (the DESIGN.md extra field ``residual``)."""
    return event.get("residual") is True or (event.get("extra") or {}).get("residual") is True


def truth_mechanism(event: dict[str, Any]) -> str:
    """The attribution class of one event: a residual *reset* is ``residual`` (its SYN is
    reset whatever the mechanism), a residual drop keeps its mechanism (``fet``,
    ``quic_sni``); ``unconditional_rst_443`` counts as ``ip_port_rst``."""
    mech = str(event.get("mechanism"))
    if is_residual(event) and event.get("action") == "rst":
        return "residual"
    if mech == "unconditional_rst_443":
        return "ip_port_rst"
    return mech


def _expected_blocking(event: dict[str, Any]) -> str | bool:
    mech, action = truth_mechanism(event), event.get("action")
    if action == "dns-inject":
        return "dns"
    if mech in ("residual", "ip_port_rst", "null_route", "fet") or action == "null-route":
        return "tcp_ip"
    if mech == "quic_sni":
        return False
    return "http-failure"


def site_events(
    events: Iterable[dict[str, Any]], host: str, address: str | None
) -> list[dict[str, Any]]:
    """The events that concern one site, in time order."""
    return EventIndex(events).site(host, address)


class EventIndex:
    """Events indexed by the names and addresses they concern, for many sites at once."""

    def __init__(self, events: Iterable[dict[str, Any]]) -> None:
        self.by_name: dict[str, list[dict[str, Any]]] = {}
        self.by_addr: dict[str, list[dict[str, Any]]] = {}
        for e in events:
            if e.get("action") not in ACTIONS:
                continue
            if e.get("action") == "dns-inject":
                name = str(e.get("qname", "")).lower().rstrip(".")
                self.by_name.setdefault(name, []).append(e)
                continue
            named = str(e.get("sni") or e.get("host") or "").lower()
            if named:
                self.by_name.setdefault(named, []).append(e)
            flow = e.get("flow") or {}
            for addr in {flow.get("dst"), flow.get("src")}:
                if isinstance(addr, str):
                    self.by_addr.setdefault(addr, []).append(e)

    def site(self, host: str, address: str | None) -> list[dict[str, Any]]:
        """The events of the site ``host`` on ``address``, each once, in time order."""
        found = {id(e): e for e in self.by_name.get(host, [])}
        if address is not None:
            found.update((id(e), e) for e in self.by_addr.get(address, []))
        return sorted(found.values(), key=lambda e: float(e.get("ts", 0.0)))


def truth(events: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The expected verdict from a site's events (see the module docstring)."""
    if not events:
        return {
            "blocking": False,
            "mechanism": None,
            "mechanisms": [],
            "injector": None,
            "residual": False,
            "events": 0,
        }
    mechs = list(dict.fromkeys(truth_mechanism(e) for e in events))
    main = next((e for e in events if truth_mechanism(e) != "quic_sni"), events[0])
    injector = next((e.get("injector") for e in events if e.get("injector")), None)
    return {
        "blocking": _expected_blocking(main),
        "mechanism": truth_mechanism(main),
        "mechanisms": mechs,
        "injector": injector,
        "residual": any(is_residual(e) for e in events),
        "events": len(events),
    }


def judge(result: dict[str, Any], expected: dict[str, Any]) -> bool | None:
    """Whether one result's verdict matches the truth (None: no verdict to judge)."""
    tk = result.get("test_keys") or {}
    got = tk.get("blocking")
    if got is None:
        return None
    if blocking_key(got) != blocking_key(expected["blocking"]):
        return False
    mine = tk.get("x_gfwlab")
    return not (
        isinstance(mine, dict)
        and "mechanism" in mine
        and mine.get("mechanism") != expected["mechanism"]
    )


@dataclass
class Grade:
    """Per site right/wrong and the confusion matrix (truth rows x verdict columns)."""

    rows: list[dict[str, Any]] = field(default_factory=list)
    confusion: Counter[tuple[str, str]] = field(default_factory=Counter)

    @property
    def right(self) -> int:
        return sum(1 for r in self.rows if r["correct"] is True)

    @property
    def wrong(self) -> int:
        return sum(1 for r in self.rows if r["correct"] is False)

    @property
    def no_verdict(self) -> int:
        return sum(1 for r in self.rows if r["correct"] is None)

    @property
    def score(self) -> float:
        judged = self.right + self.wrong
        return self.right / judged if judged else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "right": self.right,
            "wrong": self.wrong,
            "no_verdict": self.no_verdict,
            "score": round(self.score, 4),
            "sites": self.rows,
            "confusion": [
                {"truth": t, "verdict": v, "count": n}
                for (t, v), n in sorted(self.confusion.items())
            ],
        }


def grade(
    results: Sequence[dict[str, Any]], events: Sequence[dict[str, Any]], addresses: dict[str, str]
) -> Grade:
    """Grade OONI web_connectivity measurements against a session's events.

    ``addresses`` maps each site's host name to its lab address (for flows that do not name
    the site: residual blocks, null routes). Sets ``x_gfwlab.truth``/``correct`` on results
    that carry ``x_gfwlab``.
    """
    out = Grade()
    index = EventIndex(events)
    for r in results:
        host = (urlsplit(str(r.get("input") or "")).hostname or "").lower()
        expected = truth(index.site(host, addresses.get(host)))
        ok = judge(r, expected)
        tk = r.get("test_keys") or {}
        mine = tk.get("x_gfwlab")
        if isinstance(mine, dict):
            mine["truth"], mine["correct"] = expected, ok
        got = tk.get("blocking")
        out.confusion[(blocking_key(expected["blocking"]), blocking_key(got))] += 1
        out.rows.append(
            {
                "input": r.get("input"),
                "host": host,
                "blocking": got,
                "mechanism": mine.get("mechanism") if isinstance(mine, dict) else None,
                "expected": expected["blocking"],
                "expected_mechanism": expected["mechanism"],
                "correct": ok,
            }
        )
    return out


def read_jsonl(path: str, what: str) -> list[dict[str, Any]]:
    """JSON objects, one per line; a bad line is a :class:`GradeError` naming it."""
    out = []
    try:
        with open(path, encoding="utf-8") as fh:
            for n, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise GradeError(f"{path}: line {n}: not JSON ({exc.msg})") from None
                if not isinstance(obj, dict):
                    raise GradeError(f"{path}: line {n}: not a JSON object")
                out.append(obj)
    except OSError as exc:
        raise GradeError(f"{path}: cannot read {what} ({exc.strerror or exc})") from None
    except UnicodeDecodeError as exc:
        raise GradeError(f"{path}: not UTF-8 (byte {exc.start})") from None
    return out


RUN_FORMAT = 1
"""The ``format`` of ``run.json`` this version reads (see :mod:`gfwlab.measure.ooni`)."""


def _check_format(directory: str) -> None:
    path = os.path.join(directory, "run.json")
    if not os.path.exists(path):
        return
    try:
        with open(path, encoding="utf-8") as fh:
            info = json.load(fh)
    except (OSError, ValueError) as exc:
        raise GradeError(f"{path}: unreadable ({exc})") from None
    if not isinstance(info, dict) or info.get("kind") != "probe":
        raise GradeError(f"{path}: not a probe's results folder")
    if info.get("format") != RUN_FORMAT:
        raise GradeError(
            f"{path}: results format {info.get('format')!r} (gfwlab "
            f"{info.get('gfwlab_version', '?')}); this gfwlab reads format {RUN_FORMAT}"
        )


def read_results(path: str) -> list[dict[str, Any]]:
    """web_connectivity measurements from a JSON-lines file (or a probe's folder)."""
    if os.path.isdir(path):
        _check_format(path)
        path = os.path.join(path, "measurements.jsonl")
    rows = read_jsonl(path, "results")
    for n, r in enumerate(rows, 1):
        if r.get("test_name") != "web_connectivity":
            raise GradeError(
                f"{path}: line {n}: test_name is {r.get('test_name')!r}, not 'web_connectivity'"
            )
        if not isinstance(r.get("test_keys"), dict) or not isinstance(r.get("input"), str):
            raise GradeError(f"{path}: line {n}: no input or test_keys")
    return rows


def read_session(directory: str) -> tuple[list[dict[str, Any]], dict[str, str]]:
    """A session folder's events and site addresses.

    The folder holds ``events.jsonl`` (the censor's events) and the sites' addresses as
    ``sites.json`` (``{"host": "address"}``, written by ``gfwlab probe``) or ``sites.hosts``
    (``ADDRESS NAME`` lines: the running lab's state folder).
    """
    if not os.path.isdir(directory):
        raise GradeError(f"{directory}: no such session folder")
    events = read_jsonl(os.path.join(directory, "events.jsonl"), "the censor's events")
    sites: dict[str, str] = {}
    js, hosts = os.path.join(directory, "sites.json"), os.path.join(directory, "sites.hosts")
    try:
        if os.path.exists(js):
            with open(js, encoding="utf-8") as fh:
                got = json.load(fh)
            if not isinstance(got, dict):
                raise GradeError(f"{js}: not a JSON object of host -> address")
            sites = {str(k).lower(): str(v) for k, v in got.items()}
        elif os.path.exists(hosts):
            with open(hosts, encoding="ascii") as fh:
                for line in fh:
                    parts = line.split()
                    if len(parts) == 2:
                        sites[parts[1].lower()] = parts[0]
    except (OSError, ValueError) as exc:
        raise GradeError(f"{directory}: cannot read the site addresses ({exc})") from None
    return events, sites
