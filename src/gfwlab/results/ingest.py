"""Load a results folder's files into its DuckDB database (:mod:`gfwlab.results.store`).

The files, their contracts (docs/results.md):

- ``run.json``: ``{"kind", "format", "gfwlab_version", "started", "finished", "profile", "date",
  "seed", "argv"}``; ``kind`` is ``probe``, ``analyze``, ``lab``, ``evade-matrix`` or ``tools``;
  ``format`` is :data:`FORMAT`. A folder without it but with ``events.jsonl`` (what
  ``gfwlab analyze --events`` wrote before run.json existed) is read as an ``analyze`` run of
  format 0, and says so.
- ``measurements.jsonl``: one OONI measurement (base data format, ``web_connectivity`` test keys)
  per line, with gfwlab's attribution in ``test_keys["x_gfwlab"]``.
- ``events.jsonl``: the censor's events (the DESIGN.md contract; docs/events.md).
- ``tools.jsonl``: one cell of the circumvention-tool matrix per line.
- ``evasion.jsonl``: one row of the evasion matrix (``gfwlab evade library --results``) per line.

Ingesting is idempotent: a folder whose files have not changed since the last ingest is left as
it is, and a changed folder replaces the run's rows whole, in one transaction. A malformed line
is refused with its file and line number; nothing is half-loaded.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import duckdb
import pyarrow as pa

from gfwlab.results.folder import FORMAT, KINDS, write_run
from gfwlab.results.store import ResultsError, connect

FILES = ("run.json", "measurements.jsonl", "events.jsonl", "tools.jsonl", "evasion.jsonl")
CAPTURE = "censored.pcap"
"""The censored capture beside ``events.jsonl`` (``analyze --results``): its forged resets are
loaded into table ``forged`` (TTL, IP-ID, delay after the trigger) for the report."""
FORGED_WITHIN_S = 2.0
"""A reset counts as forged for an ``rst`` event when it is on the event's connection (either
direction) and at most this long after it (the spec's longest measured delay is 445 ms: §4a)."""
BLOCKING = ("dns", "tcp_ip", "http-failure", "http-diff")
OUTCOMES = ("works", "blocked", "degraded", "no-published-mechanism", "hypothesis-only", "skipped")


@dataclass
class Ingested:
    """What :func:`ingest_dir` did."""

    folder: str
    run_id: str
    kind: str
    loaded: bool
    """False when the database was already up to date."""
    counts: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def ingest_dir(folder: str | os.PathLike[str]) -> Ingested:
    """Load ``folder``'s files into ``folder/results.duckdb`` (see the module docstring)."""
    root = Path(folder)
    if not root.is_dir():
        raise ResultsError(f"{root}: not a folder")
    present = [n for n in FILES if (root / n).is_file()]
    if not present:
        raise ResultsError(
            f"{root}: no results here (expected run.json with measurements.jsonl, events.jsonl, "
            "tools.jsonl or evasion.jsonl)"
        )
    run, notes = read_run(root, present)
    companions = [CAPTURE] if "events.jsonl" in present and (root / CAPTURE).is_file() else []
    stamp = [(n, *_stat(root / n)) for n in (*present, *companions)]
    run_id = hashlib.sha256(
        json.dumps([run, [s[0] for s in stamp]], sort_keys=True, default=str).encode()
    ).hexdigest()[:16]
    con = connect(root)
    try:
        known = con.execute("SELECT name, size, mtime_ns FROM files ORDER BY name").fetchall()
        if sorted((n, s, m) for n, s, m in stamp) == known:
            counts = _counts(con)
            return Ingested(str(root), run_id, run["kind"], False, counts, notes)
        loaded = {name: _load(root / name) for name in present if name != "run.json"}
        if companions:
            loaded[CAPTURE] = forged_resets(root / CAPTURE, loaded["events.jsonl"])
        _replace(con, root, run_id, run, notes, stamp, loaded)
        return Ingested(str(root), run_id, run["kind"], True, _counts(con), notes)
    finally:
        con.close()


def read_run(root: Path, present: list[str]) -> tuple[dict[str, Any], list[str]]:
    """The checked ``run.json`` (or the legacy stand-in) and notes about it."""
    path = root / "run.json"
    if "run.json" not in present:
        if "events.jsonl" not in present:
            raise ResultsError(
                f"{path}: missing (every results folder but a bare events one has it)"
            )
        legacy = {"kind": "analyze", "format": 0, "gfwlab_version": None, "started": None,
                  "finished": None, "profile": [], "date": None, "seed": None,
                  "argv": []}  # fmt: skip
        return legacy, ["no run.json: read as the events of an analyze run (format 0)"]
    try:
        run = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise ResultsError(f"{path}: cannot read ({exc})") from None
    except json.JSONDecodeError as exc:
        raise ResultsError(f"{path}: not JSON (line {exc.lineno}, column {exc.colno})") from None
    if not isinstance(run, dict):
        raise ResultsError(f"{path}: expected a JSON object")
    fmt = run.get("format")
    if not isinstance(fmt, int) or isinstance(fmt, bool):
        raise ResultsError(
            f"{path}: key 'format' missing or not an integer (this gfwlab reads {FORMAT})"
        )
    if fmt > FORMAT:
        raise ResultsError(
            f"{path}: format {fmt} is newer than this gfwlab reads ({FORMAT}; written by gfwlab "
            f"{run.get('gfwlab_version')}); upgrade gfwlab"
        )
    if fmt < 1:
        raise ResultsError(f"{path}: format {fmt} is not a format gfwlab ever wrote")
    if run.get("kind") not in KINDS:
        raise ResultsError(
            f"{path}: key 'kind' is {run.get('kind')!r}, not one of {', '.join(KINDS)}"
        )
    for key in ("started", "finished"):
        if run.get(key) is not None:
            run[key] = _timestamp(run[key], f"{path}: key {key!r}")
    if run.get("date") is not None:
        try:
            run["date"] = dt.date.fromisoformat(str(run["date"]))
        except ValueError:
            raise ResultsError(f"{path}: key 'date' is {run['date']!r}, not YYYY-MM-DD") from None
    prof = run.get("profile")
    run["profile"] = [prof] if isinstance(prof, str) else [str(p) for p in prof or []]
    run["argv"] = [str(a) for a in run.get("argv") or []]
    return run, []


def _stat(path: Path) -> tuple[int, int]:
    st = path.stat()
    return st.st_size, st.st_mtime_ns


def _lines(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    try:
        fh = path.open("rb")
    except OSError as exc:
        raise ResultsError(f"{path}: cannot read ({exc.strerror or exc})") from None
    with fh:
        for no, raw in enumerate(fh, 1):
            if not raw.strip():
                continue
            try:
                obj = json.loads(raw)
            except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                raise ResultsError(f"{path}:{no}: not a JSON line ({exc})") from None
            if not isinstance(obj, dict):
                raise ResultsError(f"{path}:{no}: expected a JSON object")
            yield no, obj


def _load(path: Path) -> list[tuple[Any, ...]]:
    parse: Callable[[str, dict[str, Any]], tuple[Any, ...]] = _PARSERS[path.name]
    out = []
    for no, obj in _lines(path):
        try:
            out.append(parse(f"{path}:{no}", obj))
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ResultsError(f"{path}:{no}: {_why(exc)}") from None
    return out


def _why(exc: Exception) -> str:
    if isinstance(exc, KeyError):
        return f"key {exc.args[0]!r} missing"
    return str(exc) or type(exc).__name__


def _timestamp(value: Any, where: str) -> dt.datetime:
    """An ISO 8601 or OONI (``YYYY-MM-DD HH:MM:SS``) time as naive UTC."""
    try:
        t = dt.datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        raise ResultsError(f"{where}: {value!r} is not an ISO 8601 time") from None
    return t.astimezone(dt.UTC).replace(tzinfo=None) if t.tzinfo else t


def _measurement(where: str, m: dict[str, Any]) -> tuple[Any, ...]:
    if m.get("test_name") != "web_connectivity":
        raise ValueError(f"test_name is {m.get('test_name')!r}, not 'web_connectivity'")
    tk = m["test_keys"]
    if not isinstance(tk, dict):
        raise TypeError("test_keys is not an object")
    blocking = tk.get("blocking")
    if blocking is False:
        blocking = "false"
    elif blocking is not None and blocking not in BLOCKING:
        raise ValueError(
            f"test_keys.blocking is {blocking!r}, not false, null or one of {BLOCKING}"
        )
    x = tk.get("x_gfwlab") or {}
    answers = [
        a.get("ipv4") or a.get("ipv6")
        for q in tk.get("queries") or []
        for a in q.get("answers") or []
        if a.get("ipv4") or a.get("ipv6")
    ]
    failures: list[str] = []
    for f in (
        *(q.get("failure") for q in tk.get("queries") or []),
        *((c.get("status") or {}).get("failure") for c in tk.get("tcp_connect") or []),
        *(h.get("failure") for h in tk.get("tls_handshakes") or []),
        *(r.get("failure") for r in tk.get("requests") or []),
    ):
        if f and f not in failures:
            failures.append(str(f))
    status = next(
        (
            (r.get("response") or {}).get("code")
            for r in tk.get("requests") or []
            if (r.get("response") or {}).get("code")
        ),
        None,
    )
    url = str(m["input"])
    truth = x.get("truth")
    return (
        _timestamp(m["measurement_start_time"], f"{where}: key 'measurement_start_time'"),
        url,
        urlsplit(url).hostname or url,
        (m.get("annotations") or {}).get("category_code"),
        blocking,
        tk.get("accessible"),
        x.get("mechanism"),
        x.get("injector"),
        bool(x.get("residual", False)),
        bool(x.get("control_failure", False)),
        x.get("correct"),
        None if truth is None else json.dumps(truth),
        list(dict.fromkeys(str(a) for a in answers)),
        failures,
        int(status) if status is not None else None,
        m.get("report_id"),
        f"{m.get('software_name', '?')} {m.get('software_version', '')}".strip(),
        json.dumps(x),
    )


_EVENT_KEYS = (
    "ts",
    "flow",
    "direction",
    "mechanism",
    "action",
    "rule",
    "residual_until",
    "citation",
)


def _event(_where: str, e: dict[str, Any]) -> tuple[Any, ...]:
    f = e["flow"]
    if not isinstance(f, dict):
        raise TypeError("flow is not an object")
    extra = {k: v for k, v in e.items() if k not in _EVENT_KEYS}
    answers = e.get("answers") or []
    forged = [str(a["addr"]) for a in answers if isinstance(a, dict) and a.get("addr")]
    injector = e.get("injector")
    if injector is None and answers:
        injector = ",".join(dict.fromkeys(str(a.get("injector")) for a in answers))
    ru = e.get("residual_until")
    return (
        float(e["ts"]),
        str(f["proto"]),
        str(f["src"]),
        int(f["sport"]),
        str(f["dst"]),
        int(f["dport"]),
        e.get("direction"),
        str(e["mechanism"]),
        str(e["action"]),
        None if e.get("rule") is None else str(e["rule"]),
        None if ru is None else float(ru),
        e.get("citation"),
        injector,
        e.get("sni"),
        e.get("qname"),
        forged,
        bool(e.get("residual", False)),
        json.dumps(extra),
    )


def _tool_cell(_where: str, c: dict[str, Any]) -> tuple[Any, ...]:
    if c["outcome"] not in OUTCOMES:
        raise ValueError(f"outcome is {c['outcome']!r}, not one of {', '.join(OUTCOMES)}")
    ci = c.get("ci") or [None, None]
    fp = c.get("first_packet")
    return (
        str(c["tool"]),
        None if c.get("date") is None else str(c["date"]),
        int(c.get("trials") or 0),
        int(c.get("successes") or 0),
        c["outcome"],
        None if c.get("rate") is None else float(c["rate"]),
        None if ci[0] is None else float(ci[0]),
        None if ci[1] is None else float(ci[1]),
        [str(x) for x in c.get("mechanisms") or []],
        None if fp is None else json.dumps(fp),
        c.get("citation"),
        c.get("trial_mode"),
    )


def _evasion_row(_where: str, r: dict[str, Any]) -> tuple[Any, ...]:
    return (
        r.get("date"),
        r.get("family"),
        str(r["strategy"]),
        float(r["published"]),
        None if r.get("also") is None else float(r["also"]),
        int(r["trials"]),
        int(r["successes"]),
        int(r["lo"]),
        int(r["hi"]),
        bool(r["passes"]),
        r.get("note") or "",
        r.get("mode"),
    )


def forged_resets(path: Path, events: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    """The resets in the capture at ``path`` that the ``rst`` events forged: TTL, IP-ID, DF and,
    for those toward the client, the delay from the trigger (spec §4a, §14j)."""
    from gfwlab.errors import GfwlabError  # noqa: PLC0415
    from gfwlab.packet.ip import RST, addr_text, parse  # noqa: PLC0415
    from gfwlab.packet.pcap import CaptureReader  # noqa: PLC0415

    by_conn: dict[tuple[str, int, str, int], list[tuple[float, int, str, Any]]] = {}
    for i, e in enumerate(events):
        ts, proto, src, sport, dst, dport, _dir, mech, action = e[:9]
        if action == "rst" and proto == "tcp":
            by_conn.setdefault((src, sport, dst, dport), []).append((ts, i, mech, e[12]))
    out: list[tuple[Any, ...]] = []
    if not by_conn:
        return out
    try:
        reader = CaptureReader(str(path))
    except GfwlabError as exc:
        raise ResultsError(f"{path}: cannot read the capture ({exc})") from None
    with reader:
        for ts, raw in reader:
            try:
                pkt = parse(raw)
            except GfwlabError:
                continue
            if pkt.proto != 6 or not pkt.flags & RST:
                continue
            src, dst = addr_text(pkt.src), addr_text(pkt.dst)
            toward = "server"
            cands = by_conn.get((src, pkt.sport, dst, pkt.dport))
            if cands is None:
                cands, toward = by_conn.get((dst, pkt.dport, src, pkt.sport)), "client"
            match = [c for c in cands or () if c[0] <= ts + 1e-6 <= c[0] + FORGED_WITHIN_S]
            if not match:
                continue
            ev_ts, ev_idx, mech, injector = match[-1]
            latency = round((ts - ev_ts) * 1000, 3) if toward == "client" else None
            out.append((ev_idx, ts, mech, injector, toward, pkt.flags, pkt.ttl, pkt.ip_id,
                        pkt.df, latency))  # fmt: skip
    return out


_PARSERS: dict[str, Callable[[str, dict[str, Any]], tuple[Any, ...]]] = {
    "measurements.jsonl": _measurement,
    "events.jsonl": _event,
    "tools.jsonl": _tool_cell,
    "evasion.jsonl": _evasion_row,
}
_S, _I, _B, _F, _L = pa.string(), pa.int64(), pa.bool_(), pa.float64(), pa.list_(pa.string())
_COLUMNS: dict[str, tuple[str, list[tuple[str, pa.DataType]]]] = {
    "measurements.jsonl": ("measurements", [
        ("measurement_start_time", pa.timestamp("us")), ("input", _S), ("hostname", _S),
        ("category_code", _S), ("blocking", _S), ("accessible", _B), ("mechanism", _S),
        ("injector", _S), ("residual", _B), ("control_failure", _B), ("correct", _B),
        ("truth", _S), ("dns_answers", _L), ("failures", _L), ("http_status", _I),
        ("report_id", _S), ("software", _S), ("x_gfwlab", _S),
    ]),
    "events.jsonl": ("events", [
        ("ts", _F), ("proto", _S), ("src", _S), ("sport", _I), ("dst", _S), ("dport", _I),
        ("direction", _S), ("mechanism", _S), ("action", _S), ("rule", _S),
        ("residual_until", _F), ("citation", _S), ("injector", _S), ("sni", _S), ("qname", _S),
        ("forged_ips", _L), ("residual", _B), ("extra", _S),
    ]),
    "tools.jsonl": ("tool_cells", [
        ("tool", _S), ("date", _S), ("trials", _I), ("successes", _I), ("outcome", _S),
        ("rate", _F), ("ci_lo", _F), ("ci_hi", _F), ("mechanisms", _L), ("first_packet", _S),
        ("citation", _S), ("trial_mode", _S),
    ]),
    CAPTURE: ("forged", [
        ("event_idx", _I), ("ts", _F), ("mechanism", _S), ("injector", _S), ("toward", _S),
        ("flags", _I), ("ttl", _I), ("ip_id", _I), ("df", _B), ("latency_ms", _F),
    ]),
    "evasion.jsonl": ("evasion", [
        ("date", _S), ("family", _S), ("strategy", _S), ("published", _F), ("also", _F),
        ("trials", _I), ("successes", _I), ("lo", _I), ("hi", _I), ("passes", _B), ("note", _S),
        ("mode", _S),
    ]),
}  # fmt: skip


def _replace(
    con: duckdb.DuckDBPyConnection,
    root: Path,
    run_id: str,
    run: dict[str, Any],
    notes: list[str],
    stamp: list[tuple[str, int, int]],
    loaded: dict[str, list[tuple[Any, ...]]],
) -> None:
    con.execute("BEGIN")
    try:
        for table in ("files", "runs", "measurements", "events", "forged", "tool_cells", "evasion"):
            con.execute(f"DELETE FROM {table}")
        con.execute(
            "INSERT INTO runs VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [
                run_id, run["kind"], run["format"], run.get("gfwlab_version"),
                run.get("started"), run.get("finished"), run["profile"], run.get("date"),
                run.get("seed"), run["argv"], str(root.resolve()), "; ".join(notes) or None,
            ],
        )  # fmt: skip
        for name, records in loaded.items():
            table, cols = _COLUMNS[name]
            arrays = {
                col: pa.array([r[i] for r in records], type=typ)
                for i, (col, typ) in enumerate(cols)
            }
            arrays = {
                "run_id": pa.array([run_id] * len(records), type=_S),
                "idx": pa.array(range(len(records)), type=pa.int32()),
                **arrays,
            }
            batch = pa.table(arrays)  # noqa: F841 - DuckDB reads the local by name
            names = ", ".join(arrays)
            con.execute(f"INSERT INTO {table} ({names}) SELECT {names} FROM batch")
        counts = {n: len(r) for n, r in loaded.items()}
        for name, size, mtime in stamp:
            con.execute(
                "INSERT INTO files VALUES (?, ?, ?, ?, ?)",
                [run_id, name, size, mtime, counts.get(name, 1)],
            )
        con.execute("COMMIT")
    except BaseException:
        con.execute("ROLLBACK")
        raise


def _counts(con: duckdb.DuckDBPyConnection) -> dict[str, int]:
    out = {}
    for table in ("runs", "measurements", "events", "verdicts", "forged", "tool_cells", "evasion"):
        row = con.execute(f"SELECT count(*) FROM {table}").fetchone()
        out[table] = int(row[0]) if row else 0
    return out


def save_events(
    folder: str,
    events: str,
    kind: str,
    *,
    started: str,
    profile: list[str],
    date: str | None,
    seed: int | None,
    **extra: Any,
) -> None:
    """A results folder of one run's events (``analyze --results DIR``): the events file copied
    into it (unless written there), ``run.json``, and the loaded ``results.duckdb``."""
    import shutil  # noqa: PLC0415

    target = os.path.join(folder, "events.jsonl")
    if os.path.realpath(events) != os.path.realpath(target):
        shutil.copyfile(events, target)
    write_run(folder, kind, started=started, profile=profile, date=date, seed=seed, **extra)
    ingest_dir(folder)
