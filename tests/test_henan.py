"""The henan profile (spec §1, §14b) alone and chained with gfw, offline on captures."""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys
from pathlib import Path

from gfwlab.offline.chain import Chain
from gfwlab.offline.synth import http_get, tcp_conversation
from gfwlab.packet.ip import ACK, PSH, RST, addr_bytes, build_tcp, parse
from gfwlab.packet.pcap import PcapWriter
from gfwlab.profiles import build_censor
from gfwlab.proto.tls import build_client_hello
from tests.helpers import profile, run

DAY = dt.date(2024, 6, 1)
C, S = "198.18.0.2", "198.19.0.2"
TS_OPT = b"\x01\x01\x08\x0a\x00\x00\x00\x01\x00\x00\x00\x02"


def henan() -> object:
    return build_censor(profile(date=DAY, name="henan"), 0)


def lone(payload: bytes, *, options: bytes = b"", sport: int = 40000, dport: int = 443) -> bytes:
    """One client data packet with no handshake before it."""
    return build_tcp(
        addr_bytes(C), addr_bytes(S), sport, dport, seq=7000, ack=9000, flags=PSH | ACK,
        payload=payload, options=options,
    )  # fmt: skip


def test_a_lone_client_hello_gets_one_rst_ack_with_the_fingerprint_to_the_client_only() -> None:
    hello = build_client_hello("shop.example.com.au")
    res = run(henan(), [(0.0, lone(hello))])  # type: ignore[arg-type]
    (event,) = res.acted("rst", "henan")
    assert (event.rule, event.extra) == (
        "com.au",
        {"host": "shop.example.com.au", "protocol": "tls"},
    )
    (inj,) = res.injected
    assert inj.toward == "client"
    pkt = parse(inj.packet)
    assert pkt.flags == RST | ACK and pkt.payload == bytes((1, 2, 3, 4, 5, 6, 7, 8, 9, 0))
    assert (pkt.ip_id, pkt.ttl, pkt.df) == (0x0001, 58, False)
    assert (pkt.src, pkt.dst, pkt.seq, pkt.ack) == (
        addr_bytes(S),
        addr_bytes(C),
        9000,
        7000 + len(hello),
    )
    assert event.residual_until is None


def test_any_tcp_option_evades_the_20_byte_header_parser() -> None:
    res = run(henan(), [(0.0, lone(build_client_hello("www.facebook.com"), options=TS_OPT))])  # type: ignore[arg-type]
    assert not res.acted("rst") and not res.injected


def test_no_reassembly_a_split_client_hello_passes() -> None:
    hello = build_client_hello("www.facebook.com")
    pkts = tcp_conversation(C, S, 40001, 443, [hello[:20], hello[20:]], close=False)
    assert not run(henan(), pkts).acted("rst")  # type: ignore[arg-type]
    assert run(henan(), tcp_conversation(C, S, 40002, 443, hello, close=False)).acted("rst")  # type: ignore[arg-type]


def test_http_host_suffix_rule_and_no_residual() -> None:
    blocked = tcp_conversation(C, S, 40003, 80, http_get("news.site.co.za"), close=False)
    after = tcp_conversation(C, S, 40004, 80, http_get("example.net"), t0=1.0, close=False)
    res = run(henan(), blocked + after)  # type: ignore[arg-type]
    (event,) = res.acted("rst", "henan")
    assert event.extra == {"host": "news.site.co.za", "protocol": "http"}


def test_outbound_only() -> None:
    prof = profile("engine.inside=['198.18.0.0/24']", date=DAY, name="henan")
    into = tcp_conversation(S, C, 40005, 443, build_client_hello("www.facebook.com"), close=False)
    assert not run(build_censor(prof, 0), into).acted("rst")
    out = tcp_conversation(C, S, 40006, 443, build_client_hello("www.facebook.com"), close=False)
    assert run(build_censor(prof, 0), out).acted("rst")


def test_chained_each_event_names_its_censor_and_options_get_past_henan_only() -> None:
    hello = build_client_hello("www.facebook.com")  # on both lists
    plain = tcp_conversation(C, S, 40007, 443, hello, close=False)
    chain = Chain([("henan", henan()), ("gfw", build_censor(profile(date=DAY), 0))])  # type: ignore[list-item]
    res = run(chain, plain)  # type: ignore[arg-type]
    assert sorted(e.censor for e in res.acted("rst")) == ["gfw", "henan"]
    assert all(e.as_dict()["censor"] in ("gfw", "henan") for e in res.events)
    with_opts = []
    for ts, raw in plain:  # the same connection, its data packet with TCP timestamps
        p = parse(raw)
        new = build_tcp(p.src, p.dst, p.sport, p.dport, seq=p.seq, ack=p.ack, flags=p.flags,
                        payload=p.payload, options=TS_OPT)  # fmt: skip
        with_opts.append((ts, new if p.payload else raw))
    chain = Chain([("henan", henan()), ("gfw", build_censor(profile(date=DAY), 0))])  # type: ignore[list-item]
    res = run(chain, with_opts)  # type: ignore[arg-type]
    assert [e.censor for e in res.acted("rst")] == ["gfw"]


def test_analyze_with_two_profiles_names_the_censor(tmp_path: Path) -> None:
    cap, events = tmp_path / "c.pcap", tmp_path / "e.jsonl"
    pkts = tcp_conversation(C, S, 40009, 443, build_client_hello("www.facebook.com"), t0=1.7e9)
    with PcapWriter(str(cap)) as w:
        for ts, raw in pkts:
            w.write(ts, raw)
    res = subprocess.run(
        [sys.executable, "-m", "gfwlab", "analyze", str(cap), "-p", "henan", "-p", "gfw",
         "--date", "2024-06-01", "--events", str(events), "--json"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    got = [json.loads(line) for line in events.read_text().splitlines()]
    acted = sorted((e["censor"], e["mechanism"]) for e in got if e["action"] == "rst")
    assert acted == [("gfw", "tls_sni"), ("henan", "henan")]
    assert json.loads(res.stdout)["profile"] == "henan+gfw"
