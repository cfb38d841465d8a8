"""Many captures at once on a Dask cluster: one task per capture, outputs as one process makes.

``analyze_many(captures, spec, out_dir=..., scheduler=...)`` analyses each capture as its own
task on a Dask cluster (an existing one at ``tcp://host:port``, or a local cluster of worker
processes) and writes, per capture, the same events and censored capture a single
``gfwlab analyze`` of that file writes: each task runs :func:`gfwlab.offline.analyze.analyze`
in a worker, with the profile rebuilt there from its spec (name, date, ``--set`` overrides) so
that nothing but plain data crosses the network. ``out_dir`` must be reachable from every
worker under the same path (a shared file system for a remote cluster).

Here a capture is the unit of work. One capture can also be split into parts by server address
and analysed on several workers (:mod:`gfwlab.offline.shard`, ``gfwlab analyze --shards N``):
:func:`part_runner` runs those parts on the same kind of cluster.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import gc
import logging
import multiprocessing
import os
import shutil
import signal
import sys
import threading
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

from gfwlab.errors import AdapterError, ConfigError
from gfwlab.offline.analyze import Summary, analyze, dated
from gfwlab.packet.pcap import CaptureReader
from gfwlab.profiles import Profile, load_profile

if TYPE_CHECKING:
    from distributed import Client, LocalCluster

    from gfwlab.offline.shard import PartData, PartResult, PartTask, Runner
    from gfwlab.offline.shard_windows import Results, Session, WindowData, WindowRunner


@dataclass(frozen=True, slots=True)
class ProfileSpec:
    """A profile as the command line names it: rebuilt on each worker."""

    name: str
    date: dt.date | None
    sets: tuple[str, ...] = ()

    def build(self) -> Profile:
        """The profile, as ``gfwlab analyze --profile NAME --date DATE --set ...`` loads it: the
        one :meth:`keep` was given, in this process or the one it was forked from."""
        kept = _KEPT.get(self)
        if kept is not None:
            return kept
        return load_profile(self.name, date=self.date, overrides=list(self.sets))

    def keep(self, profile: Profile) -> None:
        """Remember ``profile`` (what :meth:`build` loads) for the workers forked from this
        process (:func:`local_start_method`): they take it from memory instead of loading its
        lists again (measured: 0.18 s with the 2024 lists, 0.47 s with a million names)."""
        _KEPT[self] = profile


_KEPT: dict[ProfileSpec, Profile] = {}


def outputs_for(capture: str, out_dir: str) -> tuple[str, str]:
    """Where the events and the censored capture of ``capture`` go in ``out_dir``."""
    stem = Path(capture).name
    return os.path.join(out_dir, f"{stem}.events.jsonl"), os.path.join(out_dir, f"{stem}.out.pcap")


def analyze_one(
    capture: str, spec: ProfileSpec, seed: int, out_dir: str, staging: str | None = None
) -> Summary:
    """One task: what ``gfwlab analyze CAPTURE --events ... --out ...`` does.

    With ``staging`` (a folder name, this task's alone), the two outputs are written in that
    folder of ``out_dir`` and moved into ``out_dir`` once both are whole, and the folder is
    removed. A task whose worker is killed midway (an interrupted run closes its local cluster)
    leaves its files only there, for :func:`analyze_many` to remove."""
    profile = spec.build()
    source = "--date"
    if spec.date is None:
        profile, source = dated(capture, profile)
    events, out = outputs_for(capture, out_dir)
    if staging is None:
        return analyze(
            capture, profile, seed=seed, events_path=events, out_path=out, date_source=source
        )
    work = os.path.join(out_dir, staging)
    os.makedirs(work, exist_ok=True)
    try:
        staged = outputs_for(capture, work)
        summary = analyze(
            capture, profile, seed=seed, events_path=staged[0], out_path=staged[1],
            date_source=source,
        )  # fmt: skip
        for path, final in zip(staged, (events, out), strict=True):
            os.replace(path, final)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    summary.outputs.clear()
    summary.name_outputs(events, out)
    return summary


def analyze_many(
    captures: list[str],
    spec: ProfileSpec,
    *,
    seed: int,
    out_dir: str,
    scheduler: str | None = None,
    workers: int = 2,
    progress: Callable[[int, int], None] | None = None,
) -> list[Summary]:
    """Analyse every capture as a Dask task; summaries in the order of ``captures``.

    Two captures of one file name (their outputs would collide) or one that cannot be opened
    stop the run before any work (:class:`~gfwlab.errors.GfwlabError`).

    Each capture's outputs appear whole or not at all, also when the run fails or is
    interrupted: each task writes them in a folder of its own in ``out_dir`` and moves them in
    when both are whole (:func:`analyze_one`); what the tasks still running leave there is
    removed once the cluster is closed, and so is ``out_dir`` if this run made it and it holds
    nothing. Captures already done keep their outputs. (On a cluster gfwlab did not start, a
    task that is already running when the run ends cannot be stopped: it finishes.)"""
    from distributed import as_completed  # noqa: PLC0415

    names = [Path(c).name for c in captures]
    if len(set(names)) < len(names):
        twice = next(n for n in names if names.count(n) > 1)
        raise ConfigError(
            "--out-dir", None, f"two captures are named {twice!r}: their outputs would collide"
        )
    for capture in captures:  # a capture that cannot be read stops the run before any output
        CaptureReader(capture).close()
    run = f".gfwlab-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    made = not os.path.isdir(out_dir)
    try:
        with connect(scheduler, workers) as client:
            os.makedirs(out_dir, exist_ok=True)  # once there is a cluster to fill it
            futures = []
            for i, c in enumerate(captures):
                key = f"analyze-{i}-{names[i]}"
                task = client.submit(
                    analyze_one, c, spec, seed, out_dir, f"{run}-{i}", key=key, pure=False
                )
                futures.append(task)
            done = 0
            for _ in as_completed(futures):
                done += 1
                if progress is not None:
                    progress(done, len(futures))
            results: list[Summary] = client.gather(futures)
    finally:
        for i in range(len(captures)):
            shutil.rmtree(os.path.join(out_dir, f"{run}-{i}"), ignore_errors=True)
        if made:
            with contextlib.suppress(OSError):
                os.rmdir(out_dir)  # only if empty
    return results


def local_start_method() -> str:
    """How a local cluster's worker processes start: ``fork`` on Linux, else Dask's default.

    A forked worker is a copy of this process with gfwlab, NumPy and the engine already imported:
    it takes its first task about 0.1 s after the cluster starts, where a spawned one (Dask's
    default) starts a fresh interpreter and imports them all again, 1.5 s or more on a 2-core
    machine (measured: ``analyze --shards 2`` of the 1.3M-packet realistic capture took 3.4 s
    forked against 4.6 s spawned, and one process 4.0 s). Its workers run only gfwlab's own
    tasks (a split capture's parts, or one capture each), which take no lock another thread of
    this process may hold at the fork: the interpreter's import lock, ``logging``'s and the C
    library's are reset by their fork handlers. A file's buffer lock is not: a thread of this
    process writing to a stream (Dask's scheduler logging, a progress bar) when a worker is
    forked leaves that stream locked for good in the worker, and the worker's first write to it
    never returns (seen: a worker hung in its start-up log line, and the cluster with it).
    :func:`_quiet_forked_worker` therefore gives each forked worker new standard streams and
    turns its logging off. (Python 3.12 and later warn about forking a process that has threads,
    with a DeprecationWarning hidden by default.) Elsewhere (macOS, where system libraries are
    not safe to fork) workers spawn."""
    if sys.platform == "linux" and "fork" in multiprocessing.get_all_start_methods():
        return "fork"
    import dask  # noqa: PLC0415

    method: str = dask.config.get("distributed.worker.multiprocessing-method")
    return method


_forking_workers = False
"""Whether a local cluster of this process may fork workers now (:func:`connect`)."""
_inherited: list[object] = []
"""A forked worker's former standard streams (:func:`_quiet_forked_worker`)."""


def _quiet_forked_worker() -> None:
    """In a process just forked from this one while a local cluster's workers are forked: new
    ``sys.stdout`` and ``sys.stderr`` on the same descriptors, and no logging at all, so that no
    write waits for a stream lock some other thread of the parent held at the fork (see
    :func:`local_start_method`). A task's failure still reaches the driver, as the task's
    exception; the local cluster's logs are silenced anyway."""
    if not _forking_workers:
        return
    logging.disable(logging.CRITICAL)
    for name in ("stdout", "stderr"):
        stream: Any = getattr(sys, name, None)
        try:
            fd = stream.fileno()  # no stream (None) has none either
        except (AttributeError, OSError, ValueError):
            continue
        fresh = open(os.dup(fd), "w", encoding="utf-8", errors="replace", buffering=1)  # noqa: SIM115
        _inherited.append(stream)  # never flushed, closed or collected in the worker
        setattr(sys, name, fresh)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_quiet_forked_worker)


@contextmanager
def connect(scheduler: str | None, workers: int) -> Iterator[Client]:
    """A client of the cluster at ``scheduler``, or of a local cluster of ``workers`` worker
    processes (one thread each, started as :func:`local_start_method` says), closed on the way
    out."""
    global _forking_workers  # noqa: PLW0603 - read by the fork hook in each child
    environ = dict(os.environ)
    try:
        with _connected(scheduler, workers) as client:
            yield client
    finally:
        _forking_workers = False  # however the cluster ended, or failed to start
        _restore(environ)


def _restore(environ: dict[str, str]) -> None:
    """Put this process's environment back as ``environ``: a local cluster's nannies set their
    workers' variables (``distributed.nanny.pre-spawn-environ``: PYTHONHASHSEED, the BLAS and
    OpenMP thread counts, ``MALLOC_TRIM_THRESHOLD_``) in the process that starts them, where
    every process it starts later would inherit them."""
    for key in [k for k in os.environ if k not in environ]:
        del os.environ[key]
    for key, value in environ.items():
        if os.environ.get(key) != value:
            os.environ[key] = value


@contextmanager
def _connected(scheduler: str | None, workers: int) -> Iterator[Client]:
    global _forking_workers  # noqa: PLW0603 - see connect
    import dask  # noqa: PLC0415
    from distributed import Client, LocalCluster  # noqa: PLC0415
    from distributed.gc import disable_gc_diagnosis  # noqa: PLC0415

    cluster = None
    if scheduler is None:
        # Its logs stay quiet: a task's failure reaches the caller as the task's exception, and
        # an interrupted run (which cancels the tasks and drops the parts' packets) is not one.
        # The workers start inside the constructor, which reads the start method then. They
        # start with SIGINT blocked (a process inherits its mask, and the cluster's event loop
        # thread, which starts them, the constructing thread's): a Ctrl-C reaches the whole
        # foreground process group, and only this process acts on it, by closing the cluster.
        method = local_start_method()
        _forking_workers = method == "fork"  # and stays so while the cluster may restart one
        with dask.config.set({"distributed.worker.multiprocessing-method": method}):
            blocked = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
            try:
                cluster = LocalCluster(
                    n_workers=workers, threads_per_worker=1, processes=True,
                    dashboard_address=None, silence_logs=logging.CRITICAL,
                )  # fmt: skip
            finally:
                signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
        # Its scheduler, in this process, hooks a diagnosis into every garbage collection; a
        # Ctrl-C that lands in a collection hook is dropped (Python ignores exceptions there),
        # and the run would go on as if none came.
        disable_gc_diagnosis(force=True)
        client = Client(cluster)
    else:
        client = _client_of(scheduler)
    try:
        yield client
    except BaseException:
        if cluster is not None:
            # Failed or interrupted: the tasks still running are not awaited, and the
            # connections their end cuts are no news (Dask and asyncio log each as an error,
            # asyncio when the cut call's future is collected).
            with _silenced("distributed", "asyncio"):
                _kill_workers(cluster)
                client.close()
                cluster.close()
                gc.collect()
        else:
            client.close()
        raise
    client.close()
    if cluster is not None:
        cluster.close()


@contextmanager
def _silenced(*names: str) -> Iterator[None]:
    """The loggers ``names`` (and those below them) print nothing meanwhile."""
    loggers = [logging.getLogger(name) for name in names]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.CRITICAL + 1)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


def _kill_workers(cluster: LocalCluster) -> None:
    """Kill a local cluster's worker processes at once: closing it asks each to stop and waits
    up to 4 s for the task it is running, which an interrupted run should not."""
    for nanny in list(cluster.workers.values()):
        pid = getattr(nanny, "pid", None)
        if isinstance(pid, int):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def _client_of(scheduler: str) -> Client:
    """A client of the scheduler at ``scheduler``; a one-line error if the address is not one
    or nothing answers there (within Dask's connect timeout, ``distributed.comm.timeouts.connect``:
    30 s unless configured)."""
    from distributed import Client  # noqa: PLC0415

    try:
        return Client(scheduler)
    except ValueError as exc:  # no scheme, no port, an unknown scheme...
        raise ConfigError(
            "--scheduler",
            None,
            f"{scheduler!r} is not a scheduler's address, such as tcp://host:8786 ({exc})",
        ) from None
    except (OSError, TimeoutError) as exc:  # refused, unreachable, timed out
        raise AdapterError(f"--scheduler {scheduler!r}", f"no scheduler answers: {exc}") from None


@contextmanager
def starting(scheduler: str | None, workers: int) -> Iterator[tuple[Runner, WindowRunner]]:
    """A :func:`part_runner` and a :func:`window_runner` on the cluster :func:`connect` gives,
    which connects (or starts its worker processes) in the background meanwhile: the caller
    indexes and splits the capture while it does. The cluster is closed on the way out."""
    with (
        _interrupts_kept() as check,
        ExitStack() as stack,
        ThreadPoolExecutor(max_workers=1) as pool,
    ):
        client = pool.submit(stack.enter_context, connect(scheduler, workers))

        def started() -> Client:
            ready = client.result()
            check()
            return ready

        def run(tasks: list[tuple[PartTask, PartData]]) -> Iterator[PartResult | str]:
            yield from part_runner(started())(tasks)

        @contextmanager
        def run_windows(tasks: list[PartTask]) -> Iterator[Session]:
            with window_runner(started())(tasks) as session:
                yield session

        try:
            yield run, run_windows
        finally:
            client.exception()  # started (or failed) before it is closed: wait for it


@contextmanager
def _interrupts_kept() -> Iterator[Callable[[], None]]:
    """A check that raises KeyboardInterrupt if a Ctrl-C came meanwhile, even one Python dropped.

    An exception raised in a garbage-collection hook is ignored, and while a local cluster
    starts its scheduler (in this process) hooks into every collection (until :func:`connect`
    takes the hook out): a Ctrl-C then would be lost, and the run would go on. Only in the main
    thread, and only over Python's own SIGINT handler (else the check never raises)."""
    came = False

    def handler(signum: int, frame: FrameType | None) -> None:
        nonlocal came
        came = True
        signal.default_int_handler(signum, frame)

    def check() -> None:
        if came:
            raise KeyboardInterrupt

    before = sys.unraisablehook

    def unraisable(info: Any) -> None:  # the dropped Ctrl-C is not printed as an error
        if not isinstance(info.exc_value, KeyboardInterrupt):
            before(info)

    mine = threading.current_thread() is threading.main_thread()
    if not mine or signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
        yield check
        return
    signal.signal(signal.SIGINT, handler)
    sys.unraisablehook = unraisable
    try:
        yield check
    finally:
        sys.unraisablehook = before
        signal.signal(signal.SIGINT, signal.default_int_handler)


def part_runner(client: Client) -> Runner:
    """Run a split capture's parts (:mod:`gfwlab.offline.shard`) as tasks on ``client``'s
    cluster, yielding each part's result as it completes."""
    from distributed import as_completed  # noqa: PLC0415

    # A local cluster's workers are reached straight from here; through the scheduler the
    # packets cross one more socket (measured: 0.4-0.7 s against 0.1-0.3 s for the two parts
    # of the 1.3M-packet realistic capture). A remote cluster's workers may be reachable only
    # through its scheduler.
    direct = client.cluster is not None

    def run(tasks: list[tuple[PartTask, PartData]]) -> Iterator[PartResult | str]:
        futures, sent = [], []
        try:
            for i, (task, data) in enumerate(tasks):
                # The packets go to the cluster ahead of the task (a task's arguments should be
                # small).
                sent.append(client.scatter(data, hash=False, direct=direct))
                futures.append(client.submit(task, sent[-1], key=f"part-{i}", pure=False))
            for future in as_completed(futures):
                result: PartResult | str = future.result()
                yield result
        finally:  # done, failed or interrupted: the cluster forgets the parts
            client.cancel([*futures, *sent])
            futures.clear()
            sent.clear()

    return run


def window_runner(client: Client) -> WindowRunner:
    """Run a capture split a window at a time (:mod:`gfwlab.offline.shard_windows`) on
    ``client``'s cluster: each part's censor is a Dask actor, kept on one worker (the parts
    spread over the workers) for the whole capture; each window's parts run in parallel."""

    @contextmanager
    def run(tasks: list[PartTask]) -> Iterator[Session]:
        from gfwlab.offline.shard_windows import WindowPart  # noqa: PLC0415

        workers = sorted(client.scheduler_info()["workers"])
        futures = []
        for i, task in enumerate(tasks):
            where = [workers[i % len(workers)]]
            futures.append(
                client.submit(
                    WindowPart, task, actor=True, workers=where, key=f"window-part-{i}", pure=False
                )
            )
        try:
            # Proxies: calling a method gives a future of its result.
            actors: list[Any] = [f.result() for f in futures]

            def session(datas: list[WindowData]) -> Results:
                pending = [a.window(d) for a, d in zip(actors, datas, strict=True)]
                return lambda: [p.result() for p in pending]

            yield session
        finally:  # done, failed or interrupted: the actors go with their futures
            client.cancel(futures)

    return run
