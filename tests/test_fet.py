"""fet: fully encrypted traffic detection (spec §6), through the engine.

The threshold sweeps reproduce the artifact's measurements (gfw-report/usenixsecurity23-artifact:
``test-entropy/pop-results.out``, ``test-printable-fraction/result.out``,
``test-printable-longest-run/printable-results.out``) with probability 1, so every non-exempt
payload is blocked and every exempt one passes. Payloads are built from bytes whose popcount is
known: the non-printable bytes 00 01 03 07 0f 1f fc 7f ff have 0-8 set bits, and the filler
byte 8e (non-printable) and the printable byte ``U`` (0x55) have 4 each, so mixing them leaves
the popcount at exactly 4.0 bits per byte.
"""

from __future__ import annotations

import datetime as dt
import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gfwlab.engine import Censor
from gfwlab.engine.actions import EventFields
from gfwlab.errors import ConfigError
from gfwlab.mechanisms.fet import _SHORT, FetFields, FetParams, exemptions, measure
from gfwlab.offline.synth import https_conversation, tcp_conversation
from gfwlab.packet.ip import parse
from gfwlab.profiles import Profile, build_censor
from helpers import Run, binomial_interval, profile, run

C, S = "198.18.0.2", "198.19.0.2"  # S is in the built-in targets (the lab's outside prefix)
ACTIVE = dt.date(2022, 6, 1)
ALWAYS = "fet.probability=1.0"
PORT = 8388

# A non-printable byte with k set bits, for k = 0..8.
NONPRINT_BY_BITS = bytes([0x00, 0x01, 0x03, 0x07, 0x0F, 0x1F, 0xFC, 0x7F, 0xFF])
FILL = 0x8E  # 1000 1110: non-printable, 4 bits
TEXT = 0x55  # "U": printable, 4 bits
LATER = bytes([FILL]) * 30  # the client's second segment (never inspected)
RESPONSE = bytes([FILL]) * 20  # the server's answer

_PROFILES: dict[tuple[str, ...], Profile] = {}


def prof(*sets: str, date: dt.date = ACTIVE) -> Profile:
    key = (*sets, date.isoformat())
    if key not in _PROFILES:
        _PROFILES[key] = profile(*sets, date=date)
    return _PROFILES[key]


def conv(
    payload: bytes,
    *,
    client: str = C,
    server: str = S,
    cport: int = 40000,
    sport: int = PORT,
    t0: float = 0.0,
) -> list[tuple[float, bytes]]:
    return tcp_conversation(
        client, server, cport, sport, [payload, LATER], response=RESPONSE, t0=t0
    )


def connect(payload: bytes, *sets: str, censor: Censor | None = None, **kw: object) -> Run:
    packets = conv(payload, **kw)  # type: ignore[arg-type]
    return run(censor or build_censor(prof(ALWAYS, *sets), 1), packets)


def assert_blocked(payload: bytes, r: Run, packets: list[tuple[float, bytes]]) -> dict:
    (event,) = r.acted(mechanism="fet")
    assert event.action == "drop" and event.rule == "fet:no-exemption"
    assert event.extra["exempt"] == [] and event.extra["length"] == len(payload)
    assert event.residual_until == pytest.approx(event.ts + 180.0)
    assert r.verdicts[:3] == [True, True, True]  # the handshake
    for (_t, pkt), ok in zip(packets[3:], r.verdicts[3:], strict=True):
        assert ok is (parse(pkt).src_text != C), "c2s dropped from the first data packet on"
    return event.extra


def assert_exempt(payload: bytes, r: Run, exemption: str) -> dict:
    (event,) = r.acted(mechanism="fet")
    assert event.action == "pass" and event.rule == f"fet:exempt:{exemption}"
    assert event.extra["exempt"][0] == exemption
    assert event.extra["length"] == len(payload) and "draw" not in event.extra
    assert all(r.verdicts)
    if not str(event.extra["protocol"]).startswith("http:"):
        # Nothing else to inspect: the flow is bypassed. (An HTTP-like one stays with the HTTP
        # dissector, which waits for the end of the request headers.)
        assert r.bypassed == 1
    return event.extra


def check(payload: bytes, exemption: str | None) -> dict:
    """Run one connection with probability 1; ``exemption`` None means it must be blocked."""
    packets = conv(payload)
    r = run(build_censor(prof(ALWAYS), 1), packets)
    if exemption is None:
        return assert_blocked(payload, r, packets)
    return assert_exempt(payload, r, exemption)


# ------------------------------------------------------------------ Ex1: popcount


def popcount_payload(bits: int, length: int = 50) -> bytes:
    """``length`` non-printable bytes with ``bits`` set bits in all, spread evenly."""
    q, r = divmod(bits, length)
    high = NONPRINT_BY_BITS[q + 1 : q + 2] * r  # empty when r == 0 (and q == 8)
    return high + NONPRINT_BY_BITS[q : q + 1] * (length - r)


@pytest.mark.parametrize("bits", range(401))
def test_popcount_sweep(bits: int) -> None:
    # Artifact: not blocked at <= 3.40 bits/byte, blocked 3.42-4.58, not blocked at >= 4.60.
    payload = popcount_payload(bits)
    assert bin(int.from_bytes(payload, "big")).count("1") == bits
    exempt = bits <= 170 or bits >= 230
    extra = check(payload, "ex1-popcount" if exempt else None)
    assert extra["set_bits"] == bits and extra["popcount"] == bits / 50
    assert extra["printable_fraction"] == 0 and extra["printable_run"] == 0
    if exempt:
        assert extra["exempt"] == ["ex1-popcount"]
    else:
        assert extra["draw"] < extra["probability"] == 1.0


# ------------------------------------------------------------------ Ex2-Ex4: printable bytes


def text_payload(printable: int, *, run_len: int = 10, lead: int = 6, length: int = 100) -> bytes:
    """``lead`` filler bytes, then ``printable`` text bytes in runs of ``run_len`` separated by
    one filler byte, padded with filler to ``length``. Every byte has 4 set bits."""
    out = bytearray([FILL] * lead)
    left = printable
    while left:
        take = min(run_len, left)
        out += bytes([TEXT]) * take + bytes([FILL])
        left -= take
    out += bytes([FILL]) * (length - len(out))
    assert len(out) == length
    return bytes(out)


@pytest.mark.parametrize("printable", range(81))
def test_printable_fraction_sweep(printable: int) -> None:
    # Artifact: 100-byte payloads blocked at <= 50 printable bytes, exempt from 51.
    extra = check(text_payload(printable), "ex3-printable-fraction" if printable > 50 else None)
    assert extra["printable_fraction"] == printable / 100
    assert extra["popcount"] == 4.0 and extra["printable_prefix"] == 0
    assert extra["printable_run"] == min(printable, 10)


@pytest.mark.parametrize("longest", range(41))
def test_longest_printable_run_sweep(longest: int) -> None:
    # Artifact: blocked at a longest run <= 20, exempt from 21.
    extra = check(
        text_payload(longest, run_len=longest or 1), "ex4-printable-run" if longest > 20 else None
    )
    assert extra["printable_run"] == longest and extra["printable_fraction"] == longest / 100


@pytest.mark.parametrize("lead", range(11))
def test_printable_prefix_sweep(lead: int) -> None:
    # The first 5 bytes printable is not enough; 6 exempts.
    payload = bytes([TEXT]) * lead + bytes([FILL]) * (50 - lead)
    extra = check(payload, "ex2-printable-prefix" if lead >= 6 else None)
    assert extra["printable_prefix"] == lead == extra["printable_run"]


def test_all_printable_short_payload() -> None:
    # Five printable bytes: the prefix is too short, but 100% are printable.
    extra = check(b"hello", "ex3-printable-fraction")
    assert extra["printable_prefix"] == 5 and extra["printable_fraction"] == 1.0


# ------------------------------------------------------------------ Ex5: protocol fingerprints


def with_prefix(prefix: bytes, length: int = 50) -> bytes:
    return prefix + bytes([FILL]) * (length - len(prefix))


@pytest.mark.parametrize(
    ("prefix", "protocol"),
    [
        *((bytes([0x16, 0x03, minor]), f"tls:16 03 {minor:02x}") for minor in range(0x10)),
        (b"\x17\x03\x01", "tls:17 03 01"),
        (b"\x17\x03\x03", "tls:17 03 03"),
        (b"GET ", "http:GET"),
        (b"PUT ", "http:PUT"),
        (b"POST ", "http:POST"),
        (b"HEAD ", "http:HEAD"),
    ],
)
def test_protocol_fingerprint_exempts(prefix: bytes, protocol: str) -> None:
    extra = check(with_prefix(prefix), "ex5-protocol")
    assert extra["exempt"] == ["ex5-protocol"] and extra["protocol"] == protocol


@pytest.mark.parametrize(
    "prefix",
    [
        b"\x16\x03\x10",  # minor past detect.py's range(0x00, 0x10)
        b"\x17\x03\x10",
        b"\x15\x03\x01",  # TLS alert
        b"\x14\x03\x03",  # change_cipher_spec
        b"\x16\x02\x01",
        b"\x16\x04\x01",
        b"GET!",
        b"get ",
        b"POST!",
        b"HEAD!",
        b"PUT\x00",
    ],
)
def test_near_misses_are_not_exempt(prefix: bytes) -> None:
    extra = check(with_prefix(prefix), None)
    assert extra["protocol"] is None


def test_tls_fingerprint_is_a_parameter() -> None:
    payload = with_prefix(b"\x16\x03\x0a")
    p = FetParams(tls_prefix=((0x16, 0x17), (0x03, 0x03), (0x00, 0x09)))
    assert exemptions(measure(payload, p), p) == []  # detect.py's comment: [\x00-\x09]
    assert exemptions(measure(payload, FetParams()), FetParams()) == ["ex5-protocol"]
    none = FetParams(tls_prefix=(), http_prefixes=())
    assert exemptions(measure(with_prefix(b"\x16\x03\x01"), none), none) == []


# ------------------------------------------------------------------ measures


def naive_measure(data: bytes) -> tuple[int, int, int, int]:
    """Byte-by-byte versions of the four Algorithm 1 measures."""
    printable = [0x20 <= b <= 0x7E for b in data]
    prefix = next((i for i, ok in enumerate(printable) if not ok), len(data))
    longest = current = 0
    for ok in printable:
        current = current + 1 if ok else 0
        longest = max(longest, current)
    return sum(bin(b).count("1") for b in data), sum(printable), prefix, longest


def test_measures_match_a_byte_by_byte_count() -> None:
    rng = random.Random(7)
    params = FetParams()
    for i in range(2000):
        length = rng.randint(1, 300)
        if i % 2:  # text-heavy payloads, so runs and prefixes are long
            data = bytes(rng.choice(b"abcXYZ 019~\x00\x7f\x80\xff\x1f") for _ in range(length))
        else:
            data = rng.randbytes(length)
        m = measure(data, params)
        assert (m.set_bits, m.printable, m.printable_prefix, m.printable_run) == naive_measure(
            data
        ), data.hex()


# ------------------------------------------------------------------ the block itself


def test_random_payloads_are_almost_never_exempt_and_26_percent_are_blocked() -> None:
    # spec §6: 50 random bytes is the artifact's default probe; p = 0.263 (ooni/spec #271).
    n = 600
    censor = build_censor(prof(), 3)
    drawn = blocked = 0
    for i in range(n):
        payload = random.Random(i).randbytes(50)
        packets = conv(payload, sport=10000 + i, t0=i * 0.5)  # distinct ports: no residual mixing
        r = run(censor, packets)
        (event,) = r.acted(mechanism="fet")
        if event.rule == "fet:no-exemption":
            drawn += 1
            if event.action == "drop":
                blocked += 1
                assert_blocked(payload, r, packets)
            else:
                assert all(r.verdicts) and event.extra["draw"] >= 0.263
    assert drawn >= 0.95 * n  # random bytes: Ex3 (>50% printable) exempts ~2%, the rest ~0.5%
    lo, hi = binomial_interval(drawn, 0.263)
    assert lo <= blocked / drawn <= hi


def test_untargeted_servers_are_not_inspected() -> None:
    censor = build_censor(prof(ALWAYS), 3)
    for i in range(50):
        r = run(censor, conv(random.Random(i).randbytes(50), server=f"198.19.1.{i + 1}"))
        assert all(r.verdicts) and not r.acted(mechanism="fet")
    r = connect(random.Random(1).randbytes(50), "fet.targets=['203.0.113.0/24']")
    assert all(r.verdicts) and not r.acted(mechanism="fet")
    r = connect(random.Random(1).randbytes(50), "fet.targets=[]")
    assert all(r.verdicts) and not r.acted(mechanism="fet")


def test_ipv6_target() -> None:
    payload = random.Random(2).randbytes(50)
    packets = tcp_conversation("2001:db8:c::2", "2001:db8:5::2", 40000, 443, payload)
    r = run(build_censor(prof(ALWAYS), 1), packets)
    (event,) = r.acted("drop", "fet")
    assert event.flow.dst == "2001:db8:5::2"
    assert r.verdicts[:3] == [True, True, True] and not r.verdicts[3]


def test_probability_zero_never_blocks_but_reports_the_draw() -> None:
    r = connect(random.Random(1).randbytes(50), "fet.probability=0.0")
    (event,) = r.acted("pass", "fet")
    assert event.rule == "fet:no-exemption" and event.extra["probability"] == 0.0
    assert all(r.verdicts)


def test_only_the_first_data_packet_is_inspected() -> None:
    # An exempt first packet lets random bytes through afterwards.
    packets = tcp_conversation(
        C, S, 40000, PORT, [b"GET / HTTP/1.1\r\n\r\n", random.Random(1).randbytes(50)]
    )
    r = run(build_censor(prof(ALWAYS), 1), packets)
    (event,) = r.acted("pass", "fet")
    assert all(r.verdicts) and "ex2-printable-prefix" in event.extra["exempt"]


# ------------------------------------------------------------------ residual


BAD = random.Random(1).randbytes(50)
GOOD = b"GET / HTTP/1.1\r\nHost: example.org\r\n\r\n"


def test_residual_drops_new_connections_to_the_port_for_180_s() -> None:
    censor = build_censor(prof(ALWAYS), 1)
    first = connect(BAD, censor=censor)
    (event,) = first.acted("drop", "fet")
    until = event.residual_until
    assert until == pytest.approx(180.0205)
    again = connect(GOOD, censor=censor, cport=40001, t0=60.0)
    assert not again.verdicts[0]  # the SYN
    assert all(
        ok is (parse(p).src_text != C)
        for (_t, p), ok in zip(conv(GOOD, cport=40001, t0=60.0), again.verdicts, strict=True)
    )
    (hit,) = again.acted("drop", "fet")
    assert hit.extra == {"residual": True} and hit.rule == "fet:no-exemption"
    other_port = connect(GOOD, censor=censor, cport=40002, sport=PORT + 1, t0=61.0)
    assert all(other_port.verdicts) and other_port.acted("pass", "fet")
    other_client = connect(GOOD, censor=censor, client="198.18.0.3", t0=62.0)
    assert all(other_client.verdicts)  # 3-tuple key by default
    late = connect(GOOD, censor=censor, cport=40003, t0=until + 0.5)
    assert all(late.verdicts) and late.acted("pass", "fet")


def test_residual_keyed_on_the_server_hits_other_clients() -> None:
    censor = build_censor(prof(ALWAYS, "fet.residual_key='server'"), 1)
    connect(BAD, censor=censor)
    other_client = connect(GOOD, censor=censor, client="198.18.0.3", t0=10.0)
    assert not other_client.verdicts[0] and other_client.acted("drop", "fet")
    other_port = connect(GOOD, censor=censor, client="198.18.0.3", sport=PORT + 1, t0=11.0)
    assert all(other_port.verdicts)


def test_residual_length_is_a_parameter() -> None:
    censor = build_censor(prof(ALWAYS, "fet.residual_s=120.0"), 1)
    connect(BAD, censor=censor)
    assert not connect(GOOD, censor=censor, cport=40001, t0=119.0).verdicts[0]
    assert all(connect(GOOD, censor=censor, cport=40002, t0=121.0).verdicts)


# ------------------------------------------------------------------ dates and direction


@pytest.mark.parametrize(
    ("date", "active"),
    [
        (dt.date(2021, 10, 31), False),
        (dt.date(2021, 11, 1), True),
        (dt.date(2023, 3, 14), True),
        (dt.date(2023, 3, 15), False),
        (dt.date(2023, 6, 1), False),
    ],
)
def test_active_from_november_2021_to_march_2023(date: dt.date, active: bool) -> None:
    r = run(build_censor(prof(ALWAYS, date=date), 1), conv(BAD))
    assert bool(r.acted("drop", "fet")) is active
    assert all(r.verdicts) is not active


def test_outside_in_is_not_inspected_by_default() -> None:
    inside = "engine.inside=['198.19.0.0/16']"  # the server is inside, the client outside
    r = connect(BAD, inside)
    assert all(r.verdicts) and not r.acted(mechanism="fet")
    r = connect(BAD, inside, "fet.direction='both'")
    assert r.acted("drop", "fet")[0].direction == "outside-in"


def test_bad_parameters_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="probability"):
        profile("fet.probability=1.5")
    with pytest.raises(ConfigError, match="tls_prefix"):
        profile("fet.tls_prefix=[[23, 22]]")
    with pytest.raises(ConfigError, match="http_prefixes"):
        profile("fet.http_prefixes=['']")


def test_static_blocking_of_the_whole_address_is_optional() -> None:
    """net4people #69: from August 2022, whole-IP blocking of server-to-client packets."""
    sets = (
        "fet.probability=1.0",
        "fet.static_block=true",
        "fet.static_delay_s=100",
        "fet.static_block_s=1000",
    )
    censor = build_censor(profile(*sets, date=dt.date(2022, 9, 1)), 1)
    payload = bytes([0x8E]) * 50
    run(censor, tcp_conversation(C, S, 40000, 8388, payload))
    later = https_conversation(C, S, 40001, "example.org", t0=50.0, sport=443)
    assert all(run(censor, later).verdicts)  # before the static block starts
    blocked = run(censor, https_conversation(C, S, 40002, "example.org", t0=150.0, sport=443))
    for (_t, pkt), ok in zip(
        https_conversation(C, S, 40002, "example.org", t0=150.0, sport=443),
        blocked.verdicts,
        strict=True,
    ):
        assert ok is (parse(pkt).src_text == C)  # every server-to-client packet is dropped
    assert any(e.action == "null-route" for e in blocked.events)
    after = run(censor, https_conversation(C, S, 40003, "example.org", t0=1200.0, sport=443))
    assert all(after.verdicts)
    plain = build_censor(profile("fet.probability=1.0", date=dt.date(2022, 9, 1)), 1)
    run(plain, tcp_conversation(C, S, 40000, 8388, payload))
    assert all(run(plain, https_conversation(C, S, 40002, "example.org", t0=150.0)).verdicts)


_MAYBE_FLOAT = st.none() | st.floats(allow_nan=False)


@given(
    st.integers(0, 1 << 20),
    st.floats(allow_nan=False),
    st.none() | st.sampled_from(["http:GET", "tls:16 03 01"]),
    st.lists(st.sampled_from(["ex1-popcount", "ex2-printable-prefix", "ex5-protocol"])),
    _MAYBE_FLOAT,
    _MAYBE_FLOAT,
)
def test_event_fields_written_out_as_the_inherited_reading(
    n: int,
    x: float,
    protocol: str | None,
    exempt: list[str],
    draw: float | None,
    probability: float | None,
) -> None:
    fields = FetFields(
        length=n,
        set_bits=n * 3,
        popcount=x,
        printable_prefix=n // 2,
        printable_fraction=x / 3,
        printable_run=n // 4,
        protocol=protocol,
        exempt=tuple(exempt),
        draw=draw,
        probability=probability,
    )
    mine, inherited = fields.as_dict(), EventFields.as_dict(fields)
    assert mine == inherited
    assert list(mine) == list(inherited)  # the same order in the JSON


def _plainly_counted(payload: bytes) -> tuple[int, int, int, int]:
    printable = [0x20 <= b <= 0x7E for b in payload]
    runs = "".join("p" if p else " " for p in printable).split()
    lead = printable.index(False) if False in printable else len(payload)
    bits = sum(bin(b).count("1") for b in payload)
    return bits, sum(printable), lead, max((len(r) for r in runs), default=0)


@given(
    st.one_of(
        st.binary(min_size=1, max_size=_SHORT + 40),
        st.text(max_size=_SHORT + 40).map(lambda t: t.encode() or b"x"),
        st.integers(_SHORT - 2, _SHORT + 2).flatmap(lambda n: st.binary(min_size=n, max_size=n)),
    )
)
def test_short_and_long_payloads_measured_alike(payload: bytes) -> None:
    # Up to _SHORT bytes one loop counts; beyond, bytes methods: the same numbers either way.
    m = measure(payload, FetParams())
    got = (m.set_bits, m.printable, m.printable_prefix, m.printable_run)
    assert got == _plainly_counted(payload)
