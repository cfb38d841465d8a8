"""Probe results as OONI measurements, and the probe's output folder.

Each result is one measurement in OONI's base data format (ooni/spec ``df-000-base``) with
Web Connectivity test keys (``ts-017-web-connectivity``: ``queries``, ``tcp_connect``,
``tls_handshakes``, ``requests``, ``control``, ``blocking``, ``accessible``, and ``x_*`` keys,
which OONI allows for experimental fields). ``annotations.category_code`` carries the list's
category. gfwlab's attribution and grading are in ``test_keys["x_gfwlab"]``::

    {"mechanism": str | null, "injector": str | null, "residual": bool,
     "control_failure": str | null, "h3_blocked": bool, "reasons": [str],
     "truth": {...} | null, "correct": bool | null}

OONI's own library (``oonidata``) loads them as ``WebConnectivity`` measurements; it keeps the
standard keys and ignores ``x_gfwlab``.

The output folder (``--out DIR``) is written whole or not at all: the files are made in a
temporary sibling folder that replaces ``DIR`` by renaming. It holds:

``measurements.jsonl``  one measurement per line, in list order;
``events.jsonl``        the censor's events during the run (DESIGN.md event JSON), lab only;
``run.json``            ``{"kind": "probe", "format": 1, "gfwlab_version", "started",
                        "finished", "profile", "date", "seed", "argv"}``.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Sequence
from typing import Any

from gfwlab import __version__
from gfwlab.errors import GfwlabError
from gfwlab.measure.dnscheck import DnsResult
from gfwlab.measure.probe import SiteResult
from gfwlab.measure.web import WebResult, as_ooni_http

FORMAT = 1
TEST_VERSION = "0.4.3"
LAB_ASN = "AS64496"
"""The lab probe's ASN: the first documentation ASN (RFC 5398)."""


def ooni_time(ts: float) -> str:
    """OONI's ``YYYY-MM-DD HH:MM:SS`` UTC timestamps."""
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%d %H:%M:%S")


def report_id(started: float, seed: int) -> str:
    """An OONI-shaped report ID: ``YYYYMMDDTHHMMSSZ_webconnectivity_XX_ASN_n1_<hash>``."""
    stamp = dt.datetime.fromtimestamp(started, dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    digest = hashlib.sha256(f"{started}:{seed}".encode()).hexdigest()[:16]
    return f"{stamp}_webconnectivity_ZZ_{LAB_ASN[2:]}_n1_{digest}"


def _queries(res: DnsResult, t0: float) -> list[dict[str, Any]]:
    answers = []
    first = res.first
    if first is not None:
        for a in first.addrs:
            kind = "AAAA" if ":" in a else "A"
            answers.append(
                {
                    "answer_type": kind,
                    ("ipv6" if kind == "AAAA" else "ipv4"): a,
                    "ttl": first.dns_ttl,
                }
            )
    return [
        {
            "engine": "udp",
            "resolver_address": res.resolver,
            "query_type": res.qtype,
            "hostname": res.hostname,
            "answers": answers,
            "failure": res.failure,
            "t": round(first.t if first else 0.0, 6),
        }
    ]


def _tcp(w: WebResult) -> list[dict[str, Any]]:
    return [
        {
            "ip": w.address,
            "port": w.port,
            "t": round(w.tcp.t, 6),
            "status": {"success": w.tcp.failure is None, "failure": w.tcp.failure, "blocked": None},
        }
    ]


def _tls(w: WebResult, host: str) -> list[dict[str, Any]]:
    if w.tls is None:
        return []
    return [
        {
            "address": f"{w.address}:{w.port}",
            "network": "tcp",
            "server_name": host,
            "failure": w.tls.failure,
            "tls_version": w.tls_version,
            "cipher_suite": w.cipher,
            "negotiated_protocol": "http/1.1" if w.tls.failure is None else None,
            "no_tls_verify": False,
            "t": round(w.tls.t, 6),
        }
    ]


def _control(r: SiteResult) -> dict[str, Any]:
    cdns, cweb = r.obs.control_dns, r.obs.control_web
    out: dict[str, Any] = {}
    if cdns is not None:
        out["dns"] = {"failure": cdns.failure, "addrs": cdns.addrs}
    if cweb is not None:
        key = f"{cweb.address}:{cweb.port}"
        out["tcp_connect"] = {
            key: {"status": cweb.tcp.failure is None, "failure": cweb.tcp.failure}
        }
        if cweb.tls is not None:
            out["tls_handshake"] = {
                key: {
                    "status": cweb.tls.failure is None,
                    "failure": cweb.tls.failure,
                    "server_name": r.entry.host,
                }
            }
        resp = cweb.response
        out["http_request"] = {
            "failure": cweb.failure if cweb.failed_step in ("tls", "http") else None,
            "body_length": resp.body_length if resp else None,
            "title": resp.title if resp else None,
            "headers": dict(resp.headers) if resp else {},
            "status_code": resp.status if resp else None,
        }
    return out


def _consistency(r: SiteResult) -> str | None:
    a = r.obs.dns_analysis
    if a.consistent is None:
        return None
    return "consistent" if a.consistent and not a.injected else "inconsistent"


def measurement(
    r: SiteResult, *, report: str, test_start: float, asn: str = LAB_ASN, probe_cc: str = "ZZ"
) -> dict[str, Any]:
    """The OONI measurement of one result (grading fields null until graded)."""
    o, v = r.obs, r.verdict
    w = o.web
    cweb = o.control_web
    resp = w.response if w is not None else None
    cresp = cweb.response if cweb is not None else None
    tk: dict[str, Any] = {
        "client_resolver": o.dns.resolver.rsplit(":", 1)[0],
        "queries": _queries(o.dns, r.started),
        "tcp_connect": _tcp(w) if w is not None else [],
        "tls_handshakes": _tls(w, r.entry.host) if w is not None else [],
        "requests": [as_ooni_http(w)] if w is not None and w.tcp.failure is None else [],
        "control": _control(r),
        "control_failure": v.control_failure,
        "dns_experiment_failure": o.dns.failure,
        "http_experiment_failure": w.failure if w is not None else None,
        "dns_consistency": _consistency(r),
        "status_code_match": (resp.status == cresp.status) if resp and cresp else None,
        "body_length_match": None,
        "body_proportion": None,
        "title_match": (resp.title == cresp.title) if resp and cresp else None,
        "headers_match": None,
        "blocking": v.blocking,
        "accessible": v.accessible,
        "x_dns_late_replies": [x.as_dict() for x in o.dns.replies[1:]],
        "x_dns_replies": [x.as_dict() for x in o.dns.replies],
        "x_h3": None
        if o.h3 is None
        else {
            "failure": o.h3.failure,
            "status": o.h3.status,
            "control_failure": o.control_h3.failure if o.control_h3 else None,
        },
        "x_resets": [p.as_dict() for p in o.resets],
        "x_gfwlab": {
            "mechanism": v.mechanism,
            "injector": v.injector,
            "residual": v.residual,
            "control_failure": v.control_failure,
            "h3_blocked": v.h3_blocked,
            "reasons": v.reasons,
            "truth": None,
            "correct": None,
        },
    }
    if resp and cresp:
        la, lb = resp.body_length, cresp.body_length
        prop = min(la, lb) / max(la, lb) if max(la, lb) else 1.0
        tk["body_proportion"] = round(prop, 4)
        tk["body_length_match"] = prop >= 0.7
    return {
        "annotations": {
            "category_code": r.entry.category_code,
            "engine_name": "gfwlab",
            "platform": "linux",
        },
        "data_format_version": "0.2.0",
        "input": r.entry.url,
        "measurement_start_time": ooni_time(r.started),
        "probe_asn": asn,
        "probe_cc": probe_cc,
        "probe_ip": "127.0.0.1",
        "probe_network_name": "gfwlab lab",
        "report_id": report,
        "resolver_asn": asn,
        "resolver_ip": o.dns.resolver.rsplit(":", 1)[0],
        "software_name": "gfwlab",
        "software_version": __version__,
        "test_helpers": {"backend": {"address": "gfwlab-server namespace", "type": "lab"}},
        "test_keys": tk,
        "test_name": "web_connectivity",
        "test_runtime": round(r.runtime, 6),
        "test_start_time": ooni_time(test_start),
        "test_version": TEST_VERSION,
    }


def run_info(
    *,
    started: float,
    finished: float,
    profile: str | None,
    date: str | None,
    seed: int | None,
    argv: Sequence[str],
) -> dict[str, Any]:
    """The ``run.json`` document."""
    return {
        "kind": "probe",
        "format": FORMAT,
        "gfwlab_version": __version__,
        "started": ooni_time(started).replace(" ", "T") + "Z",
        "finished": ooni_time(finished).replace(" ", "T") + "Z",
        "profile": profile,
        "date": date,
        "seed": seed,
        "argv": list(argv),
    }


def jsonl(items: Sequence[dict[str, Any]]) -> str:
    return "".join(json.dumps(x, ensure_ascii=False, sort_keys=True) + "\n" for x in items)


PROBE_FILES = ("measurements.jsonl", "events.jsonl", "sites.json", "run.json")
"""What a probe's results folder holds (:func:`gfwlab.measure.session.write`)."""


def publish(out_dir: str, files: dict[str, str]) -> None:
    """Write ``files`` (name -> text) as the folder ``out_dir``, whole or not at all. An existing
    folder is replaced only if it holds nothing but what a probe writes (and a results
    database), so that ``--out`` pointed at a folder of other files never deletes them."""
    out_dir = os.path.abspath(out_dir)
    if os.path.isdir(out_dir):
        ours = {*files, *PROBE_FILES, "results.duckdb", "results.duckdb.wal", "report.html"}
        others = sorted(set(os.listdir(out_dir)) - ours)
        if others:
            raise GfwlabError(
                f"{out_dir}: not a probe's results folder (it holds {others[0]!r}); "
                "choose a new or empty folder for --out"
            )
    parent = os.path.dirname(out_dir)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(out_dir)}.", dir=parent)
    old: str | None = None
    try:
        for name, text in files.items():
            with open(os.path.join(tmp, name), "w", encoding="utf-8") as fh:
                fh.write(text)
                fh.flush()
                os.fsync(fh.fileno())
        os.chmod(tmp, 0o755)
        if os.path.lexists(out_dir):
            old = tempfile.mkdtemp(prefix=f".{os.path.basename(out_dir)}.old.", dir=parent)
            os.rmdir(old)
            os.rename(out_dir, old)
        os.rename(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if old is not None and not os.path.exists(out_dir):
            os.rename(old, out_dir)
            old = None
        raise
    finally:
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
