"""Per-network profiles (spec §14d): a ClientHello split across TLS records passes the national
GFW and is reset on CERNET and China Mobile from December 2025; ``--set`` wins over the network,
and ``--date`` chooses the era."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gfwlab.errors import ConfigError, MalformedPacket
from gfwlab.evade.tls_split import split_record
from gfwlab.offline.synth import tcp_conversation
from gfwlab.packet.pcap import PcapWriter
from gfwlab.profiles import NETWORKS, build_censor, load_profile
from gfwlab.proto.tls import build_client_hello, join_records, parse_client_hello
from helpers import run

C, S = "198.18.0.2", "198.19.0.2"
AFTER, BEFORE = dt.date(2026, 1, 15), dt.date(2025, 11, 15)


def _split_hello(pieces: int = 2) -> bytes:
    record = build_client_hello("www.facebook.com")
    out = record
    for _ in range(pieces - 1):  # split the last record again, each time
        head, last = out[: len(out) - len(record)], record
        split = split_record(last, 40)
        record = split[5 + 40 :]
        out = head + split[: 5 + 40]
        out += record
    return out


def _reset(network: str, day: dt.date | None, *sets: str, pieces: int = 2) -> bool:
    prof = load_profile("gfw", date=day, network=network, overrides=list(sets))
    pkts = tcp_conversation(C, S, 40000, 443, [_split_hello(pieces)])
    return bool(run(build_censor(prof), pkts).acted("rst", "tls_sni"))


def test_join_records_rebuilds_the_hello() -> None:
    whole = build_client_hello("www.facebook.com")
    split = split_record(whole, 40)
    joined = join_records(split)
    assert joined is not None
    hello = parse_client_hello(joined)
    assert hello is not None and hello.sni == "www.facebook.com"
    assert join_records(split[:50]) is None  # the second record is still missing
    assert join_records(whole) == whole


@pytest.mark.parametrize("network", ["national", "unicom", "telecom"])
def test_split_hello_passes_where_records_are_not_joined(network: str) -> None:
    assert not _reset(network, AFTER)
    # The unsplit hello is reset everywhere.
    prof = load_profile("gfw", date=AFTER, network=network)
    pkts = tcp_conversation(C, S, 40000, 443, [build_client_hello("www.facebook.com")])
    assert run(build_censor(prof), pkts).acted("rst", "tls_sni")


@pytest.mark.parametrize("network", ["cernet", "mobile"])
def test_split_hello_is_reset_on_cernet_and_mobile_from_december_2025(network: str) -> None:
    assert _reset(network, AFTER)
    assert _reset(network, AFTER, pieces=5)
    assert not _reset(network, BEFORE)  # the era before the reports
    assert _reset(network, None)  # no date: the latest behaviour


def test_set_wins_over_the_network() -> None:
    assert not _reset("cernet", AFTER, "tls_sni.record_reassembly_from=''")
    assert _reset("national", AFTER, "tls_sni.record_reassembly_from='2025-12-01'")


def test_unknown_network_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="--network"):
        load_profile("gfw", network="campus")
    assert set(NETWORKS) == {"national", "cernet", "mobile", "unicom", "telecom"}


def test_analyze_network_flag(tmp_path: Path) -> None:
    cap = tmp_path / "split.pcap"
    t0 = dt.datetime(2026, 1, 15, 12, tzinfo=dt.UTC).timestamp()
    with PcapWriter(str(cap)) as w:
        for t, p in tcp_conversation(C, S, 40000, 443, [_split_hello()]):
            w.write(t0 + t, p)

    def events(*args: str) -> dict[str, int]:
        got = subprocess.run(
            [sys.executable, "-m", "gfwlab", "analyze", str(cap), "--json", *args],
            capture_output=True,
            text=True,
            timeout=120,
            check=True,
        )
        out: dict[str, int] = json.loads(got.stdout)["events"]
        return out

    assert "tls_sni/rst" not in events()
    assert events("--network", "cernet").get("tls_sni/rst") == 1
    assert "tls_sni/rst" not in events("--network", "cernet", "--date", "2025-11-30")


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=600))
def test_join_records_on_arbitrary_bytes(data: bytes) -> None:
    """Never raises; what it returns parses, needs more data, or is reported as malformed."""
    for candidate in (data, b"\x16\x03\x01" + data):
        joined = join_records(candidate)
        if joined is None:
            continue
        with contextlib.suppress(MalformedPacket):
            parse_client_hello(joined)


@given(st.integers(min_value=1, max_value=30), st.sampled_from(["a.example", "www.facebook.com"]))
def test_any_record_split_is_joined(pieces: int, sni: str) -> None:
    record = build_client_hello(sni)
    body, out, step = record[5:], b"", max(1, (len(record) - 5) // pieces)
    for i in range(0, len(body), step):
        chunk = body[i : i + step]
        out += record[:3] + len(chunk).to_bytes(2, "big") + chunk
    joined = join_records(out)
    assert joined is not None
    hello = parse_client_hello(joined)
    assert hello is not None and hello.sni == sni
