"""The fuzz targets' contracts, their seed corpora, the crashes fuzzing found, and linear work.

The coverage-guided runs themselves are ``scripts/fuzz`` (atheris; a short one is the ``fuzz``
stage of ``scripts/test``). Here, without atheris: every seed of every target (the project's
captures, the shared ones, the builders' messages) keeps its contract; each input fuzzing found
that broke a contract is a regression test; and the work each dissector, the capture reader and
``Censor.feed`` do grows linearly with their input, counted in executed lines of gfwlab's code
(deterministic, no clock): the count at 8x the input is at most 12x the count at 1x.
"""

from __future__ import annotations

import itertools
import os
import struct
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

import gfwlab
from gfwlab.engine.dissect import DISSECTORS, Options
from gfwlab.errors import MalformedPacket
from gfwlab.offline.synth import tcp_conversation
from gfwlab.packet.ip import ACK, SYN, addr_bytes, build_tcp, build_udp
from gfwlab.packet.ip import parse as parse_ip
from gfwlab.packet.pcap import PcapWriter
from gfwlab.proto.dns import build_query
from gfwlab.proto.quic_build import build_initial
from gfwlab.proto.tls import build_client_hello

FUZZ = Path(__file__).resolve().parents[1] / "fuzz"
sys.path.insert(0, str(FUZZ))

import harness  # noqa: E402
import seeds  # noqa: E402

CLIENT, SERVER = "198.18.0.2", "198.19.0.2"
C, S = addr_bytes(CLIENT), addr_bytes(SERVER)


@pytest.mark.parametrize("target", sorted(harness.TARGETS))
def test_seeds_keep_the_contract(target: str) -> None:
    corpus = seeds.seeds(target)
    assert len(corpus) >= 5, f"{target}: only {len(corpus)} seeds"
    for data in corpus:
        harness.TARGETS[target](data)
    harness.remove_scratch()


def test_dissector_outcomes_cover_all_three() -> None:
    """The seeds and their cuts reach parsed, need-more and malformed in every dissector."""
    for row in DISSECTORS:
        outcomes: set[str] = set()
        for data in seeds.seeds(row.name):
            body, opts = data[1:], harness.options_from(data[0])
            for cut in (len(body), len(body) // 2, 7, 3):
                outcomes.add(harness.check_dissector(row, body[:cut], opts).split(":")[0])
            outcomes.add(harness.check_dissector(row, b"\xff" + body[1:], opts).split(":")[0])
        assert {"parsed", "need-more", "malformed"} <= outcomes or row.name == "quic", (
            row.name,
            outcomes,
        )


def test_contract_checker_catches_a_bad_offset() -> None:
    """The checker itself fails on an offset outside the input (so the fuzz runs can fail)."""
    row = next(d for d in DISSECTORS if d.name == "dns")

    def bad(_data: bytes, _o: Options) -> None:
        raise MalformedPacket("dns.short_header", 99)

    broken = type(row)(name="dns", hook=row.hook, carrier=row.carrier, parse=bad)
    with pytest.raises(harness.ContractBroken, match="offset 99"):
        harness.check_dissector(broken, b"\0" * 10, Options())


# --- linear work -------------------------------------------------------------------------------


def count_lines(fn: Callable[[], object]) -> int:
    """Lines of gfwlab's code executed by ``fn()`` (a deterministic operation count)."""
    count = 0

    def local(frame: object, event: str, _arg: object) -> object:
        nonlocal count
        if event == "line":
            count += 1
        return local

    def glob(frame: object, event: str, _arg: object) -> object:
        code = frame.f_code  # type: ignore[attr-defined]
        return local if "gfwlab" in code.co_filename else None

    sys.settrace(glob)  # type: ignore[arg-type]
    try:
        fn()
    finally:
        sys.settrace(None)
    return count


def _dissect(name: str, options: Options | None = None) -> Callable[[bytes], Callable[[], object]]:
    row = next(d for d in DISSECTORS if d.name == name)

    def run(data: bytes) -> Callable[[], object]:
        return lambda: harness.check_dissector(row, data, options or Options())

    return run


def _tls(k: int) -> bytes:
    return build_client_hello(
        "example.org", extra_extensions=[(0x7A00 + i, b"x") for i in range(k)]
    )


def _tls_split(k: int) -> bytes:
    """A ClientHello cut into k small records (the records are joined before parsing)."""
    hello = build_client_hello("example.org", extra_extensions=[(0x7A00, b"y" * 4 * k)])
    body = hello[5:]
    size = max(1, len(body) // k)
    parts = [body[i : i + size] for i in range(0, len(body), size)]
    return b"".join(b"\x16\x03\x01" + struct.pack("!H", len(p)) + p for p in parts)


def _http(k: int) -> bytes:
    headers = "".join(f"X-Filler-{i}: value\r\n" for i in range(k))
    return f"GET / HTTP/1.1\r\n{headers}Host: example.org\r\n\r\n".encode()


def _http_partial(k: int) -> bytes:
    """Headers with no end yet: need more data, after a scan of all of them."""
    return _http(k)[:-4]


def _dns(k: int) -> bytes:
    """A query of k labels that the Python parser reads (QDCOUNT 2: the compiled scan of
    proto/_scan.c takes only plain queries, and its lines are not counted)."""
    query = build_query([b"a"] * k)
    return query[:4] + b"\x00\x02" + query[6:]


def _quic(k: int) -> bytes:
    return build_initial("example.org", leading_frames=b"\x01" * k)


def _capture(k: int, tmp: Path) -> Callable[[], object]:
    path = tmp / f"cap{k}.pcap"
    with PcapWriter(str(path)) as writer:
        for i in range(k):
            writer.write(float(i), build_udp(C, S, 1000 + i, 53, build_query([b"a"] * 3)))
    data = path.read_bytes()
    return lambda: harness.check_capture(data, limit=10**6)


_CLIENTS = itertools.count(1)


def _feed_flows(k: int) -> Callable[[], object]:
    """k SYNs of k flows, then their timers (a SYN flood's shape)."""
    client = addr_bytes(f"198.18.1.{next(_CLIENTS)}")  # fresh flows for every call
    packets = [(i * 0.001, build_tcp(client, S, 1024 + i, 443, seq=i, flags=SYN)) for i in range(k)]
    data = harness.join_packets(packets, limit=10**6)
    censor = harness.censor_for("gfw")
    return lambda: harness.check_feed(censor, data, 10_000.0 + k, limit=10**6)


def _segment(port: int, seq: int, payload: bytes) -> bytes:
    return build_tcp(C, S, port, 443, seq=seq, ack=5001, flags=ACK, payload=payload)


def _feed_segments(k: int) -> Callable[[], object]:
    """One connection sending k segments out of order (the reassembly queue's worst case)."""
    port = 40000 + next(_CLIENTS)  # a fresh flow for every call
    conv = tcp_conversation(CLIENT, SERVER, port, 443, b"", isn_c=1000)
    hs = conv[:3]
    segs = [(1.0 + i * 0.001, _segment(port, 1001 + 10 * (k - i), b"z" * 10)) for i in range(k)]
    segs.append((2.0, _segment(port, 1001, b"GET / HTTP/1.1\r\n")))
    data = harness.join_packets(hs + segs, limit=10**6)
    censor = harness.censor_for("gfw")
    return lambda: harness.check_feed(censor, data, 20_000.0 + k, limit=10**6)


LINEAR: dict[str, tuple[Callable[[int], Callable[[], object]], int]] = {
    "tls-extensions": (lambda k: _dissect("tls")(_tls(k)), 40),
    "tls-records": (lambda k: _dissect("tls", Options(tls_records=True))(_tls_split(k)), 8),
    "http-headers": (lambda k: _dissect("http")(_http(k)), 30),
    "http-need-more": (lambda k: _dissect("http")(_http_partial(k)), 30),
    "dns-labels": (lambda k: _dissect("dns")(_dns(k)), 12),
    "quic-frames": (lambda k: _dissect("quic")(_quic(k)), 40),
    "feed-syn-flood": (_feed_flows, 50),
    "feed-out-of-order": (_feed_segments, 20),
}


@pytest.fixture(scope="module")
def linear_in_the_sources() -> str:
    """The linear-growth tests run on the interpreted sources, in a pytest of their own.

    Their operation count is the lines of gfwlab's code executed, which a tracer sees only in
    interpreted code; compiled modules (gfwlab._build) run the same sources, so their growth is
    the sources' growth.
    """
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-rA",
            "-p",
            "no:cacheprovider",
            __file__,
            "-k",
            "test_work_grows_linearly",
        ],
        env={**os.environ, "GFWLAB_PURE": "1"},
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    return run.stdout + run.stderr


@pytest.mark.parametrize("name", sorted(LINEAR))
def test_work_grows_linearly(name: str, request: pytest.FixtureRequest) -> None:
    if gfwlab.ENGINE_BUILD == "compiled":
        out = request.getfixturevalue("linear_in_the_sources")
        assert f"PASSED tests/test_fuzz.py::test_work_grows_linearly[{name}]" in out, out
        return
    make, k = LINEAR[name]
    make(k)()  # warm: first-call set-up (compiled patterns, lazy tables) is not counted
    small, large = make(k), make(8 * k)
    n1, n8 = count_lines(small), count_lines(large)
    assert n1 > 0
    assert n8 <= 12 * n1, f"{name}: {n1} lines at {k}, {n8} at {8 * k} ({n8 / n1:.1f}x)"


def test_capture_reading_grows_linearly(tmp_path: Path) -> None:
    small, large = _capture(50, tmp_path), _capture(400, tmp_path)
    small()
    n1, n8 = count_lines(small), count_lines(large)
    harness.remove_scratch()
    assert n8 <= 12 * n1, f"{n1} lines at 50 packets, {n8} at 400"


# --- what fuzzing found ------------------------------------------------------------------------


def _v6(next_header: int, body: bytes) -> bytes:
    head = bytes((0x60, 0, 0, 0)) + struct.pack("!HBB", len(body), next_header, 64)
    return head + addr_bytes("2001:db8:c::2") + addr_bytes("2001:db8:5::2") + body


@pytest.mark.parametrize(
    "ext",
    [
        bytes((6, 120)) + bytes(6),  # hop-by-hop options claiming 968 bytes, 8 given
        bytes((0, 0)) + bytes(6) + bytes((6, 200)) + bytes(6),  # the second one overruns
    ],
)
def test_ipv6_extension_overrun_offset_is_inside_the_packet(ext: bytes) -> None:
    """Found by the capture target: an IPv6 extension header whose length runs past the
    packet was reported at the offset it would have ended at (1000 in a 1000-byte packet)."""
    packet = _v6(0, ext)
    with pytest.raises(MalformedPacket) as info:
        parse_ip(packet)
    assert info.value.kind == "ip.v6_ext_truncated"
    assert 0 <= info.value.offset < len(packet)
