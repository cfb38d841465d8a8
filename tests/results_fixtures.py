# ruff: noqa: E501 - the fixtures keep one site, one event per line
"""Small results folders written the way gfwlab's commands write them, for the results and
report tests: a probe run (OONI Web Connectivity measurements with gfwlab's attribution, and the
lab censor's events of the same sites), a tools matrix, and an evasion matrix.

The measurements follow OONI's base data format and the web_connectivity test keys
(ooni/spec: data-formats/df-000-base.md, nettests/ts-017-web-connectivity.md).
"""

from __future__ import annotations

import contextlib
import io
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

T0 = 1_717_243_200.0  # 2024-06-01 12:00:00 UTC

CITE_SNI = "spec §4a; Wu, Zohaib et al., A Wall Behind A Wall, IEEE S&P 2025"
CITE_DNS = "spec §2; Anonymous et al., Triplet Censors, FOCI 2020"
CITE_HTTP = "spec §3; Rambert et al., WWW 2021"
CITE_NULL = "spec §8"

# url, category, blocking, accessible, mechanism, injector, residual, control_failure, address
SITES: list[tuple[str, str, Any, Any, str | None, str | None, bool, bool, str]] = [
    ("https://www.facebook.com/", "GRP", "tcp_ip", False, "tls_sni", "type1", False, False, "198.19.1.1"),
    ("https://twitter.com/", "GRP", "tcp_ip", False, "tls_sni", "type2", False, False, "198.19.1.2"),
    ("https://www.google.com/", "SRCH", "dns", False, "dns_injection", "injector3", False, False, "198.19.1.3"),
    ("http://example.org/?q=ultrasurf", "ANON", "http-failure", False, "http_keyword", "clayton2006", False, False, "198.19.1.4"),
    ("https://www.nytimes.com/", "NEWS", "tcp_ip", False, "tls_sni", "type1", True, False, "198.19.1.5"),
    ("https://www.bbc.com/", "NEWS", False, True, None, None, False, False, "198.19.1.6"),
    ("https://casino.example/", "GMB", "tcp_ip", False, "null_route", None, False, False, "198.19.1.7"),
    ("https://poker.example/", "GMB", False, True, None, None, False, False, "198.19.1.8"),
    ("https://guns.example/", "MILX", None, None, None, None, False, True, "198.19.1.9"),
    ("https://www.hrw.org/", "HUMR", "tcp_ip", False, "tls_sni", "type2", False, False, "198.19.1.10"),
    ("https://example.org/", "CTRL", False, True, None, None, False, False, "198.19.1.11"),
]  # fmt: skip


def run_json(kind: str, **extra: Any) -> dict[str, Any]:
    return {
        "kind": kind,
        "format": 1,
        "gfwlab_version": "0.1.0",
        "started": "2024-06-01T12:00:00Z",
        "finished": "2024-06-01T12:01:00Z",
        "profile": ["gfw"],
        "date": "2024-06-01",
        "seed": 1,
        "argv": ["gfwlab", kind],
        **extra,
    }


def measurement(i: int, site: tuple[Any, ...]) -> dict[str, Any]:
    url, cat, blocking, accessible, mech, injector, residual, control_failure, addr = site
    host = url.split("/")[2]
    https = url.startswith("https")
    port = 443 if https else 80
    forged = blocking == "dns"
    answers = [{"answer_type": "A", "ipv4": "59.24.3.174" if forged else addr, "ttl": None}]
    if forged:
        answers.append({"answer_type": "A", "ipv4": "208.77.47.172", "ttl": None})
    reset = blocking in ("tcp_ip", "http-failure")
    tcp_ok = blocking not in ("tcp_ip",) or mech == "tls_sni"
    null = mech == "null_route"
    failure_tls = "connection_reset" if mech == "tls_sni" else None
    tk: dict[str, Any] = {
        "agent": "redirect",
        "client_resolver": "198.18.0.2",
        "queries": [{
            "answers": answers, "engine": "system", "failure": None, "hostname": host,
            "query_type": "A", "resolver_address": "", "t": 0.01 * i,
        }],
        "tcp_connect": [] if forged else [{
            "ip": addr, "port": port, "t": 0.02,
            "status": {"blocked": null, "failure": "generic_timeout_error" if null else None,
                       "success": tcp_ok and not null},
        }],
        "tls_handshakes": [] if not https or forged or null else [{
            "address": f"{addr}:{port}", "server_name": host, "failure": failure_tls,
            "negotiated_protocol": None if failure_tls else "h2", "t": 0.05,
            "tls_version": None if failure_tls else "TLSv1.3",
        }],
        "requests": [{
            "failure": "connection_reset" if reset else ("generic_timeout_error" if control_failure else None),
            "request": {"method": "GET", "url": url, "headers": {}, "body": "", "tor": {"is_tor": False}},
            "response": {"code": 0 if reset or control_failure else 200, "body": "", "headers": {}},
            "t": 0.1,
        }],
        "control_failure": "generic_timeout_error" if control_failure else None,
        "dns_experiment_failure": None,
        "dns_consistency": "inconsistent" if forged else "consistent",
        "http_experiment_failure": "connection_reset" if reset else None,
        "blocking": blocking,
        "accessible": accessible,
        "x_gfwlab": {
            "mechanism": mech, "injector": injector, "residual": residual,
            "control_failure": control_failure,
            "truth": None if control_failure else {"blocking": blocking, "mechanism": mech},
            "correct": None if control_failure else i != 9,
        },
    }  # fmt: skip
    if i == 9:  # a wrong verdict, for the accuracy table
        tk["x_gfwlab"]["truth"] = {"blocking": "dns", "mechanism": "dns_injection"}
    day = "2024-06-01" if i < 6 else "2024-06-02"
    return {
        "annotations": {"category_code": cat, "engine_name": "gfwlab", "platform": "linux"},
        "data_format_version": "0.2.0",
        "input": url,
        "measurement_start_time": f"{day} 12:00:{i:02d}",
        "probe_asn": "AS0",
        "probe_cc": "ZZ",
        "probe_ip": "127.0.0.1",
        "probe_network_name": "gfwlab",
        "report_id": "20240601T120000Z_webconnectivity_ZZ_0_n1_gfwlab",
        "resolver_asn": "AS0",
        "resolver_ip": "198.18.0.2",
        "software_name": "gfwlab",
        "software_version": "0.1.0",
        "test_helpers": {"backend": {"address": "lab-control", "type": "lab"}},
        "test_keys": tk,
        "test_name": "web_connectivity",
        "test_runtime": 0.2,
        "test_start_time": "2024-06-01 12:00:00",
        "test_version": "0.4.3",
    }


def events_for(sites: list[tuple[Any, ...]]) -> list[dict[str, Any]]:
    """The lab censor's events for those sites, as the daemon writes them."""
    out: list[dict[str, Any]] = []
    for i, (url, _cat, _b, _a, mech, injector, residual, _cf, addr) in enumerate(sites):
        ts = T0 + i * 1.5
        host = url.split("/")[2]
        flow = {"proto": "tcp", "src": "198.18.0.2", "sport": 40000 + i, "dst": addr, "dport": 443}
        if mech == "tls_sni":
            if residual:
                first = dict(flow, sport=39000 + i)
                out.append({"ts": ts - 1.0, "flow": first, "direction": "inside-out",
                            "mechanism": mech, "action": "rst", "rule": host,
                            "residual_until": ts + 179.0, "citation": CITE_SNI, "sni": host,
                            "injector": injector})  # fmt: skip
                out.append({"ts": ts, "flow": flow, "direction": "inside-out", "mechanism": mech,
                            "action": "rst", "rule": host, "residual_until": ts + 179.0,
                            "citation": CITE_SNI, "residual": True, "injector": injector})  # fmt: skip
            else:
                out.append({"ts": ts, "flow": flow, "direction": "inside-out", "mechanism": mech,
                            "action": "rst", "rule": host, "residual_until": ts + 180.0,
                            "citation": CITE_SNI, "sni": host, "injector": injector})  # fmt: skip
        elif mech == "dns_injection":
            dflow = {"proto": "udp", "src": "198.18.0.2", "sport": 50000 + i, "dst": "198.19.0.53",
                     "dport": 53}  # fmt: skip
            out.append({"ts": ts, "flow": dflow, "direction": "inside-out", "mechanism": mech,
                        "action": "dns-inject", "rule": "google.com", "residual_until": None,
                        "citation": CITE_DNS, "qname": host, "qtype": 1, "answers": [
                            {"injector": "injector3", "addr": "59.24.3.174", "flags": "0x8180", "leaked": 0},
                            {"injector": "ttl-mirror", "addr": "208.77.47.172", "flags": "0x8180", "leaked": 0},
                        ]})  # fmt: skip
        elif mech == "http_keyword":
            hflow = dict(flow, dport=80)
            out.append({"ts": ts, "flow": hflow, "direction": "inside-out", "mechanism": mech,
                        "action": "rst", "rule": "ultrasurf", "residual_until": ts + 90.0,
                        "citation": CITE_HTTP, "host": host, "path": "/?q=ultrasurf",
                        "injector": injector})  # fmt: skip
        elif mech == "null_route":
            out.append({"ts": ts, "flow": flow, "direction": "inside-out", "mechanism": mech,
                        "action": "null-route", "rule": f"{addr}/32", "residual_until": None,
                        "citation": CITE_NULL})  # fmt: skip
    out.append({"ts": T0 + 30, "flow": {"proto": "tcp", "src": "198.18.0.2", "sport": 41999,
                "dst": "198.19.1.6", "dport": 443}, "direction": "inside-out",
                "mechanism": "engine", "action": "anomaly", "rule": "tls.client_hello_fragmented",
                "residual_until": None, "citation": "", "offset": 6, "detail": "split"})  # fmt: skip
    return sorted(out, key=lambda e: e["ts"])


def write_lines(path: Path, objs: list[dict[str, Any]]) -> None:
    path.write_text("".join(json.dumps(o) + "\n" for o in objs))


def probe_folder(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    (path / "run.json").write_text(json.dumps(run_json("probe")))
    write_lines(path / "measurements.jsonl", [measurement(i, s) for i, s in enumerate(SITES)])
    write_lines(path / "events.jsonl", events_for(SITES))
    return path


TOOLS = ["shadowsocks-libev", "ss+simple-obfs-http", "v2ray-vmess-tcp", "trojan", "wireguard"]
DATES = ["2020-06-01", "2022-06-01", "2024-06-01"]


def tool_cell(tool: str, date: str) -> dict[str, Any]:
    fet = date == "2022-06-01" and tool in ("shadowsocks-libev", "v2ray-vmess-tcp")
    if tool == "wireguard":
        return {"tool": tool, "date": date, "trials": 10, "successes": 10,
                "outcome": "no-published-mechanism", "rate": 1.0, "ci": [0.59, 1.0],
                "mechanisms": [], "first_packet": None, "citation": "", "trial_mode": "fresh-address"}  # fmt: skip
    succ = 37 if fet else 50
    return {
        "tool": tool, "date": date, "trials": 50, "successes": succ,
        "outcome": "degraded" if fet else "works", "rate": succ / 50,
        "ci": [0.57, 0.86] if fet else [0.9, 1.0],
        "mechanisms": ["fet"] if fet else [],
        "first_packet": {"length": 517, "popcount": 4.02, "printable_prefix": 1,
                         "hex": "16030100f4"} if fet else None,
        "citation": "spec §6; Wu et al., USENIX Security 2023" if fet else "",
        "trial_mode": "fresh-address",
    }  # fmt: skip


def tools_folder(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    (path / "run.json").write_text(json.dumps(run_json("tools", date=None)))
    write_lines(path / "tools.jsonl", [tool_cell(t, d) for t in TOOLS for d in DATES])
    return path


@dataclass
class Ran:
    """What a ``gfwlab`` command run in this process printed, and its exit code."""

    returncode: int
    stdout: str
    stderr: str


def gfwlab_here(*args: str) -> Ran:
    """Run ``gfwlab ARGS`` through its real entry point (argument parsing, error mapping, exit
    codes) in this process: a fresh interpreter per command costs a second or more here."""
    from gfwlab.cli import main  # noqa: PLC0415

    out, err = io.StringIO(), io.StringIO()
    argv = sys.argv
    sys.argv = ["gfwlab", *args]
    code = 0
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                main()
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else 1
    finally:
        sys.argv = argv
    return Ran(code, out.getvalue(), err.getvalue())
