"""ipset entries over netlink (``live/ipset.py``): the attributes of each kind of entry, bad
elements refused, and, in a private namespace with the censor's real sets, the same entries,
timeouts and errors as the ``ipset`` command gives."""

from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
import socket
import struct
import subprocess
import time

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gfwlab.errors import LabError
from gfwlab.lab.services import in_netns
from gfwlab.live import blocked
from gfwlab.live.chains import (
    BYPASSED_CHAIN,
    QUEUE_CHAIN,
    SEEN_CHAIN,
    SKIP_CHAIN,
    create_commands,
    held_set,
    synoff_set,
)
from gfwlab.live.ipset import (
    CommandEntries,
    Entries,
    NetlinkEntries,
    _read_dump,
    entry,
    member,
    open_entries,
)
from gfwlab.live.kernel import Kernel
from gfwlab.live.nflog import acknowledgement, attr

NS = f"ipsettest-{os.getpid()}"


def attributes(data: bytes) -> list[tuple[int, bytes]]:
    """(type with its flags, value) of each attribute in ``data``."""
    out, at = [], 0
    while at < len(data):
        size, kind = struct.unpack_from("=HH", data, at)
        out.append((kind, data[at + 4 : at + size]))
        at += (size + 3) & ~3
    return out


def test_each_kind_of_entry_is_the_attributes_ipset_reads() -> None:
    family, data = entry("198.18.0.2,tcp:40000,198.19.0.6", 120)
    assert family == socket.AF_INET
    ip, port, proto, ip2, timeout = attributes(data)
    assert ip == (0x8001, bytes([8, 0, 0x01, 0x40, 198, 18, 0, 2]))  # nested, network order
    assert port == (0x4004, struct.pack("!H", 40000)) and proto == (7, b"\x06")
    assert ip2 == (0x8014, bytes([8, 0, 0x01, 0x40, 198, 19, 0, 6]))
    assert timeout == (0x4006, struct.pack("!I", 120))
    family, data = entry("2001:db8:5::2,udp:443", None)
    assert family == socket.AF_INET6
    ip, port, proto = attributes(data)
    assert ip[1][:4] == bytes([20, 0, 0x02, 0x40]) and proto == (7, b"\x11")
    family, data = entry("128.0.0.0/1", None)
    assert [kind for kind, _ in attributes(data)] == [0x8001, 3]
    assert attributes(data)[1][1] == b"\x01"


def test_the_acknowledgement_of_the_request_sent_is_read() -> None:
    def ack(seq: int, code: int) -> bytes:
        return struct.pack("=IHHIIi", 20, 2, 0, seq, 0, -code)  # NLMSG_ERROR, its error

    stale_then_mine = ack(6, 0) + ack(7, errno.ENOENT)
    assert acknowledgement(stale_then_mine, 7) == errno.ENOENT
    assert acknowledgement(stale_then_mine, 6) == 0
    assert acknowledgement(ack(6, 0), 7) is None  # only another request's answer: read on
    assert acknowledgement(b"\x03\x00", 7) is None


@pytest.mark.parametrize(
    "bad",
    ["", "198.18.0.2,", "198.18.0.2/33", "198.18.0.2,tcp", "198.18.0.2,sctp:1", "1.2.3.4,tcp:65536",
     "1.2.3.4,tcp:-1", "1.2.3.4,tcp:1,2001:db8::1", "1.2.3.4,tcp:1,1.2.3.5,x", "host,tcp:1"],
)  # fmt: skip
def test_what_is_not_an_entry_is_refused(bad: str) -> None:
    with pytest.raises(ValueError):
        entry(bad, None)


@given(st.text(alphabet="0123456789abcdef.:,/tcpud-", max_size=60))
def test_any_text_is_an_entry_or_a_value_error(text: str) -> None:
    with contextlib.suppress(ValueError):
        entry(text, 5)


def list_reply(seq: int, *entries: tuple[str, int]) -> bytes:
    """A list dump's message as the kernel writes it: the set's description, then its entries
    (``IPSET_ATTR_ADT``), each an element with a timeout."""
    header = attr(1, b"\x06") + attr(2, b"gfwlab-blocked-c2s4\0") + attr(3, b"hash:ip,port,ip\0")
    adt = b"".join(attr(7 | 0x8000, entry(e, t)[1]) for e, t in entries)
    body = struct.pack("!BBH", 2, 0, 0) + header + attr(8 | 0x8000, adt)
    return struct.pack("=IHHII", 16 + len(body), (6 << 8) | 7, 2, seq, 0) + body


def test_a_list_dump_is_read_entry_by_entry() -> None:
    out: dict[tuple[bytes, int, int, bytes], int] = {}
    first = list_reply(
        9, ("198.18.0.2,tcp:40000,198.19.0.6", 117), ("198.18.0.3,udp:5,198.19.0.6", 3)
    )
    stale = list_reply(8, ("198.18.0.99,tcp:1,198.19.0.6", 50))  # an earlier request's: skipped
    assert _read_dump(first + stale, 9, out) is False  # not done: no NLMSG_DONE yet
    second = list_reply(9, ("2001:db8:c::2,tcp:443,2001:db8:5::2", 4000))
    done = struct.pack("=IHHIIi", 20, 3, 2, 9, 0, 0)
    assert _read_dump(second + done, 9, out) is True
    assert out == {
        member("198.18.0.2,tcp:40000,198.19.0.6"): 117,
        member("198.18.0.3,udp:5,198.19.0.6"): 3,
        member("2001:db8:c::2,tcp:443,2001:db8:5::2"): 4000,
    }
    assert member("198.18.0.3,udp:5,198.19.0.6") == (
        bytes([198, 18, 0, 3]),
        17,
        5,
        bytes([198, 19, 0, 6]),
    )
    refused = struct.pack("=IHHIIi", 20, 2, 0, 9, 0, -errno.ENOENT)
    with pytest.raises(OSError) as err:
        _read_dump(refused, 9, {})
    assert err.value.errno == errno.ENOENT


@given(st.binary(max_size=300), st.integers(0, 3))
def test_any_bytes_are_a_dump_or_an_os_error(data: bytes, seq: int) -> None:
    with contextlib.suppress(OSError):
        assert _read_dump(data, seq, {}) in (True, False)


# -- in a namespace, against the command ----------------------------------------------------

ELEMENTS = [
    ("gfwlab-tuple-c2s4", "198.18.0.2,tcp:40000,198.19.0.6"),
    ("gfwlab-tuple-s2c6", "2001:db8:c::2,udp:50000,2001:db8:5::2"),
    ("gfwlab-port-c2s4", "198.19.0.6,tcp:443"),
    ("gfwlab-port-s2c6", "2001:db8:5::2,udp:443"),
    ("gfwlab-addr-c2s4", "198.19.0.6"),
    ("gfwlab-addr-s2c6", "2001:db8:5::2"),
    (blocked.set_name("c2s", False), "198.18.0.2,udp:50000,198.19.0.6"),
    (blocked.set_name("s2c", True), "2001:db8:c::2,tcp:40000,2001:db8:5::2"),
]
"""An entry of each type and family the censor writes with a timeout."""


def listing(name: str) -> dict[str, int]:
    out = subprocess.run(["ip", "netns", "exec", NS, "ipset", "list", name, "-output", "save"],
                         capture_output=True, text=True, check=True).stdout  # fmt: skip
    found = {}
    for line in out.splitlines():
        parts = line.split()
        if parts[0] == "add":
            found[parts[2]] = int(parts[4]) if len(parts) > 4 else -1
    return found


def flush() -> None:
    subprocess.run(["ip", "netns", "exec", NS, "ipset", "flush"], check=True)


def write_all(entries: Entries) -> dict[str, dict[str, int]]:
    """Add every element (timeout 100), one again with timeout 300, delete one, delete a
    missing one, fill the SYN-copy pause set; what the sets then hold."""
    for name, element in ELEMENTS:
        entries.add(name, element, 100)
    entries.add(*ELEMENTS[0], 300)  # again: the new timeout (ipset -exist)
    entries.delete(*ELEMENTS[1])
    entries.delete(*ELEMENTS[1])  # gone already: no error (-exist)
    for v6, net in ((False, "0.0.0.0/1"), (False, "128.0.0.0/1"), (True, "8000::/1")):
        entries.add(synoff_set(v6), net)
    names = {name for name, _ in ELEMENTS} | {synoff_set(False), synoff_set(True)}
    return {name: listing(name) for name in sorted(names)}


@pytest.fixture()
def namespace() -> object:
    if os.geteuid() != 0 or not (shutil.which("ip") and shutil.which("ipset")):
        pytest.skip("needs root, ip and ipset")
    subprocess.run(["ip", "netns", "add", NS], check=True)
    try:
        subprocess.run(["ip", "netns", "exec", NS, "ipset", "restore"], input=create_commands(),
                       text=True, check=True)  # fmt: skip
        yield NS
    finally:
        subprocess.run(["ip", "netns", "exec", NS, "ipset", "destroy"], check=False)
        subprocess.run(["ip", "netns", "del", NS], check=False)


@pytest.mark.live
def test_netlink_writes_what_the_command_writes(namespace: str) -> None:
    kernel = Kernel(["ip", "netns", "exec", namespace])
    assert isinstance(kernel.entries, CommandEntries)  # from outside the namespace
    by_command = write_all(kernel.entries)
    flush()
    netlink = in_netns(namespace, lambda: open_entries([], kernel.command))
    assert isinstance(netlink, NetlinkEntries)
    by_netlink = write_all(netlink)
    for found in (by_command, by_netlink):
        first = found[ELEMENTS[0][0]]
        assert 295 <= first[ELEMENTS[0][1]] <= 300, first
        assert ELEMENTS[1][1] not in found[ELEMENTS[1][0]]
        for name, element in ELEMENTS[2:]:
            assert 95 <= found[name][element] <= 100, (name, found[name])
        assert set(found[synoff_set(False)]) == {"0.0.0.0/1", "128.0.0.0/1"}
    assert {n: set(v) for n, v in by_netlink.items()} == {n: set(v) for n, v in by_command.items()}
    # Errors name the set, the entry and why, as LabError (the censor prints it and goes on).
    with pytest.raises(
        LabError, match=re.escape("ipset add gfwlab-nothere 198.18.0.2: no such set")
    ):
        netlink.add("gfwlab-nothere", "198.18.0.2", 5)
    with pytest.raises(LabError, match=re.escape("ipset add gfwlab-addr-c2s4 2001:db8::1: ")):
        netlink.add("gfwlab-addr-c2s4", "2001:db8::1", 5)  # an IPv6 entry in an IPv4 set
    with pytest.raises(LabError, match="not an entry"):
        netlink.add("gfwlab-addr-c2s4", "198.18.0.2,tcp", 5)
    netlink.add("gfwlab-addr-c2s4", "198.18.0.9", 5)  # the socket still works after errors
    assert "198.18.0.9" in listing("gfwlab-addr-c2s4")
    # An entry costs a message, not a process (printed: no wall-clock assertion).
    started = time.perf_counter()
    for n in range(200):
        netlink.add("gfwlab-addr-c2s4", f"198.18.1.{n}", 5)
    each = (time.perf_counter() - started) / 200
    started = time.perf_counter()
    for n in range(20):
        kernel.entries.add("gfwlab-addr-c2s4", f"198.18.2.{n}", 5)
    print(f"an entry: netlink {each * 1e6:.0f} µs, the command "
          f"{(time.perf_counter() - started) / 20 * 1e6:.0f} µs")  # fmt: skip
    netlink.close()


@pytest.mark.live
def test_a_failed_netlink_entry_is_counted(namespace: str) -> None:
    """The censor's kernel writes entries over netlink in its namespace; one that fails counts in
    ``Kernel.errors`` (``kernel_errors`` in its counters) as a failed command does."""
    kernel = in_netns(namespace, Kernel)
    assert isinstance(kernel.entries, NetlinkEntries)
    kernel.armed = True  # the jump is taken to be in place: only the entry is written
    key = (6, bytes([198, 18, 0, 2]), bytes([198, 19, 0, 5]), 443)
    assert kernel.add_residual("3-tuple", "drop-c2s", key, 0.0, 30.0, 0.0)
    assert kernel.errors == 0 and "198.18.0.2,tcp:443,198.19.0.5" in listing("gfwlab-tuple-c2s4")
    # The block's server: its SYNs are queued, the skips held off for it, as long as the block.
    for name in (synoff_set(False), held_set(False)):
        assert 28 <= listing(name)["198.19.0.5"] <= 30, listing(name)
    # A reset block (no set of its own) holds its server's SYNs only.
    assert not kernel.add_residual("server", "rst", (6, bytes([198, 19, 0, 6]), 80), 0.0, 9.0, 0.0)
    assert 7 <= listing(synoff_set(False))["198.19.0.6"] <= 9
    assert "198.19.0.6" not in listing(held_set(False))
    kernel.pause_syns(True)  # recording: every address, until resumed
    assert listing(synoff_set(False))["0.0.0.0/1"] == 0
    kernel.pause_syns(False)
    assert set(listing(synoff_set(False))) == {"198.19.0.5", "198.19.0.6"}
    subprocess.run(["ip", "netns", "exec", namespace, "ipset", "destroy", synoff_set(False)],
                   check=True)  # fmt: skip
    with pytest.raises(LabError, match=re.escape(f"ipset add {synoff_set(False)} 0.0.0.0/1")):
        kernel.pause_syns(True)
    assert kernel.errors == 1 and kernel.syn_paused is False  # as it was: tried again
    kernel.entries.close()


@pytest.mark.live
def test_netlink_lists_what_the_command_lists(namespace: str) -> None:
    """The blocked flows' sets read with one netlink dump each (``HeldFlows.check``): the same
    entries and seconds left as ``ipset list`` gives, over many dump messages, both families."""
    v4, v6 = blocked.set_name("c2s", False), blocked.set_name("s2c", True)
    lines = [
        f"add {v4} 198.18.{i >> 8}.{i & 255},{'tcp' if i % 3 else 'udp'}:{1024 + i},198.19.0.6 "
        f"timeout {60 + i % 500}\n"
        for i in range(6000)
    ] + [
        f"add {v6} 2001:db8:c::{i:x},tcp:{40000 + i},2001:db8:5::2 timeout {1000 + i}\n"
        for i in range(400)
    ]
    subprocess.run(["ip", "netns", "exec", namespace, "ipset", "restore"], input="".join(lines),
                   text=True, check=True)  # fmt: skip
    kernel = Kernel(["ip", "netns", "exec", namespace])
    command = kernel.entries
    netlink = in_netns(namespace, lambda: open_entries([], kernel.command))
    assert isinstance(command, CommandEntries) and isinstance(netlink, NetlinkEntries)
    for name, count in ((v4, 6000), (v6, 400), (blocked.set_name("s2c", False), 0)):
        started = time.perf_counter()
        by_netlink = netlink.timeouts(name)
        took = time.perf_counter() - started
        by_command = command.timeouts(name)
        assert len(by_netlink) == count
        assert by_netlink.keys() == by_command.keys()
        assert all(abs(by_netlink[k] - by_command[k]) <= 1 for k in by_command)
        print(f"{name}: {count} entries listed over netlink in {took * 1e3:.1f} ms")
    some = member("198.18.0.7,tcp:1031,198.19.0.6")
    assert 60 <= netlink.timeouts(v4)[some] <= 67
    with pytest.raises(LabError, match=re.escape("ipset list gfwlab-nothere: no such set")):
        netlink.timeouts("gfwlab-nothere")
    netlink.add(v4, "198.18.200.1,tcp:9,198.19.0.6", 30)  # the socket still works after a dump
    assert member("198.18.200.1,tcp:9,198.19.0.6") in netlink.timeouts(v4)
    netlink.close()


def rules(namespace: str, tool: str, chain: str) -> list[str]:
    argv = ["ip", "netns", "exec", namespace, tool, "-w", "-t", "mangle", "-S", chain]
    out = subprocess.run(argv, capture_output=True, text=True, check=True).stdout
    return [line for line in out.splitlines() if line.startswith("-A ")]


@pytest.mark.live
def test_the_jumps_to_the_sets_go_in_at_once_and_out_behind_the_loop(namespace: str) -> None:
    """While residual drop blocks are in force, bypassed packets cross the sets and the skips
    are held off for the servers they are held on (``Kernel._arm``): three jumps, put in with
    one ``iptables-restore`` per family while the censor's loop waits, taken out by a thread;
    rules not as the censor left them are checked and put right one by one."""
    for tool in ("iptables", "ip6tables"):
        for chain in (QUEUE_CHAIN, SKIP_CHAIN, BYPASSED_CHAIN):
            subprocess.run(["ip", "netns", "exec", namespace, tool, "-w", "-t", "mangle", "-N",
                            chain], check=True)  # fmt: skip
    kernel = Kernel(["ip", "netns", "exec", namespace])
    kernel.set_skip(True)
    skip = {tool: rules(namespace, tool, SKIP_CHAIN) for tool in ("iptables", "ip6tables")}
    jump = f"-A {QUEUE_CHAIN} {' '.join(kernel.jump)}"
    held_off = {
        tool: [
            f"-A {SKIP_CHAIN} -m set --match-set {held_set(tool == 'ip6tables')} {way} -m comment "
            f'--comment "gfwlab: residual drop blocks in force" -g {SEEN_CHAIN}'
            for way in ("src", "dst")
        ]
        for tool in ("iptables", "ip6tables")
    }
    for _ in range(2):
        started = time.perf_counter()
        kernel._arm(True)
        armed = time.perf_counter()
        for tool in ("iptables", "ip6tables"):
            assert rules(namespace, tool, QUEUE_CHAIN) == [jump]
            now = rules(namespace, tool, SKIP_CHAIN)
            assert now[:2] == held_off[tool] and now[2:] == skip[tool], now
        kernel._arm(False)
        left = time.perf_counter()
        assert not kernel.armed
        kernel._settle()
        print(f"in the loop: in {(armed - started) * 1e3:.1f} ms, out "
              f"{(left - armed) * 1e3:.2f} ms (its thread: "
              f"{(time.perf_counter() - left) * 1e3:.1f} ms)")  # fmt: skip
        for tool in ("iptables", "ip6tables"):
            assert rules(namespace, tool, QUEUE_CHAIN) == []
            assert rules(namespace, tool, SKIP_CHAIN) == skip[tool]
    # The jump taken out by hand: the restore fails, and the rules are put right one by one.
    kernel._arm(True)
    subprocess.run(["ip", "netns", "exec", namespace, "iptables", "-w", "-t", "mangle", "-D",
                    QUEUE_CHAIN, *kernel.jump], check=True)  # fmt: skip
    kernel._arm(False, wait=True)
    for tool in ("iptables", "ip6tables"):
        assert rules(namespace, tool, QUEUE_CHAIN) == []
        assert rules(namespace, tool, SKIP_CHAIN) == skip[tool]
    assert kernel.errors == 0
