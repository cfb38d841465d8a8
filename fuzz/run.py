"""Run one fuzz target under atheris (coverage-guided, libFuzzer).

    python fuzz/run.py TARGET [--runs N] [--seconds S] [--corpus DIR] [--artifacts DIR]

TARGET is one of ``harness.TARGETS`` (tls, http, dns, quic, capture, feed). The seed corpus
(:mod:`seeds`) is written to ``--corpus`` (default: a temporary folder, removed afterwards);
inputs that reach new coverage are added to it. A crash or a contract violation stops the run
and writes the input to ``--artifacts`` (default: the current folder) as ``crash-<sha1>``, and
an input that runs longer than ``--timeout`` seconds as ``timeout-<sha1>``. libFuzzer prints
its progress on stderr; the last line, ``#N DONE cov: C ft: F ...``, gives the executions and the
coverage (C: edges of gfwlab's code reached). ``scripts/fuzz`` runs every target and tabulates.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import sys
import tempfile
from pathlib import Path

import atheris

sys.path.insert(0, str(Path(__file__).resolve().parent))

with atheris.instrument_imports(include=["gfwlab"]):
    import harness
    import seeds

    harness.censor_for("gfw")  # the mechanisms are imported here, so they are instrumented


MAX_LEN = {"capture": 65536, "feed": 16384}
"""Longest input per target (libFuzzer's -max_len); the others take 4096 bytes."""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("target", choices=sorted(harness.TARGETS))
    parser.add_argument("--runs", type=int, default=-1, help="executions (-1: no limit)")
    parser.add_argument("--seconds", type=int, default=0, help="time limit (0: none)")
    parser.add_argument("--corpus", type=Path, default=None)
    parser.add_argument("--artifacts", type=Path, default=Path.cwd())
    parser.add_argument("--timeout", type=int, default=10, help="seconds for one input (a hang)")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    tmp = None
    corpus = args.corpus
    if corpus is None:
        tmp = tempfile.mkdtemp(prefix=f"gfwlab-fuzz-{args.target}-")
        corpus = Path(tmp)
    count = seeds.write_corpus(args.target, corpus)
    print(f"fuzz {args.target}: {count} seeds in {corpus}", file=sys.stderr, flush=True)
    args.artifacts.mkdir(parents=True, exist_ok=True)
    flags = [
        sys.argv[0],
        str(corpus),
        f"-runs={args.runs}",
        f"-timeout={args.timeout}",
        f"-seed={args.seed}",
        f"-artifact_prefix={args.artifacts}{os.sep}",
        "-rss_limit_mb=2048",
        "-print_final_stats=1",
        f"-max_len={MAX_LEN.get(args.target, 4096)}",
    ]
    if args.seconds:
        flags.append(f"-max_total_time={args.seconds}")

    def cleanup() -> None:
        harness.remove_scratch()
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)

    import atexit  # noqa: PLC0415

    atexit.register(cleanup)
    target = harness.TARGETS[args.target]

    def checked(data: bytes) -> None:
        try:
            target(data)
        except BaseException:
            # libFuzzer does not always write the input of an uncaught Python exception.
            name = args.artifacts / f"crash-{hashlib.sha1(data).hexdigest()}"
            name.write_bytes(data)
            print(f"fuzz {args.target}: input written to {name}", file=sys.stderr, flush=True)
            raise

    atheris.Setup(flags, checked)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
