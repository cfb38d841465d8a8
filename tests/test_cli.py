"""`gfwlab analyze` end to end: outputs, tshark, real captures, and bad input."""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gfwlab.offline.synth import (
    demo_traffic,
    dns_exchange,
    generate,
    https_conversation,
    merge,
    tcp_conversation,
)
from gfwlab.packet.pcap import PcapWriter
from gfwlab.proto.tls import build_client_hello
from testenv import SHARED_PCAPS, needs_shared, shared_pcaps

PCAPS = SHARED_PCAPS
SPOOFED_DNS = PCAPS / "gfw-quic-sni-artifact--dns_attacker_client_anon.pcap"
TSHARK = shutil.which("tshark")
EVENT_KEYS = {
    "ts",
    "flow",
    "direction",
    "mechanism",
    "action",
    "rule",
    "residual_until",
    "citation",
}
T0 = 1_717_200_000.0


def gfwlab(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gfwlab", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=300,
        check=False,
    )


def test_the_collector_is_paused_while_loading_and_on_for_the_command(tmp_path: Path) -> None:
    # The entry point of `gfwlab` and `python -m gfwlab`, in a process of its own: what the
    # collector was doing as the command line's modules loaded, and as a command ran.
    code = """
import gc, sys
seen = []
class Watch:
    def find_spec(self, name, path, target=None):
        if name == "gfwlab.cli":
            seen.append(("loading", gc.isenabled()))
def calls(frame, event, arg):
    if event == "call" and frame.f_code.co_name == "version":
        seen.append(("command", gc.isenabled()))
sys.meta_path.insert(0, Watch())
sys.argv = ["gfwlab", "version"]
from gfwlab import __main__ as entry
sys.setprofile(calls)
try:
    entry.main()
except SystemExit:
    pass
sys.setprofile(None)
print(seen, file=sys.stderr)
"""
    res = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False
    )
    assert res.returncode == 0, res.stderr
    last = res.stderr.strip().splitlines()[-1]
    assert last == "[('loading', False), ('command', True)]", res.stderr


def test_command_signatures_are_not_strings() -> None:
    # typer reads every command's signature at each start: string annotations (the
    # ``from __future__`` import) cost it a compile and an eval each (gfwlab.cli).
    from gfwlab import cli  # noqa: PLC0415

    def callbacks(app: object) -> list[object]:
        out = [c.callback for c in app.registered_commands]  # type: ignore[attr-defined]
        for group in app.registered_groups:  # type: ignore[attr-defined]
            out += callbacks(group.typer_instance)
        return out

    found = callbacks(cli.app)
    assert len(found) > 20
    quoted = [f"{f.__qualname__}: {k}" for f in found for k, a in f.__annotations__.items()
              if isinstance(a, str)]  # fmt: skip
    assert quoted == []


def test_analyze_json_loads_no_rich(demo_pcap: Path) -> None:
    # Nothing drawn, nothing of rich loaded (its consoles are made on first use): a start
    # costs about 35 ms less. With a table to draw, rich is there.
    code = """
import contextlib, io, sys
sys.argv = ["gfwlab", "analyze", sys.argv[1], *sys.argv[2:]]
from gfwlab.__main__ import main
with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):
    main()
print(sorted({m.split(".")[0] for m in sys.modules if m.startswith("rich")}), file=sys.stderr)
"""
    for args, loaded in ((["--json"], "[]"), ([], "['rich']")):
        res = subprocess.run(
            [sys.executable, "-c", code, str(demo_pcap), *args],
            capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
        assert res.returncode == 0, res.stderr
        assert res.stderr.strip().splitlines()[-1] == loaded, res.stderr


def write_capture(path: Path, packets: list[tuple[float, bytes]]) -> Path:
    with PcapWriter(str(path)) as w:
        for t, p in packets:
            w.write(T0 + t, p)
    return path


@pytest.fixture
def demo_pcap(tmp_path: Path) -> Path:
    return write_capture(tmp_path / "in.pcap", merge(*(p for _w, p in demo_traffic())))


def test_analyze_writes_events_censored_capture_and_json(demo_pcap: Path, tmp_path: Path) -> None:
    events, out = tmp_path / "ev.jsonl", tmp_path / "out.pcap"
    res = gfwlab(
        "analyze",
        str(demo_pcap),
        "--date",
        "2024-06-01",
        "--seed",
        "1",
        "--events",
        str(events),
        "--out",
        str(out),
        "--json",
    )
    assert res.returncode == 0, res.stderr
    summary = json.loads(res.stdout)
    mechs = {v["mechanism"] for v in summary["verdicts"]}
    assert {"dns_injection", "tls_sni", "esni"} <= mechs
    lines = [json.loads(line) for line in events.read_text().splitlines()]
    assert lines and all(set(e) >= EVENT_KEYS for e in lines)
    assert all(set(e["flow"]) == {"proto", "src", "sport", "dst", "dport"} for e in lines)
    assert {e["direction"] for e in lines} <= {"inside-out", "outside-in"}
    assert out.stat().st_size > 0
    assert sorted(os.listdir(tmp_path)) == ["ev.jsonl", "in.pcap", "out.pcap"]


def test_table_output(demo_pcap: Path) -> None:
    res = gfwlab("analyze", str(demo_pcap), "--date", "2024-06-01")
    assert res.returncode == 0, res.stderr
    assert "tls_sni" in res.stdout and "dns_injection" in res.stdout


def test_same_seed_same_events(demo_pcap: Path, tmp_path: Path) -> None:
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    for path in (a, b):
        assert (
            gfwlab(
                "analyze",
                str(demo_pcap),
                "--seed",
                "9",
                "--date",
                "2024-06-01",
                "--events",
                str(path),
            ).returncode
            == 0
        )
    assert a.read_bytes() == b.read_bytes()


@pytest.mark.skipif(TSHARK is None, reason="tshark not installed")
def test_tshark_reads_the_censored_capture_with_forged_packets(tmp_path: Path) -> None:
    client, server, resolver = "198.18.0.2", "198.19.0.2", "198.19.0.53"
    pkts = merge(
        https_conversation(client, server, 40000, "www.youtube.com"),
        dns_exchange(client, resolver, 40001, "www.google.com", t0=1.0, answer="198.19.0.80"),
    )
    src = write_capture(tmp_path / "in.pcap", pkts)
    out = tmp_path / "out.pcap"
    pool = "dns_injection.injectors=[{name='i3', pool_v4=['198.19.99.1']}]"
    res = gfwlab(
        "analyze", str(src), "--out", str(out), "--set", "tls_sni.injector='type2'", "--set", pool
    )
    assert res.returncode == 0, res.stderr
    fields = subprocess.run(
        [
            TSHARK,
            "-r",
            str(out),
            "-T",
            "fields",
            "-E",
            "separator=|",
            "-e",
            "frame.time_epoch",
            "-e",
            "ip.src",
            "-e",
            "ip.dst",
            "-e",
            "ip.flags.df",
            "-e",
            "tcp.flags.reset",
            "-e",
            "dns.flags.response",
            "-e",
            "dns.a",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()
    rows = [line.split("|") for line in fields]
    resets = [r for r in rows if r[4] in ("1", "True")]
    assert len(resets) == 6  # type II: three identical RST+ACK toward each end
    assert {(r[1], r[2]) for r in resets} == {(server, client), (client, server)}
    assert all(r[3] in ("1", "True") for r in resets)
    answers = [r for r in rows if r[5] in ("1", "True")]
    assert [r[6] for r in answers] == ["198.19.99.1", "198.19.0.80"]  # forged first, then real


@needs_shared(PCAPS)
@pytest.mark.parametrize("name", [Path(p).name for p in shared_pcaps("*.pcap")])
def test_real_captures_analyse_without_error(name: str) -> None:
    res = gfwlab("analyze", str(PCAPS / name), "--json", "--date", "2024-09-19")
    assert res.returncode == 0, res.stderr
    summary = json.loads(res.stdout)
    assert summary["packets"] > 0 and summary["truncated_at"] is None


@needs_shared(SPOOFED_DNS)
def test_real_spoofed_quic_initial_to_port_53_is_blocked_not_answered(tmp_path: Path) -> None:
    # The availability-attack capture spoofs a 1294-byte QUIC Initial (SNI google.com) to UDP/53
    # from a source port above 53: the QUIC filter blocks that 3-tuple (the attack, spec §5),
    # and the DNS injector, which cannot read it as a question, forges no answer.
    events = tmp_path / "ev.jsonl"
    res = gfwlab(
        "analyze",
        str(SPOOFED_DNS),
        "--date",
        "2024-09-19",
        "--set",
        "quic_sni.domains=['google.com']",
        "--events",
        str(events),
        "--json",
    )
    assert res.returncode == 0, res.stderr
    lines = [json.loads(x) for x in events.read_text().splitlines()]
    assert any(e["mechanism"] == "quic_sni" and e["action"] == "drop" for e in lines), lines
    assert not any(e["mechanism"] == "dns_injection" for e in lines)


def test_analyze_in_shards_writes_what_one_process_writes(demo_pcap: Path, tmp_path: Path) -> None:
    """``--shards 2``: the capture split by server address over a local cluster of two worker
    processes; the same events, censored capture and summary as one process."""
    runs = []
    for shards in ("1", "2"):
        ev, out = tmp_path / f"ev{shards}.jsonl", tmp_path / f"out{shards}.pcap"
        res = gfwlab(
            "analyze", str(demo_pcap), "--date", "2024-06-01", "--events", str(ev), "--out",
            str(out), "--json", "--shards", shards, "--workers", "2",
        )  # fmt: skip
        assert res.returncode == 0, res.stderr
        summary = json.loads(res.stdout)
        summary.pop("outputs")
        assert summary.pop("parts") == int(shards)
        runs.append((summary, ev.read_bytes(), out.read_bytes()))
    assert runs[0] == runs[1]
    assert not runs[1][0]["warnings"] and runs[1][0]["verdicts"]


def test_analyze_several_captures_writes_what_each_run_writes(
    demo_pcap: Path, tmp_path: Path
) -> None:
    """Several captures with ``--out-dir``: one task each on a local cluster of two workers;
    each capture's events and censored capture are what ``analyze`` of that file alone writes,
    with the capture's own date where none is given."""
    other = tmp_path / "other.pcap"
    generate(str(other), flows=40, seed=3, mix="realistic")
    out_dir = tmp_path / "out"
    for date in (("--date", "2024-06-01"), ()):
        res = gfwlab(
            "analyze", str(demo_pcap), str(other), *date, "--out-dir", str(out_dir), "--json",
        )  # fmt: skip
        assert res.returncode == 0, res.stderr
        for cap in (demo_pcap, other):
            ev, out = tmp_path / "alone.jsonl", tmp_path / "alone.pcap"
            alone = gfwlab(
                "analyze", str(cap), *date, "--events", str(ev), "--out", str(out), "--json"
            )
            assert alone.returncode == 0, alone.stderr
            assert (out_dir / f"{cap.name}.events.jsonl").read_bytes() == ev.read_bytes()
            assert (out_dir / f"{cap.name}.out.pcap").read_bytes() == out.read_bytes()


def test_analyze_in_shards_on_a_running_cluster(demo_pcap: Path, tmp_path: Path) -> None:
    """``--scheduler tcp://HOST:PORT``: the parts go to a cluster gfwlab did not start (its
    workers spawned, reached through its scheduler); the same outputs as one process."""
    from distributed import LocalCluster  # noqa: PLC0415

    runs = []
    with LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
        silence_logs=logging.CRITICAL,
    ) as cluster:  # fmt: skip
        for extra in ((), ("--shards", "2", "--scheduler", str(cluster.scheduler_address))):
            ev, out = tmp_path / f"ev{len(extra)}.jsonl", tmp_path / f"out{len(extra)}.pcap"
            res = gfwlab(
                "analyze", str(demo_pcap), "--date", "2024-06-01", "--events", str(ev),
                "--out", str(out), "--json", *extra,
            )  # fmt: skip
            assert res.returncode == 0, res.stderr
            summary = json.loads(res.stdout)
            summary.pop("outputs")
            assert summary.pop("parts") == (2 if extra else 1)
            runs.append((summary, ev.read_bytes(), out.read_bytes()))
    assert runs[0] == runs[1]
    assert not runs[1][0]["warnings"]


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        (("--shards", "0"), "--shards"),
        (("--shards", "2", "--exact"), "--shards"),
        (("--shards", "2", "--profile", "henan", "--profile", "gfw"), "--shards"),
    ],
)
def test_analyze_shards_bad_options(demo_pcap: Path, extra: tuple[str, ...], needle: str) -> None:
    one_line_error(gfwlab("analyze", str(demo_pcap), *extra), needle)


def _dask_outputs(work: Path, several: bool) -> list[str]:
    """The options of a run on Dask whose outputs go to ``work``: several captures'
    (``--out-dir``) or one capture split in two (``--shards 2``)."""
    if several:
        return ["--out-dir", str(work / "out")]
    return ["--shards", "2", "--events", str(work / "e.jsonl"), "--out", str(work / "o.pcap")]


@pytest.mark.parametrize(
    "address", ["nonsense", "tcp://host-without-port", "foo://h:1", "tcp://h:x"]
)
@pytest.mark.parametrize("several", [False, True], ids=["shards", "captures"])
def test_analyze_bad_scheduler_address(
    demo_pcap: Path, tmp_path: Path, address: str, several: bool
) -> None:
    """A ``--scheduler`` that is not an address: one line naming it, exit 2, nothing written."""
    work = tmp_path / "work"
    work.mkdir()
    how = _dask_outputs(work, several)
    res = gfwlab("analyze", str(demo_pcap), "--scheduler", address, *how)
    one_line_error(res, "--scheduler", repr(address), "tcp://host:8786")
    assert os.listdir(work) == []


@pytest.mark.parametrize("several", [False, True], ids=["shards", "captures"])
def test_analyze_scheduler_that_does_not_answer(
    demo_pcap: Path, tmp_path: Path, several: bool
) -> None:
    """Nothing listens at ``--scheduler``: after Dask's connect timeout (1 s here, from the
    environment as Dask reads it), one line saying so, exit 2, nothing written."""
    work = tmp_path / "work"
    work.mkdir()
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        address = f"tcp://127.0.0.1:{s.getsockname()[1]}"
    how = _dask_outputs(work, several)
    res = subprocess.run(
        [sys.executable, "-m", "gfwlab", "analyze", str(demo_pcap), "--scheduler", address, *how],
        capture_output=True, text=True, timeout=120, check=False,
        env={**os.environ, "DASK_DISTRIBUTED__COMM__TIMEOUTS__CONNECT": "1s"},
    )  # fmt: skip
    one_line_error(res, address, "no scheduler answers")
    assert os.listdir(work) == []


def test_analyze_several_captures_checks_every_capture_first(
    demo_pcap: Path, tmp_path: Path
) -> None:
    """A capture that cannot be read, or two captures of one name, stop the run before any
    capture is analysed: one line, exit 2, no output and no --out-dir."""
    out_dir = tmp_path / "out"
    bad = tmp_path / "notes.txt"
    bad.write_text("not a capture\n")
    for captures, needle in (
        ([demo_pcap, tmp_path / "missing.pcap"], "missing.pcap"),
        ([demo_pcap, bad], "not a pcap"),
        ([demo_pcap, demo_pcap], "two captures are named"),
    ):
        res = gfwlab("analyze", *map(str, captures), "--out-dir", str(out_dir))
        one_line_error(res, needle)
        assert not out_dir.exists()


# ------------------------------------------------------------------ bad input


def one_line_error(res: subprocess.CompletedProcess[str], *needles: str) -> None:
    assert res.returncode == 2, (res.returncode, res.stdout, res.stderr)
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1, res.stderr
    assert "Traceback" not in res.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


def test_not_a_capture(tmp_path: Path) -> None:
    bad = tmp_path / "notes.txt"
    bad.write_text("hello, this is not a capture\n")
    out = tmp_path / "out.pcap"
    one_line_error(gfwlab("analyze", str(bad), "--out", str(out)), str(bad), "not a pcap")
    assert sorted(os.listdir(tmp_path)) == ["notes.txt"]


def test_missing_capture(tmp_path: Path) -> None:
    one_line_error(gfwlab("analyze", str(tmp_path / "nope.pcap")), "nope.pcap")


def test_unknown_link_type(tmp_path: Path) -> None:
    path = tmp_path / "odd.pcap"
    with PcapWriter(str(path), linktype=147) as w:
        w.write(1.0, b"\x00" * 40)
    one_line_error(gfwlab("analyze", str(path)), "147")


def test_truncated_capture_processes_what_is_there(demo_pcap: Path, tmp_path: Path) -> None:
    data = demo_pcap.read_bytes()
    cut = tmp_path / "cut.pcap"
    cut.write_bytes(data[: len(data) // 2 + 7])
    res = gfwlab("analyze", str(cut), "--json")
    one_line_error(res, "truncated at byte", "analysed the")
    summary = json.loads(res.stdout)
    assert 0 < summary["packets"] < 58


def test_broken_profile(tmp_path: Path, demo_pcap: Path) -> None:
    prof = tmp_path / "p.toml"
    prof.write_text("[mechanisms.tls_sni]\nresidual_s = 'x'\n")
    one_line_error(
        gfwlab("analyze", str(demo_pcap), "--profile", str(prof)),
        str(prof),
        "mechanisms.tls_sni.residual_s",
    )


def test_bad_set_and_date(demo_pcap: Path) -> None:
    one_line_error(gfwlab("analyze", str(demo_pcap), "--set", "tls_sni.bogus=1"), "--set", "bogus")
    one_line_error(gfwlab("analyze", str(demo_pcap), "--date", "yesterday"), "--date")


@pytest.mark.parametrize("flag", ["--out", "--events"])
def test_unwritable_output(demo_pcap: Path, tmp_path: Path, flag: str) -> None:
    target = tmp_path / "missing-dir" / "x"
    one_line_error(gfwlab("analyze", str(demo_pcap), flag, str(target)), str(target))
    one_line_error(gfwlab("analyze", str(demo_pcap), flag, str(tmp_path)), "is a directory")
    assert sorted(os.listdir(tmp_path)) == ["in.pcap"]


def test_failure_after_one_output_opened_leaves_neither(demo_pcap: Path, tmp_path: Path) -> None:
    events = tmp_path / "ev.jsonl"
    res = gfwlab(
        "analyze",
        str(demo_pcap),
        "--events",
        str(events),
        "--out",
        str(tmp_path / "no" / "out.pcap"),
    )
    one_line_error(res)
    assert sorted(os.listdir(tmp_path)) == ["in.pcap"]


def test_interrupt_leaves_no_partial_output(tmp_path: Path) -> None:
    big = tmp_path / "big.pcap"
    hello = build_client_hello("example.org")
    with PcapWriter(str(big)) as w:
        for i in range(20_000):
            conv = tcp_conversation("198.18.0.2", "198.19.0.2", 1024 + i, 443, hello, t0=i * 0.01)
            for t, p in conv:
                w.write(T0 + t, p)
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "gfwlab",
            "analyze",
            str(big),
            "--events",
            str(tmp_path / "e"),
            "--out",
            str(tmp_path / "o.pcap"),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 30
    while not any(n.startswith(".") for n in os.listdir(tmp_path)):  # outputs opened
        assert time.monotonic() < deadline and proc.poll() is None
        time.sleep(0.01)
    time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    _out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    assert sorted(os.listdir(tmp_path)) == ["big.pcap"]


def test_usage_error_exit_code() -> None:
    res = gfwlab("analyze")
    assert res.returncode == 2


def test_mechanisms_command() -> None:
    res = gfwlab("mechanisms", "--date", "2020-07-01")
    assert res.returncode == 0, res.stderr
    assert "esni" in res.stdout and "S&P 2025" in res.stdout.replace("\n", " ")


def test_special_and_symlinked_outputs(demo_pcap: Path, tmp_path: Path) -> None:
    res = gfwlab("analyze", str(demo_pcap), "--events", "/dev/null", "--out", "/dev/null")
    assert res.returncode == 0, res.stderr
    assert Path("/dev/null").is_char_device()
    target = tmp_path / "real.jsonl"
    link = tmp_path / "link.jsonl"
    link.symlink_to(target)
    assert gfwlab("analyze", str(demo_pcap), "--events", str(link)).returncode == 0
    assert link.is_symlink() and target.read_text().count("\n") > 3
    assert oct(target.stat().st_mode & 0o777) == oct(0o666 & ~_umask())


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@pytest.mark.parametrize("where", ["new --dir", "--dir with files", "temporary folder"])
def test_interrupted_demo_leaves_nothing_of_its_own(tmp_path: Path, where: str) -> None:
    """Ctrl-C (to the process group) during the offline demo, once it has written its capture:
    exit 130 with one line; a folder the demo made is gone (its temporary one, or a new
    ``--dir``), and in a ``--dir`` that was there only what was there before is left."""
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    folder = tmp_path / "demo"
    if where == "--dir with files":
        folder.mkdir()
        (folder / "mine.txt").write_text("kept\n")
    args = ["--dir", str(folder)] if where != "temporary folder" else []
    proc = subprocess.Popen(
        [sys.executable, "-m", "gfwlab", "demo", "--offline", *args],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True,
        env={**os.environ, "TMPDIR": str(tmp)},
    )  # fmt: skip
    deadline = time.monotonic() + 60
    while not list(tmp_path.glob("**/demo.pcap")):  # its capture is written: analysis next
        assert time.monotonic() < deadline and proc.poll() is None, proc.stderr
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGINT)
    _out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert err.strip().splitlines() == ["gfwlab: interrupted"], err
    assert os.listdir(tmp) == []
    if where == "--dir with files":
        assert os.listdir(folder) == ["mine.txt"]
    else:
        assert not folder.exists()


TASKS = """
import atexit, os, sys
atexit.register(lambda: print("tasks", len(os.listdir("/proc/self/task")),
                              os.environ.get("OPENBLAS_NUM_THREADS"), file=sys.stderr))
sys.argv = ["gfwlab", *sys.argv[1:]]
{body}
"""


def tasks_at_exit(body: str, *args: str, **env: str) -> tuple[int, str | None]:
    """The threads of a Python process that ran ``body`` (with ``args``), counted at its exit,
    and its OPENBLAS_NUM_THREADS then."""
    blas = ("OPENBLAS_NUM_THREADS", "GOTO_NUM_THREADS", "OMP_NUM_THREADS")  # OpenBLAS reads each
    base = {k: v for k, v in os.environ.items() if k not in blas}
    res = subprocess.run([sys.executable, "-c", TASKS.format(body=body), *args],
                         capture_output=True, text=True, env=base | env, timeout=120,
                         check=False)  # fmt: skip
    last = [line.split() for line in res.stderr.splitlines() if line.startswith("tasks ")][-1]
    return int(last[1]), None if last[2] == "None" else last[2]


def test_numpy_is_loaded_with_one_blas_thread(demo_pcap: Path) -> None:
    """gfwlab makes no BLAS call: a command loads NumPy with one OpenBLAS thread instead of one
    a core, each spinning a while (about 50 ms of CPU a command); a user's own setting wins."""
    analyze = ("analyze", str(demo_pcap), "--json")
    run = "from gfwlab.cli import main\nmain()"
    assert tasks_at_exit(run, *analyze) == (1, "1")
    cores = len(os.sched_getaffinity(0))
    assert tasks_at_exit("import numpy") == (cores, None)  # one a core: what the setting saves
    assert tasks_at_exit(run, *analyze, OPENBLAS_NUM_THREADS="2") == (2, "2")


HUGE = """
import atexit, sys
def huge():
    import numpy as np
    core = np._core if hasattr(np, "_core") else np.core  # NumPy 2, NumPy 1.26
    asks = core.multiarray._set_madvise_hugepage(True)  # returns the setting it replaces
    core.multiarray._set_madvise_hugepage(asks)
    a = np.ones(64 << 20, dtype=np.uint8)  # 64 MB: NumPy would ask for huge pages
    with open("/proc/self/smaps_rollup") as f:
        kb = next(int(l.split()[1]) for l in f if l.startswith("AnonHugePages:"))
    print("huge", int(asks), kb, int(a[-1]), file=sys.stderr)
atexit.register(huge)
sys.argv = ["gfwlab", *sys.argv[1:]]
{body}
"""


def huge_pages(body: str, *args: str, **env: str) -> tuple[bool, int]:
    """Whether NumPy asks for huge pages in a Python process that ran ``body`` (with ``args``),
    and the kilobytes of anonymous huge pages it holds at its exit after filling a 64 MB NumPy
    array there."""
    base = {k: v for k, v in os.environ.items() if k != "NUMPY_MADVISE_HUGEPAGE"}
    res = subprocess.run([sys.executable, "-c", HUGE.format(body=body), *args],
                         capture_output=True, text=True, env=base | env, timeout=120,
                         check=False)  # fmt: skip
    last = [line.split() for line in res.stderr.splitlines() if line.startswith("huge ")][-1]
    return bool(int(last[1])), int(last[2])


def test_numpy_arrays_get_no_huge_pages_unless_asked(demo_pcap: Path) -> None:
    """A command loads NumPy with its transparent huge pages off (zeroing fresh ones stalled
    analyses on a virtual machine: cli.main says what was measured); NumPy by itself asks for
    them, and a user's own setting wins. Where the kernel gives huge pages only to memory that
    asks for them (``madvise``), a command's arrays then get none."""
    run = "from gfwlab.cli import main\nmain()"
    analyze = ("analyze", str(demo_pcap), "--json")
    asks, kb = huge_pages(run, *analyze)
    assert not asks
    assert huge_pages("pass")[0]  # what NumPy does by itself
    assert huge_pages(run, *analyze, NUMPY_MADVISE_HUGEPAGE="1")[0]
    mode = Path("/sys/kernel/mm/transparent_hugepage/enabled")
    if mode.exists() and "[madvise]" in mode.read_text():
        assert kb == 0
