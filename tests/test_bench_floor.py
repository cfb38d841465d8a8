"""The benchmarks' floor measurements (``benchmarks/floor/sitecustomize.py``) do what they say
in a real ``gfwlab analyze`` process: ``time:`` writes the seconds the engine took, ``null``
replaces the engine so that nothing is censored; and without ``GFWLAB_FLOOR`` they change
nothing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from gfwlab.offline.synth import demo_traffic, merge
from gfwlab.packet.pcap import PcapWriter

FLOOR = Path(__file__).resolve().parent.parent / "benchmarks" / "floor"
T0 = 1_717_200_000.0


@pytest.fixture
def demo_pcap(tmp_path: Path) -> Path:
    path = tmp_path / "in.pcap"
    with PcapWriter(str(path)) as w:
        for t, p in merge(*(p for _w, p in demo_traffic())):
            w.write(T0 + t, p)
    return path


def analyze(capture: Path, floor: str | None, *extra: str) -> dict[str, object]:
    env = dict(os.environ)
    env.pop("GFWLAB_FLOOR", None)
    if floor is not None:
        env["GFWLAB_FLOOR"] = floor
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(FLOOR), env.get("PYTHONPATH")]))
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "gfwlab",
            "analyze",
            str(capture),
            "--date",
            "2024-06-01",
            "--json",
            *extra,
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=False,
    )
    assert res.returncode == 0, res.stderr
    summary: dict[str, object] = json.loads(res.stdout)
    return summary


def test_time_writes_the_engines_seconds_and_changes_no_verdict(
    demo_pcap: Path, tmp_path: Path
) -> None:
    spent = tmp_path / "engine-seconds"
    plain = analyze(demo_pcap, None)
    timed = analyze(demo_pcap, f"time:{spent}")
    assert timed["dropped"] == plain["dropped"] and timed["injected"] == plain["injected"]
    assert plain["injected"]  # the demo's traffic is censored
    lines = spent.read_text().split()
    assert len(lines) == 1 and float(lines[0]) > 0


def test_null_replaces_the_engine(demo_pcap: Path, tmp_path: Path) -> None:
    # --exact: the fast path reads the engine's flows, which the null engine does not keep
    summary = analyze(demo_pcap, "null", "--exact")
    assert summary["engine_packets"]  # the engine was fed
    assert summary["injected"] == 0 and summary["dropped"] == 0  # and decided nothing


def test_without_a_mode_nothing_changes(demo_pcap: Path, tmp_path: Path) -> None:
    assert analyze(demo_pcap, "")["injected"] == analyze(demo_pcap, None)["injected"]
