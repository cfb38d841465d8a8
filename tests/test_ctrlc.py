"""A Ctrl-C that lands in a finalizer is not lost (``gfwlab._ctrlc``): Python drops a
KeyboardInterrupt raised in ``__del__``, and a command would run on to its end and publish its
outputs. Real signals, in a process of its own."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

_SCRIPT = textwrap.dedent(
    """
    import os, signal, sys, time
    from gfwlab._ctrlc import keep
    from gfwlab._outfile import OutputFile, commit_together

    class Finalized:
        def __del__(self):
            os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C while the finalizer runs
            for _ in range(10_000):
                pass

    if sys.argv[1] == "keep":
        keep()
    out = OutputFile(sys.argv[2])
    out.write(b"result")
    try:
        Finalized()  # made and collected at once
        deadline = time.monotonic() + float(sys.argv[3])
        while time.monotonic() < deadline:  # the rest of the command's work
            time.sleep(0.001)
        commit_together([out])
        print("finished")
    except KeyboardInterrupt:
        out.abort()
        print("interrupted")
    """
)


Run = subprocess.CompletedProcess[str]


def _run(tmp_path: Path, mode: str, work_s: float) -> tuple[Run, float]:
    script = tmp_path / "finalizer.py"
    script.write_text(_SCRIPT)
    start = time.monotonic()
    proc = subprocess.run(
        [sys.executable, str(script), mode, str(tmp_path / "out.txt"), str(work_s)],
        check=False, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    return proc, time.monotonic() - start


def test_python_drops_a_ctrl_c_in_a_finalizer(tmp_path: Path) -> None:
    """What ``keep`` is for: without it the interrupt is printed, dropped, and the work runs
    on and publishes its output."""
    proc, _took = _run(tmp_path, "plain", 0.5)
    assert proc.stdout.strip() == "finished"
    assert "KeyboardInterrupt" in proc.stderr and "Exception ignored in" in proc.stderr
    assert (tmp_path / "out.txt").read_bytes() == b"result"


@pytest.mark.parametrize("work_s", [0.5, 20.0])
def test_a_dropped_ctrl_c_comes_again(tmp_path: Path, work_s: float) -> None:
    """With ``keep`` it comes again, silently, at once: the work stops and publishes nothing.
    (20 s of work: it does not wait for the work's end.)"""
    proc, took = _run(tmp_path, "keep", work_s)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "interrupted"
    assert proc.stderr == ""
    assert not (tmp_path / "out.txt").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["finalizer.py"]
    assert took < 15


_CAUGHT = textwrap.dedent(
    """
    import sys
    from gfwlab._ctrlc import settled

    try:
        exec("raise KeyboardInterrupt")  # a Ctrl-C that lands in code run from text
    except KeyboardInterrupt:
        pass  # caught: the command goes on, and exits with its own status
    if sys.argv[1] == "settled":
        settled()
    sys.exit(7)
    """
)


@pytest.mark.parametrize("settle", ["settled", "as-is"])
def test_a_caught_ctrl_c_does_not_become_a_death_by_sigint(tmp_path: Path, settle: str) -> None:
    """Under ``python -m`` (how ``gfwlab`` runs), CPython marks a KeyboardInterrupt that came out
    of ``exec`` of a string as unhandled even though it was caught, and at exit kills the process
    with SIGINT: an interrupted demo exited by signal instead of 130, now and then. ``settled``
    (called as ``gfwlab``'s ``main`` returns) clears the mark."""
    (tmp_path / "caught.py").write_text(_CAUGHT)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), *sys.path])}
    argv = [sys.executable, "-m", "caught", settle]
    proc = subprocess.run(argv, check=False, env=env, capture_output=True, timeout=60)
    if settle == "settled":
        assert proc.returncode == 7, proc.stderr
    else:  # this interpreter's behaviour, which the fix is for (-SIGINT) or a later one's (7)
        assert proc.returncode in (-signal.SIGINT, 7), proc.stderr


def test_an_interrupted_h3_get_exits_130(tmp_path: Path) -> None:
    """``python -m gfwlab.lab.h3``, the lab's HTTP/3 client, has an entry point of its own: a
    Ctrl-C during its handshake ends it with 130 and no traceback, never by SIGINT (it clears the
    mark too). A loopback UDP port that takes the client's Initials and never answers."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as server:
        server.bind(("127.0.0.1", 0))
        server.settimeout(30)
        port = server.getsockname()[1]
        argv = [sys.executable, "-m", "gfwlab.lab.h3", "get", f"https://h3.test:{port}/",
                "--connect-ip", "127.0.0.1", "--insecure", "--timeout", "60"]  # fmt: skip
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            initial, _addr = server.recvfrom(65535)  # it is waiting for the handshake now
            assert initial[0] & 0xC0 == 0xC0  # a QUIC long header
            proc.send_signal(signal.SIGINT)
            out, err = proc.communicate(timeout=30)
        finally:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    assert out == ""
