"""Live: ``gfwlab probe --lab`` against each kind of interference, graded by the censor's events.

One lab for the module, with a name (and a site address) per mechanism: DNS injection, RST on
the SNI, RST on the HTTP Host, null route, QUIC drop, FET drop (its residual, after a trigger),
the residual of the SNI reset, and sites nobody blocks. Each verdict must be the one a
measurement expert would give, right by the censor's events; an unreachable control must be a
control failure; the verdicts must not change when the events are hidden from the probe; a
naive probe must score lower where it is wrong; every result must load with ``oonidata``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gfwlab.lab.services import wait_quic
from gfwlab.lab.state import state_dir
from gfwlab.measure import session, sites
from gfwlab.measure.lists import Entry, write
from oonicheck import load_with_oonidata
from testenv import LAB_MARKS, gfwlab, leftovers

pytestmark = LAB_MARKS

NAMES = {
    "dns": "https://dns.blocked.test/",
    "sni": "https://sni.blocked.test/",
    "http": "http://http.blocked.test/",
    "null": "https://null.blocked.test/",
    "quic": "https://quic.blocked.test/",
    "fet": "https://fet.blocked.test/",
    "open": "https://open.example.test/",
    "open2": "http://open2.example.test/",
    "open3": "https://www.open3.example.test/",
    "sni2": "https://sni2.blocked.test/",  # fresh addresses for the later tests' own triggers
    "http2": "http://http2.blocked.test/",
}
ORDER = list(NAMES)
SCENARIOS = ORDER[:9]
SCENARIOS.remove("fet")  # FET's residual drops come last (own test)
ADDR = {k: sites.site_address(i) for i, k in enumerate(ORDER)}
SETS = [
    "dns_injection.domains=['dns.blocked.test']",
    "tls_sni.domains=['sni.blocked.test', 'sni2.blocked.test']",
    "tls_sni.inside_out_only=[]",
    "tls_sni.injector='type2'",
    "tls_sni.delay_tail=false",
    "tls_sni.residual_s=10",
    "http_keyword.domains=['http.blocked.test', 'http2.blocked.test']",
    "http_keyword.probability=1.0",
    "http_keyword.injector='type3'",
    "http_keyword.residual_s=6",  # outlasts a loaded machine's gap to the residual check
    "http_keyword.residual_probability=1.0",
    "http_keyword.delay_tail=false",  # a reset after the probe's timeout would read as a drop
    f"null_route.targets=['{ADDR['null']}/32']",
    "quic_sni.domains=['quic.blocked.test']",
    "quic_sni.residual_s=30",
    "quic_sni.block_latency_ms=[]",  # the lab's paths finish a handshake before 110 ms
    "fet.active={start='2021-11-01'}",
    "fet.probability=1.0",
    f"fet.targets=['{ADDR['fet']}/32']",
    "fet.residual_s=30",
    "ss_probing.enabled=false",  # the FET trigger's random bytes would draw probes too
]
EXPECTED: dict[str, tuple[object, str | None, str | None]] = {
    # blocking, mechanism, injector (None: not checked)
    "dns": ("dns", "dns_injection", None),
    "sni": ("http-failure", "tls_sni", "type2"),
    "http": ("http-failure", "http_keyword", "type3"),
    "null": ("tcp_ip", "null_route", None),
    "quic": (False, "quic_sni", None),
    "fet": ("tcp_ip", "fet", None),
    "open": (False, None, None),
    "open2": (False, None, None),
    "open3": (False, None, None),
}


def entries(*keys: str) -> list[Entry]:
    return [Entry(NAMES[k], "MISC", "Miscellaneous content", "", "test", "") for k in keys]


@pytest.fixture(scope="module")
def lab() -> Iterator[None]:
    gfwlab("lab", "down")
    up = gfwlab(
        "lab", "up", "--date", "2024-06-01", "--seed", "5", *[x for s in SETS for x in ("--set", s)]
    )
    assert up.returncode == 0, up.stderr
    h3 = None
    try:
        sites.install([Entry(NAMES[k]).host for k in ORDER])
        h3 = _h3_server(ADDR["quic"], "quic.blocked.test")
        yield
    finally:
        if h3 is not None:
            h3.terminate()
            h3.wait(10)
        gfwlab("lab", "down")
        assert leftovers() == []


def _h3_server(address: str, name: str) -> subprocess.Popen[bytes]:
    """An HTTP/3 server on the QUIC site's own address, with that site's certificate."""
    cert = ""
    with open(os.path.join(state_dir(), "site-certs.map"), encoding="ascii") as fh:
        for line in fh:
            host, path = line.split()
            if host == name:
                cert = path.rstrip(";")
    assert cert, "the QUIC site has no certificate"
    proc = subprocess.Popen(
        [
            "ip",
            "netns",
            "exec",
            "gfwlab-server",
            sys.executable,
            "-m",
            "gfwlab.lab.h3",
            "serve",
            "--cert",
            cert,
            "--key",
            cert.removesuffix(".pem") + ".key",
            "--host",
            address,
            "--port",
            "443",
            "--log",
            os.path.join(state_dir(), "h3-quic-site.log"),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    assert wait_quic("gfwlab-server", address, 443, 20, proc=proc)
    return proc


def _trigger_fet(address: str) -> None:
    """Fully encrypted bytes from the client to the FET site: its port is black-holed after."""
    code = (
        "import os, socket\n"
        f"s = socket.create_connection(('{address}', 443), timeout=3)\n"
        "s.sendall(os.urandom(600))\n"
        "s.close()\n"
    )
    got = subprocess.run(
        ["ip", "netns", "exec", "gfwlab-client", sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert got.returncode == 0, got.stderr
    time.sleep(0.3)


def _by_host(run: session.ProbeRun) -> dict[str, dict[str, Any]]:
    return {m["input"]: m for m in run.measurements}


def _key(m: dict[str, Any]) -> tuple[object, ...]:
    tk = m["test_keys"]
    x = tk["x_gfwlab"]
    return (
        tk["blocking"],
        tk["accessible"],
        x["mechanism"],
        x["residual"],
        x["control_failure"],
        (x["injector"] or "").split(" ")[0],
    )


@pytest.fixture(scope="module")
def scenario_run(lab: None, tmp_path_factory: pytest.TempPathFactory) -> session.ProbeRun:
    out = tmp_path_factory.mktemp("probe") / "out"
    return session.probe_lab(entries(*SCENARIOS), out_dir=str(out), concurrency=4)


def test_each_interference_gets_the_experts_verdict(scenario_run: session.ProbeRun) -> None:
    got = _by_host(scenario_run)
    for key in SCENARIOS:
        blocking, mechanism, injector = EXPECTED[key]
        m = got[NAMES[key]]
        tk, x = m["test_keys"], m["test_keys"]["x_gfwlab"]
        assert tk["blocking"] == blocking, (
            key,
            tk["blocking"],
            x["reasons"],
            tk["tcp_connect"],
            tk["tls_handshakes"],
            scenario_run.events,
        )
        assert x["mechanism"] == mechanism, (key, x, tk["x_h3"], x["reasons"])
        if injector is not None:
            assert x["injector"] == injector, (key, x)
        assert x["correct"] is True, (key, x["truth"], x["reasons"])
        assert tk["accessible"] is (blocking is False), key
    # the SNI and HTTP resets left a residual block that a harmless second connection met
    assert got[NAMES["sni"]]["test_keys"]["x_gfwlab"]["residual"] is True
    assert got[NAMES["http"]]["test_keys"]["x_gfwlab"]["residual"] is True
    # several replies to one query, some in the spec's known forged pools
    dns = got[NAMES["dns"]]["test_keys"]
    assert len(dns["x_dns_replies"]) >= 2 and "known-pool" in dns["x_gfwlab"]["injector"]
    # no false positive: unblocked sites are accessible and have no censor events
    for key in ("open", "open2", "open3"):
        assert got[NAMES[key]]["test_keys"]["x_gfwlab"]["truth"]["events"] == 0
    assert scenario_run.grade is not None and scenario_run.grade.wrong == 0


def test_out_folder_contract_and_oonidata(scenario_run: session.ProbeRun, tmp_path: Path) -> None:
    out = tmp_path / "again"
    session.write(str(out), scenario_run)
    assert sorted(os.listdir(out)) == [
        "events.jsonl",
        "measurements.jsonl",
        "run.json",
        "sites.json",
    ]
    run = json.loads((out / "run.json").read_text())
    assert set(run) == {
        "kind",
        "format",
        "gfwlab_version",
        "started",
        "finished",
        "profile",
        "date",
        "seed",
        "argv",
    }
    assert (run["kind"], run["format"], run["profile"], run["date"], run["seed"]) == (
        "probe",
        1,
        "gfw",
        "2024-06-01",
        5,
    )
    events = [json.loads(x) for x in (out / "events.jsonl").read_text().splitlines()]
    assert {e["mechanism"] for e in events} >= {
        "dns_injection",
        "tls_sni",
        "http_keyword",
        "null_route",
        "quic_sni",
    }
    lines = (out / "measurements.jsonl").read_text().splitlines()
    assert len(lines) == len(SCENARIOS)
    raws = [json.loads(line) for line in lines]
    for raw, msmt in zip(raws, load_with_oonidata(raws), strict=True):
        assert msmt["type"] == "WebConnectivity"
        assert msmt["blocking"] == raw["test_keys"]["blocking"]
        assert msmt["annotations"] is not None and msmt["annotations"]["category_code"] == "MISC"
        assert msmt["first_query_hostname"]


def test_residual_block_on_the_next_probe(scenario_run: session.ProbeRun) -> None:
    first = session.probe_lab(entries("sni2"), concurrency=1)
    assert first.measurements[0]["test_keys"]["blocking"] == "http-failure"
    run = session.probe_lab(entries("sni2"), concurrency=1)  # within tls_sni.residual_s
    m = run.measurements[0]
    x = m["test_keys"]["x_gfwlab"]
    assert m["test_keys"]["blocking"] == "tcp_ip", x
    assert (x["mechanism"], x["residual"], x["injector"]) == ("residual", True, "type2")
    assert x["correct"] is True, x["truth"]


def test_unreachable_control_is_a_control_failure(scenario_run: session.ProbeRun) -> None:
    run = session.probe_lab(
        entries("open", "dns"), concurrency=2, control_resolver="198.19.0.8"
    )  # no DNS server there
    for m in run.measurements:
        tk = m["test_keys"]
        assert tk["blocking"] is None and tk["accessible"] is None, m["input"]
        assert tk["x_gfwlab"]["control_failure"].startswith("dns"), tk["x_gfwlab"]
        assert tk["x_gfwlab"]["correct"] is None
    assert run.grade is not None and (run.grade.wrong, run.grade.no_verdict) == (0, 2)


def test_verdicts_unchanged_with_events_hidden_and_naive_scores_lower(
    scenario_run: session.ProbeRun, tmp_path: Path
) -> None:
    keys = ("dns", "http2", "open", "open2")  # http2: no residual block from earlier tests
    seen = session.probe_lab(entries(*keys), concurrency=4)
    time.sleep(6.5)  # http_keyword.residual_s: the second run meets the same censor
    hidden = session.probe_lab(entries(*keys), concurrency=4, hide_events=True)
    assert [_key(m) for m in seen.measurements] == [_key(m) for m in hidden.measurements], (
        hidden.events,
        [m["test_keys"]["x_gfwlab"]["reasons"] for m in hidden.measurements],
        [m["test_keys"]["tcp_connect"] for m in hidden.measurements],
    )
    assert hidden.grade is not None and hidden.grade.wrong == 0 and hidden.grade.right == 4
    naive = session.probe_lab(  # http's residual from the scenario run has long ended
        entries("dns", "http", "open", "open2"),
        concurrency=4,
        naive=True,
        out_dir=str(tmp_path / "naive"),
    )
    assert naive.grade is not None and seen.grade is not None
    assert naive.grade.score < seen.grade.score
    wrong = {r["input"] for r in naive.grade.rows if r["correct"] is False}
    assert wrong == {NAMES["dns"], NAMES["http"]}
    # the grade command scores the naive tool's output file the same way
    session.write(str(tmp_path / "seen"), seen)
    g = gfwlab(
        "grade",
        str(tmp_path / "naive" / "measurements.jsonl"),
        "--session",
        str(tmp_path / "naive"),
        "--json",
    )
    assert g.returncode == 0, g.stderr
    assert json.loads(g.stdout)["wrong"] == 2


def test_system_mode_in_a_stand_in_system(scenario_run: session.ProbeRun, tmp_path: Path) -> None:
    """--system from the client namespace (its resolver and network are the "system"), the
    control in the server namespace."""
    lst = tmp_path / "list.csv"
    write(str(lst), entries("open", "dns"))
    out = tmp_path / "system"
    got = gfwlab(
        "lab",
        "exec",
        "client",
        "--",
        sys.executable,
        "-m",
        "gfwlab",
        "probe",
        "--system",
        "--control-netns",
        "gfwlab-server",
        "--control-resolver",
        "198.19.0.2",
        "--list",
        str(lst),
        "--out",
        str(out),
        "--json",
        timeout=120,
    )
    assert got.returncode == 0, got.stderr
    ms = [json.loads(x) for x in (out / "measurements.jsonl").read_text().splitlines()]
    verdicts = {m["input"]: m["test_keys"]["blocking"] for m in ms}
    assert verdicts == {NAMES["open"]: False, NAMES["dns"]: "dns"}


def test_dns_scan_counts_the_injected_names(lab: None, tmp_path: Path) -> None:
    lst = tmp_path / "scan.csv"
    write(str(lst), entries(*ORDER))
    got = gfwlab("probe", "--list", str(lst), "--dns-only", "--json")
    assert got.returncode == 0, got.stderr
    summary = json.loads(got.stdout)
    assert summary["injected_names"] == ["dns.blocked.test"]


def test_fet_residual_drop_is_tcp_ip_fet(scenario_run: session.ProbeRun) -> None:
    """Last: fully encrypted bytes to the FET site black-hole its port (spec §6); the probe
    sees its SYN vanish before the server and names the FET residual."""
    _trigger_fet(ADDR["fet"])
    run = session.probe_lab(entries("fet", "open"), concurrency=2)
    fet, other = run.measurements
    x = fet["test_keys"]["x_gfwlab"]
    assert fet["test_keys"]["blocking"] == "tcp_ip", x
    assert (x["mechanism"], x["residual"], x["correct"]) == ("fet", True, True), x
    assert other["test_keys"]["blocking"] is False  # another site: its own address, untouched
