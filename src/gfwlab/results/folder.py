"""Write a results folder: ``run.json`` and the files beside it (contracts: docs/results.md)."""

from __future__ import annotations

import datetime as dt
import json
import os
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from gfwlab._outfile import OutputFile

FORMAT = 1
"""The version of the folder's file contracts this gfwlab writes and reads (run.json ``format``)."""
KINDS = ("probe", "analyze", "lab", "evade-matrix", "tools")


def now() -> str:
    """The current UTC time as ISO 8601 (what ``started`` and ``finished`` hold)."""
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def write_run(
    folder: str | os.PathLike[str],
    kind: str,
    *,
    started: str,
    profile: list[str],
    date: str | None,
    seed: int | None,
    argv: list[str] | None = None,
    finished: str | None = None,
    **extra: Any,
) -> str:
    """Write ``folder/run.json`` (atomically) and return its path."""
    if kind not in KINDS:
        raise ValueError(f"unknown run kind {kind!r}")
    from gfwlab import __version__  # noqa: PLC0415

    doc = {
        "kind": kind,
        "format": FORMAT,
        "gfwlab_version": __version__,
        "started": started,
        "finished": finished or now(),
        "profile": profile,
        "date": date,
        "seed": seed,
        "argv": argv if argv is not None else ["gfwlab", *sys.argv[1:]],
        **extra,
    }
    return write_text(Path(folder) / "run.json", json.dumps(doc, indent=2) + "\n")


def write_jsonl(path: str | os.PathLike[str], objs: Iterable[dict[str, Any]]) -> str:
    """One JSON object per line, published whole."""
    return write_text(
        path, "".join(json.dumps(o, ensure_ascii=False, separators=(",", ":")) + "\n" for o in objs)
    )


def write_text(path: str | os.PathLike[str], text: str) -> str:
    out = OutputFile(str(path))
    try:
        out.write(text.encode())
        out.commit()
    finally:
        out.abort()
    return str(path)
