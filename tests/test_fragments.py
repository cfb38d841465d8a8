"""IP fragment reassembly (engine/defrag.py, spec §3 Khattak'13): fragmented ClientHellos, HTTP
requests and DNS queries carrying blocked names are censored; overlaps follow the policy; the
timeout and the switch are parameters; fragments of a blocked flow share its verdict."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gfwlab.engine.defrag import Defragmenter
from gfwlab.offline.synth import dns_exchange, http_get, https_conversation, tcp_conversation
from gfwlab.packet.ip import addr_bytes, build_fragment, build_udp, checksum, fragment, parse
from gfwlab.profiles import build_censor
from gfwlab.proto.dns import build_query
from gfwlab.proto.quic_build import build_initial
from helpers import profile, run

C, S = "198.18.0.2", "198.19.0.2"
Packets = list[tuple[float, bytes]]


def with_ip_id(raw: bytes, ip_id: int) -> bytes:
    hdr = bytearray(raw[:20])
    struct.pack_into("!HH", hdr, 4, ip_id, 0)
    struct.pack_into("!H", hdr, 10, 0)
    struct.pack_into("!H", hdr, 10, checksum(bytes(hdr)))
    return bytes(hdr) + raw[20:]


def fragmented(conv: Packets, size: int, *, reverse: bool = False) -> Packets:
    """``conv`` with its first client data packet (the largest) cut into IP fragments."""
    at = max(range(len(conv)), key=lambda i: len(conv[i][1]))
    t, pkt = conv[at]
    frags = fragment(with_ip_id(pkt, 0x4242), size)
    if reverse:
        frags.reverse()
    return conv[:at] + [(t + k * 1e-4, f) for k, f in enumerate(frags)] + conv[at + 1 :]


def test_fragmented_client_hello_is_reset() -> None:
    conv = fragmented(https_conversation(C, S, 40000, "www.youtube.com"), 64)
    r = run(build_censor(profile(), 1), conv)
    (event,) = r.acted("rst", "tls_sni")
    assert event.extra["sni"] == "www.youtube.com"
    assert r.forged("client") and r.forged("server")
    off = run(build_censor(profile("engine.ip_reassembly=false"), 1), conv)
    assert not off.acted("rst")  # fragments pass uninspected without reassembly


def test_out_of_order_fragments_are_reassembled() -> None:
    conv = fragmented(https_conversation(C, S, 40000, "www.youtube.com"), 48, reverse=True)
    assert run(build_censor(profile(), 1), conv).acted("rst", "tls_sni")


def test_fragmented_http_request_is_reset() -> None:
    conv = fragmented(tcp_conversation(C, S, 40000, 80, http_get("www.google.com")), 16)
    r = run(build_censor(profile("http_keyword.probability=1.0"), 1), conv)
    assert r.acted("rst", "http_keyword")


def test_fragmented_dns_query_is_answered() -> None:
    conv = fragmented(dns_exchange(C, "198.19.0.53", 33000, "www.google.com"), 16)
    assert len(conv) == 3
    r = run(build_censor(profile(), 1), conv)
    (event,) = r.acted("dns-inject")
    assert event.extra["qname"] == "www.google.com"
    assert r.forged("client")


def test_incomplete_or_stale_datagrams_are_not_inspected() -> None:
    conv = fragmented(https_conversation(C, S, 40000, "www.youtube.com"), 64)
    frags = [i for i, (_, p) in enumerate(conv) if struct.unpack_from("!H", p, 6)[0] & 0x3FFF]
    missing = [p for i, p in enumerate(conv) if i != frags[1]]
    assert not run(build_censor(profile(), 1), missing).acted("rst")
    # The last fragment 31 s after the first: past the 30 s timeout, the datagram is gone (the
    # server's answer and the FINs are left out: a FIN may tear the censor's TCB down).
    late = conv[: frags[-1] + 1]
    t, p = late[frags[-1]]
    late[frags[-1]] = (t + 31.0, p)
    late.sort(key=lambda tp: tp[0])
    assert not run(build_censor(profile(), 1), late).acted("rst", "tls_sni")
    longer = run(build_censor(profile("engine.ip_fragment_timeout_s=60"), 1), late)
    assert longer.acted("rst", "tls_sni")


# --- overlaps ----------------------------------------------------------------------------------
# The same HTTP request twice, once with the keyword (``falun``) and once without, at the same
# offsets; fragments are cut from one or the other, so the reassembled bytes show whose won.


def _overlap_run(pieces: list[tuple[bool, int, int]], policy: str) -> bool:
    """Whether the request is reset when fragments (blocked?, start, end) arrive in order."""
    clean = tcp_conversation(C, S, 40000, 80, http_get("example.org", "/?q=xxxxx"), close=False)
    dirty = tcp_conversation(C, S, 40000, 80, http_get("example.org", "/?q=falun"), close=False)
    data = [with_ip_id(p, 7) for _, p in (clean[3], dirty[3])]
    size = len(data[0]) - 20
    frags = [
        build_fragment(data[blocked], a, data[blocked][20 + a : 20 + b], more=b < size)
        for blocked, a, b in pieces
    ]
    packets = clean[:3] + [(0.1 + k * 1e-3, f) for k, f in enumerate(frags)]
    sets = ("http_keyword.probability=1.0", f"engine.ip_overlap='{policy}'")
    return bool(run(build_censor(profile(*sets), 1), packets).acted("rst", "http_keyword"))


@pytest.mark.parametrize(
    ("policy", "expect"), [("first", False), ("last", True), ("khattak2013", False)]
)
def test_a_later_fragment_inside_an_earlier_one(policy: str, expect: bool) -> None:
    # The keyword sits at bytes 28-33 of the IP payload (20-byte TCP header, "GET /?q=").
    # First [0, 48) clean, then [24, 40) with the keyword: inside the first, not around it.
    clean = tcp_conversation(C, S, 40000, 80, http_get("example.org", "/?q=xxxxx"))
    end = len(clean[3][1]) - 20
    pieces = [(False, 0, 48), (True, 24, 40), (False, 48, end)]
    assert _overlap_run(pieces, policy) is expect


@pytest.mark.parametrize(
    ("policy", "expect"), [("first", False), ("last", True), ("khattak2013", True)]
)
def test_a_later_fragment_around_an_earlier_one(policy: str, expect: bool) -> None:
    # First [24, 40) clean, then [16, 48) with the keyword: left-long and right-long of it, so
    # Khattak'13's GFW takes the later bytes.
    clean = tcp_conversation(C, S, 40000, 80, http_get("example.org", "/?q=xxxxx"))
    end = len(clean[3][1]) - 20
    pieces = [(False, 24, 40), (True, 16, 48), (False, 0, 16), (False, 48, end)]
    assert _overlap_run(pieces, policy) is expect


@pytest.mark.parametrize(
    ("policy", "expect"), [("first", False), ("last", True), ("khattak2013", False)]
)
def test_a_later_fragment_overlapping_one_side(policy: str, expect: bool) -> None:
    # First [0, 32) clean, then [24, 48) with the keyword: left-equal-or-later, right-long only.
    clean = tcp_conversation(C, S, 40000, 80, http_get("example.org", "/?q=xxxxx"))
    end = len(clean[3][1]) - 20
    pieces = [(False, 0, 32), (True, 24, 48), (False, 48, end)]
    assert _overlap_run(pieces, policy) is expect


# --- fragments of a blocked flow ---------------------------------------------------------------


def test_fragments_of_a_blocked_flow_get_its_verdict() -> None:
    # A QUIC flow blocked client-to-server (spec §5): a later datagram sent as fragments is
    # dropped fragment by fragment, as its unfragmented datagrams are.
    censor = build_censor(profile("quic_sni.block_latency_ms=[]"), 1)
    c, s = addr_bytes(C), addr_bytes(S)
    first = build_udp(c, s, 50000, 443, build_initial("google.com"))
    later = with_ip_id(build_udp(c, s, 50000, 443, bytes(200)), 99)
    packets = [(0.0, first), (0.5, build_udp(c, s, 50000, 443, b"x"))]
    packets += [(1.0 + k * 1e-3, f) for k, f in enumerate(fragment(later, 64))]
    r = run(censor, packets)
    assert r.verdicts == [True, False, False, False, False, False]


@given(st.lists(st.tuples(st.integers(0, 40), st.binary(min_size=1, max_size=64), st.booleans()),
                max_size=12))  # fmt: skip
def test_arbitrary_fragments_never_crash(parts: list[tuple[int, bytes, bool]]) -> None:
    censor = build_censor(profile(), 1)
    base = with_ip_id(build_udp(addr_bytes(C), addr_bytes(S), 5353, 53, bytes(8)), 5)
    for k, (off, data, more) in enumerate(parts):
        censor.feed(build_fragment(base, off * 8, data, more=more), k * 0.01)


@given(
    st.binary(min_size=1, max_size=300),
    st.lists(st.tuples(st.integers(0, 40), st.integers(1, 12)), max_size=20),
    st.randoms(use_true_random=False),
    st.sampled_from(["first", "last", "khattak2013"]),
)
def test_any_cover_of_a_datagram_reassembles_to_it(
    body: bytes, extra: list[tuple[int, int]], order: object, policy: str
) -> None:
    # Fragments cut from one datagram, overlapping and in any order: whatever the policy, the
    # reassembled datagram is the original (all copies of a byte agree).
    whole = with_ip_id(build_udp(addr_bytes(C), addr_bytes(S), 5353, 53, body), 9)
    size = len(whole) - 20
    spans = [(a, min(a + 8, size)) for a in range(0, size, 8)]
    spans += [(8 * a, min(8 * (a + n), size)) for a, n in extra if 8 * a < size]
    order.shuffle(spans)  # type: ignore[attr-defined]
    d = Defragmenter(policy, 30.0)  # type: ignore[arg-type]
    out = None
    for a, b in spans:
        got = d.add(parse(build_fragment(whole, a, whole[20 + a : 20 + b], more=b < size)), 0.0)
        out = out or got
    assert out == whole


def test_ipv6_fragments_are_reassembled() -> None:
    c6, s6 = addr_bytes("2001:db8:c::2"), addr_bytes("2001:db8:5::2")
    query = build_udp(c6, s6, 33000, 53, build_query("www.google.com", 28, id=3))
    frags = fragment(query, 16, ident=0xABCD)
    assert len(frags) == 3 and all(parse(f).fragment for f in frags)
    r = run(build_censor(profile(), 1), [(k * 1e-3, f) for k, f in enumerate(reversed(frags))])
    (event,) = r.acted("dns-inject")
    assert event.extra["qname"] == "www.google.com" and event.extra["qtype"] == 28
    off = run(build_censor(profile("engine.ip_reassembly=false"), 1), [(0.0, f) for f in frags])
    assert not off.acted("dns-inject")
