"""One capture split into parts by server address: the same outputs as one process."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import logging
import os
import random
import signal
import subprocess
import sys
import time
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from gfwlab.offline import scale
from gfwlab.offline.analyze import Summary, analyze
from gfwlab.offline.index import build_index
from gfwlab.offline.scale import ProfileSpec, connect, local_start_method, part_runner
from gfwlab.offline.shard import Split, _tasks, analyze_split, inline, part_lives, split
from gfwlab.offline.synth import dns_exchange, generate, http_get, load_names, tcp_conversation
from gfwlab.packet.ip import ACK, FIN, SYN, addr_bytes, build_tcp, fragment
from gfwlab.packet.pcap import PcapWriter
from gfwlab.profiles import Profile, build_censor, load_profile
from gfwlab.proto.tls import build_client_hello
from helpers import EXACT_DELAY, keyword_resets_due_at_packets
from testenv import REAL_LIST_SETS, SHARED_BLOCKLISTS, SHARED_PCAPS, needs_shared, shared_pcaps

DAY = dt.date(2024, 6, 1)
EVERY_MECHANISM = (
    "fet.active={start='2021-11-01'}",
    "null_route.targets=['198.19.0.0/26', '2001:db8:5::/80']",
    "tls_in_tls.enabled=true",
)
SERVER_KEYED = (
    # FET on every server, always: its residual blocks keyed by the server alone (every client
    # of that server is then dropped), and its static blocks of the whole server address.
    "fet.targets=['0.0.0.0/0', '::/0']",
    "fet.probability=1.0",
    "fet.residual_key='server'",
    "fet.static_block=true",
    "fet.static_delay_s=0.5",
)


def _profile(*sets: str) -> Profile:
    return load_profile("gfw", date=DAY, overrides=[*EVERY_MECHANISM, *sets])


def _plain(s: Summary) -> dict[str, Any]:
    d = s.as_dict()
    for key in ("outputs", "warnings", "parts"):
        d.pop(key)
    return d


def _same(
    tmp_path: Path,
    capture: str,
    prof: Profile,
    parts: int,
    seed: int = 3,
    split: Callable[..., Summary] = analyze_split,
    **options: Any,
) -> Summary:
    """Analyse ``capture`` whole and in ``parts`` (by ``split``; ``options`` to both runs);
    assert identical outputs; return the split run's summary."""
    runs = []
    for n in (1, parts):
        ev, out = tmp_path / f"ev{n}.jsonl", tmp_path / f"out{n}.pcap"
        if n == 1:
            s = analyze(capture, prof, seed=seed, events_path=str(ev), out_path=str(out), **options)
        else:
            s = split(
                capture, prof, parts=n, seed=seed, events_path=str(ev), out_path=str(out),
                **options,
            )  # fmt: skip
        runs.append((s, ev.read_bytes(), out.read_bytes()))
    (one, ev1, out1), (many, evn, outn) = runs
    assert evn == ev1
    assert outn == out1
    assert _plain(many) == _plain(one)
    return many


def _parts(capture: str, prof: Profile, parts: int) -> list[int]:
    index = build_index(capture)
    assert index is not None
    how = split(index, build_censor(prof, 3), parts)
    index.close()
    assert isinstance(how, Split), how
    return np.bincount(how.part_of, minlength=parts).tolist()


def _write(path: Path, packets: list[tuple[float, bytes]]) -> str:
    with PcapWriter(str(path)) as w:
        for ts, pkt in sorted(packets, key=lambda p: p[0]):
            w.write(ts, pkt)
    return str(path)


@pytest.mark.parametrize("mix", ["realistic", "flow-heavy"])
@pytest.mark.parametrize("parts", [2, 3])
def test_generated_capture_split_is_identical(tmp_path: Path, mix: str, parts: int) -> None:
    cap = tmp_path / "cap.pcap"
    generate(str(cap), flows=500, seed=7, mix=mix)
    prof = _profile(*SERVER_KEYED)
    many = _same(tmp_path, str(cap), prof, parts)
    assert not many.warnings and many.parts == parts
    assert {"fet/drop", "dns_injection/dns-inject"} <= set(many.events)
    assert min(_parts(str(cap), prof, parts)) > 0  # every part has work


@pytest.mark.parametrize("mix", ["realistic", "flow-heavy"])
def test_a_parts_lives_are_what_its_own_index_makes(tmp_path: Path, mix: str) -> None:
    """The split hands each part its flow lives, cut from the whole capture's: the same arrays
    as the part's own index would work out."""
    cap = tmp_path / "cap.pcap"
    generate(str(cap), flows=300, seed=12, mix=mix, pps=2_000.0)
    prof = _profile("engine.tcp_timeout_s=0.5", "engine.udp_timeout_s=0.2")  # lives cut by gaps
    index = build_index(str(cap))
    assert index is not None
    how = split(index, build_censor(prof, 3), 3)
    assert isinstance(how, Split)
    keys = index.keys(np.arange(len(index)))
    assert how.lives.count.shape[0] > len(set(map(bytes, keys))) > 0  # some keys cut
    for me in range(3):
        sel = np.flatnonzero(how.part_of == me)
        given = part_lives(how, me, sel)
        own = index.subset(sel).lives(0.5, 0.2)
        for name in ("order", "start", "count", "first", "final_ts", "life_of", "pos", "keyed"):
            assert np.array_equal(getattr(given, name), getattr(own, name)), name
    index.close()


@needs_shared(SHARED_BLOCKLISTS)
def test_generated_capture_real_lists_split_is_identical(tmp_path: Path) -> None:
    cap = tmp_path / "cap.pcap"
    generate(str(cap), flows=400, seed=11, mix="flow-heavy", names=load_names(SHARED_BLOCKLISTS))
    prof = _profile(*REAL_LIST_SETS)
    many = _same(tmp_path, str(cap), prof, 2)
    assert not many.warnings
    assert {"tls_sni/rst", "http_keyword/rst", "dns_injection/dns-inject"} <= set(many.events)


@needs_shared(SHARED_PCAPS)
@pytest.mark.parametrize("capture", shared_pcaps("*.pcap"), ids=lambda p: Path(p).name)
def test_real_captures_split_is_identical(tmp_path: Path, capture: str) -> None:
    assert not _same(tmp_path, capture, _profile(), 2).warnings
    _same(tmp_path, capture, _profile("null_route.targets=['0.0.0.0/0', '::/0']"), 2)


def _server_keyed_capture(tmp_path: Path) -> str:
    """Random first packets from 12 clients to 6 servers (each server's clients drawn at
    random, so that a split by client would part them): each server's first connection starts
    a block keyed by the server alone, which drops the later clients' connections."""
    rng = random.Random(4)
    packets = []
    for j in range(36):
        client, server = f"198.18.1.{10 + rng.randrange(12)}", f"198.19.2.{10 + j % 6}"
        packets += tcp_conversation(
            client, server, 40000 + j, 8443, rng.randbytes(300), t0=0.3 * j, isn_c=1000 * j
        )
    return _write(tmp_path / "server-keyed.pcap", packets)


def test_server_keyed_blocks_reach_other_clients_in_the_split(tmp_path: Path) -> None:
    cap = _server_keyed_capture(tmp_path)
    many = _same(tmp_path, cap, _profile(*SERVER_KEYED), 3)
    assert not many.warnings
    events = [json.loads(line) for line in (tmp_path / "ev3.jsonl").read_text().splitlines()]
    blocked = {(e["flow"]["src"], e["flow"]["dst"]) for e in events if e["action"] == "drop"}
    # The residual drops fall on clients other than the one that started each block.
    assert len({src for src, _ in blocked}) > 6
    assert many.dropped > 0 and min(_parts(cap, _profile(*SERVER_KEYED), 3)) > 0


def test_a_split_by_client_is_caught(tmp_path: Path) -> None:
    """The parts check every flow's server against the split: parts made by the client's
    address (which would lose the blocks above across clients) refuse to give an answer."""
    cap = _server_keyed_capture(tmp_path)
    prof = _profile(*SERVER_KEYED)
    index = build_index(cap)
    assert index is not None
    right = split(index, build_censor(prof, 3), 3)
    assert isinstance(right, Split)
    owners = {addr_bytes(f"198.18.1.{10 + j}"): j % 3 for j in range(12)}

    def client_part(packet: bytes) -> int:
        src, dst = packet[12:16], packet[16:20]
        return owners[src] if src in owners else owners[dst]

    part_of = np.array([client_part(index.packet(i)) for i in range(len(index))])
    life_part = part_of[right.lives.first]
    wrong = Split(3, part_of, right.lives, life_part, owners)
    results = list(inline(_tasks(index, wrong, prof, 3, keep=True)))
    index.close()
    assert any(isinstance(r, str) and "changed servers" in r for r in results)


def test_dns_resolvers_stay_with_one_part(tmp_path: Path) -> None:
    """DNS injection's pool cursors advance with every forged answer, whoever asked: every
    resolver (and every other flow to it) is in one part, and the forged addresses match."""
    packets = []
    names = ["www.facebook.com", "twitter.com", "www.google.com", "example.org"]
    for j in range(48):
        resolver = f"198.19.3.{1 + j % 4}"
        packets += dns_exchange(
            f"198.18.2.{j % 16}", resolver, 30000 + j, names[j % 4], t0=0.05 * j, qid=j,
            answer="198.19.9.9",
        )  # fmt: skip
        if j % 6 == 0:  # a web connection to the resolver's address too
            packets += tcp_conversation(
                f"198.18.2.{j % 16}", resolver, 50000 + j, 80, http_get("a.example"),
                t0=0.05 * j + 0.01,
            )  # fmt: skip
    for j in range(24):  # and other servers, so that other parts have work
        packets += tcp_conversation(
            f"198.18.4.{j}", f"198.19.5.{j}", 45000 + j, 443,
            build_client_hello("www.facebook.com" if j % 2 else "example.org"), t0=0.1 * j,
        )  # fmt: skip
    cap = _write(tmp_path / "dns.pcap", packets)
    prof = _profile()
    many = _same(tmp_path, cap, prof, 3)
    assert not many.warnings
    assert many.events.get("dns_injection/dns-inject", 0) >= 24
    index = build_index(cap)
    assert index is not None
    how = split(index, build_censor(prof, 3), 3)
    index.close()
    assert isinstance(how, Split)
    assert len({how.owner(addr_bytes(f"198.19.3.{r}")) for r in range(1, 5)}) == 1
    assert len(set(how.part_of.tolist())) == 3


def test_ip_fragments_are_not_split(tmp_path: Path) -> None:
    conv = tcp_conversation(
        "198.18.6.1", "198.19.6.1", 40000, 443, build_client_hello("www.facebook.com")
    )
    packets = []
    for ts, pkt in conv:
        if len(pkt) > 200:
            packets += [(ts, f) for f in fragment(pkt, 96)]
        else:
            packets.append((ts, pkt))
    cap = _write(tmp_path / "frag.pcap", packets)
    many = _same(tmp_path, cap, _profile(), 2)
    assert many.warnings and "IP fragment" in many.warnings[0] and many.parts == 1


def test_a_flow_table_that_could_fill_is_not_split(tmp_path: Path) -> None:
    cap = tmp_path / "cap.pcap"
    generate(str(cap), flows=200, seed=8, mix="realistic", pps=40_000.0)
    many = _same(tmp_path, str(cap), _profile("engine.max_flows=40"), 2)
    assert many.warnings and "could fill" in many.warnings[0]
    assert many.flows_evicted > 0


def test_a_simultaneous_open_stops_the_split(tmp_path: Path) -> None:
    """The server answers the client's SYN with a SYN: the censor takes the client for the
    server (spec §9), an address no part holds as a server; the capture is analysed whole."""
    c, s = addr_bytes("198.18.7.1"), addr_bytes("198.19.7.1")
    packets = [
        (0.0, build_tcp(c, s, 40000, 80, seq=1000, flags=SYN)),
        (0.01, build_tcp(s, c, 80, 40000, seq=5000, ack=1001, flags=FIN | SYN)),
        (0.02, build_tcp(c, s, 40000, 80, seq=1000, ack=5001, flags=SYN | ACK)),
        (0.03, build_tcp(s, c, 80, 40000, seq=5001, ack=1001, flags=ACK)),
    ]
    for j in range(8):
        packets += tcp_conversation(
            f"198.18.8.{j}", f"198.19.8.{j}", 41000 + j, 80, http_get("a.example"), t0=0.1 * j
        )
    cap = _write(tmp_path / "simopen.pcap", packets)
    many = _same(tmp_path, cap, _profile("tcb.simultaneous_open_probability=1"), 2)
    assert many.warnings and "changed servers" in many.warnings[0]


def test_out_of_order_capture_is_not_split(tmp_path: Path) -> None:
    conv = tcp_conversation("198.18.9.1", "198.19.9.1", 40000, 80, http_get("a.example"))
    cap = tmp_path / "back.pcap"
    with PcapWriter(str(cap)) as w:
        for ts, pkt in reversed(conv):
            w.write(ts, pkt)
    many = analyze_split(str(cap), _profile(), parts=2)
    assert many.warnings[0].endswith("its timestamps go backwards")


def test_dask_two_workers_split_one_capture(tmp_path: Path) -> None:
    """A real local cluster of two worker processes, each analysing one part."""
    cap = tmp_path / "cap.pcap"
    generate(str(cap), flows=300, seed=9, mix="realistic")
    prof = _profile(*SERVER_KEYED)
    spec = ProfileSpec("gfw", DAY, (*EVERY_MECHANISM, *SERVER_KEYED))
    ev, out = tmp_path / "dask.jsonl", tmp_path / "dask.pcap"
    seen: list[int] = []
    with connect(None, 2) as client:
        many = analyze_split(
            str(cap), prof, parts=2, seed=5, events_path=str(ev), out_path=str(out),
            runner=part_runner(client), rebuild=spec.build,
            progress=lambda done, _total: seen.append(done),
        )  # fmt: skip
    one = analyze(str(cap), prof, seed=5, events_path=str(tmp_path / "one.jsonl"),
                  out_path=str(tmp_path / "one.pcap"))  # fmt: skip
    assert not many.warnings
    assert ev.read_bytes() == (tmp_path / "one.jsonl").read_bytes()
    assert out.read_bytes() == (tmp_path / "one.pcap").read_bytes()
    assert _plain(many) == _plain(one)
    size = cap.stat().st_size  # the parts done, as a share of the capture's bytes
    assert seen == [size // 3, 2 * size // 3, size]


def test_local_workers_are_forked_with_the_drivers_modules(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A local cluster's workers are copies of this process (``scale.local_start_method``):
    a module that exists only in this process's memory is there in each worker."""
    probe = types.ModuleType("gfwlab_fork_probe")
    monkeypatch.setitem(sys.modules, probe.__name__, probe)
    # A profile kept for the workers (``ProfileSpec.keep``) is what they build, from memory:
    # marked here by a description no loaded profile has.
    monkeypatch.setattr(scale, "_KEPT", {})  # forgotten after the test
    spec = ProfileSpec("gfw", DAY, ("fet.active={start='2021-11-01'}",))
    marked = dataclasses.replace(spec.build(), description="kept before the fork")
    spec.keep(marked)
    with connect(None, 2) as client:
        seen = client.run(lambda: "gfwlab_fork_probe" in sys.modules)
        built = client.run(lambda: spec.build().description)
    assert list(seen.values()) == [True, True]
    assert list(built.values()) == ["kept before the fork"] * 2
    assert ProfileSpec("gfw", DAY).build().description != "kept before the fork"  # another spec
    monkeypatch.setattr(sys, "platform", "darwin")  # elsewhere: Dask's default, a spawn
    assert local_start_method() == "spawn"


HELD_STREAM = """
import io, logging, os, sys, threading, time
from gfwlab.offline import scale

class Gate(io.RawIOBase):
    # A file whose writes from any thread but the main one never return.
    def writable(self): return True
    def fileno(self): return NULL
    def write(self, data):
        if threading.current_thread() is not threading.main_thread():
            time.sleep(3600)
        return len(data)

NULL = os.open(os.devnull, os.O_WRONLY)
stream = io.TextIOWrapper(io.BufferedWriter(Gate(), buffer_size=16), write_through=True)
logging.basicConfig(stream=stream, level=logging.WARNING)
sys.stdout = sys.stderr = stream
# A thread in the middle of a write holds the stream's buffer lock while the process forks.
threading.Thread(target=lambda: stream.write("held" * 100), daemon=True).start()
time.sleep(0.3)
scale._forking_workers = sys.argv[1] == "worker"  # as while connect() starts a local cluster
pid = os.fork()
if pid == 0:
    logging.getLogger("gfwlab.test").warning("logged in the child")
    print("printed in the child")
    sys.stdout.flush()
    os._exit(0)
deadline = time.monotonic() + 4  # the child logs, prints and exits in milliseconds
while time.monotonic() < deadline:
    done, status = os.waitpid(pid, os.WNOHANG)
    if done:
        os._exit(0 if os.waitstatus_to_exitcode(status) == 0 else 1)
    time.sleep(0.05)
os.kill(pid, 9)
os._exit(3)  # the child hung
"""


def test_forked_workers_never_wait_for_a_stream_the_driver_held_at_the_fork() -> None:
    """A thread of the driver in the middle of a write when a worker is forked leaves that
    stream's lock held, forever, in the worker (``scale.local_start_method``): a forked worker's
    logging and standard streams must not touch it (``scale._quiet_forked_worker``). Seen in a
    test run: a worker hung in its start-up log line, and its cluster's start with it. A real
    fork with a real held lock; a fork outside a local cluster's start keeps its streams, and
    hangs."""

    def run(who: str) -> int:
        proc = subprocess.run([sys.executable, "-c", HELD_STREAM, who], timeout=60,
                              capture_output=True, check=False)  # fmt: skip
        return proc.returncode

    assert run("worker") == 0
    assert run("other") == 3


def test_connect_marks_its_forks_as_workers_only_while_its_cluster_lives(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """... and leaves this process's environment as it found it: the nannies set their workers'
    variables in it (PYTHONHASHSEED among them) while the cluster starts."""
    monkeypatch.delenv("PYTHONHASHSEED", raising=False)
    monkeypatch.delenv("MALLOC_TRIM_THRESHOLD_", raising=False)
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    before = dict(os.environ)
    assert not scale._forking_workers
    with connect(None, 2) as client:
        assert os.environ.get("PYTHONHASHSEED") == "6640"  # set while its workers started
        assert set(client.run(lambda: os.environ.get("PYTHONHASHSEED")).values()) == {"6640"}
        assert scale._forking_workers == (local_start_method() == "fork")
        assert client.run(lambda: scale._forking_workers)  # and its workers were quieted
        assert client.run(lambda: logging.getLogger().manager.disable) == {
            w: logging.CRITICAL for w in client.scheduler_info()["workers"]
        }
    assert not scale._forking_workers
    assert dict(os.environ) == before


def test_timers_due_together_in_two_parts_keep_one_engines_order(tmp_path: Path) -> None:
    """Keyword requests to many servers, two at a time at the same instant, each reset after
    the same fixed delay: resets from different parts fall due together, and come out in the
    order one engine holds them (the order of the packets that caused them), before the
    datagram captured at their very time."""
    cap = _write(tmp_path / "ties.pcap", keyword_resets_due_at_packets(40))
    prof = _profile(*EXACT_DELAY)
    many = _same(tmp_path, cap, prof, 3)
    assert not many.warnings and many.events.get("http_keyword/rst", 0) >= 20
    assert min(_parts(cap, prof, 3)) > 0


def _children(pid: int) -> set[int]:
    """The live descendants of ``pid`` (zombies excluded)."""
    out: set[int] = set()
    todo = [pid]
    while todo:
        parent = todo.pop()
        for task in Path(f"/proc/{parent}/task").glob("*"):
            kids = task / "children"
            for child in kids.read_text().split() if kids.exists() else ():
                out.add(int(child))
                todo.append(int(child))
    return {p for p in out if _alive(p)}


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def interrupted(cmd: list[str], settle: float, *, group: bool = False) -> tuple[int, str]:
    """Run ``cmd``, press Ctrl-C ``settle`` seconds after its two local-cluster workers are up;
    its exit code and standard error, once no worker it started is left. ``group``: the signal
    goes to the whole process group, workers included, as a terminal's Ctrl-C does; else to the
    command alone (``kill -INT``)."""
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=group
    )
    deadline = time.monotonic() + 60
    seen: set[int] = set()
    while len(seen) < 2:  # the local cluster's worker processes are up
        assert time.monotonic() < deadline and proc.poll() is None
        seen |= _children(proc.pid)
        time.sleep(0.05)
    time.sleep(settle)
    assert proc.poll() is None, "finished before it could be interrupted"
    seen |= _children(proc.pid)
    if group:
        os.killpg(proc.pid, signal.SIGINT)
    else:
        proc.send_signal(signal.SIGINT)
    _out, err = proc.communicate(timeout=60)
    deadline = time.monotonic() + 10
    while any(_alive(p) for p in seen) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not [p for p in seen if _alive(p)]
    return proc.returncode, err


@pytest.mark.slow  # a capture big enough to be running when Ctrl-C comes: 6-12 s each
@pytest.mark.parametrize("group", [False, True], ids=["command", "process-group"])
def test_interrupted_split_leaves_nothing_behind(tmp_path: Path, group: bool) -> None:
    """Ctrl-C while the parts run: exit 130 with one line (no worker's traceback), no output,
    no worker left."""
    cap = tmp_path / "big.pcap"
    # Big enough that the parts still run when Ctrl-C comes (20,000 flows took 1.7 s in all).
    generate(str(cap), flows=80_000, seed=2, mix="flow-heavy")
    code, err = interrupted(
        [sys.executable, "-m", "gfwlab", "analyze", str(cap), "--date", "2024-06-01",
         "--shards", "2", "--events", str(tmp_path / "e.jsonl"), "--out", str(tmp_path / "o.pcap")],
        0.5, group=group,
    )  # fmt: skip
    assert code == 130, err
    assert err.strip().splitlines() == ["gfwlab: interrupted"], err
    assert sorted(os.listdir(tmp_path)) == ["big.pcap"]


@pytest.mark.slow  # a capture big enough to be running when Ctrl-C comes: 6-12 s each
@pytest.mark.parametrize("group", [False, True], ids=["command", "process-group"])
def test_interrupted_captures_leave_no_part_of_an_output(tmp_path: Path, group: bool) -> None:
    """Ctrl-C while several captures are analysed (``--out-dir``): exit 130 with one line at
    once (the workers are killed, not waited for), no worker left, and of the outputs only
    whole ones: no temporary file or folder, and no folder the run made for nothing."""
    caps = [tmp_path / f"big{i}.pcap" for i in range(2)]
    for i, cap in enumerate(caps):
        generate(str(cap), flows=20_000, seed=2 + i, mix="flow-heavy")
    out_dir = tmp_path / "out"
    started = time.monotonic()
    code, err = interrupted(
        [sys.executable, "-m", "gfwlab", "analyze", *map(str, caps), "--date", "2024-06-01",
         "--out-dir", str(out_dir)],
        0.5, group=group,
    )  # fmt: skip
    assert code == 130, err
    assert err.strip().splitlines() == ["gfwlab: interrupted"], err
    assert time.monotonic() - started < 30
    assert sorted(os.listdir(tmp_path)) == ["big0.pcap", "big1.pcap"]


def test_a_ctrl_c_python_drops_in_a_collection_hook_still_stops_the_split() -> None:
    """A KeyboardInterrupt raised in a garbage-collection hook is dropped by Python (a starting
    local cluster's scheduler hooks one into this process); ``scale._interrupts_kept`` still
    stops the run when the cluster is up, and prints nothing about it."""
    import gc  # noqa: PLC0415

    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    printed: list[object] = []
    before = sys.unraisablehook
    sys.unraisablehook = printed.append
    try:
        with scale._interrupts_kept() as check:
            check()  # no Ctrl-C yet

            def hook(phase: str, _info: dict[str, int]) -> None:
                if phase == "start":
                    gc.callbacks.remove(hook)
                    signal.raise_signal(signal.SIGINT)
                    sum(range(1000))  # the handler runs here, inside the hook

            gc.callbacks.append(hook)
            gc.collect()  # the KeyboardInterrupt is raised in the hook, and dropped
            assert hook not in gc.callbacks
            with pytest.raises(KeyboardInterrupt):
                check()
    finally:
        sys.unraisablehook = before
    assert not printed
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
