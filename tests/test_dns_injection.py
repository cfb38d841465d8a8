"""dns_injection against spec §2 (Triplet Censors, GFWatch, Wallbleed)."""

from __future__ import annotations

import datetime as dt
import hashlib
import itertools

import dns.message
import dns.rdatatype
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_wallbleed import A_SUFFIX, AAAA_SUFFIX, BLOCKLIST, V1_CASES, V2_CASES, Q, _answer

from gfwlab.engine.actions import Accept
from gfwlab.engine.stream import Stream
from gfwlab.mechanisms._memory import plausible_memory
from gfwlab.mechanisms._wallbleed_pools import POOL_V4
from gfwlab.mechanisms.dns_injection import _share
from gfwlab.offline.synth import dns_exchange
from gfwlab.packet.ip import addr_bytes, build_udp
from gfwlab.profiles import build_censor
from gfwlab.proto import wallbleed
from gfwlab.proto.dns import build_query, is_forged_answer
from helpers import profile, run

C, R = "198.18.0.2", "198.19.0.53"
POOL = "['198.19.9.1', '198.19.9.2', '198.19.9.3']"
ONE = (
    "dns_injection.injectors=[{name='only', pool_v4=" + POOL + ", pool_v6=['2001::7'],"
    " ip_ttl=[70, 80], ip_id='zero', df=true}]"
)


def query_run(name: str, *sets: str, qtype: int = 1, seed: int = 1, ttl: int = 64):
    censor = build_censor(profile(*sets), seed)
    return run(censor, dns_exchange(C, R, 33000, name, qtype=qtype, answer="198.19.0.80", ttl=ttl))


def test_blocked_name_gets_forged_answers_before_the_real_one() -> None:
    r = query_run("www.google.com")
    (event,) = r.acted("dns-inject")
    assert event.rule == "google.com" and event.extra["qname"] == "www.google.com"
    assert all(r.verdicts)  # the real answer is not suppressed
    forged = r.forged("client")
    assert len(forged) >= 1
    real_time = 0.03
    assert all(i.at < real_time for i in r.injected)
    for pkt in forged:
        assert (pkt.src_text, pkt.sport, pkt.dst_text, pkt.dport) == (R, 53, C, 33000)
        msg = dns.message.from_wire(pkt.payload)
        assert msg.id == 0x1234
        (rrset,) = msg.answer
        assert rrset.rdtype == dns.rdatatype.A
        assert 68 <= rrset.ttl <= 252  # spec §2: 68-252 s (n=36)
        assert is_forged_answer(pkt.payload)


def test_unblocked_name_gets_nothing() -> None:
    r = query_run("example.org")
    assert not r.injected and not r.acted("dns-inject")


def test_several_injectors_with_distinct_fingerprints() -> None:
    # The default injectors cover overlapping shares of the list; find a name all three answer.
    censor = build_censor(profile(), 1)
    for i in range(50):
        r = run(censor, dns_exchange(C, R, 33000 + i, f"n{i}.google.com", t0=i * 1.0, ttl=57))
        if len(r.forged()) == 3:
            break
    else:
        pytest.fail("no name drew answers from all three injectors")
    flags = sorted(dns.message.from_wire(p.payload).flags for p in r.forged())
    assert flags == sorted([0x8180, 0x8580, 0x8180])
    assert any(p.ttl == 57 for p in r.forged())  # the TTL-mirroring injector (Triplet)


def test_injector_coverage_is_a_stable_per_name_draw() -> None:
    censor = build_censor(profile(), 1)
    answers = [
        len(run(censor, dns_exchange(C, R, 34000 + i, "n3.facebook.com", t0=i)).forged())
        for i in range(5)
    ]
    assert len(set(answers)) == 1


@given(name=st.text(max_size=60), injector=st.sampled_from(["alpha", "beta", "gamma"]))
def test_a_names_share_is_its_hash_over_two_to_the_64(name: str, injector: str) -> None:
    """The share's definition: the name's 64-bit BLAKE2b under the injector, divided by 2**64
    (the compiled arithmetic gives that float exactly)."""
    digest = hashlib.blake2b(f"{injector}\0{name}".encode(), digest_size=8).digest()
    assert _share(f"{injector}\0".encode(), name) == int.from_bytes(digest, "big") / 2**64


def test_flags_follow_the_rd_bit() -> None:
    c, r = addr_bytes(C), addr_bytes(R)
    for rd, flags in ((True, 0x8180), (False, 0x8400)):
        q = build_udp(c, r, 33000, 53, build_query("twitter.com", rd=rd))
        res = run(build_censor(profile(ONE), 1), [(0.0, q)])
        (pkt,) = res.forged()
        assert dns.message.from_wire(pkt.payload).flags == flags


@pytest.mark.parametrize(("qtype", "rdtype"), [(1, 1), (28, 28), (15, 1), (16, 1), (255, 1)])
def test_aaaa_gets_aaaa_and_every_other_type_gets_a(qtype: int, rdtype: int) -> None:
    r = query_run("youtube.com", ONE, qtype=qtype)
    (pkt,) = r.forged()
    msg = dns.message.from_wire(pkt.payload)
    assert msg.question[0].rdtype == qtype
    assert msg.answer[0].rdtype == rdtype


def test_forged_pool_is_round_robin() -> None:
    censor = build_censor(profile(ONE), 1)
    got = []
    for i in range(6):
        r = run(censor, dns_exchange(C, R, 35000 + i, "facebook.com", t0=i))
        got.append(dns.message.from_wire(r.forged()[0].payload).answer[0][0].address)
    assert got == ["198.19.9.1", "198.19.9.2", "198.19.9.3"] * 2


def test_fingerprint_parameters_are_applied() -> None:
    (pkt,) = query_run("facebook.com", ONE).forged()
    assert 70 <= pkt.ttl <= 80 and pkt.ip_id == 0 and pkt.df


@pytest.mark.parametrize(
    ("rule", "name", "hit"),
    [
        ("google.com", "google.com", True),
        ("google.com", "mail.google.com", True),
        ("google.com", "notgoogle.com", False),
        ("google.com", "google.com.evil.org", False),
        ("^shadowvpn.com", "shadowvpn.com.example.org", True),
        ("^shadowvpn.com", "x.shadowvpn.com", False),
        ("*69.mu*", "www.x69.museum", True),  # the unanchored kind over-blocks (GFWatch)
        ("=exact.org", "a.exact.org", False),
        ("=exact.org", "exact.org", True),
    ],
)
def test_rule_anchoring(rule: str, name: str, hit: bool) -> None:
    r = query_run(name, f"dns_injection.domains=[{rule!r}]")
    assert bool(r.acted("dns-inject")) is hit


def test_a_dot_inside_a_label_acts_as_a_separator() -> None:
    # The injector flattens the name to a dotted string (Wallbleed blackbox.c): the single label
    # "www.google.com" (dots inside one label) matches the rule google.com.
    c, r = addr_bytes(C), addr_bytes(R)
    q = build_udp(c, r, 33000, 53, build_query([b"www.google", b"com"]))
    assert run(build_censor(profile(), 1), [(0.0, q)]).acted("dns-inject")


def test_queries_toward_any_address_and_both_directions() -> None:
    outside_in = "engine.inside=['198.19.0.0/16']"
    r = query_run("google.com", outside_in)
    assert r.acted("dns-inject")[0].direction == "outside-in"
    r = run(build_censor(profile(), 1), dns_exchange(C, "198.19.200.200", 33000, "google.com"))
    assert r.acted("dns-inject")


def test_only_port_53_and_only_queries() -> None:
    c, r = addr_bytes(C), addr_bytes(R)
    other_port = build_udp(c, r, 33000, 5353, build_query("google.com"))
    assert not run(build_censor(profile(), 1), [(0.0, other_port)]).acted("dns-inject")
    response = bytearray(build_query("google.com"))
    response[2] |= 0x80
    resp = build_udp(c, r, 33000, 53, bytes(response))
    assert not run(build_censor(profile(), 1), [(0.0, resp)]).acted("dns-inject")


def test_class_chaos_is_not_answered_by_the_patched_injector() -> None:
    query = bytearray(build_query("google.com"))
    query[-1] = 3  # QCLASS CH
    pkt = build_udp(addr_bytes(C), addr_bytes(R), 33000, 53, bytes(query))
    assert not run(build_censor(profile(), 1), [(0.0, pkt)]).acted("dns-inject")
    lenient = build_censor(profile("dns_injection.require_class_in=false"), 1)
    assert run(lenient, [(0.0, pkt)]).acted("dns-inject")


def test_garbage_to_port_53_is_an_anomaly_not_a_crash() -> None:
    pkt = build_udp(addr_bytes(C), addr_bytes(R), 33000, 53, bytes(12) + b"\x3fabc")
    r = run(build_censor(profile(), 1), [(0.0, pkt)])
    assert r.verdicts == [True]
    assert r.acted("anomaly") and r.acted("anomaly")[0].rule.startswith("dns.")


# --- Wallbleed era (spec §14f) -------------------------------------------------------------------

WALLBLEED_RULES = (
    "dns_injection.domains=['*69.mu*', 'facebook.com', 'rsf.org', '3.tt', '4.tt', 'google.com',"
    " '^shadowvpn.com']"
)
ONLY_I3 = "dns_injection.injectors=[{name='injector3', wallbleed=true}]"


def _raw_query_run(query: bytes, day: dt.date, *sets: str, seed: int = 1):
    censor = build_censor(profile(WALLBLEED_RULES, ONLY_I3, *sets, date=day), seed)
    packet = build_udp(addr_bytes(C), addr_bytes(R), 33000, 53, query)
    return run(censor, [(0.0, packet)])


def _memory_independent(query: bytes, era: str) -> bool:
    """Whether the injector's answer (its presence and length) is the same whatever its memory
    holds: the engine-level cases run with generated memory (any of its draws), the artifact's
    with ``X`` bytes. A query cut short reads its type from the memory, so it may not be."""
    drawn = tuple(plausible_memory(Stream(f"memory:{i}".encode()), 600) for i in range(64))
    # Memory that completes a question cut short (its last bytes) as type A or AAAA, class IN.
    tails = (
        b"\x01\x00\x01",
        b"\x00\x01\x00\x01",
        b"\x1c\x00\x01",
        b"\x00\x1c\x00\x01",
        b"\x00\x01",
    )
    drawn += tuple((tail + b"X" * 600)[:600] for tail in tails)
    got = [
        wallbleed.respond(query, mem, era, BLOCKLIST, _answer)  # type: ignore[arg-type]
        for mem in (b"X" * 600, bytes(600), b"\x01" * 600, *drawn)
    ]
    return len({None if g is None else len(g) for g in got}) == 1


ERA_CASES = [
    (day, *c)
    for day, era, cases in (
        (dt.date(2022, 6, 1), "v1", V1_CASES),
        (dt.date(2024, 1, 15), "v2", V2_CASES),
    )
    for c in cases
    if _memory_independent(c[0], era)
]


@pytest.mark.parametrize(("day", "query", "digest", "expected"), ERA_CASES)
def test_each_era_answers_exactly_what_the_real_injector_answered(
    day: dt.date, query: bytes, digest: bool, expected: bytes
) -> None:
    # The artifact's v1 and v2 test cases through the whole engine on a day of each era: the
    # same queries are answered, each answer as long as the real one (the leaked run included)
    # and equal to it up to the leaked bytes, the TTL and the address.
    r = _raw_query_run(query, day)
    forged = r.forged("client")
    assert bool(forged) is bool(expected)
    if expected:
        (pkt,) = forged
        assert len(pkt.payload) == len(expected)
        assert pkt.payload[: len(query)] == expected[: len(query)]
        (answer,) = r.acted("dns-inject")[0].extra["answers"]
        aaaa = expected.endswith(b"6" * 16)
        copied = len(expected) - (len(AAAA_SUFFIX) if aaaa else len(A_SUFFIX))
        assert answer["leaked"] == max(0, copied - len(query))


def test_leaked_tail_is_generated_memory_and_only_in_the_leaking_eras() -> None:
    leak = Q + b"\xff69.mu\x00"  # a 255-byte label: 123 bytes past the query are copied
    v1 = _raw_query_run(leak, dt.date(2022, 6, 1))
    (pkt,) = v1.forged("client")
    tail = pkt.payload[len(leak) : -16]
    assert len(tail) == 123
    again = _raw_query_run(leak, dt.date(2022, 6, 1)).forged("client")[0].payload
    other_seed = _raw_query_run(leak, dt.date(2022, 6, 1), seed=2).forged("client")[0].payload
    assert again == pkt.payload and other_seed[len(leak) : -16] != tail  # seeded, per flow
    # v2 (first patch, to March 2024): a label of length 0xff after the name still leaks (it is
    # skipped, not copied), with QTYPE and QCLASS=1 right after its length byte.
    v2_leak = Q + b"\x0269\x02mu\xff\x00\x01\x00\x01"
    (pkt2,) = _raw_query_run(v2_leak, dt.date(2024, 1, 15)).forged("client")
    assert len(pkt2.payload) - 16 == 12 + 6 + 1 + 119 + 4  # 119 bytes skipped, then 4 copied
    assert not _raw_query_run(leak, dt.date(2024, 1, 15)).forged()  # v2: no name, no answer
    chaos = Q + b"\x0269\x02mu\x00\x00\x01\x00\x03"  # QCLASS 3
    assert not _raw_query_run(chaos, dt.date(2024, 1, 15)).forged()
    assert _raw_query_run(chaos, dt.date(2022, 6, 1)).forged()
    # Fixed (from March 2024) and before monitoring began (Oct 2021): no over-read is answered.
    for day in (dt.date(2024, 6, 1), dt.date(2021, 6, 1)):
        assert not _raw_query_run(leak, day).forged()
        ok = _raw_query_run(Q + b"\x0269\x02mu\x00\x00\x01\x00\x01", day).forged("client")
        assert len(ok) == 1 and len(ok[0].payload) == len(Q) + 11 + 16


def test_flags_tell_the_cyclic_injector_apart() -> None:
    # Spec §14f: for a query with flags 0 the Wallbleed-type injector answers 0x8400; with RD
    # it answers 0x8180, as the 0x8180-only injectors do.
    no_rd = b"\x12\x34\x00\x00" + Q[4:] + b"\x06google\x03com\x00\x00\x01\x00\x01"
    (pkt,) = _raw_query_run(no_rd, dt.date(2024, 6, 1)).forged("client")
    assert pkt.payload[2:4] == b"\x84\x00"
    rd = b"\x12\x34\x01\x00" + Q[4:] + b"\x06google\x03com\x00\x00\x01\x00\x01"
    (pkt,) = _raw_query_run(rd, dt.date(2024, 6, 1)).forged("client")
    assert pkt.payload[2:4] == b"\x81\x80"


def test_a_long_scan_of_one_name_shows_the_cyclic_pool_order() -> None:
    # Spec §14f: one name probed at 100 queries/s over one 4-tuple; each of the injector's
    # processes hands out the artifact's ordered pool (592 addresses for 4.tt) in order and wraps
    # around, so the answers fall into parallel linear sequences (three here, as in Fig. 8).
    censor = build_censor(profile(WALLBLEED_RULES, date=dt.date(2023, 5, 9)), 5)
    packets = []
    for i in range(2400):
        query = build_query("4.tt", 1, id=i)
        packets.append((i / 100, build_udp(addr_bytes(C), addr_bytes(R), 33000, 53, query)))
    r = run(censor, packets)
    addrs = [a["addr"] for e in r.acted("dns-inject") for a in e.extra["answers"]
             if a["injector"] == "injector3"]  # fmt: skip
    assert len(addrs) == 2400
    index = [POOL_V4.index(a) for a in addrs]
    sequences: list[list[int]] = []
    for i in index:
        for seq in sequences:
            if (seq[-1] + 1) % len(POOL_V4) == i:
                seq.append(i)
                break
        else:
            sequences.append([i])
    assert len(sequences) == 3
    assert all(len(seq) > len(POOL_V4) for seq in sequences)  # each wrapped around
    assert all(sum(b < a for a, b in itertools.pairwise(seq)) >= 1 for seq in sequences)


@settings(max_examples=150, deadline=None)
@given(
    answer=st.binary(max_size=300),
    cport=st.integers(1024, 65535),
    name=st.sampled_from(["www.google.com", "example.org", "twitter.com"]),
    gap=st.floats(0.0, 50.0),
)
def test_an_answer_from_port_53_changes_nothing_but_counters(
    answer: bytes, cport: int, name: str, gap: float
) -> None:
    """``Censor.plan.ports``, which lets the live lab forward DNS answers unqueued: any
    datagram from port 53 back to the client gets a plain accept and nothing else, and the
    flow's next query gets the same actions as if the answer had never been seen (within the
    flow's idle time: the answer moves that only by its own delay)."""
    c, r = addr_bytes(C), addr_bytes(R)
    query = build_udp(c, r, cport, 53, build_query(name))
    seen, unseen = build_censor(profile(), 1), build_censor(profile(), 1)
    assert 53 in seen.plan.ports and cport not in seen.plan.ports
    assert seen.feed(query, 0.0) == unseen.feed(query, 0.0)
    got = seen.feed(build_udp(r, c, 53, cport, answer), 0.001)
    assert [type(a) for a in got] == [Accept] and got[0] == Accept()
    assert seen.feed(query, 0.002 + gap) == unseen.feed(query, 0.002 + gap)
