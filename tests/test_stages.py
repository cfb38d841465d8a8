"""scripts/stages.sh, the stages of scripts/test (the README's test command and CI): a stage's
time limit, and Ctrl-C or SIGTERM, interrupt the running stage so that pytest tears its
fixtures down (a lab is taken down); an interruption of the script runs no later stage."""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# A stage that says it is ready, then waits; interrupted, it runs its teardown.
STAGE = (
    "import sys, time\n"
    "try:\n"  # ready inside the try: a Ctrl-C right after it still reaches the teardown
    "    print('ready', flush=True)\n"
    "    time.sleep(60)\n"
    "except KeyboardInterrupt:\n"
    "    print('teardown', flush=True)\n"
    "    sys.exit(2)\n"
)


def _start(tmp_path: Path, limit: int) -> subprocess.Popen[str]:
    """Run two stages in a script of their own and return once the first stage is running."""
    return _spawn(
        tmp_path,
        f"stage first {limit} {sys.executable} -c {shlex.quote(STAGE)} || true\n",
        "ready",
    )


def _spawn(tmp_path: Path, first: str, ready: str) -> subprocess.Popen[str]:
    """Run ``first`` and then a stage "second" that makes the file ``second`` in a script of
    their own, in a session of their own (as a terminal runs scripts/test); return once it has
    printed the line ``ready``."""
    script = tmp_path / "run.sh"
    script.write_text(
        "set -euo pipefail\n"
        f"source {ROOT / 'scripts' / 'stages.sh'}\n"
        f"{first}"
        f"stage second 0 touch {tmp_path / 'second'} || true\n"
        'exit "$status"\n'
    )
    proc = subprocess.Popen(
        ["bash", str(script)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    assert proc.stdout is not None
    for line in proc.stdout:
        if line.strip() == ready:
            break
    return proc


def _finish(proc: subprocess.Popen[str]) -> str:
    try:
        out, _ = proc.communicate(timeout=90)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    return out


def test_ctrl_c_interrupts_the_running_stage_and_no_later_stage_runs(tmp_path: Path) -> None:
    proc = _start(tmp_path, 0)
    os.killpg(proc.pid, signal.SIGINT)  # a terminal's Ctrl-C: the script's process group
    out = _finish(proc)
    assert proc.returncode == 130, out
    assert "teardown" in out and "interrupted: no later stage runs" in out
    assert not (tmp_path / "second").exists()
    assert "interrupted (exit 2)" in out  # the table at the end names it


def test_sigterm_to_the_script_interrupts_the_running_stage(tmp_path: Path) -> None:
    proc = _start(tmp_path, 0)
    proc.send_signal(signal.SIGTERM)  # what a CI runner sends the script alone
    out = _finish(proc)
    assert proc.returncode == 130, out
    assert "teardown" in out
    assert not (tmp_path / "second").exists()


def test_a_stage_past_its_limit_is_interrupted_and_the_next_stage_runs(tmp_path: Path) -> None:
    proc = _start(tmp_path, 2)
    out = _finish(proc)
    assert proc.returncode == 124, out  # the first failed stage's exit: timeout's
    assert "teardown" in out and "stage limit: interrupted after 2 s" in out
    assert (tmp_path / "second").exists()
    assert "failed (exit 124)" in out


def test_ctrl_c_between_two_stages_runs_no_later_stage(tmp_path: Path) -> None:
    # No stage running: what the script does between two.
    proc = _spawn(tmp_path, "stage first 0 true || true\necho between; sleep 30\n", "between")
    os.killpg(proc.pid, signal.SIGINT)
    out = _finish(proc)
    assert proc.returncode == 130, out
    assert "interrupted: no later stage runs" in out
    assert not (tmp_path / "second").exists()


def test_an_interrupted_gfwlab_command_is_given_time_to_tear_down(tmp_path: Path) -> None:
    # The tests run gfwlab commands through testenv.gfwlab. Interrupted with them (Ctrl-C, or a
    # stage's SIGINT to its process group), such a command must get to take down what it made:
    # subprocess.run gave it a quarter of a second, then SIGKILL, and a lab stayed up. A stand-in
    # for `python -m gfwlab` takes 1.5 s over its teardown here.
    fake = tmp_path / "fake.py"
    fake.write_text(
        "import pathlib, sys, time\n"
        f"here = pathlib.Path({str(tmp_path)!r})\n"
        "try:\n"
        "    (here / 'started').touch()\n"
        "    time.sleep(60)\n"
        "except KeyboardInterrupt:\n"
        "    time.sleep(1.5)\n"
        "    (here / 'torn-down').touch()\n"
        "    sys.exit(130)\n"
    )
    launcher = tmp_path / "python"
    launcher.write_text(f"#!/bin/sh\nexec {shlex.quote(sys.executable)} {shlex.quote(str(fake))}\n")
    launcher.chmod(0o755)
    driver = (
        "import sys\n"
        f"sys.path.insert(0, {str(ROOT / 'tests')!r})\n"
        "import testenv\n"
        f"sys.executable = {str(launcher)!r}\n"
        "try:\n"
        "    testenv.gfwlab('lab', 'up')\n"
        "except KeyboardInterrupt:\n"
        "    sys.exit(3)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", driver], start_new_session=True)
    try:
        deadline = time.monotonic() + 30
        while not (tmp_path / "started").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        os.killpg(proc.pid, signal.SIGINT)
        assert proc.wait(timeout=60) == 3
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert (tmp_path / "torn-down").exists()
