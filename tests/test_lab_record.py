"""The same engine live and offline: a recorded lab session, analysed, gives the same verdicts."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

from gfwlab.lab.lifecycle import UpOptions, lab_sets
from testenv import LAB_MARKS, SETS, UP, _verdicts, client, curl, gfwlab, leftovers

pytestmark = LAB_MARKS


def test_recorded_session_analysed_offline_gives_the_live_verdicts(tmp_path: Path) -> None:
    gfwlab("lab", "down")
    up = gfwlab("lab", "up", *UP)
    assert up.returncode == 0, up.stderr
    try:
        rec = tmp_path / "session.pcap"
        recorder = subprocess.Popen(
            [sys.executable, "-m", "gfwlab", "lab", "record", str(rec)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        time.sleep(1.0)
        curl("https://example.org/", "--resolve", "example.org:443:198.19.0.3")
        curl("https://www.facebook.com/", "--resolve", "www.facebook.com:443:198.19.0.4")
        curl("https://example.org/", "--resolve", "example.org:443:198.19.0.4")  # residual
        curl("http://198.19.0.6/?q=falun")
        client("dig", "+time=2", "+tries=1", "www.google.com", "A")
        client("dig", "+time=2", "+tries=1", "example.org", "A")
        time.sleep(1.0)
        recorder.send_signal(signal.SIGINT)
        _out, err = recorder.communicate(timeout=30)
        assert recorder.returncode == 0, err
        assert rec.stat().st_size > 24
        live = [json.loads(x) for x in gfwlab("lab", "events").stdout.splitlines()]
    finally:
        gfwlab("lab", "down")
    assert leftovers() == []
    opts = UpOptions(sets=list(SETS))
    args = [
        "analyze",
        str(rec),
        "--date",
        "2024-06-01",
        "--seed",
        "3",
        "--events",
        str(tmp_path / "offline.jsonl"),
    ]
    for item in lab_sets(opts):
        args += ["--set", item]
    res = gfwlab(*args)
    assert res.returncode == 0, res.stderr
    offline = [json.loads(x) for x in (tmp_path / "offline.jsonl").read_text().splitlines()]
    assert _verdicts(live)
    assert _verdicts(offline) == _verdicts(live)
