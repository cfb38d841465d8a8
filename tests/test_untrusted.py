"""Untrusted input: profiles, list files, --set values, strategy strings and host names are data.

- No code in gfwlab can hand a string to a shell: the source has no ``shell=True``, no
  ``os.system``/``os.popen``/``os.exec*``/``os.spawn*``, no ``eval``/``exec``/``compile`` (but
  ``exec("")``, which runs nothing), no
  ``pickle``/``marshal`` loads, and every ``subprocess`` call takes an argument list (an AST scan
  of every module, so code merged later is covered: test lists, probes, tools).
- A profile is TOML, read with ``tomllib``: it cannot run code, and loading it opens the profile
  and the list files it names, nothing else (an audit hook records every ``open``).
- List paths are resolved against the profile's folder and errors name the resolved path.
- Hostile values (shell syntax, control characters, over-long names, huge --set values) get one
  line naming what was wrong and exit code 2, and nothing runs.
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import gfwlab as package
from gfwlab._build import ANNOTATIONS_FILE
from testenv import REPO, gfwlab

SRC = REPO / "src" / "gfwlab"
SHELL_CALLS = {
    ("os", "system"), ("os", "popen"), ("os", "execl"), ("os", "execle"), ("os", "execlp"),
    ("os", "execlpe"), ("os", "spawnl"), ("os", "spawnle"), ("os", "spawnlp"), ("os", "spawnv"),
    ("os", "spawnvp"), ("os", "posix_spawn"), ("pickle", "load"), ("pickle", "loads"),
    ("marshal", "load"), ("marshal", "loads"), ("subprocess", "getoutput"),
    ("subprocess", "getstatusoutput"), ("pty", "spawn"),
}  # fmt: skip
SUBPROCESS = {"run", "Popen", "call", "check_call", "check_output"}
BUILTINS = {"eval", "exec", "compile", "__import__"}


def _dotted(node: ast.expr) -> tuple[str, ...]:
    parts: list[str] = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        parts.append(node.id)
    return tuple(reversed(parts))


def _runs_nothing(call: ast.Call) -> bool:
    """``exec("")``: code from text that is the empty string, written out (``gfwlab._ctrlc``
    runs it for what running code from text does to CPython's interrupt state, not to run
    anything)."""
    return (
        _dotted(call.func) == ("exec",)
        and not call.keywords
        and len(call.args) == 1
        and isinstance(call.args[0], ast.Constant)
        and call.args[0].value == ""
    )


def shell_uses(path: Path) -> list[str]:
    """Every place in ``path`` where a string could reach a shell or be run as code."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        name = _dotted(node.func)
        where = f"{path.relative_to(REPO)}:{node.lineno}"
        for kw in node.keywords:
            if kw.arg == "shell" and not (
                isinstance(kw.value, ast.Constant) and kw.value.value is False
            ):
                found.append(f"{where}: shell={ast.unparse(kw.value)}")
        if name[-2:] in SHELL_CALLS:
            found.append(f"{where}: {'.'.join(name)}")
        if len(name) == 1 and name[0] in BUILTINS and not _runs_nothing(node):
            found.append(f"{where}: {name[0]}()")
        if name[-1:] and name[-1] in SUBPROCESS and "subprocess" in name[:-1] and node.args:
            first = node.args[0]
            if isinstance(first, ast.Constant | ast.JoinedStr | ast.BinOp):
                found.append(f"{where}: subprocess.{name[-1]} with a string command")
    return found


def test_no_string_reaches_a_shell() -> None:
    modules = sorted(SRC.rglob("*.py"))
    assert len(modules) > 50
    found = [hit for path in modules for hit in shell_uses(path)]
    assert found == [], "\n".join(found)


def test_the_scan_finds_what_it_looks_for(tmp_path: Path) -> None:
    """The scan is not blind: each pattern is caught in a planted module."""
    bad = REPO / "tests" / "_planted_shell_use.py"
    bad.write_text(
        "import os, subprocess, pickle\n"
        "subprocess.run('curl ' + url, shell=True)\n"
        "subprocess.check_output(f'dig {name}')\n"
        "os.system('ls')\n"
        "eval(text)\n"
        "pickle.loads(blob)\n"
        'exec("")\n'  # runs nothing: not a hit
        'exec(" ")\n'
        "exec(text)\n",
        encoding="utf-8",
    )
    try:
        hits = shell_uses(bad)
    finally:
        bad.unlink()
    assert len(hits) == 8, hits


def _profile(tmp: Path, body: str, name: str = "p.toml") -> Path:
    path = tmp / name
    path.write_text(body, encoding="utf-8")
    return path


HOSTILE = [
    "$(touch {marker})",
    "`touch {marker}`",
    "; touch {marker}",
    "| touch {marker}",
    "{{__import__('os').system('touch {marker}')}}",
]


@pytest.mark.parametrize("value", HOSTILE)
def test_hostile_strings_in_a_profile_are_only_data(tmp_path: Path, value: str) -> None:
    marker = tmp_path / "ran"
    text = value.format(marker=marker)
    profile = _profile(
        tmp_path,
        f'name = "hostile"\n[mechanisms.tls_sni]\ndomains = [{json.dumps(text)}]\n'
        f"[mechanisms.http_keyword]\nkeywords = [{json.dumps(text)}]\n",
    )
    res = gfwlab("mechanisms", "--profile", str(profile))
    assert not marker.exists()
    assert res.returncode in (0, 2), res.stderr
    if res.returncode == 2:
        assert len(res.stderr.strip().splitlines()) == 1, res.stderr
        assert str(profile) in res.stderr


@pytest.mark.parametrize("value", HOSTILE)
def test_hostile_strategy_strings_never_run(tmp_path: Path, value: str) -> None:
    marker = tmp_path / "ran"
    text = value.format(marker=marker)
    res = gfwlab(
        "evade", "run", "--strategy", f"[TCP:flags:PA]-tamper{{TCP:load:replace:{text}}}-| \\/",
        "--offline", "--trials", "1",
    )  # fmt: skip
    assert not marker.exists()
    # The value is the payload's new bytes, nothing more: the run works, or the strategy is
    # refused in one line.
    assert res.returncode in (0, 2), res.stdout + res.stderr
    if res.returncode == 2:
        assert len(res.stderr.strip().splitlines()) == 1, res.stderr


def test_loading_a_profile_opens_only_what_it_names(tmp_path: Path) -> None:
    """An audit hook records every file opened while a profile loads: the profile and its list
    file, nothing else (Python's and gfwlab's own files aside)."""
    lists = tmp_path / "lists"
    lists.mkdir()
    (lists / "sni.txt").write_text("example.com\n", encoding="utf-8")
    (tmp_path / "secret.txt").write_text("not for the profile\n", encoding="utf-8")
    profile = _profile(
        tmp_path,
        'name = "paths"\n[mechanisms.tls_sni]\ndomains = "lists/sni.txt"\n',
    )
    code = f"""
import json, sys
from gfwlab.profiles import load_profile
import gfwlab.mechanisms
opened = []
def hook(event, args):
    if event == "open" and isinstance(args[0], str) and not args[0].endswith((".py", ".pyc")):
        opened.append(args[0])
sys.addaudithook(hook)
load_profile({str(profile)!r})
print(json.dumps(sorted(set(opened))))
"""
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert res.returncode == 0, res.stderr
    opened = [p for p in json.loads(res.stdout) if not p.startswith(sys.prefix)]
    opened = [p for p in opened if "/gfwlab/profiles/" not in p or p.endswith(".toml")]
    # The build's record of the compiled classes' annotations (gfwlab/_build.py) is gfwlab's own.
    opened = [p for p in opened if p != str(Path(package.__file__).parent / ANNOTATIONS_FILE)]
    assert sorted(opened) == sorted([str(profile), str(lists / "sni.txt")]), opened


def test_list_paths_are_resolved_against_the_profile_and_reported(tmp_path: Path) -> None:
    sub = tmp_path / "conf"
    sub.mkdir()
    profile = _profile(sub, 'name = "x"\n[mechanisms.tls_sni]\ndomains = "../lists/missing.txt"\n')
    os.chdir(REPO)  # not the profile's folder: the path is resolved against the profile's
    res = gfwlab("mechanisms", "--profile", str(profile))
    assert res.returncode == 2
    line = res.stderr.strip()
    assert len(line.splitlines()) == 1
    assert f"{sub}/../lists/missing.txt" in line or f"{tmp_path}/lists/missing.txt" in line
    assert "mechanisms.tls_sni.domains" in line and "list file not found" in line


@pytest.mark.parametrize(
    ("args", "expect"),
    [
        (["--set", "tls_sni.domains=['" + "a" * 100_000 + "']"], "over 253"),
        (["--set", "tls_sni.domains=['a\nb; touch /tmp/x']"], "tls_sni.domains"),
        (["--set", "tls_sni.residual_s=" + "9" * 5000], "tls_sni.residual_s"),
        (["--set", "x" * 10_000 + "=1"], "--set"),
        (["--date", "2024-06-01; touch /tmp/x"], "--date"),
        (["--profile", "/etc/passwd"], "/etc/passwd"),
        (["--profile", "\x1b[31mred"], "red"),
    ],
)
def test_over_long_and_hostile_values_get_one_line(args: list[str], expect: str) -> None:
    res = gfwlab("mechanisms", *args)
    assert res.returncode == 2, res.stdout[-300:] + res.stderr[-300:]
    line = res.stderr.strip()
    assert len(line.splitlines()) == 1, line[:500]
    assert expect in line, line[:500]
    assert len(line) < 600, f"{len(line)} characters"
    assert "Traceback" not in res.stderr


def test_an_over_long_rule_in_a_list_file_names_its_line(tmp_path: Path) -> None:
    lists = tmp_path / "l.txt"
    lists.write_text("example.com\n" + "b" * 300 + ".com\n", encoding="utf-8")
    res = gfwlab("mechanisms", "--set", f"tls_sni.domains='{lists}'")
    assert res.returncode == 2
    assert f"{lists}: line 2: rule of 304 characters" in res.stderr, res.stderr
