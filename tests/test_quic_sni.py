"""quic_sni against spec §5 (USENIX Security 2025): first datagram, port rule, residual, flow
tracking, dates and direction, the Table 3 payloads, probability and a real capture."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable

import pytest

from gfwlab.engine import Event
from gfwlab.offline import analyze
from gfwlab.packet.ip import addr_bytes, build_udp
from gfwlab.profiles import build_censor
from gfwlab.proto.quic import CRYPTO_READINGS, QUIC_V2, parse_initial
from gfwlab.proto.quic_build import build_initial, protect_initial, split_initials
from gfwlab.proto.tls import parse_client_hello_body
from helpers import binomial_interval, profile, run
from testenv import SHARED_PCAPS, needs_shared

C, S = "198.18.0.2", "198.19.0.2"
INSIDE = "engine.inside=['198.18.0.0/16']"  # C is inside the border, S outside
NO_LATENCY = "quic_sni.block_latency_ms=[]"
Packets = list[tuple[float, bytes]]


def udp(src: str, dst: str, sport: int, dport: int, payload: bytes) -> bytes:
    return build_udp(addr_bytes(src), addr_bytes(dst), sport, dport, payload)


def quic_flow(
    first: bytes,
    *,
    client: str = C,
    server: str = S,
    cport: int = 50000,
    sport: int = 443,
    t0: float = 0.0,
    followups: int = 3,
) -> Packets:
    """The first datagram, the server's answer, then ``followups`` client datagrams (10 bytes,
    as the artifact's quic-sni-sender sends)."""
    out = [
        (t0, udp(client, server, cport, sport, first)),
        (t0 + 0.05, udp(server, client, sport, cport, bytes(1200))),
    ]
    out += [
        (t0 + 0.2 + 0.1 * i, udp(client, server, cport, sport, b"\x10" * 10))
        for i in range(followups)
    ]
    return out


def quic_run(
    first: bytes,
    *sets: str,
    date: dt.date | None = dt.date(2024, 6, 1),
    seed: int = 1,
    **kw: object,
):
    # Scenario tests look at which datagrams are dropped, so the block starts at once; the
    # measured block latency has tests of its own below.
    sets = (NO_LATENCY, *sets)
    return run(build_censor(profile(*sets, date=date), seed), quic_flow(first, **kw))  # type: ignore[arg-type]


def blocked(r: object) -> bool:
    return bool(r.acted("drop", "quic_sni"))  # type: ignore[attr-defined]


def test_blocked_sni_drops_later_client_datagrams_only() -> None:
    r = quic_run(build_initial("www.google.com"))
    # Initial delivered, server answer delivered, the client's later datagrams dropped.
    assert r.verdicts == [True, True, False, False, False]
    (event,) = r.acted("drop", "quic_sni")
    assert event.rule == "google.com"
    assert event.extra == {"sni": "www.google.com", "quic_version": 1}
    assert event.residual_until == pytest.approx(180.0)
    assert not r.injected
    assert "spec §5" in event.citation


def test_unblocked_sni_passes_and_flow_is_bypassed() -> None:
    r = quic_run(build_initial("example.org"))
    assert all(r.verdicts) and not r.acted("drop") and r.bypassed == 1
    assert not r.acted("anomaly")


def test_residual_three_tuple_any_source_port() -> None:
    censor = build_censor(profile(NO_LATENCY), 1)
    packets = quic_flow(build_initial("youtube.com"), cport=50000, followups=0)
    # A new flow from another source port, with an innocuous payload, within 180 s.
    packets += quic_flow(build_initial("example.org"), cport=50001, t0=100.0, followups=1)
    # Other destination port and other destination IP: not on the key.
    packets += quic_flow(build_initial("example.org"), cport=50002, sport=8443, t0=101.0)
    packets += quic_flow(build_initial("example.org"), server="198.19.0.3", t0=102.0)
    # After 180 s the key is free.
    packets += quic_flow(build_initial("example.org"), cport=50003, t0=180.0, followups=1)
    r = run(censor, packets)
    assert r.verdicts[:2] == [True, True]
    assert r.verdicts[2:5] == [False, True, False]  # dropped from its first datagram
    assert all(r.verdicts[5:])
    residual = [e for e in r.acted("drop", "quic_sni") if e.extra.get("residual")]
    assert len(residual) == 1 and residual[0].flow.sport == 50001


@pytest.mark.parametrize(
    ("cport", "sport", "rule", "expect"),
    [
        (50000, 443, "sport>dport", True),
        (443, 50000, "sport>dport", False),
        (4000, 5000, "sport>dport", False),  # AE E2
        (5000, 5000, "sport>dport", False),
        (5000, 5000, "sport>=dport", True),
        (4000, 5000, "sport>=dport", False),
        (4000, 5000, "any", True),
    ],
)
def test_port_rule(cport: int, sport: int, rule: str, expect: bool) -> None:
    r = quic_run(
        build_initial("google.com"), f"quic_sni.port_rule={rule!r}", cport=cport, sport=sport
    )
    assert blocked(r) is expect
    if not expect:
        (event,) = r.acted("pass", "quic_sni")
        assert event.extra["why"] == rule
        assert all(r.verdicts)


def test_non_quic_first_datagram_exempts_the_flow() -> None:
    # AE E4: 14 zero bytes first, then a blocked Initial on the same 4-tuple.
    censor = build_censor(profile(NO_LATENCY), 1)
    packets = [(0.0, udp(C, S, 65535, 6126, bytes(14)))]
    packets += quic_flow(build_initial("google.com"), cport=65535, sport=6126, t0=3.0)
    r = run(censor, packets)
    assert all(r.verdicts)
    assert not r.acted("drop") and not r.acted("anomaly")


def flow_tracking(gap: float) -> Packets:
    packets = [(0.0, udp(C, S, 56182, 443, b"Hello World\n\x00"))]
    packets += [(30.0, udp(C, S, 56182, 443, bytes(10)))]
    packets += quic_flow(build_initial("google.com"), cport=56182, t0=30.0 + gap)
    return packets


def test_flow_forgotten_after_60_s_of_silence() -> None:
    r = run(build_censor(profile(NO_LATENCY), 1), flow_tracking(60.0))
    assert blocked(r) and r.verdicts[-3:] == [False, False, False]
    r = run(build_censor(profile(NO_LATENCY), 1), flow_tracking(59.9))
    assert not blocked(r) and all(r.verdicts)


def test_engine_flow_timeout_is_the_60_s_tracking() -> None:
    censor = build_censor(profile(NO_LATENCY), 1)
    assert censor.profile.engine.udp_timeout_s == 60.0
    r = run(censor, flow_tracking(60.0))
    assert censor.flows.expired >= 1 and blocked(r)


def test_quic_v2_is_not_blocked_unless_configured() -> None:
    r = quic_run(build_initial("google.com", version=QUIC_V2))
    assert not blocked(r) and all(r.verdicts)
    (event,) = r.acted("pass", "quic_sni")
    assert event.extra["why"] == "version" and event.extra["quic_version"] == QUIC_V2
    r = quic_run(build_initial("google.com", version=QUIC_V2), f"quic_sni.versions=[1, {QUIC_V2}]")
    assert blocked(r)


@pytest.mark.parametrize(
    ("date", "active"), [(dt.date(2024, 4, 6), False), (dt.date(2024, 4, 7), True)]
)
def test_start_date(date: dt.date, active: bool) -> None:
    assert ("quic_sni" in build_censor(profile(date=date)).mechanisms) is active
    assert blocked(quic_run(build_initial("google.com"), date=date)) is active


@pytest.mark.parametrize(
    ("date", "outside_in_blocked"),
    [
        (dt.date(2024, 9, 19), True),
        (dt.date(2025, 3, 12), True),
        (dt.date(2025, 3, 13), False),
        (dt.date(2025, 3, 14), False),
        (None, False),  # no --date: the latest behaviour
    ],
)
def test_outbound_only_from_2025_03_13(date: dt.date | None, outside_in_blocked: bool) -> None:
    censor = build_censor(profile(NO_LATENCY, INSIDE, date=date), 1)
    assert censor.mechanisms["quic_sni"].date == date  # set by the engine
    inside_out = quic_run(build_initial("google.com"), INSIDE, date=date)
    assert blocked(inside_out)
    assert inside_out.acted("drop", "quic_sni")[0].direction == "inside-out"
    outside_in = quic_run(build_initial("google.com"), INSIDE, date=date, client=S, server=C)
    assert blocked(outside_in) is outside_in_blocked


def test_outbound_only_can_be_turned_off() -> None:
    r = quic_run(
        build_initial("google.com"),
        INSIDE,
        "quic_sni.outbound_only_from=''",
        date=dt.date(2025, 6, 1),
        client=S,
        server=C,
    )
    assert blocked(r)


def minimal_hello(sni: str) -> bytes:
    """The ClientHello shape of the artifact's Table 3 payloads 4-6 (see test_proto_quic)."""
    name = sni.encode()
    ext = b"\x00\x00" + (len(name) + 5).to_bytes(2, "big") + (len(name) + 3).to_bytes(2, "big")
    ext += b"\x00" + len(name).to_bytes(2, "big") + name
    body = b"\x03\x03" + bytes(32) + b"\x00" + b"\x00\x00" + b"\x01\x00"
    body += len(ext).to_bytes(2, "big") + ext
    return b"\x01" + len(body).to_bytes(3, "big") + body


def _bad_version() -> bytes:
    d = build_initial("google.com", pn_len=1)
    return d[:1] + b"\x00\x00\x00\x02" + d[5:]


# Spec §5 Table 3 (artifact README, Experiment 3), each payload with the SNI google.com, and
# the other evasions spec §5 lists.
TABLE_3: list[tuple[str, Callable[[], bytes], bool, str | None]] = [
    ("1 one-byte packet number", lambda: build_initial("google.com", pn_len=1, pad_to=0), True,
     None),
    ("2 last byte removed", lambda: build_initial("google.com", pn_len=1)[:-1], False,
     "quic.truncated"),
    ("3 bad version 0x00000002", _bad_version, False, None),
    ("4 both connection IDs empty",
     lambda: build_initial(None, client_hello=minimal_hello("google.com"), dcid=b"", scid=b"",
                           pn_len=1, pad_to=0), True, None),
    ("5 connection ID of 255 bytes",
     lambda: build_initial(None, client_hello=minimal_hello("google.com"), dcid=bytes(255),
                           scid=b"", pn_len=1), False, "quic.cid_too_long"),
    ("6 CRYPTO length 0 with payload",
     lambda: build_initial(None, client_hello=minimal_hello("google.com"),
                           crypto_len_zero=True, pn_len=1, pad_to=0), True, None),
    ("7 blocked name only in ALPN", lambda: build_initial(None, alpn=("google.com",)), False,
     None),
    ("8 CRYPTO frame among PING and PADDING frames",
     lambda: build_initial("www.google.com", pn_len=1, leading_frames=b"\x01" + bytes(150),
                           trailing_frames=bytes(600) + b"\x01\x01\x01", pad_to=0), False, None),
    ("9 ECH, outer SNI cloudflare-ech.com",
     lambda: build_initial("cloudflare-ech.com", ech=True), False, None),
    ("10 QUIC v2", lambda: build_initial("google.com", version=QUIC_V2), False, None),
    ("ClientHello split over two CRYPTO frames",
     lambda: build_initial("google.com", split_crypto=60), False, None),
    ("ClientHello split across two Initial packets",
     lambda: split_initials("google.com", 60)[0], False, None),
    ("PADDING before the CRYPTO frame (as in the captures)",
     lambda: build_initial("google.com", leading_frames=bytes(40)), True, None),
    ("Initial with junk coalesced after it",
     lambda: build_initial("google.com", pad_to=600) + bytes(600), True, None),
    ("CRYPTO frame with a non-zero offset only",
     lambda: protect_initial(b"\x06\x05\x10" + bytes(16), dcid=b"abcdefgh"), False, None),
]  # fmt: skip


@pytest.mark.parametrize(
    ("first", "expect", "anomaly"),
    [pytest.param(f, e, a, id=name) for name, f, e, a in TABLE_3],
)
def test_table_3(first: Callable[[], bytes], expect: bool, anomaly: str | None) -> None:
    r = quic_run(first(), cport=60001, sport=444)
    assert blocked(r) is expect
    assert r.verdicts == [True, True, *([not expect] * 3)]
    kinds = {e.rule for e in r.acted("anomaly")}
    if anomaly is not None:
        assert anomaly in kinds
        assert all(e.extra["mechanism"] == "quic_sni" for e in r.acted("anomaly"))


def test_second_initial_in_the_same_flow_is_not_inspected() -> None:
    censor = build_censor(profile(), 1)
    packets = [(0.0, udp(C, S, 50000, 443, build_initial("example.org")))]
    packets += [(1.0, udp(C, S, 50000, 443, build_initial("google.com")))]
    r = run(censor, packets)
    assert all(r.verdicts) and not blocked(r)


def test_probability() -> None:
    censor = build_censor(profile("quic_sni.probability=0.3"), 7)
    n = 400
    packets: Packets = []
    for i in range(n):
        client = f"198.18.{1 + i // 200}.{1 + i % 200}"
        packets += quic_flow(build_initial("google.com"), client=client, t0=i, followups=1)
    r = run(censor, packets)
    drops = len(r.acted("drop", "quic_sni"))
    lo, hi = binomial_interval(n, 0.3)
    assert lo * n <= drops <= hi * n
    assert drops + len(r.acted("pass", "quic_sni")) == n
    assert all("draw" in e.extra for e in r.acted("pass", "quic_sni"))


def test_probability_is_checked() -> None:
    from gfwlab.errors import ConfigError  # noqa: PLC0415

    with pytest.raises(ConfigError, match="probability"):
        profile("quic_sni.probability=1.5")
    with pytest.raises(ConfigError, match="outbound_only_from"):
        profile("quic_sni.outbound_only_from='March'")


# --- real captures (gfw-report/usenixsecurity25-quic-sni, read from ../shared/data) ----------

ATTACKER = str(SHARED_PCAPS / "gfw-quic-sni-artifact--quic_attacker_client_anon.pcap")
FLOW_TRACKING = str(SHARED_PCAPS / "gfw-quic-sni-artifact--flow-tracking-time.pcap")


def analyse(path: str, date: dt.date) -> tuple[float, list[Event]]:
    """The capture's first timestamp and the events, with google.com on the QUIC list."""
    events: list[Event] = []
    summary = analyze(
        path, profile("quic_sni.domains=['google.com']", date=date), on_event=events.append
    )
    assert summary.start_ts is not None
    return summary.start_ts, events


@needs_shared(ATTACKER)
def test_real_spoofed_initial_is_blocked() -> None:
    _start, events = analyse(ATTACKER, dt.date(2024, 9, 19))
    drops = [e for e in events if e.mechanism == "quic_sni" and e.action == "drop"]
    assert drops and drops[0].rule == "google.com" and drops[0].extra["sni"] == "google.com"
    assert drops[0].flow.sport == 12345 and drops[0].flow.dport == 443
    assert not [e for e in events if e.action == "anomaly"]


@needs_shared(FLOW_TRACKING)
def test_real_flow_tracking_experiment() -> None:
    # "Hello World" first, Initials 6-56 s later (each within 60 s of the last datagram): the flow
    # is exempt. The Initial 62 s after the last datagram is a new flow's first: blocked.
    start, events = analyse(FLOW_TRACKING, dt.date(2024, 9, 19))
    drops = [e for e in events if e.mechanism == "quic_sni" and e.action == "drop"]
    assert len(drops) == 1
    assert drops[0].ts - start == pytest.approx(118.05, abs=0.01)
    assert drops[0].extra["sni"] == "google.com"


# --- Table 3 with the published payloads -------------------------------------------------------
# The plaintexts below are the ``--payload`` arguments of the artifact's
# ``utils/quic-packet-builder/payload-gen-reference.md`` (gfw-report/usenixsecurity25-quic-sni),
# protected here as its ``build.py`` does (1-byte packet number 0 unless given, no padding); the
# connection IDs are the published ones where the command gives them. Row 6's datagram is also
# compared byte for byte with ``exp10.bin`` as spec §14e prints it.

PAYLOAD_1 = bytes.fromhex(
    "060040cc010000c8030340e85782d04fbac13ea1c0bea42e7cb83dc05a21d4cced9e4639ec4a85cd1f24000006"
    "130113021303010000990000000f000d00000a676f6f676c652e636f6d000a00080006001d0017001800100005"
    "0003026833000d00140012040308040401050308050501080606010201003300260024001d0020bcfc0c8fba5b"
    "1efcd081ae15a7423d1186de23ccfe9b5abc97ae82d2ce1f4034002d00020101002b00030203040039001e0304"
    "8000fff70a01030b01190f107bcbc370f1173b1983705b16cb2417d7"
)
PAYLOAD_4 = bytes.fromhex(
    "060040400100003c03030000000000000000000000000000000000000000000000000000000000000000000000"
    "010000130000000f000d00000a676f6f676c652e636f6d"
)
PAYLOAD_6 = bytes.fromhex(
    "060000000100003c03030000000000000000000000000000000000000000000000000000000000000000000000"
    "010000130000000f000d00000a676f6f676c652e636f6d"
)
PAYLOAD_7 = bytes.fromhex(
    "060040600100005c030336182adda5771592b63b4b066d359c467a8879fe4abfdec3f47accc2f1f55e45000006"
    "130113021303010000290010000d000b0a676f6f676c652e636f6d000d0014001204030804040105030805050108"
    "0606010201"
)
PAYLOAD_8_HELLO = bytes.fromhex(
    "060041200100011c0303f7b33636dc91a142ff71b3b3c6e9370257518c33a2f9d1b2820cd583f6cd2812000006"
    "13011302130301"
    "0000ed000d00140012040308040401050308050501080606010201002d00020101001000050003026833002b0003"
    "020304003300260024001d0020c312434d03a27cd5cf2297410dabd78d345bb42cf9441c1cff7729f0b9b66f37"
    "00000013001100000e7777772e676f6f676c652e636f6d001b0003020002000a00080006001d0017001800390"
    "05e0604806000007128045256434d07048060000005048060000008024064010480007530ec4292311fee1fcd02"
    "c6c20f0080ff73db0c00000001000000013a1aba6a040480f00000030245c08000475204000000012004800100"
    "0009024067446900050003026833"
)
PAYLOAD_8 = b"\x01" + bytes(150) + PAYLOAD_8_HELLO + bytes(600) + b"\x01\x01\x01"
"""Row 8: PING, PADDING, the CRYPTO frame, PADDING, three PINGs (the published hex has 150 zero
bytes before the CRYPTO frame; the trailing PADDING's exact count does not matter)."""
EXP10 = bytes.fromhex(
    "c80000000108ef751b897969b5180885fc1d15e30a71d70040550bb6939c655f9680cbef567eb3bbb1024a6de5"
    "0cebbd383944acee563ec018b8a830f03c8261495f1536ab2f6ca6378c0eef6766f5b7ed1ca408b001f3604e7e"
    "e398f57541ea908ae8534ae11060bad540b8807a8a"
)
DCID_1, SCID_1 = (
    bytes.fromhex("8144962187fccea82488d99a65bb901e"),
    bytes.fromhex("7bcbc370f1173b1983705b16cb2417d7"),
)


def _published(row: int) -> bytes:
    one = protect_initial(PAYLOAD_1, dcid=DCID_1, scid=SCID_1, pn_len=1, pad_to=0)
    if row == 1:
        return one
    if row == 2:
        return one[:-1]
    if row == 3:
        return one[:1] + b"\x00\x00\x00\x02" + one[5:]
    if row == 4:
        return protect_initial(PAYLOAD_4, dcid=b"", scid=b"", pn_len=1, pad_to=0)
    if row == 5:
        return protect_initial(PAYLOAD_4, dcid=bytes(range(255)), scid=b"", pn_len=1, pad_to=0)
    if row == 6:
        dcid, scid = bytes.fromhex("ef751b897969b518"), bytes.fromhex("85fc1d15e30a71d7")
        return protect_initial(PAYLOAD_6, dcid=dcid, scid=scid, pn_len=1, pad_to=0)
    if row == 7:
        dcid, scid = bytes.fromhex("a58052e002f18e3b"), bytes.fromhex("9e2169478065a399")
        return protect_initial(PAYLOAD_7, dcid=dcid, scid=scid, pn_len=1, pad_to=0)
    if row == 8:
        dcid = bytes.fromhex("f74efb84af02ee17")
        return protect_initial(PAYLOAD_8, dcid=dcid, scid=b"", pn=1, pn_len=1, pad_to=0)
    if row == 9:
        return build_initial("cloudflare-ech.com", ech=True, pn_len=1)
    return build_initial("google.com", version=QUIC_V2, pn_len=1)


def test_published_row_6_is_exp10_byte_for_byte() -> None:
    assert _published(6) == EXP10
    assert len(EXP10) == 111


@pytest.mark.parametrize("reading", ["skip-zeros", "scan", "two-byte-length"])
@pytest.mark.parametrize("row", range(1, 11))
def test_table_3_published_payloads(row: int, reading: str) -> None:
    # README Table 3: rows 1, 4 and 6 blocked, the others not, under every candidate reading of
    # row 6 (spec §14e); the domain is google.com (row 8: www.google.com).
    r = quic_run(_published(row), f"quic_sni.crypto_reading='{reading}'", cport=60001, sport=444)
    assert blocked(r) is (row in (1, 4, 6)), row
    assert r.verdicts == [True, True, *([row not in (1, 4, 6)] * 3)]


def test_published_payloads_are_read_as_published() -> None:
    # The vectors are what the README says they are, so the not-blocked rows fail for the
    # stated reason and not because a vector is broken.
    q1, q7, q8 = (parse_initial(_published(r)) for r in (1, 7, 8))
    assert q1 is not None and q1.sni == "google.com" and q1.pn_length == 1
    # Row 7 as published declares a CRYPTO Length of 96 bytes and carries 92 (its ClientHello
    # header says 92 and 88 follow): the censor cannot read it whatever it does with ALPN. The
    # builder-made row 7 in TABLE_3 above tests the ALPN reading itself.
    assert q7 is not None and q7.sni is None and "quic.frame_truncated" in q7.anomalies
    assert q8 is not None and q8.frames[:3] == ("ping", "padding", "crypto")
    assert "quic.crypto_not_first" in q8.anomalies
    hello = PAYLOAD_8[151 + 4 :]  # after PING, 150 PADDING, the CRYPTO header
    body_len = int.from_bytes(hello[1:4], "big")
    assert parse_client_hello_body(hello[4 : 4 + body_len]).sni == "www.google.com"


def test_row_6_was_not_blocked_by_the_old_reading() -> None:
    # Reading the data of a zero-Length CRYPTO frame right after the Length lands on the stray
    # zero byte: the ClientHello is not found. Each candidate reading finds it.
    for reading in CRYPTO_READINGS:
        q = parse_initial(EXP10, crypto_reading=reading)
        assert q is not None and q.sni == "google.com"
        assert "quic.crypto_length_zero_with_data" in q.anomalies


def test_crypto_reading_is_checked() -> None:
    from gfwlab.errors import ConfigError  # noqa: PLC0415

    with pytest.raises(ConfigError, match="crypto_reading"):
        profile("quic_sni.crypto_reading='guess'")
    with pytest.raises(ConfigError, match="block_latency_ms"):
        profile("quic_sni.block_latency_ms=[[0, 5], [0.5, 1]]")


# --- block latency (spec §5, how-fast-gfw-blocks) ----------------------------------------------


def test_block_starts_after_the_drawn_latency() -> None:
    censor = build_censor(profile(), 3)
    first = build_initial("google.com")
    packets = [(0.0, udp(C, S, 50000, 443, first))]
    packets += [(0.001 * i, udp(C, S, 50000, 443, b"\x10" * 10)) for i in range(1, 10000)]
    r = run(censor, packets)
    (event,) = r.acted("drop", "quic_sni")
    after = event.extra["block_after_ms"] / 1000.0
    passed = [ts for (ts, _), ok in zip(packets, r.verdicts, strict=True) if ok]
    dropped = [ts for (ts, _), ok in zip(packets, r.verdicts, strict=True) if not ok]
    assert max(passed) < after <= min(dropped)
    assert 0.0586 <= after <= 7.52
    # The residual on the 3-tuple starts with the block, not before.
    later = run(censor, [(after / 2, udp(C, S, 50001, 443, b"x"))])
    assert later.verdicts == [True]


def test_block_latency_median_and_p90() -> None:
    # Emitted: the time from each Initial to the last client datagram that still got through
    # (datagrams every 2 ms), as the artifact measured it; compared with the published median
    # and p90 by binomial 99% intervals.
    n = 600
    censor = build_censor(profile(), 11)
    latencies = []
    for i in range(n):
        client = f"198.18.{1 + i // 200}.{1 + i % 200}"
        t0 = 100.0 * i
        packets = [(t0, udp(client, S, 50000, 443, build_initial("google.com")))]
        packets += [(t0 + 0.002 * k, udp(client, S, 50000, 443, b"\x10")) for k in range(1, 300)]
        r = run(censor, packets)
        ok = [ts for (ts, _), v in zip(packets, r.verdicts, strict=True) if v]
        latencies.append((max(ok) - t0) * 1000.0)
    for q, ms in ((0.5, 109.7), (0.9, 189.7)):
        below = sum(x <= ms for x in latencies) / n
        lo, hi = binomial_interval(n, q)
        assert lo <= below <= hi, (q, below)
