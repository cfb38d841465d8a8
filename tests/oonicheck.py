"""Load measurements with OONI's own data library, ``oonidata``.

oonidata pins versions of click and cryptography that gfwlab's own dependencies (dask, typer,
aioquic) cannot share, so ``scripts/setup`` installs it in a virtual environment of its own,
``.venv-ooni``, and the tests hand it the measurements as JSON lines on standard input. Each
line comes back as what oonidata made of it: the class name, the blocking value and the
annotations.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
PYTHON = Path(os.environ.get("GFWLAB_OONI_PYTHON", ROOT / ".venv-ooni" / "bin" / "python"))

_LOADER = """
import json, sys
from oonidata.dataclient import load_measurement
for line in sys.stdin:
    m = load_measurement(msmt=json.loads(line))
    print(json.dumps({
        "type": type(m).__name__,
        "test_name": m.test_name,
        "input": m.input,
        "blocking": m.test_keys.blocking,
        "accessible": m.test_keys.accessible,
        "annotations": m.annotations,
        "first_query_hostname": m.test_keys.queries[0].hostname if m.test_keys.queries else None,
    }))
"""


def load_with_oonidata(measurements: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """What oonidata makes of each measurement (skips, a failure under CI, without .venv-ooni)."""
    if not PYTHON.exists():
        pytest.skip(f"{PYTHON} missing: run scripts/setup (it installs oonidata there)")
    got = subprocess.run(
        [str(PYTHON), "-c", _LOADER],
        input="".join(json.dumps(m) + "\n" for m in measurements),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert got.returncode == 0, got.stderr[-2000:]
    return [json.loads(line) for line in got.stdout.splitlines()]
