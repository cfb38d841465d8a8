"""The commands' progress bars (``gfwlab.options.progress_bar``), as a terminal shows them: a
real command with its stderr on a pseudo-terminal, and with it on a pipe (no bar)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def _stderr(argv: list[str], tty: bool) -> tuple[int, str]:
    """Run ``gfwlab argv`` with stderr on a pseudo-terminal (``tty``) or a pipe; its stderr."""
    cmd = [sys.executable, "-m", "gfwlab", *argv]
    env = {**os.environ, "COLUMNS": "120", "TERM": "xterm"}
    if not tty:
        done = subprocess.run(
            cmd, check=False, capture_output=True, text=True, env=env, timeout=300
        )
        return done.returncode, done.stderr
    master, slave = os.openpty()
    with subprocess.Popen(
        cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=slave, env=env
    ) as proc:
        os.close(slave)
        chunks = []
        while True:
            try:
                data = os.read(master, 1 << 16)
            except OSError:  # the command closed its end
                break
            if not data:
                break
            chunks.append(data)
        os.close(master)
        code = proc.wait(timeout=300)
    return code, b"".join(chunks).decode(errors="replace")


def test_bars_on_a_terminal_and_none_on_a_pipe(tmp_path: Path) -> None:
    cap = tmp_path / "t.pcap"
    code, shown = _stderr(["synth", str(cap), "--packets", "40000", "--seed", "3"], tty=True)
    assert code == 0, shown
    assert "writing" in shown and "32768 packets" in shown  # moved every 16,384 packets
    code, shown = _stderr(["analyze", str(cap), "--out", str(tmp_path / "o.pcap")], tty=True)
    assert code == 0, shown
    assert "analysing" in shown and "bytes" in shown  # the capture's bytes, done of total
    code, plain = _stderr(["analyze", str(cap), "--out", str(tmp_path / "p.pcap")], tty=False)
    assert code == 0, plain
    assert "analysing" not in plain and "\x1b" not in plain
    code, json_mode = _stderr(["analyze", str(cap), "--json"], tty=True)
    assert code == 0, json_mode
    assert "analysing" not in json_mode  # --json: no bar even on a terminal
