"""The compiled loops of the offline index (``gfwlab._native``), against plain Python.

The index's end results are checked elsewhere against the engine's own parser and the
every-packet path (``test_scan.py``, ``test_fastpath.py``); here each loop is checked on its
own, on arbitrary inputs, against a direct Python statement of its rule, and on buffers of the
wrong size (a ValueError, never a read or write out of bounds).
"""

from __future__ import annotations

import os
import struct
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gfwlab import _craft, _native
from gfwlab.offline.index import CaptureIndex, Lives, _classify, _flow_keys
from gfwlab.packet.ip import PROTO_TCP, PROTO_UDP, build_tcp, build_udp
from gfwlab.packet.link import ip_offset
from gfwlab.proto import _initial, _scan
from gfwlab.rules import _names

SRC = Path(__file__).resolve().parent.parent / "src" / "gfwlab"


@pytest.mark.parametrize(
    ("module", "source"),
    [
        (_native, "_native.c"),
        (_initial, "proto/_initial.c"),
        (_names, "rules/_names.c"),
        (_scan, "proto/_scan.c"),
        (_craft, "_craft.c"),
    ],
)
def test_the_module_is_built_from_the_source_in_the_tree(module: ModuleType, source: str) -> None:
    """A stale build would test old code: each C module must be newer than its source
    (rebuild with ``pip install -e .``, which scripts/setup runs). The build copies the module
    into the tree with its time in whole seconds."""
    src = SRC / source
    built = Path(module.__file__ or "")
    assert built.suffix == ".so", built
    if src.exists() and built.is_relative_to(SRC):
        assert os.path.getmtime(built) >= int(os.path.getmtime(src)), (
            f"{built.name} is older than {src.name}: run .venv/bin/pip install -e ."
        )


def _reference_lives(
    key: np.ndarray, keyed: np.ndarray, ts: np.ndarray, proto: np.ndarray, tcp: float, udp: float
) -> list[list[int]]:
    """Each life's packets in file order, lives in their first packet's file order: a keyed
    packet goes on its key's life if it came less than the timeout after the key's last
    packet."""
    lives: list[list[int]] = []
    last: dict[tuple[int, ...], tuple[int, int]] = {}  # key -> (life, last packet)
    for i in range(keyed.shape[0]):
        life = None
        row = tuple(int(x) for x in key[i])
        if keyed[i] and row in last:
            was, prev = last[row]
            if ts[i] - ts[prev] < (tcp if proto[i] == PROTO_TCP else udp):
                life = was
        if life is None:
            life = len(lives)
            lives.append([])
        lives[life].append(i)
        if keyed[i]:
            last[row] = (life, i)
    return lives


def _lives(
    src: np.ndarray, dst: np.ndarray, keyed: np.ndarray, ts: np.ndarray, proto: np.ndarray
) -> Lives:
    index = CaptureIndex.__new__(CaptureIndex)
    index.src, index.dst, index.flow, index.ts, index.proto = src, dst, keyed, ts, proto
    return CaptureIndex.lives(index, 2.0, 0.5)


@given(
    packets=st.lists(
        st.tuples(
            st.integers(0, 5),  # which of a few keys (repeats are the point)
            st.booleans(),  # keyed
            st.floats(-1.0, 3.0, allow_nan=False),  # time since the packet before
            st.sampled_from([PROTO_TCP, PROTO_UDP]),
        ),
        max_size=60,
    )
)
def test_lives_are_the_rule(packets: list[tuple[int, bool, float, int]]) -> None:
    n = len(packets)
    # Endpoints that differ in one word only, the port's, and flows seen both ways: the key is
    # the same in both directions, and a hash's collisions are checked, not trusted.
    src = np.zeros((n, 3), dtype=np.uint64)
    dst = np.zeros((n, 3), dtype=np.uint64)
    for i, (k, *_rest) in enumerate(packets):
        a, b = [1, 2, 80], [1, 2, 1000 + k // 2]
        src[i], dst[i] = (a, b) if k % 2 else (b, a)
    keyed = np.array([kd for _, kd, _, _ in packets], dtype=np.bool_)
    ts = np.cumsum([d for _, _, d, _ in packets]).astype(np.float64)
    proto = np.array([p for *_, p in packets], dtype=np.uint8)
    ends = [sorted((src[i].tolist(), dst[i].tolist())) for i in range(n)]
    key = np.array([[int(proto[i]), *lo, *hi] for i, (lo, hi) in enumerate(ends)]).reshape(n, 7)
    want = _reference_lives(key, keyed, ts, proto, 2.0, 0.5)
    got = _lives(src, dst, keyed, ts, proto)
    assert got.count.tolist() == [len(life) for life in want]
    assert got.first.tolist() == [life[0] for life in want]
    assert got.order.tolist() == [i for life in want for i in life]
    assert got.start.tolist() == np.cumsum([0] + [len(x) for x in want])[:-1].tolist()
    assert got.final_ts.tolist() == [ts[life[-1]] for life in want]
    assert got.keyed.tolist() == [bool(keyed[life[0]]) for life in want]
    for life_id, life in enumerate(want):
        for position, i in enumerate(life):
            assert got.life_of[i] == life_id and got.pos[i] == position


def test_lives_of_many_flows_share_no_life() -> None:
    """Enough distinct keys to fill the hash table's probe chains: each key is its own life."""
    n = 50_000
    rng = np.random.default_rng(7)
    src = rng.integers(0, 2**63, size=(n, 3), dtype=np.uint64)
    dst = rng.integers(0, 2**63, size=(n, 3), dtype=np.uint64)
    src[n // 2 :], dst[n // 2 :] = dst[: n // 2], src[: n // 2]  # each flow twice, both ways
    ts = np.linspace(0.0, 1.0, n)
    tcp = np.full(n, PROTO_TCP, dtype=np.uint8)
    got = _lives(src, dst, np.ones(n, dtype=np.bool_), ts, tcp)
    assert got.count.shape[0] == n // 2
    assert (got.count == 2).all()
    assert (got.life_of[n // 2 :] == got.life_of[: n // 2]).all()
    # One client to many servers: keys that differ only in their higher endpoint, probed past.
    src = np.zeros((n, 3), dtype=np.uint64)
    dst = np.zeros((n, 3), dtype=np.uint64)
    src[:, 2] = 1
    dst[:, 2] = 1000 + np.arange(n) % (n // 2)
    got = _lives(src, dst, np.ones(n, dtype=np.bool_), ts, tcp)
    assert got.count.shape[0] == n // 2
    assert (got.count == 2).all()


def test_lives_are_the_rule_while_the_key_table_grows() -> None:
    """Many keys, each coming back at random after gaps around the timeouts, some packets
    unkeyed: the key table is regrown (it starts with room for at most 65,536 keys) with lives
    open across the growth, and every life is still the rule's."""
    n = 240_000
    rng = np.random.default_rng(11)
    hot = rng.random(n) < 0.5  # half the packets from 2,000 keys that come back within the
    which = np.where(hot, rng.integers(0, 2_000, n), rng.integers(0, 110_000, n))  # timeouts
    src = np.zeros((n, 3), dtype=np.uint64)
    dst = np.zeros((n, 3), dtype=np.uint64)
    src[:, 0], dst[:, 0] = 7, 7
    src[:, 1], src[:, 2] = which // 60_000, 1_000 + which % 60_000  # each key's client
    dst[:, 2] = 443
    flip = rng.random(n) < 0.5  # either direction
    src[flip], dst[flip] = dst[flip].copy(), src[flip].copy()
    keyed = rng.random(n) < 0.95
    ts = np.cumsum(rng.exponential(0.0002, size=n))
    proto = np.where(which % 3 == 0, PROTO_UDP, PROTO_TCP).astype(np.uint8)
    ends = [sorted((src[i].tolist(), dst[i].tolist())) for i in range(n)]
    key = np.array([[int(proto[i]), *lo, *hi] for i, (lo, hi) in enumerate(ends)]).reshape(n, 7)
    want = _reference_lives(key, keyed, ts, proto, 2.0, 0.5)
    got = _lives(src, dst, keyed, ts, proto)
    assert len(set(which.tolist())) > 70_000 and 70_000 < len(want) < n  # keys past the room
    assert got.count.tolist() == [len(life) for life in want]
    assert got.order.tolist() == [i for life in want for i in life]
    assert got.final_ts.tolist() == [ts[life[-1]] for life in want]
    assert got.keyed.tolist() == [bool(keyed[life[0]]) for life in want]


@given(
    packet=st.one_of(
        st.binary(max_size=100),
        st.builds(
            lambda a, p: build_tcp(bytes(4), bytes([198, 18, 0, 1]), a, 80, payload=p),
            st.integers(1, 65535),
            st.binary(max_size=30),
        ),
        st.builds(
            lambda a, p: build_udp(bytes(16), bytes(15) + b"\x01", a, 53, p),
            st.integers(1, 65535),
            st.binary(max_size=30),
        ),
    ),
    tail=st.binary(max_size=100),
    cut=st.integers(0, 100),
)
def test_classify_reads_nothing_past_a_packet_that_decides(
    packet: bytes, tail: bytes, cut: int
) -> None:
    """A packet's fields are the same wherever the buffer ends after it and whatever follows
    it: at the very end of the buffer (the reads past it are zeros), or followed by other
    bytes; and a packet cut short reads only what is left."""
    length = np.array([min(cut, len(packet))], dtype=np.int64)
    start = np.zeros(1, dtype=np.int64)
    alone = _classify(np.frombuffer(packet[: int(length[0])] or b"\0", np.uint8), start, length)
    followed = _classify(np.frombuffer(packet + tail + b"\0", np.uint8), start, length)
    for a, b in zip(alone, followed, strict=True):
        assert a.tolist() == b.tolist()


def test_flow_keys_are_the_same_both_ways() -> None:
    rng = np.random.default_rng(3)
    n = 1000
    src = rng.integers(0, 4, size=(n, 3), dtype=np.uint64)  # small words: many ties
    dst = rng.integers(0, 4, size=(n, 3), dtype=np.uint64)
    proto = rng.integers(0, 256, size=n, dtype=np.uint8)
    key, lower = _flow_keys(proto, src, dst)
    back, back_lower = _flow_keys(proto, dst, src)
    assert (key == back).all()
    for i in range(n):
        a, b = src[i].tolist(), dst[i].tolist()
        assert bool(lower[i]) == (a <= b)
        assert key[i].tolist() == [int(proto[i]), *min(a, b), *max(a, b)]
        assert bool(back_lower[i]) == (b <= a)


def test_wrong_sizes_are_refused() -> None:
    buf = bytes(100)
    one, two = np.zeros(1, np.int64), np.zeros(2, np.int64)
    u8 = np.zeros(1, np.uint8)
    words = np.zeros((1, 3), np.uint64)
    with pytest.raises(ValueError, match="classify flags"):
        _native.classify(buf, one, one, u8, u8, u8, one, words, words)
    with pytest.raises(ValueError, match="classify src"):
        _native.classify(buf, one, one, u8, u8, np.zeros(1, np.uint16), one, two, words)
    with pytest.raises(ValueError, match="flow_keys key"):
        _native.flow_keys(u8, words, words, np.zeros((1, 6), np.uint64), u8)
    with pytest.raises(ValueError, match="lives count"):
        _native.lives(
            u8, words, words, u8, np.zeros(1), 1.0, 1.0, one, one, one, two, np.zeros(1), u8,
        )  # fmt: skip
    with pytest.raises(ValueError, match="walk"):
        _native.walk(buf, 0, 100, 200, 16, False, 100, 1e6, two, np.zeros(2))  # size > buffer
    with pytest.raises(ValueError, match="walk"):
        _native.walk(buf, 0, 100, 100, 16, False, 100, 1e6, two, np.zeros(1))  # ts too short
    with pytest.raises(TypeError):
        _native.classify(buf, one, one, u8, u8, u8, one, words, np.zeros((3, 2), np.uint64)[:, 0])


def test_classify_at_offsets_past_the_buffer_reads_zeros() -> None:
    """Offsets the caller got wrong (past the end, or negative) read as zeros: no flow."""
    start = np.array([-5, 10, 1000], dtype=np.int64)
    length = np.array([40, 40, 40], dtype=np.int64)
    flow, proto, *_ = _classify(np.zeros(20, np.uint8), start, length)
    assert not flow.any()
    assert proto.tolist() == [0, 0, 0]


_GUARDED = r"""
import ctypes, mmap, sys
import numpy as np
from gfwlab import _native
from gfwlab.offline.index import _classify
page = mmap.PAGESIZE
mem = mmap.mmap(-1, 2 * page)
libc = ctypes.CDLL(None, use_errno=True)
libc.mprotect.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
base = ctypes.addressof(ctypes.c_char.from_buffer(mem))
assert libc.mprotect(base + page, page, 0) == 0, ctypes.get_errno()  # the second page: no access
view = memoryview(mem)[:page]
np.frombuffer(view, np.uint8)[:] = 0x45  # IPv4, a 20-byte header: every byte read decides
for k in range(0, 101):
    start = np.array([page - k], dtype=np.int64)
    length = np.array([k], dtype=np.int64)
    _classify(np.frombuffer(view, np.uint8), start, length)
# A classic pcap's records up to the last byte of the page: the walk reads none past it.
rec = 16 + 40
body = np.frombuffer(view, np.uint8)
body[:] = 0
n = page // rec
for i in range(n):
    body[i * rec + 8] = body[i * rec + 12] = 40  # caplen, len (little-endian)
body[(n - 1) * rec + 8] = 40 + page - n * rec  # the last record ends on the page's last byte
off = np.empty(n + 1, dtype=np.int64)
ts = np.empty(n + 1, dtype=np.float64)
got, end, broken = _native.walk(view, 0, page, page, 16, False, 65535, 1e6, off, ts)
assert got == n and end == page and not broken, (got, end, broken)
# And a header cut short by the page's end (10 bytes left): the walk stops before reading it.
body[(n - 1) * rec + 8] -= 10
got, end, broken = _native.walk(view, 0, page, page, 16, False, 65535, 1e6, off, ts)
assert got == n and end == page - 10 and not broken, (got, end, broken)
# A pcapng's packet blocks up to the page's last byte (raw IP, one interface), then a block
# header cut short by it.
body[:] = 0
blen = 32 + 36
n = page // blen
for i in range(n):
    at = i * blen
    size = blen if i < n - 1 else blen + page - n * blen  # the last one ends on the page's end
    body[at : at + 4] = (6, 0, 0, 0)
    body[at + 4] = body[at + size - 4] = size
    body[at + 20] = body[at + 24] = 36
modes, units, offsets = np.ones(1, np.uint8), np.full(1, 1e6), np.zeros(1, np.int64)
out = [np.empty(n + 1), np.empty(n + 1, np.int64), np.empty(n + 1, np.int64)]
got, end = _native.epbs(view, 0, page, page, False, modes, units, offsets, *out)
assert got == n and end == page, (got, end)
got, end = _native.epbs(view, page - 30, page, page, False, modes, units, offsets, *out)
assert got == 0 and end == page - 30, (got, end)
print("ok")
"""


def test_no_read_past_the_buffer(tmp_path: Path) -> None:
    """Packets and records that end on the last byte before a page the process may not read:
    a read past the buffer would kill the process (run in a child for that reason)."""
    out = subprocess.run(
        [sys.executable, "-c", _GUARDED], capture_output=True, text=True, timeout=60, check=False
    )
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]


_ETH_TYPES = [b"\x08\x00", b"\x86\xdd", b"\x08\x06", b"\x00\x00"]
_TAGS = [b"\x81\x00", b"\x88\xa8", b"\x91\x00"]
_FAMILIES = [2, 24, 28, 30, 0, 23, 512]


def _framed() -> st.SearchStrategy[bytes]:
    """Frames shaped for each link mode, so that each rule's branches are reached: Ethernet
    with VLAN tags, Linux cooked v1 and v2, loopback families in either byte order."""
    etype = st.sampled_from(_ETH_TYPES)
    rest = st.binary(max_size=12)
    tag = st.tuples(st.sampled_from(_TAGS), st.binary(min_size=2, max_size=2)).map(b"".join)
    family = st.tuples(st.sampled_from(_FAMILIES), st.sampled_from(["<I", ">I", "<H", ">H"]))
    return st.one_of(
        st.tuples(st.binary(min_size=12, max_size=12), st.lists(tag, max_size=3), etype, rest).map(
            lambda t: t[0] + b"".join(t[1]) + t[2] + t[3]
        ),
        st.tuples(st.binary(min_size=14, max_size=14), etype, rest).map(b"".join),
        st.tuples(etype, st.binary(min_size=18, max_size=18), rest).map(b"".join),
        st.tuples(family, rest).map(
            lambda t: struct.pack(t[0][1], t[0][0]).rjust(4, b"\0")[:4] + t[1]
        ),
        st.binary(max_size=30),
    )


@settings(max_examples=1000)
@given(frame=_framed(), cut=st.one_of(st.just(0), st.integers(0, 40)), at=st.integers(0, 9))
def test_links_are_ip_offset(frame: bytes, cut: int, at: int) -> None:
    """Where a frame's IP packet begins, in every link mode: what
    :func:`gfwlab.packet.link.ip_offset` says, for whole frames and frames cut short."""
    frame = frame[: len(frame) - cut] if cut < len(frame) else frame
    buf = bytes(at) + frame + b"\x08\x00" * 4  # the bytes after the frame never count
    start = np.array([at], dtype=np.int64)
    end = np.array([at + len(frame)], dtype=np.int64)
    got = np.empty(1, dtype=np.int64)
    for mode in range(7):  # 6: a mode the module does not know
        _native.links(buf, mode, start, end, got)
        want = ip_offset(mode, buf, at, at + len(frame)) if mode < 6 else None
        assert int(got[0]) == (-1 if want is None else want), (mode, frame.hex())


def test_links_of_frames_outside_the_buffer_carry_nothing() -> None:
    got = np.empty(3, dtype=np.int64)
    start, end = np.array([-1, 5, 90], dtype=np.int64), np.array([10, 4, 120], dtype=np.int64)
    _native.links(bytes(100), 1, start, end, got)
    assert got.tolist() == [-1, -1, -1]
