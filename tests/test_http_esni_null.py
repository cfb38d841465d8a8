"""http_keyword (spec §3), esni (spec §4b) and null_route (spec §8) scenarios."""

from __future__ import annotations

import datetime as dt

import pytest

from gfwlab.engine import Censor
from gfwlab.offline.synth import http_conversation, http_get, https_conversation, tcp_conversation
from gfwlab.packet.ip import ACK, RST, parse
from gfwlab.profiles import build_censor
from helpers import binomial_interval, profile, run

C, S = "198.18.0.2", "198.19.0.2"
ALWAYS = "http_keyword.probability=1.0"


def http_run(host: str, path: str = "/", *sets: str, seed: int = 1, sport: int = 80):
    return run(
        build_censor(profile(*sets), seed), http_conversation(C, S, 40000, host, path, sport=sport)
    )


@pytest.mark.parametrize(
    ("host", "path", "rule"),
    [
        ("www.google.com", "/", "google.com"),
        ("example.org", "/search?q=ultrasurf", "ultrasurf"),
        ("example.org", "/%75ltra%73urf", "ultrasurf"),  # percent-decoded first
        ("example.org", "/x/FALUN", "falun"),
        ("example.org", "/%E6%B3%95%E8%BD%AE", "法轮"),  # UTF-8
        ("example.org", "/%B7%A8%C2%D6", "法轮"),  # GB18030
        ("ultrasurf.example.org", "/", "ultrasurf"),  # keywords in Host count too
    ],
)
def test_host_and_path_keywords(host: str, path: str, rule: str) -> None:
    r = http_run(host, path, ALWAYS)
    (event,) = r.acted("rst", "http_keyword")
    assert event.rule == rule


def test_unblocked_request_passes() -> None:
    r = http_run("example.org", "/index.html", ALWAYS)
    assert not r.acted("rst") and not r.injected


def test_only_path_and_host_are_inspected() -> None:
    req = http_get("example.org", "/", extra="Cookie: q=ultrasurf\r\nX-Note: falun\r\n")
    r = run(build_censor(profile(ALWAYS), 1), tcp_conversation(C, S, 40000, 80, req))
    assert not r.acted("rst")


@pytest.mark.parametrize("port", [80, 8080, 22, 5000])
def test_every_tcp_port(port: int) -> None:
    assert http_run("example.org", "/?q=falun", ALWAYS, sport=port).acted("rst")


def test_clayton_2006_pattern_three_resets_each_way() -> None:
    r = http_run("example.org", "/falun", ALWAYS)
    for toward in ("client", "server"):
        pkts = r.forged(toward)
        assert len(pkts) == 3
        base = pkts[0].seq
        assert [p.seq - base for p in pkts] == [0, 1460, 4380]
        assert all(p.flags & RST for p in pkts)


def test_injector_is_a_parameter() -> None:
    r = http_run("example.org", "/falun", ALWAYS, "http_keyword.injector='type2'")
    assert [p.flags for p in r.forged("client")] == [RST | ACK] * 3


def test_trigger_probability_is_about_75_percent() -> None:
    n, hits = 600, 0
    censor = build_censor(profile(), 11)
    for i in range(n):
        server = f"198.19.{i // 200}.{i % 200 + 1}"
        r = run(censor, http_conversation(C, server, 40000, "example.org", "/falun", t0=i * 1.0))
        hits += bool(r.acted("rst"))
        if not r.acted("rst"):
            assert r.acted("pass")  # the spared request is reported, with its draw
    lo, hi = binomial_interval(n, 0.75)
    assert lo <= hits / n <= hi


def test_penalty_box_90_s_with_re_block_probability() -> None:
    n, blocked = 400, 0
    for i in range(n):
        censor = build_censor(profile(ALWAYS), 1000 + i)
        run(censor, http_conversation(C, S, 40000, "example.org", "/falun", t0=0.0))
        again = run(censor, http_conversation(C, S, 40001, "example.org", "/", t0=30.0))
        blocked += bool(again.acted("rst"))
        if i < 20:
            later = run(censor, http_conversation(C, S, 40002, "example.org", "/", t0=91.0))
            assert not later.acted("rst")
            other = run(
                censor, http_conversation(C, S, 40003, "example.org", "/", t0=31.0, sport=8080)
            )
            assert not other.acted("rst")
    lo, hi = binomial_interval(n, 0.625)
    assert lo <= blocked / n <= hi


def test_search_conditional_list() -> None:
    sets = (ALWAYS, "http_keyword.search_keywords=['tiananmen']")
    assert http_run("example.org", "/search?q=tiananmen", *sets).acted("rst")
    assert not http_run("example.org", "/page?q=tiananmen", *sets).acted("rst")


# ------------------------------------------------------------------ esni


def esni_run(
    *sets: str,
    date: dt.date = dt.date(2021, 1, 1),
    cport: int = 40000,
    t0: float = 0.0,
    censor: Censor | None = None,
):
    censor = censor or build_censor(profile(*sets, date=date), 1)
    return censor, run(censor, https_conversation(C, S, cport, None, esni=True, t0=t0))


def test_esni_drops_client_to_server_only() -> None:
    conv = https_conversation(C, S, 40000, None, esni=True)
    censor = build_censor(profile(date=dt.date(2021, 1, 1)), 1)
    r = run(censor, conv)
    (event,) = r.acted("drop", "esni")
    assert event.rule == "tls.extension:0xffce"
    assert not r.injected  # no resets
    for (_t, pkt), ok in zip(conv[3:], r.verdicts[3:], strict=True):
        c2s = parse(pkt).src_text == C
        assert ok is (not c2s)


def test_esni_residual_drops_new_connections() -> None:
    censor, first = esni_run()
    until = first.acted("drop")[0].residual_until
    _, second = esni_run(censor=censor, cport=40001, t0=60.0)
    assert not second.verdicts[0]  # even the SYN
    assert second.acted("drop")[0].extra.get("residual")
    _, third = esni_run(censor=censor, cport=40002, t0=until + 1)
    assert third.verdicts[0]


@pytest.mark.parametrize(
    ("date", "active"),
    [(dt.date(2020, 7, 28), False), (dt.date(2020, 7, 29), True), (dt.date(2025, 1, 1), True)],
)
def test_esni_active_from_2020_07_29(date: dt.date, active: bool) -> None:
    _, r = esni_run(date=date)
    assert bool(r.acted("drop", "esni")) is active


def test_esni_is_unidirectional_by_default() -> None:
    _, r = esni_run("engine.inside=['198.19.0.0/16']")
    assert not r.acted("drop")
    _, r = esni_run("engine.inside=['198.19.0.0/16']", "esni.direction='both'")
    assert r.acted("drop")


def test_ech_is_not_blocked() -> None:
    conv = https_conversation(C, S, 40000, "cloudflare-ech.com", ech=True)
    r = run(build_censor(profile(), 1), conv)
    assert not r.acted("drop") and not r.acted("rst")


# ------------------------------------------------------------------ null routing


@pytest.mark.parametrize("target", [f"{S}:443", S, "198.19.0.0/24"])
def test_null_route_drops_server_to_client(target: str) -> None:
    conv = https_conversation(C, S, 40000, "example.org")
    r = run(build_censor(profile(f"null_route.targets=[{target!r}]"), 1), conv)
    (event,) = r.acted("null-route")
    assert event.rule == target
    for (_t, pkt), ok in zip(conv, r.verdicts, strict=True):
        assert ok is (parse(pkt).src_text == C)  # the SYN reaches the server; nothing comes back


def test_null_route_of_one_port_spares_the_others() -> None:
    r = run(
        build_censor(profile(f"null_route.targets=['{S}:443']"), 1),
        https_conversation(C, S, 40000, "example.org", sport=8443),
    )
    assert all(r.verdicts) and not r.acted("null-route")


def test_null_route_ipv6() -> None:
    v6c, v6s = "2001:db8::2", "2001:db8:1::2"
    r = run(
        build_censor(profile(f"null_route.targets=['[{v6s}]:443']"), 1),
        https_conversation(v6c, v6s, 40000, "example.org"),
    )
    assert r.acted("null-route")[0].flow.dst == v6s
