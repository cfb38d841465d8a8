"""Without --date, a capture is analysed as of its own first packet's day (reproducible on any day
it is run), or as of the profile's reference date when it is dated before every mechanism."""

from __future__ import annotations

import datetime as dt
import json
import random
import subprocess
import sys
from pathlib import Path

import pytest

from gfwlab.errors import ConfigError
from gfwlab.offline.analyze import dated
from gfwlab.offline.synth import https_conversation, tcp_conversation
from gfwlab.packet.pcap import PcapWriter
from gfwlab.profiles import load_profile

C, S = "198.18.0.2", "198.19.0.2"


def _capture(path: Path, t0: float, packets: list[tuple[float, bytes]]) -> Path:
    with PcapWriter(str(path)) as w:
        for t, p in packets:
            w.write(t0 + t, p)
    return path


def _analyze(*args: str) -> dict[str, object]:
    got = subprocess.run(
        [sys.executable, "-m", "gfwlab", "analyze", *args, "--json"],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    out: dict[str, object] = json.loads(got.stdout)
    return out


def _ts(day: str) -> float:
    return dt.datetime.fromisoformat(day).replace(tzinfo=dt.UTC).timestamp()


def test_the_capture_date_is_emulated(tmp_path: Path) -> None:
    # 8388/tcp with a random-looking first packet: blocked only while the FET was active.
    first = random.Random(1).randbytes(300)
    fet = tcp_conversation(C, S, 40000, 8388, [first], response=b"\x8e" * 9)
    sets = ("--set", "fet.probability=1.0")
    in_era = _analyze(str(_capture(tmp_path / "a.pcap", _ts("2022-06-01T12:00"), fet)), *sets)
    assert in_era["date"] == "2022-06-01" and in_era["date_source"] == "capture"
    assert in_era["events"].get("fet/drop") == 1  # type: ignore[attr-defined]
    later = _analyze(str(_capture(tmp_path / "b.pcap", _ts("2024-06-01T00:00"), fet)), *sets)
    assert later["date"] == "2024-06-01" and "fet/drop" not in later["events"]  # type: ignore[operator]
    given = _analyze(str(tmp_path / "b.pcap"), *sets, "--date", "2022-06-01")
    assert given["date_source"] == "--date" and given["events"].get("fet/drop") == 1  # type: ignore[attr-defined]


def test_a_capture_at_time_zero_takes_the_reference_date(tmp_path: Path) -> None:
    conv = https_conversation(C, S, 40000, "www.facebook.com")
    got = _analyze(str(_capture(tmp_path / "zero.pcap", 0.0, conv)))
    assert got["date"] == "2024-06-01" and got["date_source"] == "reference"
    prof = load_profile("gfw")
    assert prof.reference_date == dt.date(2024, 6, 1)
    again, why = dated(str(tmp_path / "zero.pcap"), prof)
    assert (again.date, why) == (dt.date(2024, 6, 1), "reference")


def test_reference_date_must_be_a_date(tmp_path: Path) -> None:
    bad = tmp_path / "p.toml"
    bad.write_text('reference_date = "soon"\n')
    with pytest.raises(ConfigError, match="reference_date"):
        load_profile(str(bad))
