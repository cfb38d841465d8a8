"""Profiles: validation errors name file, key and reason; dates; --set; list files."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from gfwlab.errors import ConfigError
from gfwlab.profiles import DomainSet, KeywordSet, load_profile, parse_date


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "p.toml"
    path.write_text(text, encoding="utf-8")
    return str(path)


def test_builtin_profile_lists() -> None:
    prof = load_profile("gfw")
    for name in (
        "google.com",
        "facebook.com",
        "twitter.com",
        "youtube.com",
        "wikipedia.org",
        "nytimes.com",
        "torproject.org",
    ):
        sub = f"www.{name}"
        assert prof.mechanisms["dns_injection"].domains.match(sub)  # type: ignore[attr-defined]
        assert prof.mechanisms["http_keyword"].domains.match(sub)  # type: ignore[attr-defined]
        sni = prof.mechanisms["tls_sni"]
        assert sni.domains.match(sub) or sni.inside_out_only.match(sub)  # type: ignore[attr-defined]
    kw = prof.mechanisms["http_keyword"].keywords  # type: ignore[attr-defined]
    assert kw.match("/x/falun") == "falun" and kw.match("/?q=ultrasurf") == "ultrasurf"


@pytest.mark.parametrize(
    ("date", "esni"), [("2020-07-28", False), ("2020-07-29", True), ("2026-01-01", True)]
)
def test_date_selects_active_mechanisms(date: str, esni: bool) -> None:
    prof = load_profile("gfw", date=parse_date(date))
    assert ("esni" in prof.active()) is esni
    assert "tls_sni" in prof.active()


@pytest.mark.parametrize(
    ("text", "key", "reason"),
    [
        (
            "[mechanisms.tls_sni]\nresidual_s = 'long'\n",
            "mechanisms.tls_sni.residual_s",
            "expected a number",
        ),
        (
            "[mechanisms.tls_sni]\nresidul_s = 3\n",
            "mechanisms.tls_sni.residul_s",
            "unknown parameter",
        ),
        ("[mechanisms.nosuch]\n", "mechanisms.nosuch", "unknown mechanism"),
        (
            "[mechanisms.tls_sni]\ninjector = 'type9'\n",
            "mechanisms.tls_sni.injector",
            "must be one of",
        ),
        (
            "[mechanisms.esni]\nactive = { start = '2020-13-01' }\n",
            "mechanisms.esni.active.start",
            "a date",
        ),
        (
            "[mechanisms.tls_sni]\ndomains = 'missing.txt'\n",
            "mechanisms.tls_sni.domains",
            "list file not found",
        ),
        ("[engine]\ninside = ['not-a-prefix']\n", "engine.inside[0]", "not an IP prefix"),
        (
            "[mechanisms.http_keyword]\nprobability = 1.5\n",
            "mechanisms.http_keyword",
            "between 0 and 1",
        ),
        ("bogus = 1\n", "bogus", "unknown key"),
        ("[tcb]\non_rst = 'explode'\n", "tcb.on_rst", "must be one of"),
    ],
)
def test_errors_name_file_key_and_reason(tmp_path: Path, text: str, key: str, reason: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_profile(path)
    msg = str(info.value)
    assert path in msg and key in msg and reason in msg
    assert "\n" not in msg


def test_invalid_toml_names_the_line(tmp_path: Path) -> None:
    path = write(tmp_path, "[engine\n")
    with pytest.raises(ConfigError, match=r"not valid TOML.*line 1"):
        load_profile(path)


def test_missing_profile() -> None:
    with pytest.raises(ConfigError, match="no such profile"):
        load_profile("/nonexistent/profile.toml")


def test_set_overrides_any_parameter_and_list_paths(tmp_path: Path) -> None:
    lst = tmp_path / "list.txt"
    lst.write_text("# mine\nexample.net\n^prefix.org\n", encoding="utf-8")
    prof = load_profile(
        "gfw",
        overrides=[
            "tls_sni.residual_s=5",
            f"tls_sni.domains={lst}",
            "tcb.on_rst=resync",
            "engine.inside=['198.18.0.0/15']",
            "esni.enabled=false",
        ],
    )
    sni = prof.mechanisms["tls_sni"]
    assert sni.residual_s == 5.0  # type: ignore[attr-defined]
    assert sni.domains.match("a.example.net") == "example.net"  # type: ignore[attr-defined]
    assert sni.domains.match("prefix.org.cn") == "^prefix.org"  # type: ignore[attr-defined]
    assert prof.tcb.on_rst == "resync"
    assert "esni" not in prof.active()


def test_a_list_named_by_several_rules_is_loaded_once(tmp_path: Path) -> None:
    """Every domain rule given the same (million-name) list shares one loaded set; a list
    named by one rule only, or another file, is its own."""
    lst = tmp_path / "list.txt"
    lst.write_text("example.net\n", encoding="utf-8")
    other = tmp_path / "other.txt"
    other.write_text("example.net\n", encoding="utf-8")
    keys = ("tls_sni.domains", "quic_sni.domains", "http_keyword.domains")
    prof = load_profile(
        "gfw",
        overrides=[*(f"{k}={lst}" for k in keys), f"dns_injection.domains={other}"],
    )
    sets = [prof.mechanisms[k.split(".")[0]].domains for k in keys]  # type: ignore[attr-defined]
    assert sets[0] is sets[1] is sets[2]
    assert sets[0].match("a.example.net") == "example.net"
    dns = prof.mechanisms["dns_injection"].domains  # type: ignore[attr-defined]
    assert dns is not sets[0] and dns.match("example.net") == "example.net"
    again = load_profile("gfw", overrides=[f"tls_sni.domains={lst}"])
    assert again.mechanisms["tls_sni"].domains is not sets[0]  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("item", "reason"),
    [
        ("tls_sni", "expected mechanism.parameter=value"),
        ("nosuch.x=1", "unknown section"),
        ("tls_sni.nosuch=1", "unknown parameter"),
        ("tls_sni.residual_s=abc", "expected a number"),
        ("tls_sni.domains=/no/such/list.txt", "list file not found"),
    ],
)
def test_bad_set(item: str, reason: str) -> None:
    with pytest.raises(ConfigError, match=reason) as info:
        load_profile("gfw", overrides=[item])
    assert str(info.value).startswith("--set")


def test_bad_date() -> None:
    with pytest.raises(ConfigError, match="--date"):
        parse_date("2024-02-30")


def test_set_is_applied_before_validation_of_dependent_checks() -> None:
    with pytest.raises(ConfigError, match="between 0 and 1"):
        load_profile("gfw", overrides=["http_keyword.probability=2"])


def test_domain_rules_and_keywords() -> None:
    ds = DomainSet(["example.com", "=exact.org", "^start.net", "*mid*"])
    assert ds.match("example.com") == "example.com"
    assert ds.match("x.y.example.com") == "example.com"
    assert ds.match("badexample.com") is None
    assert ds.match("exact.org") == "=exact.org" and ds.match("x.exact.org") is None
    assert ds.match("start.net.example") == "^start.net"
    assert ds.match("amidb.org") == "*mid*"
    assert len(ds) == 4
    ks = KeywordSet(["Falun", "ultrasurf"])
    assert ks.match("/FALUN/x") == "falun" and ks.match("/x") is None


def test_real_blocklists_load_and_match(shared_blocklists: Path) -> None:
    prof = load_profile(
        "gfw",
        date=dt.date(2024, 6, 1),
        overrides=[
            f"tls_sni.domains={shared_blocklists / 'gfw-2024-https-blocklist.txt'}",
            f"dns_injection.domains={shared_blocklists / 'gfw-2024-dns-blocklist.txt'}",
            f"http_keyword.domains={shared_blocklists / 'gfw-2024-http-blocklist.txt'}",
        ],
    )
    sni = prof.mechanisms["tls_sni"].domains  # type: ignore[attr-defined]
    assert len(sni) == 102_216
    assert sni.match("0.docs.google.com")
    dns_list = prof.mechanisms["dns_injection"].domains  # type: ignore[attr-defined]
    assert dns_list.match("-m.binance.cloud")
