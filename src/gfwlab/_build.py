"""Which modules are compiled, and whether the compiled ones are used.

The engine's per-packet path (the engine, the IP parser, the protocol dissectors, the domain
sets and prefix sets, the mechanisms), the offline fast path's loop around it (with the
recording of its events and their JSON lines) and the live censor's netlink readers
(``live/ipset.py``, ``live/nflog.py``) are compiled to C with mypyc when gfwlab is installed
(``setup.py``): the same typed sources, run as native code. Mechanisms
written elsewhere still subclass :class:`~gfwlab.engine.mechanism.Mechanism` and run interpreted
beside the compiled ones.

Two things of the sources are not kept by the compiler and are read from the sources instead:
annotations (mypyc keeps erased runtime types: a ``Literal`` becomes ``type``), which the
profile loader checks values against (:func:`type_hints`), and source lines, which the docs'
reference reads. A mechanism's parameter classes stay Python classes
(``@mypyc_attr(native_class=False)``): they derive from the interpreted ``CommonParams``. And a
dataclass's generated ``__init__`` is not compiled (``dataclasses`` makes it with ``exec``): the
classes made per packet or per flow write theirs out (with ``init=False``, so that none is
made at import, an ``exec`` each).

The sources stay the reference. ``GFWLAB_PURE=1`` runs them interpreted (and, set at install
time, skips the compilation), and the tests compare the two (``tests/test_compiled.py``). A
compiled build records a digest of the sources it was made from; if any of them has changed
since, the compiled modules would run old code, so the sources are run instead and a line on
stderr says to reinstall. This module imports only the standard library: ``setup.py`` runs it
before gfwlab's dependencies are installed.
"""

from __future__ import annotations

import hashlib
import importlib.machinery
import importlib.util
import json
import os
import sys
import typing
from collections.abc import Iterable, Sequence
from importlib.machinery import ModuleSpec
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import Any

COMPILED = (
    "gfwlab._frozen",
    "gfwlab._json",
    "gfwlab.engine.actions",
    "gfwlab.engine.censor",
    "gfwlab.engine.defrag",
    "gfwlab.engine.dissect",
    "gfwlab.engine.draws",
    "gfwlab.engine.flows",
    "gfwlab.engine.mechanism",
    "gfwlab.engine.residual",
    "gfwlab.engine.stream",
    "gfwlab.engine.tcb",
    "gfwlab.engine.verdicts",
    "gfwlab.live.ipset",
    "gfwlab.live.nflog",
    "gfwlab.mechanisms._burst",
    "gfwlab.mechanisms._forge",
    "gfwlab.mechanisms._memory",
    "gfwlab.mechanisms._wallbleed_pools",
    "gfwlab.mechanisms.dns_injection",
    "gfwlab.mechanisms.esni",
    "gfwlab.mechanisms.fet",
    "gfwlab.mechanisms.henan",
    "gfwlab.mechanisms.http_keyword",
    "gfwlab.mechanisms.ip_port_rst",
    "gfwlab.mechanisms.null_route",
    "gfwlab.mechanisms.quic_sni",
    "gfwlab.mechanisms.ss_probing",
    "gfwlab.mechanisms.tls_in_tls",
    "gfwlab.mechanisms.tls_sni",
    "gfwlab.mechanisms.unconditional_rst_443",
    "gfwlab.offline.dropwatch",
    "gfwlab.offline.events",
    "gfwlab.offline.fast",
    "gfwlab.packet.ip",
    "gfwlab.proto.dns",
    "gfwlab.proto.http",
    "gfwlab.proto.quic",
    "gfwlab.proto.quic_build",
    "gfwlab.proto.tls",
    "gfwlab.proto.wallbleed",
    "gfwlab.rules.domains",
    "gfwlab.rules.quantiles",
    "gfwlab.rules.schema",
)
"""The compiled modules (their sources are ``src/gfwlab/...py``)."""

DIGEST_FILE = "_compiled.sha256"
"""Written beside the package's modules by a compiled build: the digest of its sources, and on
a second line their :func:`stamp`."""

ANNOTATIONS_FILE = "_compiled_annotations.json"
"""Written beside :data:`DIGEST_FILE` by a compiled build: each compiled class's own
annotations as its source writes them (:func:`annotation_texts`), which :func:`type_hints`
reads instead of running a copy of the module's source (tens of milliseconds for every command
that loads a profile, most of it the copies' dataclasses being made)."""

PURE_ENV = "GFWLAB_PURE"

COPY_PREFIX = "gfwlab._source_copy_."
"""Where :func:`source_copy` registers its copies."""


def source(root: Path, module: str) -> Path:
    """The source file of ``module`` in the package folder ``root``."""
    return root.joinpath(*module.split(".")[1:]).with_suffix(".py")


def digest(root: Path) -> str:
    """The SHA-256 of the compiled modules' sources, in ``COMPILED`` order."""
    h = hashlib.sha256()
    for module in COMPILED:
        data = source(root, module).read_bytes()
        h.update(f"{module} {len(data)}\n".encode())
        h.update(data)
    return h.hexdigest()


def stamp(root: Path) -> str:
    """The compiled modules' sources' sizes and modification times (nanoseconds), in
    ``COMPILED`` order: what Python's own bytecode cache checks a source by. While it is the
    one recorded at build time, :func:`choose` skips reading and hashing every source (about
    13 ms of each command's start)."""
    stats = (source(root, module).stat() for module in COMPILED)
    return " ".join(f"{st.st_size}:{st.st_mtime_ns}" for st in stats)


def record(root: Path) -> str:
    """What a compiled build writes to :data:`DIGEST_FILE`: the digest, then the stamp."""
    return f"{digest(root)}\n{stamp(root)}\n"


def pure_requested() -> bool:
    return os.environ.get(PURE_ENV, "") not in ("", "0")


class _Sources:
    """A meta path finder that loads compiled modules (``names``) from their sources."""

    def __init__(self, root: Path, names: Iterable[str] = COMPILED) -> None:
        self.root = root
        self.names = frozenset(names)

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> ModuleSpec | None:
        if fullname not in self.names:
            return None
        return importlib.util.spec_from_file_location(fullname, source(self.root, fullname))


def choose(root: Path) -> str:
    """Make the compiled modules import from their sources when they must; say which runs.

    ``"compiled"``, ``"interpreted"`` (nothing was compiled, or ``GFWLAB_PURE`` is set), or
    ``"interpreted (stale)"`` (the sources changed since the build: a line on stderr says so).
    """
    recorded = root / DIGEST_FILE
    if not recorded.exists():
        return "interpreted"
    if pure_requested():
        sys.meta_path.insert(0, _Sources(root))
        return "interpreted"
    lines = recorded.read_text().splitlines()
    try:
        # Sources untouched since the build (a wheel's installed copies are not: they are
        # hashed, as a source whose time changed is).
        if len(lines) > 1 and stamp(root) == lines[1]:
            return "compiled"
        current = digest(root)
    except OSError:  # a source is missing: only the compiled modules are installed
        return "compiled"
    if lines and current == lines[0].strip():
        return "compiled"
    sys.meta_path.insert(0, _Sources(root))
    sys.stderr.write(
        "gfwlab: the compiled engine is older than its sources in "
        f"{root}; running them interpreted (reinstall to compile: pip install -e .)\n"
    )
    return "interpreted (stale)"


def interpret(names: Iterable[str]) -> None:
    """Import these compiled modules from their sources from now on (before anything imports
    them): for benchmarks that wrap the censor where a compiled caller would refuse the wrapper
    (``benchmarks/floor``: the fast path). Only for a module no other compiled module imports:
    compiled modules call each other directly, so a source loaded beside them would not be the
    code that runs."""
    names = list(names)
    if early := [n for n in names if n in sys.modules]:
        raise RuntimeError(f"already imported: {', '.join(early)}")
    sys.meta_path.insert(0, _Sources(Path(__file__).parent, names))


def source_copy(name: str) -> ModuleType:
    """A copy of the compiled module ``name`` run from its source, registered under a name of
    its own (``name`` itself stays the compiled module): its classes keep their source lines
    and annotations, which the docs' reference reads."""
    copy_name = COPY_PREFIX + name.removeprefix("gfwlab.")
    if copy_name not in sys.modules:
        spec = importlib.util.spec_from_file_location(
            copy_name, source(Path(__file__).parent, name)
        )
        assert spec is not None and spec.loader is not None
        copy = importlib.util.module_from_spec(spec)
        sys.modules[copy_name] = copy  # dataclasses and inspect look their module up
        spec.loader.exec_module(copy)
    return sys.modules[copy_name]


def compiled(module: str) -> bool:
    """Whether ``module``, imported, runs compiled."""
    loaded = sys.modules.get(module)
    loader = getattr(loaded, "__loader__", None)
    return module in COMPILED and isinstance(loader, importlib.machinery.ExtensionFileLoader)


def source_class(cls: type[Any]) -> type[Any]:
    """``cls``, or if its module is compiled the same class of the module's source copy (its
    source lines and annotations as written)."""
    if not compiled(cls.__module__):
        return cls
    return getattr(source_copy(cls.__module__), cls.__qualname__)  # type: ignore[no-any-return]


def annotation_texts(root: Path) -> dict[str, dict[str, dict[str, str]]]:
    """Per compiled module (of the package folder ``root``), per class (qualified name) with
    annotations, the text of each of its own field annotations: what its ``__annotations__``
    holds when the source runs (every module has ``from __future__ import annotations``)."""
    import ast  # noqa: PLC0415 - only for a build and the tests

    out: dict[str, dict[str, dict[str, str]]] = {}
    for module in COMPILED:
        classes: dict[str, dict[str, str]] = {}
        todo = [("", node) for node in ast.parse(source(root, module).read_bytes()).body]
        while todo:
            prefix, node = todo.pop(0)
            if not isinstance(node, ast.ClassDef):
                continue
            name = prefix + node.name
            own = {
                st.target.id: ast.unparse(st.annotation)
                for st in node.body
                if isinstance(st, ast.AnnAssign) and isinstance(st.target, ast.Name)
            }
            if own:
                classes[name] = own
            todo.extend((name + ".", inner) for inner in node.body)
        if classes:
            out[module] = classes
    return out


_recorded: dict[str, dict[str, dict[str, str]]] | None = None


def _own_annotations(klass: type[Any]) -> dict[str, Any]:
    """The annotations ``klass`` itself declares, as its source writes them."""
    global _recorded  # noqa: PLW0603 - read once, when first needed
    if not compiled(klass.__module__):
        return klass.__dict__.get("__annotations__", {})  # type: ignore[no-any-return]  # noqa: RUF063 - own only
    if _recorded is None:
        try:
            text = (Path(__file__).parent / ANNOTATIONS_FILE).read_text(encoding="utf-8")
        except FileNotFoundError:  # a build from before the file: read the source copy
            _recorded = {}
        else:
            _recorded = json.loads(text)
    if not _recorded:
        return source_class(klass).__dict__.get("__annotations__", {})  # type: ignore[no-any-return]  # noqa: RUF063
    return _recorded.get(klass.__module__, {}).get(klass.__qualname__, {})


def type_hints(cls: type[Any]) -> dict[str, Any]:
    """``typing.get_type_hints(cls)``, with the annotations of each compiled class of its MRO
    taken from the source (a compiled class keeps erased types: ``type`` for a ``Literal``,
    ``tuple`` for ``tuple[str, ...]``): as the build recorded them (:data:`ANNOTATIONS_FILE`),
    or from a copy of the source. Only the text is taken, evaluated in the compiled module, so
    that the hints name the classes in use."""
    hints: dict[str, Any] = {}
    for klass in reversed(cls.__mro__):
        own = _own_annotations(klass)
        if own:
            holder = SimpleNamespace(__annotations__=dict(own))
            module = vars(sys.modules[klass.__module__])
            hints.update(typing.get_type_hints(holder, module, dict(vars(klass))))
    return hints
