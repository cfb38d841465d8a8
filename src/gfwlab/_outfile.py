"""Output files that appear whole or not at all.

A regular file (or a new path) is written under a temporary name in the same folder and renamed
into place on :meth:`OutputFile.commit`; :meth:`OutputFile.abort` removes the temporary file, so
a failed or interrupted run leaves nothing behind. A symlink is followed, so its target is what
gets replaced. A path that exists and is not a regular file (``/dev/null``, a FIFO, a terminal)
is written directly: renaming over it would replace the device with a file.
"""

from __future__ import annotations

import contextlib
import os
import signal
import stat
import threading
from collections.abc import Sequence
from typing import IO

from gfwlab.errors import AdapterError


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


class OutputFile:
    """A binary output published atomically (see the module docstring)."""

    def __init__(self, path: str, *, buffering: int = 1 << 20) -> None:
        self.path = path
        self.published = False
        self.done = False
        target = os.path.realpath(path)
        try:
            st = os.stat(target)
        except FileNotFoundError:
            st = None
        except OSError as exc:
            raise AdapterError(path, f"cannot write: {exc.strerror or exc}") from None
        if st is not None and stat.S_ISDIR(st.st_mode):
            raise AdapterError(path, "cannot write: is a directory")
        self.direct = st is not None and not stat.S_ISREG(st.st_mode)
        self._target = target
        directory, name = os.path.split(target)
        self._tmp = target if self.direct else os.path.join(directory, f".{name}.tmp-{os.getpid()}")
        try:
            if self.direct:
                self.fh: IO[bytes] = open(target, "wb", buffering=buffering)  # noqa: SIM115
            else:
                fd = os.open(self._tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666 & ~_umask())
                self.fh = os.fdopen(fd, "wb", buffering=buffering)
        except OSError as exc:
            raise AdapterError(path, f"cannot write: {exc.strerror or exc}") from None

    def write(self, data: bytes | memoryview) -> None:
        try:
            self.fh.write(data)
        except OSError as exc:
            self.abort()
            raise AdapterError(self.path, f"cannot write: {exc.strerror or exc}") from None

    def prepare(self) -> None:
        """Flush, sync and close: all of :meth:`commit` but the rename (the slow part)."""
        if self.done:
            if self.published:
                return
            raise ValueError(f"commit of an aborted output {self.path}")
        if self.fh.closed:
            return
        try:
            self.fh.flush()
            if not self.direct:
                os.fsync(self.fh.fileno())
            self.fh.close()
        except OSError as exc:
            self.abort()
            raise AdapterError(self.path, f"cannot write: {exc.strerror or exc}") from None

    def commit(self) -> None:
        """Flush and publish. Idempotent after success; raises ValueError after abort."""
        self.prepare()
        if self.published:
            return
        try:
            if not self.direct:
                os.replace(self._tmp, self._target)
        except OSError as exc:
            self.abort()
            raise AdapterError(self.path, f"cannot write: {exc.strerror or exc}") from None
        self.done = self.published = True

    def abort(self) -> None:
        """Close and remove the temporary file; nothing is published."""
        if self.done:
            return
        self.done = True
        with contextlib.suppress(OSError):
            self.fh.close()
        if not self.direct:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self._tmp)


def commit_together(files: Sequence[OutputFile]) -> None:
    """Publish several outputs all or none, also under Ctrl-C.

    All are flushed and synced first (a failure or an interrupt there aborts them all); then
    they are renamed into place one after the other with SIGINT held back, so that a Ctrl-C
    cannot fall between two renames and leave one output without the other: it is delivered
    once all are published.

    Held back by a handler that only notes it, not by masking the signal: a Ctrl-C is sent to
    the process, and the kernel hands it to any thread that does not mask it (a Dask or
    thread-pool worker), whose note the main thread would act on between two renames.
    """
    try:
        for f in files:
            f.prepare()
    except BaseException:
        for f in files:
            f.abort()
        raise
    noted: list[int] = []
    main = threading.current_thread() is threading.main_thread()
    if main:
        previous = signal.signal(signal.SIGINT, lambda signum, _frame: noted.append(signum))
    try:
        for f in files:
            f.commit()
    finally:
        if main:
            signal.signal(signal.SIGINT, previous if previous is not None else signal.SIG_DFL)
            if noted:
                signal.raise_signal(signal.SIGINT)  # to the handler in place again
