"""The live evasion matrix (slow: minutes): every China row of Geneva's strategies.md and the
baseline, 50 trials each through the lab, each row's successes within the two-sided 99.9%
binomial interval of its published rate. ``scripts/evasion-matrix`` writes the same matrix to
docs/evasion.md."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from testenv import LAB_MARKS

pytestmark = [*LAB_MARKS, pytest.mark.slow]
ROOT = Path(__file__).resolve().parents[1]

KNOWN_DEVIATIONS = {
    # The cause is at the endpoints (docs/evasion-live.md): the server takes the 4 option bytes
    # the tampered header hides as data, its ACKs run 4 bytes past what the client sent, and the
    # client's TCP discards the whole answer ("ack of unsent data"), so the fetch times out; the
    # censor resets nothing (offline 50/50).
    r"[TCP:flags:PA]-duplicate(tamper{TCP:options-wscale:corrupt}"
    r"(tamper{TCP:dataofs:replace:8},),)-\| \/",
}


def test_live_matrix_matches_the_published_china_rates(tmp_path: Path) -> None:
    out = tmp_path / "evasion.md"
    env = dict(os.environ, PYTHON=sys.executable, OUT=str(out), TRIALS="50", SEED="1")
    started = time.monotonic()
    res = subprocess.run(
        [str(ROOT / "scripts" / "evasion-matrix")], capture_output=True, text=True, env=env,
        timeout=1800, check=False,
    )  # fmt: skip
    print(f"matrix took {time.monotonic() - started:.0f} s; seed 1")
    assert res.returncode == 0, res.stderr[-2000:]
    print(res.stdout[-3000:])
    text = out.read_text(encoding="utf-8")
    rows = [line for line in text.splitlines() if line.startswith("| 2020-01-15")]
    assert len(rows) == 25
    differing = {strategy for r in rows if "**differs**" in r for strategy in [r.split("`")[1]]}
    # Known deviations, each explained in docs/evasion.md; any other row must agree.
    assert differing <= set(KNOWN_DEVIATIONS), differing - set(KNOWN_DEVIATIONS)
