"""Several outputs published together: all or none, also when Ctrl-C comes while they are
published (``gfwlab._outfile.commit_together``, used by ``analyze`` for its events and its
censored capture)."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import pytest

from gfwlab._outfile import OutputFile, commit_together
from gfwlab.errors import AdapterError


def _two(tmp_path: Path) -> list[OutputFile]:
    files = [OutputFile(str(tmp_path / "e.jsonl")), OutputFile(str(tmp_path / "o.pcap"))]
    for f in files:
        f.write(b"x" * 1000)
    return files


def test_both_published(tmp_path: Path) -> None:
    commit_together(_two(tmp_path))
    assert sorted(os.listdir(tmp_path)) == ["e.jsonl", "o.pcap"]
    assert (tmp_path / "o.pcap").read_bytes() == b"x" * 1000


def test_ctrl_c_between_the_renames_comes_after_both(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    files = _two(tmp_path)
    first = files[0]
    commit = OutputFile.commit

    def interrupted_after(self: OutputFile) -> None:
        commit(self)
        if self is first:  # Ctrl-C right after the first rename
            os.kill(os.getpid(), signal.SIGINT)

    monkeypatch.setattr(OutputFile, "commit", interrupted_after)
    with pytest.raises(KeyboardInterrupt):
        commit_together(files)
    assert sorted(os.listdir(tmp_path)) == ["e.jsonl", "o.pcap"]  # delivered once both are


def test_ctrl_c_taken_by_another_thread_between_the_renames_comes_after_both(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A Ctrl-C goes to the process: any thread that does not mask it may take it (here one is
    made to), and the main thread acts on it at once; still both are published first."""
    files = _two(tmp_path)
    first = files[0]
    commit = OutputFile.commit
    worker_ready, worker_done = threading.Event(), threading.Event()
    worker = threading.Thread(target=lambda: (worker_ready.set(), worker_done.wait(5)))
    worker.start()
    worker_ready.wait(5)

    def interrupted_after(self: OutputFile) -> None:
        commit(self)
        if self is first and worker.ident is not None:
            signal.pthread_kill(worker.ident, signal.SIGINT)
            time.sleep(0.05)  # the main thread's next checks run the handler

    monkeypatch.setattr(OutputFile, "commit", interrupted_after)
    try:
        with pytest.raises(KeyboardInterrupt):
            commit_together(files)
            time.sleep(0.05)
    finally:
        worker_done.set()
        worker.join(5)
    assert sorted(os.listdir(tmp_path)) == ["e.jsonl", "o.pcap"]


def test_a_failure_before_the_renames_leaves_neither(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    files = _two(tmp_path)
    real_fsync = os.fsync
    calls = []

    def failing_second(fd: int) -> None:
        calls.append(fd)
        if len(calls) == 2:
            raise OSError(28, "No space left on device")
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", failing_second)
    with pytest.raises(AdapterError, match="No space left"):
        commit_together(files)
    assert os.listdir(tmp_path) == []
