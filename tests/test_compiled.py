"""The compiled engine against its sources run interpreted (``GFWLAB_PURE=1``), and the guard
that runs the sources when the compiled modules are older than they are (:mod:`gfwlab._build`).

The compiled modules are the same typed sources, compiled with mypyc; the compiler has its own
rules (attributes keep their declared types, bytes slices are its own code), so the whole
pipeline is compared, in real ``gfwlab analyze`` processes, on generated captures with every
mechanism on and the real 2024 lists, and on the real captures in the shared data folder:
events, censored captures and summaries must be byte-identical.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal, get_args

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

import gfwlab
from gfwlab import _build
from gfwlab.engine import censor
from gfwlab.errors import MalformedPacket
from gfwlab.mechanisms import dns_injection, fet
from gfwlab.offline.synth import generate
from gfwlab.packet.ip import ACK, addr_bytes, build_tcp
from gfwlab.proto.dns import build_query
from gfwlab.proto.quic_build import build_initial
from gfwlab.proto.tls import build_client_hello
from testenv import REAL_LIST_SETS, SHARED_BLOCKLISTS, SHARED_PCAPS, needs_shared, shared_pcaps

EVERY_MECHANISM = [
    "--date", "2024-06-01",
    "--set", "fet.active={start='2021-11-01'}",
    "--set", "null_route.targets=['198.19.0.0/26', '2001:db8:5::/80']",
]  # fmt: skip

needs_compiled = pytest.mark.skipif(
    gfwlab.ENGINE_BUILD != "compiled",
    reason=f"the engine is not compiled here ({gfwlab.ENGINE_BUILD}): pip install -e .",
)


def _build_of(env: dict[str, str]) -> str:
    out = subprocess.run(
        [sys.executable, "-c", "import gfwlab; print(gfwlab.ENGINE_BUILD)"],
        env=env, capture_output=True, text=True, check=True,
    )  # fmt: skip
    return out.stdout.strip()


def _analyze(tmp: Path, capture: Path | str, args: list[str], pure: bool) -> tuple[bytes, ...]:
    env = {**os.environ, _build.PURE_ENV: "1" if pure else "0"}
    assert _build_of(env) == ("interpreted" if pure else "compiled")
    tag = "pure" if pure else "compiled"
    events, out = tmp / f"events-{tag}.jsonl", tmp / f"out-{tag}.pcap"
    run = subprocess.run(
        [sys.executable, "-m", "gfwlab", "analyze", str(capture), *args, "--seed", "5",
         "--events", str(events), "--out", str(out), "--json"],
        env=env, capture_output=True, check=False,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr.decode()
    summary = json.loads(run.stdout)
    summary.pop("outputs", None)
    return events.read_bytes(), out.read_bytes(), json.dumps(summary, sort_keys=True).encode()


def _same_both_ways(tmp: Path, capture: Path | str, args: list[str]) -> bytes:
    compiled = _analyze(tmp, capture, args, pure=False)
    pure = _analyze(tmp, capture, args, pure=True)
    for name, a, b in zip(("events", "censored capture", "summary"), compiled, pure, strict=True):
        assert a == b, f"{name} differ between the compiled engine and its sources"
    return compiled[0]


def test_ci_runs_the_compiled_engine() -> None:
    """Under CI the install compiles the engine: a pure install there is a broken build."""
    if os.environ.get("CI"):
        assert gfwlab.ENGINE_BUILD == "compiled"
    if gfwlab.ENGINE_BUILD == "compiled":
        assert censor.__file__ is not None and not censor.__file__.endswith(".py")


@needs_compiled
@needs_shared(SHARED_BLOCKLISTS)
@pytest.mark.parametrize("mix", ["realistic", "flow-heavy"])
def test_generated_capture_same_compiled_and_interpreted(tmp_path: Path, mix: str) -> None:
    cap = tmp_path / "cap.pcap"
    generate(str(cap), flows=600, seed=11, mix=mix)
    lists = [a for s in REAL_LIST_SETS for a in ("--set", s)]
    events = _same_both_ways(tmp_path, cap, [*EVERY_MECHANISM, *lists])
    kinds = {json.loads(line)["action"] for line in events.splitlines()}
    assert {"rst", "drop", "dns-inject"} <= kinds  # the mechanisms did act


@needs_compiled
@needs_shared(SHARED_PCAPS)
@pytest.mark.parametrize("capture", shared_pcaps("*.pcap"), ids=lambda p: Path(p).name)
def test_real_captures_same_compiled_and_interpreted(tmp_path: Path, capture: str) -> None:
    _same_both_ways(tmp_path, capture, EVERY_MECHANISM)


def _package(root: Path) -> None:
    for module in _build.COMPILED:
        path = _build.source(root, module)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"NAME = {module!r}\n")


def test_changed_sources_run_interpreted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _package(tmp_path)
    monkeypatch.delenv(_build.PURE_ENV, raising=False)
    monkeypatch.setattr(sys, "meta_path", list(sys.meta_path))  # restored after the test
    assert _build.choose(tmp_path) == "interpreted"  # nothing compiled: no digest
    (tmp_path / _build.DIGEST_FILE).write_text(_build.digest(tmp_path) + "\n")
    before = len(sys.meta_path)
    assert _build.choose(tmp_path) == "compiled"
    assert len(sys.meta_path) == before and capsys.readouterr().err == ""

    tcb = _build.source(tmp_path, "gfwlab.engine.tcb")
    tcb.write_text(tcb.read_text() + "# changed\n")
    assert _build.choose(tmp_path) == "interpreted (stale)"
    assert "older than its sources" in capsys.readouterr().err
    finder = sys.meta_path[0]
    spec = finder.find_spec("gfwlab.engine.tcb", None)
    assert spec is not None and spec.origin == str(tcb)
    assert finder.find_spec("gfwlab.engine.nothing", None) is None

    monkeypatch.setenv(_build.PURE_ENV, "1")
    tcb.write_text(tcb.read_text().replace("# changed\n", ""))
    assert _build.choose(tmp_path) == "interpreted"
    assert capsys.readouterr().err == ""


def test_untouched_sources_are_not_hashed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _package(tmp_path)
    monkeypatch.delenv(_build.PURE_ENV, raising=False)
    monkeypatch.setattr(sys, "meta_path", list(sys.meta_path))
    (tmp_path / _build.DIGEST_FILE).write_text(_build.record(tmp_path))
    hashed: list[Path] = []
    digest = _build.digest

    def counted(root: Path) -> str:
        hashed.append(root)
        return digest(root)

    monkeypatch.setattr(_build, "digest", counted)
    assert _build.choose(tmp_path) == "compiled" and hashed == []

    # Touched (a checkout, a copy), the same bytes: hashed, and still the build's.
    tcb = _build.source(tmp_path, "gfwlab.engine.tcb")
    st = tcb.stat()
    os.utime(tcb, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    assert _build.choose(tmp_path) == "compiled" and hashed == [tmp_path]

    # Changed: hashed, and the digest tells.
    tcb.write_text(tcb.read_text() + "# changed\n")
    assert _build.choose(tmp_path) == "interpreted (stale)"
    assert "older than its sources" in capsys.readouterr().err
    assert len(hashed) == 2


# The dissectors and the IP parser, compiled and as a copy run from their source in this same
# process (gfwlab._build.source_copy), on arbitrary bytes and on cuts and flips of real
# messages: the same result, or the same malformed kind at the same offset. This is where a
# compiler's slip shows first (one did: a bytes slice ending before its start, proto/http.py).
PARSERS: dict[str, tuple[str, str, Callable[[], bytes]]] = {
    "ip": ("gfwlab.packet.ip", "parse", lambda: build_tcp(
        addr_bytes("198.18.0.2"), addr_bytes("198.19.0.2"), 40000, 443, seq=7, flags=ACK,
        payload=build_client_hello("example.com"))),
    "dns": ("gfwlab.proto.dns", "parse_query", lambda: build_query("www.example.com", 1)),
    "http": ("gfwlab.proto.http", "parse_request",
             lambda: b"GET /x?q=1 HTTP/1.1\r\nHost: a.example:80\r\nX: y\r\n\r\n"),
    "tls": ("gfwlab.proto.tls", "parse_client_hello", lambda: build_client_hello("example.com")),
    "quic": ("gfwlab.proto.quic", "parse_initial", lambda: build_initial("example.com")),
}  # fmt: skip


def _plain(value: Any) -> Any:
    """A parse result as plain data (the two builds' classes are different objects)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        fields = dataclasses.fields(value)
        return (type(value).__name__, {f.name: _plain(getattr(value, f.name)) for f in fields})
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _outcome(fn: Callable[[bytes], Any], data: bytes) -> Any:
    try:
        return ("parsed", _plain(fn(data)))
    except MalformedPacket as exc:
        return ("malformed", exc.kind, exc.offset)


def _both(name: str) -> tuple[Callable[[bytes], Any], Callable[[bytes], Any]]:
    module, func, _seed = PARSERS[name]
    compiled = getattr(sys.modules[module], func)
    return compiled, getattr(_build.source_copy(module), func)


def _mutants(seed: bytes) -> st.SearchStrategy[bytes]:
    """Cuts of ``seed``, and ``seed`` with a few bytes changed."""
    cut = st.integers(0, len(seed)).map(lambda n: seed[:n])
    flips = st.lists(st.tuples(st.integers(0, len(seed) - 1), st.integers(0, 255)), max_size=4)

    def flipped(changes: list[tuple[int, int]]) -> bytes:
        out = bytearray(seed)
        for at, byte in changes:
            out[at] = byte
        return bytes(out)

    return st.one_of(cut, flips.map(flipped))


@needs_compiled
@pytest.mark.parametrize("name", sorted(PARSERS))
def test_parsers_same_compiled_and_interpreted(name: str) -> None:
    compiled, source = _both(name)
    assert compiled is not source and "_source_copy_" in source.__module__
    seed = PARSERS[name][2]()

    @settings(max_examples=400, deadline=None, derandomize=True)
    @given(st.one_of(st.binary(max_size=300), _mutants(seed)))
    @example(seed)
    @example(b"GET / HTTP/1.0\n\n")  # the slice that ends before its start
    def check(data: bytes) -> None:
        assert _outcome(compiled, data) == _outcome(source, data)

    check()
    assert _outcome(compiled, seed)[0] == "parsed"


@needs_compiled
def test_fet_measures_same_compiled_and_interpreted() -> None:
    # FET's measures are the one mechanism computation on every first data packet: counts over
    # arbitrary bytes, where a compiled integer or slice slip would change a verdict.
    source = _build.source_copy("gfwlab.mechanisms.fet")
    params = fet.FetParams()

    @settings(max_examples=400, deadline=None, derandomize=True)
    @given(st.binary(min_size=1, max_size=1500))
    @example(b"\x16\x03\x01\x02\x00")
    @example(b"GET / HTTP/1.1\r\n\r\n")
    @example(bytes(range(256)))
    def check(data: bytes) -> None:
        ours, theirs = fet.measure(data, params), source.measure(data, params)
        assert _plain(ours) == _plain(theirs)
        assert fet.exemptions(ours, params) == source.exemptions(theirs, params)

    check()


@needs_compiled
def test_compiled_parameter_classes_are_checked_against_their_source_annotations() -> None:
    # The compiler keeps erased types; the profile loader must see the Literal, and nested
    # parameter classes must be the classes in use, not the source copy's.
    assert fet.FetParams.__annotations__["direction"] is type
    hints = _build.type_hints(fet.FetParams)
    assert hints["direction"] == Literal["both", "inside-out", "outside-in"]
    assert hints["enabled"] is bool  # from CommonParams, an interpreted base
    nested = _build.type_hints(dns_injection.DnsInjectionParams)["injectors"]
    assert get_args(nested) == (dns_injection.DnsInjectorParams, ...)


def test_recorded_annotations_are_the_sources() -> None:
    """What a build records for type_hints (``_build.annotation_texts``) is, for every class of
    every compiled module, the ``__annotations__`` its source gives it when run, and the
    build's record is that."""
    root = Path(gfwlab.__file__).parent
    texts = _build.annotation_texts(root)
    for module in _build.COMPILED:
        copy = _build.source_copy(module)
        found: dict[str, dict[str, str]] = {}
        todo = [(v.__qualname__, v) for v in vars(copy).values() if isinstance(v, type)]
        while todo:
            name, klass = todo.pop()
            if klass.__module__ != copy.__name__ or klass.__qualname__ != name:
                continue  # imported, or an alias
            if own := inspect.get_annotations(klass):
                # A NamedTuple's are ForwardRefs of the same text; get_type_hints reads both.
                found[name] = {k: getattr(v, "__forward_arg__", v) for k, v in own.items()}
            todo.extend((f"{name}.{k}", v) for k, v in vars(klass).items() if isinstance(v, type))
        assert texts.get(module, {}) == found, module
    assert sum(map(len, texts.values())) > 50  # the parameter classes, events, packets
    recorded = root / _build.ANNOTATIONS_FILE
    if _build.compiled("gfwlab.mechanisms.fet"):
        assert json.loads(recorded.read_text()) == texts


def _written_inits() -> list[tuple[str, str]]:
    """(module, class) of each dataclass in a compiled module whose ``__init__`` is written out."""
    found = []
    for module in _build.COMPILED:
        tree = ast.parse(_build.source(Path(gfwlab.__file__).parent, module).read_text())
        for node in tree.body:
            if not isinstance(node, ast.ClassDef):
                continue
            decorated = any("dataclass" in ast.unparse(d) for d in node.decorator_list)
            inits = [
                n for n in node.body if isinstance(n, ast.FunctionDef) and n.name == "__init__"
            ]
            if decorated and inits:
                found.append((module, node.name))
    return found


BOOKKEEPING: dict[str, tuple[str, ...]] = {"Flow": ("held",)}
"""Attributes a written-out ``__init__`` sets that are not the dataclass's fields (not shown,
compared or copied as the flow's state): ``Flow.held``, the flow table's mark."""


def _assigned(init: ast.FunctionDef) -> list[str]:
    """The attributes an ``__init__`` sets, in order: ``self.x = ...`` or
    ``object.__setattr__(self, "x", ...)``."""
    names = []
    for node in ast.walk(init):
        if isinstance(node, ast.Assign):
            names += [t.attr for t in node.targets if isinstance(t, ast.Attribute)]
        elif isinstance(node, ast.Call) and ast.unparse(node.func) == "object.__setattr__":
            arg = node.args[1]
            assert isinstance(arg, ast.Constant)
            names.append(arg.value)
    return names


@pytest.mark.parametrize("module, name", _written_inits(), ids=str)
def test_written_out_inits_are_their_dataclass_inits(module: str, name: str) -> None:
    # The hot dataclasses of compiled modules write their __init__ out, so that it is compiled
    # too; each must take and set exactly the fields, with their defaults (a default factory's
    # default is None), as the generated one would.
    cls = getattr(_build.source_copy(module), name)
    # With init=False, so that the dataclass machinery makes none at import (an exec each).
    assert cls.__dataclass_params__.init is False
    fields = [f for f in dataclasses.fields(cls) if f.init]
    expected = []
    for f in fields:
        kind = (
            inspect.Parameter.KEYWORD_ONLY if f.kw_only else inspect.Parameter.POSITIONAL_OR_KEYWORD
        )
        default: Any = inspect.Parameter.empty
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = None
        expected.append((f.name, kind, default))
    params = list(inspect.signature(cls.__init__).parameters.values())[1:]
    assert [(p.name, p.kind, p.default) for p in params] == expected
    (init,) = [
        n
        for n in ast.walk(ast.parse(inspect.getsource(cls)))
        if isinstance(n, ast.FunctionDef) and n.name == "__init__"
    ]
    assigned = _assigned(init)
    names = {f.name for f in dataclasses.fields(cls)}
    assert [n for n in assigned if n in names] == [f.name for f in fields]
    # Anything else it sets is bookkeeping outside the fields, and named here.
    assert [n for n in assigned if n not in names] == list(BOOKKEEPING.get(name, ()))
