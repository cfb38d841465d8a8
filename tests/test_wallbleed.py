"""The Wallbleed-era injector's query parsing against the artifact's test cases (spec §14f).

Vectors: ``gfw-report/ndss25-wallbleed`` ``blackbox/blackbox-tests.inc`` (v1, unpatched) as the
artifact's harness runs them: memory after the query is ``X`` bytes (``DDDD`` first in the
"digest" regime), the first 18 bytes of the buffer are zero, the answer suffix is
``c0 0c`` + type + class 1 + ``TTTT`` + length + ``4444`` (A) or 16 bytes ``6`` (AAAA). The cases
below are transcribed from the file's first part (well-formed queries, ignored counts, missing
terminators, shaved QTYPE/QCLASS, the 127-byte threshold, embedded dots and overflowing
labels); the file's comments hold the real injector's answers (hexdumps) for several of them,
and the lengths of the leaked runs below agree with those hexdumps.
"""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gfwlab.proto import wallbleed

A_SUFFIX = b"\xc0\x0c\x00\x01\x00\x01TTTT\x00\x044444"
AAAA_SUFFIX = b"\xc0\x0c\x00\x1c\x00\x01TTTT\x00\x10" + b"6" * 16
BLOCKLIST = wallbleed.blocklist_regex(
    [
        r"69\.mu",
        r"(^|\.)facebook\.com$",
        r"(^|\.)rsf\.org$",
        r"(^|\.)3\.tt$",
        r"(^|\.)4\.tt$",
        r"(^|\.)google\.com$",
        r"^shadowvpn\.com",
    ]
)
Q = b"\x00\x00\x01\x20\x00\x01\x00\x00\x00\x00\x00\x00"  # ID 0, RD, QDCOUNT 1
R = b"\x00\x00\x81\x80\x00\x01\x00\x01\x00\x00\x00\x00"
Q33, R33 = b"\x33\x33" + Q[2:], b"\x33\x33" + R[2:]
X = b"X"
A15 = b"\x0f" + b"a" * 15
LONG = b"\x10" + b"a" * 16 + A15 * 6 + b"\x08facebook\x03com\x00\x00\x01\x00\x01"

# (query, uses_digest, expected answer or b"" for silence)
V1_CASES: list[tuple[bytes, bool, bytes]] = [
    (Q + b"\x0269\x02mu\x00\x00\x01\x00\x01", True,
     R + b"\x0269\x02mu\x00\x00\x01\x00\x01" + A_SUFFIX),
    (Q + b"\x08facebook\x03com\x00\x00\x01\x00\x01", True,
     R + b"\x08facebook\x03com\x00\x00\x01\x00\x01" + A_SUFFIX),
    (Q + b"\x07example\x03com\x00\x00\x01\x00\x01", True, b""),
    (Q + b"\x0269\x02mu\x00\x00\x1c\x00\x01", True,
     R + b"\x0269\x02mu\x00\x00\x1c\x00\x01" + AAAA_SUFFIX),
    (Q + b"\x08facebook\x03com\x00\x00\x1c\x00\x01", True,
     R + b"\x08facebook\x03com\x00\x00\x1c\x00\x01" + AAAA_SUFFIX),
    (Q + b"\x07example\x03com\x00\x00\x1c\x00\x01", True, b""),
    (Q[:4] + bytes(8) + b"\x0269\x02mu\x00\x00\x01\x00\x01", True,
     R + b"\x0269\x02mu\x00\x00\x01\x00\x01" + A_SUFFIX),
    (Q[:4] + bytes(range(1, 9)) + b"\x0269\x02mu\x00\x00\x01\x00\x01", True,
     R + b"\x0269\x02mu\x00\x00\x01\x00\x01" + A_SUFFIX),
    (Q + b"\x08facebook\xffcom", True, b""),
    (Q + b"\x08facebook\x03com", True, R + b"\x08facebook\x03comDDDD" + X + A_SUFFIX),
    (Q + b"\x08facebook\xffcom\x00", True,
     R + b"\x08facebook\xffcom\x00DDDD" + X * 112 + A_SUFFIX),
    (Q33 + b"\x07rsf.org", False, R33 + b"\x07rsf.orgXXXXX" + A_SUFFIX),
    (Q33 + b"\x07rsf.org\x1f", False, b""),
    (Q33 + b"\x07rsf\x03org", False, b""),
    (Q + b"\x0269\x02mu\x00\x00\x01\x00", True, R + b"\x0269\x02mu\x00\x00\x01\x00D" + A_SUFFIX),
    (Q + b"\x0269\x02mu\x00\x00\x01", True, R + b"\x0269\x02mu\x00\x00\x01DD" + A_SUFFIX),
    (Q + b"\x0269\x02mu\x00\x00", True, R + b"\x0269\x02mu\x00\x00DDD" + A_SUFFIX),
    (Q + b"\x0269\x02mu\x00", True, R + b"\x0269\x02mu\x00DDDD" + A_SUFFIX),
    (Q + b"\x0269\x02mu", True, R + b"\x0269\x02muDDDD" + X + A_SUFFIX),
    (Q + b"\x0269\x02mu\x77\x00\x1c", True,
     R + b"\x0269\x02mu\x77\x00\x1cDDDD" + X * 118 + A_SUFFIX),
    (Q + b"\x0269\x02mu\x78\x00\x1c", True,
     R + b"\x0269\x02mu\x78\x00\x1cDDDD" + X * 117 + AAAA_SUFFIX),
    (Q + b"\x0569.mu", True, R + b"\x0569.muDDDD" + X + A_SUFFIX),
    (Q + b"\x0569.mu", False, R + b"\x0569.muXXXXX" + A_SUFFIX),
    (Q + b"\xff69.mu\x00", True, R + b"\xff69.mu\x00DDDD" + X * 119 + A_SUFFIX),
    (Q + b"\xff69.mu\x00", False, R + b"\xff69.mu\x00" + X * 123 + A_SUFFIX),
    (Q + b"\x7769.mu\x00", True, R + b"\x7769.mu\x00DDDD" + X * 114 + A_SUFFIX),
    (Q + b"\x7769.mu\x00", False, R + b"\x7769.mu\x00" + X * 118 + A_SUFFIX),
    (Q33 + b"\x03rsf\x03org", True, R33 + b"\x03rsf\x03orgDDDDX" + A_SUFFIX),
    (Q33 + b"\x03rsf\x03org", False, R33 + b"\x03rsf\x03orgXXXXX" + A_SUFFIX),
    (Q33 + b"\x10" + b"a" * 16 + b"\x08facebook\x03com\x00\x00\x01\x00\x01", True,
     R33 + b"\x10" + b"a" * 16 + b"\x08facebook\x03com\x00\x00\x01\x00\x01" + A_SUFFIX),
    (Q33 + LONG, True, R33 + LONG + A_SUFFIX),
    (Q33 + b"\x11" + b"a" * 17 + A15 * 6 + b"\x08facebook\x03com\x00\x00\x01\x00\x01", True,
     b""),
    (Q33 + LONG[:-5] + b"\x05extra\x00\x00\x01\x00\x01", True,
     R33 + LONG[:-5] + b"\x05extr" + A_SUFFIX),
    (Q33 + A15 * 7 + b"\x08facebook\x03com\x05extra\x00\x00\x01\x00\x01", True,
     R33 + A15 * 7 + b"\x08facebook\x03com\x05extr" + A_SUFFIX),
]  # fmt: skip


# The first part of ``blackbox-tests-patched.inc`` (the v2 era, after the first patch): QTYPE and
# QCLASS may no longer be omitted, QCLASS must be 1; the long-name cases at the 125-character
# limit are answered.
V2_CASES: list[tuple[bytes, bool, bytes]] = [
    (Q + b"\x0269\x02mu\x00\x00\x01\x00\x01", False,
     R + b"\x0269\x02mu\x00\x00\x01\x00\x01" + A_SUFFIX),
    (Q + b"\x08facebook\x03com\x00\x00\x01\x00\x01", False,
     R + b"\x08facebook\x03com\x00\x00\x01\x00\x01" + A_SUFFIX),
    (Q + b"\x07example\x03com\x00\x00\x01\x00\x01", False, b""),
    (Q + b"\x0269\x02mu\x00\x00\x1c\x00\x01", False,
     R + b"\x0269\x02mu\x00\x00\x1c\x00\x01" + AAAA_SUFFIX),
    (Q + b"\x07example\x03com\x00\x00\x1c\x00\x01", False, b""),
    (Q[:4] + bytes(8) + b"\x0269\x02mu\x00\x00\x01\x00\x01", False,
     R + b"\x0269\x02mu\x00\x00\x01\x00\x01" + A_SUFFIX),
    (Q[:4] + bytes(range(1, 9)) + b"\x0269\x02mu\x00\x00\x01\x00\x01", False,
     R + b"\x0269\x02mu\x00\x00\x01\x00\x01" + A_SUFFIX),
    (Q + b"\x08facebook\xffcom", False, b""),
    (Q + b"\x08facebook\x03com", False, b""),
    (Q + b"\x08facebook\xffcom\x00", False, b""),
    (Q33 + b"\x07rsf.org", False, b""),
    (Q33 + b"\x07rsf.org\x1f", False, b""),
    (Q33 + b"\x07rsf\x03org", False, b""),
    (Q + b"\x0269\x02mu\x00\x00\x01\x00", False, b""),
    (Q + b"\x0269\x02mu\x00\x00\x01", False, b""),
    (Q + b"\x0269\x02mu\x00\x00", False, b""),
    (Q + b"\x0269\x02mu\x00", False, b""),
    (Q + b"\x0269\x02mu", False, b""),
    (Q + b"\x0269\x02mu\x77\x00\x1c", False, b""),
    (Q + b"\x0269\x02mu\x78\x00\x1c", False, b""),
    (Q + b"\x0569.mu", False, b""),
    (Q + b"\x0569.mu\x00\x00\x01\x00\x01", False, R + b"\x0569.mu\x00\x00\x01\x00\x01" + A_SUFFIX),
    (Q + b"\xff69.mu\x00", False, b""),
    (Q + b"\x7769.mu\x00", False, b""),
    (Q + b"\x7869.mu\x00", False, b""),
    (Q + b"\x0569.mu\x68", False, b""),
    (Q33 + b"\x03rsf\x03org", False, b""),
    (Q33 + b"\x10" + b"a" * 16 + b"\x08facebook\x03com\x00\x00\x01\x00\x01", False,
     R33 + b"\x10" + b"a" * 16 + b"\x08facebook\x03com\x00\x00\x01\x00\x01" + A_SUFFIX),
    (Q33 + LONG, False, R33 + LONG + A_SUFFIX),
]  # fmt: skip


def _memory(digest: bool) -> bytes:
    return (b"DDDD" if digest else b"") + X * 600


def _answer(qtype: int) -> tuple[bytes, int]:
    return (b"6" * 16 if qtype == wallbleed.TYPE_AAAA else b"4444"), int.from_bytes(b"TTTT")


@pytest.mark.parametrize(("query", "digest", "expected"), V1_CASES)
def test_v1_artifact_cases(query: bytes, digest: bool, expected: bytes) -> None:
    got = wallbleed.respond(query, _memory(digest), "v1", BLOCKLIST, _answer)
    assert (got or b"") == expected


@pytest.mark.parametrize(("query", "digest", "expected"), V2_CASES)
def test_v2_artifact_cases(query: bytes, digest: bool, expected: bytes) -> None:
    got = wallbleed.respond(query, _memory(digest), "v2", BLOCKLIST, _answer)
    assert (got or b"") == expected


def test_leak_is_at_most_125_bytes() -> None:
    # Spec §14f: up to 125 bytes leak per answer; the shortest triggering question is 6 bytes.
    worst = 0
    for label in range(1, 256):
        query = Q + bytes((label,)) + b"3.tt\x00"
        reading = wallbleed.read_query(
            wallbleed.injector_buffer(query, _memory(False)), len(query), "v1"
        )
        assert reading is not None
        worst = max(worst, reading.overread)
    assert worst == 125


def test_v2_needs_class_in_and_skips_a_label_that_does_not_fit() -> None:
    # The first patch: QCLASS must be 1; a label that does not fit whole ends the name, and the
    # position still moves past it (Wallbleed v2 leaks only with label length 0xff).
    ok = Q + b"\x0269\x02mu\x00\x00\x01\x00\x01"
    assert wallbleed.respond(ok, _memory(False), "v2", BLOCKLIST, _answer) is not None
    chaos = Q + b"\x0269\x02mu\x00\x00\x01\x00\x03"
    assert wallbleed.respond(chaos, _memory(False), "v2", BLOCKLIST, _answer) is None
    assert wallbleed.respond(chaos, _memory(False), "v1", BLOCKLIST, _answer) is not None
    leak = Q + b"\x0269\x02mu\xff"
    v2 = wallbleed.read_query(wallbleed.injector_buffer(leak, _memory(False)), len(leak), "v2")
    assert v2 is not None and len(v2.copied) > len(leak)


def test_short_queries_read_the_zeroed_head() -> None:
    # The first 18 bytes of the buffer are zero: a 17-byte query's over-read sees zeros.
    query = Q + b"\x0269\x02m"  # 17 bytes: the label runs one byte past
    reading = wallbleed.read_query(wallbleed.injector_buffer(query, _memory(False)), 17, "v1")
    assert reading is not None and reading.name == b"69.m"


@given(
    st.binary(max_size=300), st.binary(min_size=300, max_size=300), st.sampled_from(["v1", "v2"])
)
def test_arbitrary_queries_never_crash(query: bytes, memory: bytes, era: str) -> None:
    reading = wallbleed.read_query(wallbleed.injector_buffer(query, memory), len(query), era)  # type: ignore[arg-type]
    if reading is not None:
        assert len(reading.name) <= 125 and reading.overread <= 259
        assert reading.copied[: len(query)] == query[: len(reading.copied)]
