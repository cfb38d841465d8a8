"""Offline: test lists, the RST fingerprint classifier against the engine's own injectors, DNS
injection analysis, verdicts, grading, the naive probe, OONI measurements (loaded with
``oonidata``) and bad input to ``probe`` and ``grade``."""

from __future__ import annotations

import os
import socket
import threading
from pathlib import Path

import dns.message
import dns.rcode
import dns.rrset
import pytest

from gfwlab.engine.stream import Stream
from gfwlab.errors import GfwlabError
from gfwlab.lab import ca
from gfwlab.measure import dnscheck, grade, lists, ooni, sites, sniff
from gfwlab.measure.dnscheck import DnsResult, Reply
from gfwlab.measure.probe import SiteResult
from gfwlab.measure.verdict import Observation, decide, naive
from gfwlab.measure.web import (
    H3Result,
    HttpResult,
    Step,
    WebResult,
    parse_response,
    tls_context,
)
from gfwlab.mechanisms._forge import ResetParams, forge_resets
from gfwlab.packet.ip import ACK, PSH, addr_bytes, build_tcp, parse
from gfwlab.proto.dns import build_answer, parse_query
from oonicheck import load_with_oonidata
from testenv import SHARED_BLOCKLISTS, gfwlab, needs_shared

HEADER = ",".join(lists.HEADER)


def test_list_round_trip_and_malformed_lines_named(tmp_path: Path) -> None:
    text = (
        "\n".join(
            [
                HEADER,
                "https://a.example/,NEWS,News Media,2026-12-01,x,",
                "not,enough",
                "ftp://b.example/,NEWS,News Media,2026-12-01,x,",
                "https://c.example/,news,News Media,2026-12-01,x,",
                "https://" + "d" * 300 + ".example/,NEWS,News Media,2026-12-01,x,",
                "https://e.example:8443/,NEWS,News Media,2026-12-01,x,",
                'https://f.example/,GMB,Gambling,2026-12-01,x,"a, quoted note"',
                "https://a b.example/,NEWS,x,2026-12-01,x,",
                "https://1.2.3.4/,NEWS,x,2026-12-01,x,",
                "https://g.example/," + "A" * 2000 + ",x,2026-12-01,x,",
            ]
        )
        + "\n"
    )
    got = lists.parse(text, "l.csv")
    assert [e.host for e in got.entries] == ["a.example", "f.example"]
    assert [w.split(":")[1].strip() for w in got.warnings] == [
        "line 3",
        "line 4",
        "line 5",
        "line 6",
        "line 7",
        "line 9",
        "line 10",
        "line 11",
    ]
    assert all(w.startswith("l.csv: line ") and w.endswith("skipped") for w in got.warnings)
    path = tmp_path / "out.csv"
    lists.write(str(path), got.entries)
    again = lists.read(str(path))
    assert again.entries == got.entries and not again.warnings
    assert again.entries[1].notes == "a, quoted note"


def test_list_refused_whole_when_unusable(tmp_path: Path) -> None:
    with pytest.raises(lists.ListError, match="header"):
        lists.parse("url,category\nhttps://a.example/,NEWS\n", "x.csv")
    with pytest.raises(lists.ListError, match="cannot read"):
        lists.read(str(tmp_path / "missing.csv"))
    (tmp_path / "bin.csv").write_bytes(b"\xff\xfe\x00")
    with pytest.raises(lists.ListError, match="not UTF-8"):
        lists.read(str(tmp_path / "bin.csv"))


def test_builtin_list_covers_the_campaign_and_the_gfw_categories() -> None:
    got = lists.builtin_list()
    assert not got.warnings
    assert 300 <= len(got.entries) <= 600
    codes = {e.category_code for e in got.entries}
    assert codes >= {
        "GMB",
        "ALDR",
        "MILX",
        "PORN",
        "MISC",
        "NEWS",
        "POLR",
        "HUMR",
        "ANON",
        "GRP",
        "COMM",
    }
    assert len(got.hosts()) == len(got.entries)
    assert any("fraud" in e.notes for e in got.entries)


@needs_shared(SHARED_BLOCKLISTS / "gfw-sni-2024-categorized.csv")
def test_builtin_list_names_come_mostly_from_the_real_lists() -> None:
    real: set[str] = set()
    for name in ("gfw-sni-2024-categorized.csv", "gfw-2024-dns-blocklist.txt"):
        with open(SHARED_BLOCKLISTS / name, encoding="utf-8") as fh:
            real |= {line.split(",")[0].strip().strip('"').lower() for line in fh}
    hosts = lists.builtin_list().hosts()
    assert sum(h in real for h in hosts) / len(hosts) > 0.8


def _forged(injector: str, seed: int) -> list[sniff.RstPacket]:
    trigger = parse(
        build_tcp(
            addr_bytes("198.18.0.2"),
            addr_bytes("198.19.1.9"),
            40000,
            443,
            seq=1000,
            ack=5000,
            flags=ACK | PSH,
            payload=b"\x16\x03\x01" + b"x" * 200,
        )
    )
    params = ResetParams(injector=injector)  # type: ignore[arg-type]
    rng = Stream(f"rst:{seed}".encode())
    _kind, forged = forge_resets(trigger, c2s=True, params=params, rng=rng)
    out = []
    for f in forged:
        if f.toward != "client":
            continue
        p = sniff.parse_rst(f.packet, 0.0)
        assert p is not None
        out.append(p)
    return out


@pytest.mark.parametrize("injector", ["type1", "type2", "type3", "clayton2006"])
def test_rst_classifier_names_the_engines_injectors(injector: str) -> None:
    for seed in range(20):
        assert sniff.classify(_forged(injector, seed)) == injector


def _reply(addrs: list[str], flags: int = 0x8180, ttl: int | None = 50) -> Reply:
    return Reply(addrs, "NOERROR", flags, 60, ttl, 0.001)


def _dns(*replies: Reply, failure: str | None = None) -> DnsResult:
    return DnsResult("a.example", "198.19.0.2:53", replies=list(replies), failure=failure)


def test_dns_injection_seen_from_replies_alone() -> None:
    real = _reply(["198.19.1.7"])
    forged = _reply(["59.24.3.174"], 0x8580, 60)
    a = dnscheck.analyse(_dns(forged, real), _dns(real))
    assert a.injected and a.consistent is False
    assert a.forged == ["59.24.3.174"]
    assert a.injectors[0].startswith("aa-ra (0x8580") and "ttl-mirror" in a.injectors[0]
    assert "known-pool" in a.injectors[0]
    # a forged answer outside the known pools, no control: two different replies suffice
    b = dnscheck.analyse(_dns(_reply(["198.19.99.7"]), real), None)
    assert b.injected and b.forged == ["198.19.99.7"] and b.consistent is None
    # one honest reply, equal to the control's
    c = dnscheck.analyse(_dns(real), _dns(real))
    assert not c.injected and c.consistent is True
    assert dnscheck.known_forged("2001::abcd") and not dnscheck.known_forged("2001:db8::1")


def _web(
    step: str | None = None, failure: str | None = None, body: bytes = b"ok", status: int = 200
) -> WebResult:
    w = WebResult("https://a.example/", "198.19.1.7", 443, local_port=40000)
    w.tcp = Step(failure if step == "tcp" else None, 0.001)
    if step != "tcp":
        w.tls = Step(failure if step == "tls" else None, 0.002)
    if step not in ("tcp", "tls"):
        w.http = Step(failure if step == "http" else None, 0.003)
        if step is None:
            w.response = HttpResult(status, {}, body, "")
    return w


def _obs(web: WebResult | None, control: WebResult | None = None, **kw: object) -> Observation:
    real = _reply(["198.19.1.7"])
    probe_dns = kw.pop("dns", _dns(real))
    assert isinstance(probe_dns, DnsResult)
    cdns = kw.pop("cdns", _dns(real))
    obs = Observation(
        probe_dns,
        cdns,
        dnscheck.analyse(probe_dns, cdns),  # type: ignore[arg-type]
        web,
        control if control is not None else _web(),
    )
    for k, v in kw.items():
        setattr(obs, k, v)
    return obs


def test_verdicts_from_observations() -> None:
    v = decide(_obs(_web()))
    assert (v.blocking, v.accessible, v.mechanism) == (False, True, None)
    v = decide(
        _obs(
            _web("tls", "connection_reset"),
            injector="type2",
            residual_check=_web("tcp", "connection_reset"),
        )
    )
    assert (v.blocking, v.mechanism, v.injector, v.residual) == (
        "http-failure",
        "tls_sni",
        "type2",
        True,
    )
    w = _web("http", "connection_reset")
    w.url = "http://a.example/"
    v = decide(_obs(w, injector="clayton2006", residual_check=_web()))
    assert (v.blocking, v.mechanism, v.residual) == ("http-failure", "http_keyword", False)
    v = decide(_obs(_web("tcp", "connection_reset"), injector="type1"))
    assert (v.blocking, v.mechanism, v.residual) == ("tcp_ip", "residual", True)
    v = decide(_obs(_web("tcp", "connection_reset"), injector="unknown"))
    assert (v.blocking, v.mechanism) == ("tcp_ip", "ip_port_rst")
    v = decide(_obs(_web("tcp", "generic_timeout_error"), syn_arrived=True))
    assert (v.blocking, v.mechanism) == ("tcp_ip", "null_route")
    v = decide(_obs(_web("tcp", "generic_timeout_error"), syn_arrived=False))
    assert (v.blocking, v.mechanism, v.residual) == ("tcp_ip", "fet", True)
    v = decide(_obs(_web(body=b"x" * 90), _web(body=b"x" * 100)))
    assert v.blocking is False  # within OONI's body proportion (0.7)
    v = decide(_obs(_web(body=b"x" * 10), _web(body=b"x" * 100)))
    assert (v.blocking, v.accessible) == ("http-diff", False)
    v = decide(_obs(_web(status=403)))
    assert v.blocking == "http-diff"
    v = decide(_obs(_web(), h3=H3Result("generic_timeout_error"), control_h3=H3Result(None, 200)))
    assert (v.blocking, v.accessible, v.mechanism, v.h3_blocked) == (False, True, "quic_sni", True)
    forged = _dns(_reply(["59.24.3.174"], 0x8400), _reply(["198.19.1.7"]))
    v = decide(_obs(_web(), dns=forged))
    assert (v.blocking, v.mechanism) == ("dns", "dns_injection")


def test_unreachable_control_is_never_censorship() -> None:
    v = decide(_obs(_web("tls", "connection_reset"), cdns=_dns(failure="generic_timeout_error")))
    assert (v.blocking, v.accessible) == (None, None) and v.control_failure.startswith("dns")
    v = decide(
        _obs(_web("tcp", "generic_timeout_error"), control=_web("tcp", "generic_timeout_error"))
    )
    assert (v.blocking, v.accessible) == (None, None) and v.control_failure.startswith("http")


def test_naive_probe_calls_every_failure_tcp_ip() -> None:
    assert naive(_obs(_web("tls", "connection_reset"))).blocking == "tcp_ip"
    forged = _dns(_reply(["59.24.3.174"]), _reply(["198.19.1.7"]))
    assert naive(_obs(_web(), dns=forged)).blocking == "tcp_ip"
    assert naive(_obs(_web())).blocking is False


def _event(mech: str, action: str, dst: str, ts: float, **extra: object) -> dict[str, object]:
    return {
        "ts": ts,
        "flow": {"proto": "tcp", "src": "198.18.0.2", "sport": 40000, "dst": dst, "dport": 443},
        "direction": "inside-out",
        "mechanism": mech,
        "action": action,
        "rule": "x",
        "residual_until": None,
        "citation": "",
        **extra,
    }


def test_truth_from_events() -> None:
    ev = [
        _event("dns_injection", "dns-inject", "198.19.0.2", 1.0, qname="a.example"),
        _event("tls_sni", "rst", "198.19.1.7", 2.0, sni="a.example", injector="type2"),
        _event("tls_sni", "rst", "198.19.1.7", 3.0, residual=True, injector="type2"),
        _event("tls_sni", "rst", "198.19.1.8", 2.5, sni="b.example", injector="type1"),
        _event("fet", "pass", "198.19.1.7", 2.6),
    ]
    t = grade.truth(grade.site_events(ev, "a.example", "198.19.1.7"))
    assert (t["blocking"], t["mechanism"], t["injector"], t["residual"], t["events"]) == (
        "dns",
        "dns_injection",
        "type2",
        True,
        3,
    )
    t = grade.truth(grade.site_events(ev[2:3], "a.example", "198.19.1.7"))
    assert (t["blocking"], t["mechanism"]) == ("tcp_ip", "residual")
    t = grade.truth(
        grade.site_events(
            [_event("fet", "drop", "198.19.1.9", 1, residual=True)], "c.example", "198.19.1.9"
        )
    )
    assert (t["blocking"], t["mechanism"], t["residual"]) == ("tcp_ip", "fet", True)
    t = grade.truth(
        grade.site_events([_event("quic_sni", "drop", "198.19.1.9", 1)], "c.example", "198.19.1.9")
    )
    assert (t["blocking"], t["mechanism"]) == (False, "quic_sni")
    assert grade.truth([])["blocking"] is False


def _result(obs: Observation, url: str = "https://a.example/") -> SiteResult:
    return SiteResult(lists.Entry(url, "NEWS", "News Media"), obs, decide(obs), 1.8e9, 0.1)


def test_measurements_load_with_oonidata_and_grade() -> None:
    forged = _dns(_reply(["59.24.3.174"], 0x8580), _reply(["198.19.1.7"]))
    results = [
        _result(_obs(_web(), dns=forged)),
        _result(_obs(_web("tls", "connection_reset"), injector="type1"), "https://b.example/"),
        _result(_obs(_web()), "https://c.example/"),
    ]
    ms = [ooni.measurement(r, report=ooni.report_id(1.8e9, 0), test_start=1.8e9) for r in results]
    for raw, m in zip(ms, load_with_oonidata(ms), strict=True):
        assert m["type"] == "WebConnectivity"
        assert m["blocking"] == raw["test_keys"]["blocking"]
        assert m["annotations"] == {
            "category_code": "NEWS",
            "engine_name": "gfwlab",
            "platform": "linux",
        }
    events = [
        _event("dns_injection", "dns-inject", "198.19.0.2", 1.0, qname="a.example"),
        _event("tls_sni", "rst", "198.19.1.8", 2.0, sni="b.example", injector="type1"),
    ]
    addrs = {"a.example": "198.19.1.7", "b.example": "198.19.1.8", "c.example": "198.19.1.9"}
    good = grade.grade(ms, events, addrs)
    assert (good.right, good.wrong) == (3, 0)
    assert ms[1]["test_keys"]["x_gfwlab"]["truth"]["mechanism"] == "tls_sni"
    naive_ms = [ooni.measurement(r, report="r", test_start=1.8e9) for r in results]
    for r, m in zip(results, naive_ms, strict=True):
        v = naive(r.obs)
        m["test_keys"]["blocking"] = v.blocking
        del m["test_keys"]["x_gfwlab"]  # another tool: OONI keys only
    bad = grade.grade(naive_ms, events, addrs)
    assert (bad.right, bad.wrong) == (1, 2) and bad.score < good.score
    assert bad.confusion[("dns", "tcp_ip")] == 1 and bad.confusion[("http-failure", "tcp_ip")] == 1


def test_publish_is_whole_or_nothing(tmp_path: Path) -> None:
    out = tmp_path / "res"
    ooni.publish(str(out), {"events.jsonl": "1\n"})
    ooni.publish(str(out), {"run.json": "2\n"})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["res"]
    assert [p.name for p in out.iterdir()] == ["run.json"]


def test_site_addresses_stay_with_their_names() -> None:
    first = sites.assign(["a.test", "b.test"])
    assert first == {"a.test": "198.19.1.0", "b.test": "198.19.1.1"}
    again = sites.assign(["c.test", "b.test"], first)
    assert again["b.test"] == "198.19.1.1" and again["c.test"] == "198.19.1.2"
    assert sites.site_address(sites.MAX_SITES - 1) == "198.19.239.255"


def test_parse_response_status_and_title() -> None:
    r = parse_response(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"10\r\n<title>x</title>\r\n1\r\n!\r\n0\r\n\r\n"
    )
    assert (r.status, r.body, r.title) == (200, b"<title>x</title>!", "x")


def test_probe_and_grade_bad_input_exit_2(tmp_path: Path) -> None:
    got = gfwlab("probe", "--list", str(tmp_path / "none.csv"))
    assert got.returncode == 2 and "cannot read the test list" in got.stderr
    assert len(got.stderr.strip().splitlines()) == 1
    only_bad = tmp_path / "bad.csv"
    only_bad.write_text(HEADER + "\nhttps://x y/,NEWS,x,x,x,x\n")
    got = gfwlab("probe", "--list", str(only_bad))
    assert got.returncode == 2
    assert "line 2" in got.stderr and "no usable URL" in got.stderr
    res = tmp_path / "r.jsonl"
    res.write_text(
        '{"test_name": "web_connectivity", "input": "https://a.test/", "test_keys": {}}\nnot json\n'
    )
    (tmp_path / "events.jsonl").write_text("")
    got = gfwlab("grade", str(res), "--session", str(tmp_path))
    assert got.returncode == 2 and "line 2: not JSON" in got.stderr
    assert len(got.stderr.strip().splitlines()) == 1
    res.write_text('{"test_name": "dnscheck", "input": "x", "test_keys": {}}\n')
    got = gfwlab("grade", str(res), "--session", str(tmp_path))
    assert got.returncode == 2 and "not 'web_connectivity'" in got.stderr
    got = gfwlab("grade", str(res), "--session", str(tmp_path / "nope"))
    assert got.returncode == 2 and "no such session folder" in got.stderr


def test_measurement_contract() -> None:
    m = ooni.measurement(_result(_obs(_web())), report="r", test_start=1.8e9)
    assert {
        "test_name",
        "input",
        "measurement_start_time",
        "probe_asn",
        "report_id",
        "test_keys",
        "annotations",
    } <= set(m)
    assert m["test_name"] == "web_connectivity" and m["annotations"]["category_code"] == "NEWS"
    tk = m["test_keys"]
    assert {
        "queries",
        "tcp_connect",
        "tls_handshakes",
        "requests",
        "control",
        "blocking",
        "accessible",
    } <= set(tk)
    assert set(tk["x_gfwlab"]) >= {
        "mechanism",
        "injector",
        "residual",
        "control_failure",
        "truth",
        "correct",
    }
    assert tk["x_gfwlab"]["truth"] is None and tk["x_gfwlab"]["correct"] is None
    info = ooni.run_info(
        started=1.8e9, finished=1.8e9 + 1, profile="gfw", date=None, seed=0, argv=["gfwlab"]
    )
    assert list(info) == [
        "kind",
        "format",
        "gfwlab_version",
        "started",
        "finished",
        "profile",
        "date",
        "seed",
        "argv",
    ]
    assert (info["kind"], info["format"]) == ("probe", 1)


def test_grade_refuses_a_results_folder_of_another_format(tmp_path: Path) -> None:
    (tmp_path / "run.json").write_text('{"kind": "probe", "format": 99, "gfwlab_version": "9"}')
    (tmp_path / "measurements.jsonl").write_text("")
    with pytest.raises(grade.GradeError, match="results format 99"):
        grade.read_results(str(tmp_path))


def test_scan_wire_format_matches_dnspython() -> None:
    q = dns.message.from_wire(dnscheck.wire_query("www.Example.test", 0x1234))
    assert q.id == 0x1234 and str(q.question[0].name) == "www.Example.test."
    reply = dns.message.make_response(q)
    reply.answer.append(
        dns.rrset.from_text("www.example.test.", 60, "IN", "A", "198.19.1.7", "59.24.3.174")
    )
    assert sorted(dnscheck.wire_answers(reply.to_wire()) or []) == ["198.19.1.7", "59.24.3.174"]
    assert dnscheck.wire_answers(q.to_wire()) is None  # a query, not a reply
    assert dnscheck.wire_answers(reply.to_wire()[:30]) is None  # truncated


def _replies_for(q: dns.message.Message) -> list[bytes]:
    """Replies to ``q`` of every shape the probe may see: honest, forged by the engine's
    injector, several RRsets, CNAME chains, AAAA, NXDOMAIN, EDNS, odd TTLs, truncated."""
    out = []
    name = q.question[0].name
    for rrs in (
        [("A", 60, ["198.19.1.7"])],
        [("A", 60, ["198.19.1.7", "59.24.3.174"])],
        [("CNAME", 30, ["alias.example.test."]), ("A", 60, ["198.19.1.8"])],
        [("AAAA", 60, ["2001:db8:5::2", "2001::1"])],
        [("A", 60, ["198.19.1.7"]), ("AAAA", 70, ["2001:db8:5::2"])],
        [("TXT", 60, ['"x"'])],
        [],
    ):
        r = dns.message.make_response(q)
        for rtype, ttl, values in rrs:
            r.answer.append(dns.rrset.from_text(name, ttl, "IN", rtype, *values))
        out.append(r.to_wire())
    nx = dns.message.make_response(q)
    nx.set_rcode(dns.rcode.NXDOMAIN)
    out.append(nx.to_wire())
    edns = dns.message.make_response(q)
    edns.use_edns(0)
    edns.answer.append(dns.rrset.from_text(name, 60, "IN", "A", "198.19.1.9"))
    out.append(edns.to_wire())
    other = dns.message.make_response(q)  # A records of another name
    other.answer.append(dns.rrset.from_text("elsewhere.test.", 60, "IN", "A", "198.19.1.10"))
    out.append(other.to_wire())
    wire = q.to_wire()
    parsed = parse_query(wire)
    assert parsed is not None
    for flags in (0x8180, 0x8400, 0x8580):
        out.append(build_answer(wire, parsed, bytes([59, 24, 3, 174]), 255, flags))
    return out + [w[:n] for w in out[:3] for n in (11, 20, len(w) - 1)]


def test_lookup_reads_replies_as_dnspython_does() -> None:
    """The probe's direct reply reader gives what dnspython's parser gives, reply for reply
    (and the query it sends is the one dnspython makes)."""
    q = dns.message.make_query("www.Example.test", "A")
    assert dnscheck.wire_query("www.Example.test", q.id) == q.to_wire()
    q6 = dns.message.make_query("www.example.test", "AAAA")
    assert dnscheck.wire_query("www.example.test", q6.id, 28) == q6.to_wire()
    seen = 0
    for query in (q, q6):
        qname = "www.example.test"
        for wire in _replies_for(query):
            for qid in (query.id, query.id ^ 1):
                for name in (qname, "other.example.test"):
                    assert dnscheck._parse(wire, qid, name) == dnscheck._parse_slow(
                        wire, qid, name
                    ), wire.hex()
                    seen += dnscheck._parse(wire, qid, name) is not None
    assert seen > 20


def test_scan_retries_lost_queries_and_keeps_late_replies() -> None:
    """A resolver on loopback that ignores the first query for every third name and answers
    every fifth twice (a forged answer, then the real one): each name is answered, the lost
    ones on a retry, and both replies of the doubled ones are kept."""
    srv = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    srv.bind(("127.0.0.1", 0))
    srv.settimeout(0.2)
    seen: dict[str, int] = {}
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                data, peer = srv.recvfrom(4096)
            except TimeoutError:
                continue
            q = dns.message.from_wire(data)
            name = q.question[0].name.to_text().rstrip(".")
            n = int(name.split(".")[0][4:])
            seen[name] = seen.get(name, 0) + 1
            if n % 3 == 0 and seen[name] == 1:
                continue  # lost
            r = dns.message.make_response(q)
            if n % 5 == 0:
                forged = dns.message.make_response(q)
                forged.answer.append(dns.rrset.from_text(name + ".", 60, "IN", "A", "59.24.3.174"))
                srv.sendto(forged.to_wire(), peer)
            r.answer.append(dns.rrset.from_text(name + ".", 60, "IN", "A", f"198.19.1.{n % 250}"))
            srv.sendto(r.to_wire(), peer)

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    try:
        names = [f"site{i}.example.test" for i in range(300)]
        res = dnscheck.scan(names, "127.0.0.1", port=srv.getsockname()[1], window=32, timeout=0.2)
    finally:
        stop.set()
        t.join(2)
        srv.close()
    assert all(res.answers[n] for n in names)
    assert all(seen[n] == 2 for n in names if int(n.split(".")[0][4:]) % 3 == 0)
    doubled = [n for n in names if int(n.split(".")[0][4:]) % 5 == 0]
    assert sorted(res.injected()) == sorted(doubled)
    assert all(res.answers[n][0] == ["59.24.3.174"] for n in doubled)


def test_tls_context_follows_a_new_trust_file(tmp_path: Path) -> None:
    first = ca.make_ca(str(tmp_path))[0]
    a = tls_context(first)
    assert tls_context(first) is a  # cached
    os.unlink(first)
    os.unlink(str(tmp_path / "ca.key"))
    ca.make_ca(str(tmp_path))  # a new lab: a new CA at the same path
    assert tls_context(first) is not a


def test_out_never_replaces_a_folder_of_other_files(tmp_path: Path) -> None:
    """``--out`` pointed at a folder that holds anything a probe does not write is refused, and
    the folder is left as it was; a probe's own folder is replaced whole."""
    mine = tmp_path / "thesis"
    mine.mkdir()
    (mine / "chapter1.tex").write_text("keep me")
    with pytest.raises(GfwlabError, match=r"chapter1\.tex"):
        ooni.publish(str(mine), {"measurements.jsonl": "", "run.json": "{}\n"})
    assert sorted(os.listdir(mine)) == ["chapter1.tex"]
    probe_dir = tmp_path / "probe"
    ooni.publish(str(probe_dir), {"measurements.jsonl": "a\n", "run.json": "{}\n"})
    ooni.publish(str(probe_dir), {"measurements.jsonl": "b\n", "run.json": "{}\n"})
    assert (probe_dir / "measurements.jsonl").read_text() == "b\n"
