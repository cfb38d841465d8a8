"""The package's structure, checked: layers only point down, no import cycles, a slim engine that
names no mechanism, and hook names written once (docs/architecture.md)."""

from __future__ import annotations

import ast
import dataclasses
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import grimp
import pytest

from gfwlab.engine import HOOKS, Mechanism
from gfwlab.mechanisms import registry
from gfwlab.rules import CommonParams

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src" / "gfwlab"
LINT = str(Path(sys.executable).with_name("lint-imports"))


def _lint(cwd: Path, env_path: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(env_path) if env_path else ""}
    return subprocess.run(
        [LINT, "--config", "pyproject.toml", "--no-cache"],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_import_contracts_hold() -> None:
    got = _lint(ROOT, ROOT / "src")
    assert got.returncode == 0, got.stdout + got.stderr
    assert "layers only point down KEPT" in got.stdout
    assert "does no I/O and reads no clock KEPT" in got.stdout


@pytest.mark.parametrize(
    ("module", "bad", "contract"),
    [
        ("engine/flows.py", "import gfwlab.mechanisms", "layers only point down BROKEN"),
        ("rules/schema.py", "from gfwlab.engine import tcb", "layers only point down BROKEN"),
        ("packet/ip.py", "import gfwlab.proto.dns", "layers only point down BROKEN"),
        ("mechanisms/fet.py", "import time", "reads no clock BROKEN"),
    ],
)
def test_a_deliberate_bad_import_breaks_the_contract(
    tmp_path: Path, module: str, bad: str, contract: str
) -> None:
    shutil.copytree(SRC, tmp_path / "gfwlab", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    target = tmp_path / "gfwlab" / module
    target.write_text(target.read_text() + f"\n{bad}  # deliberate\n")
    got = _lint(tmp_path, tmp_path)
    assert got.returncode != 0
    assert contract in got.stdout, got.stdout


def _cycles() -> list[list[str]]:
    graph = grimp.build_graph("gfwlab")
    edges = {m: graph.find_modules_directly_imported_by(m) for m in graph.modules}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for module in sorted(edges):
        if module not in index:
            visit(module)
    return found


def test_no_import_cycles() -> None:
    assert _cycles() == []


def test_no_function_level_imports_below_the_adapters() -> None:
    """Imports inside functions may not stand in for a layer: none in the censor's core."""
    for package in ("engine", "mechanisms", "proto", "packet", "rules", "profiles"):
        for path in (SRC / package).glob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                    inner = [
                        n for n in ast.walk(node) if isinstance(n, ast.Import | ast.ImportFrom)
                    ]
                    assert not inner, f"{path.name}:{node.name} imports inside a function"


def test_censor_is_slim_and_names_no_mechanism() -> None:
    source = (SRC / "engine" / "censor.py").read_text()
    assert source.count("\n") < 350
    tree = ast.parse(source)
    (cls,) = [n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "Censor"]
    assert cls.end_lineno is not None and cls.end_lineno - cls.lineno + 1 < 350
    for name in registry():
        for path in (SRC / "engine").glob("*.py"):
            assert name not in path.read_text(), f"{path.name} names the mechanism {name}"
    common = {f.name for f in dataclasses.fields(CommonParams)}
    for path in (SRC / "engine").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            # A mechanism's parameters are read only by the mechanism: the engine sees none but
            # the common ones (the TCB's own parameters are the engine's).
            if (
                isinstance(node, ast.Attribute)
                and isinstance(node.value, ast.Attribute)
                and node.value.attr == "params"
                and path.name != "tcb.py"
            ):
                assert node.attr in common, f"{path.name} reads params.{node.attr}"


def test_hook_names_are_written_once() -> None:
    """Each hook name appears once as a definition; everything else derives from HOOKS."""
    assert set(HOOKS) == {n for n in vars(Mechanism) if n.startswith("on_")} - {"on_probe_result"}
    for hook in HOOKS:
        defs = 0
        for path in (SRC / "engine").glob("*.py"):
            text = path.read_text()
            defs += text.count(f"def {hook}(")
        assert defs == 1, hook
    dissect = (SRC / "engine" / "censor.py").read_text()
    listed = [h for h in HOOKS if f'"{h}"' in dissect]
    # The censor names only the hooks no dissector feeds (raw-packet hooks); the others come from
    # the dissector table.
    assert set(listed) <= {
        "on_new_flow",
        "on_syn_ack",
        "on_tcp_packet",
        "on_first_data",
        "on_first_datagram",
    }


def test_the_documented_layers_are_the_enforced_ones() -> None:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    (layers,) = [c["layers"] for c in config["contracts"] if c["type"] == "layers"]
    doc = (ROOT / "docs" / "architecture.md").read_text()
    section = doc.split("<!-- layers:", 1)[1].split("\n\n", 1)[0]
    documented = []
    for line in section.splitlines():
        m = re.match(r"\d+\. `([^`]*)`", line)
        if m:
            documented.append(" | ".join(re.findall(r"gfwlab[\w.]*", m.group(1))))
    assert documented == layers
