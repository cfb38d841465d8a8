"""The parameter reference (``docs/profiles.md``), rendered from the parameter dataclasses.

Each field's docstring (the string literal under it) is its documentation; a field without one
is an error, so the reference cannot fall behind the code. ``python -m
gfwlab.profiles.reference > docs/profiles.md`` regenerates the page; a test checks it is current.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import re
import sys
import typing
from types import ModuleType
from typing import Any

from gfwlab import _build
from gfwlab.engine import dissect, verdicts
from gfwlab.engine.actions import EventFields
from gfwlab.engine.tcb import TcbInput, TcbState, transition_table
from gfwlab.mechanisms import registry
from gfwlab.mechanisms.dns_injection import DEFAULT_INJECTORS, DnsInjectorParams
from gfwlab.rules.profile import EngineParams, TcbParams

HEADER = """# Profile reference

A profile is a TOML file (the built-in one is `src/gfwlab/profiles/gfw.toml`). Every parameter
below can also be set on the command line with `--set section.parameter=value`, where the value
is read as TOML (`--set tls_sni.residual_s=5`, `--set "engine.inside=['198.18.0.0/16']"`) or, if it
is not valid TOML, as a string (`--set tls_sni.domains=/path/list.txt`). List parameters take an
inline list or a path to a file with one entry per line (relative paths are relative to the
profile's folder, or to the current folder for `--set`).

Top-level keys: `name`, `description`, `reference_date` and `measured_from` (unquoted dates).
`gfwlab analyze` without `--date` emulates the day of the capture's first packet; a capture dated
before `measured_from` (a synthetic capture at time 0) is analysed as of `reference_date`, and
mechanisms without an `active` start are active from `measured_from`.

Domain rules: `example.com` matches the name and its subdomains; `=example.com` only the name;
`^example.com` any name starting with that text; `*example*` any name containing it.

Generated from the code by `python -m gfwlab.profiles.reference`; do not edit by hand.
"""


def readable(module: ModuleType) -> ModuleType:
    """``module``, or if it is compiled (:mod:`gfwlab._build`) a copy run from its source.

    The reference reads classes' source lines and annotations, which compiled classes do not
    keep; the copy's classes have them, and are otherwise the same classes.
    """
    if not _build.compiled(module.__name__):
        return module
    return _build.source_copy(module.__name__)


def field_docs(cls: type[Any]) -> dict[str, str]:
    """The docstring under each field of ``cls`` and its dataclass bases."""
    out: dict[str, str] = {}
    for klass in map(_build.source_class, reversed(cls.__mro__)):
        if not dataclasses.is_dataclass(klass):
            continue
        tree = ast.parse(inspect.getsource(klass).strip())
        body = tree.body[0].body  # type: ignore[attr-defined]
        for node, nxt in zip(body, [*body[1:], None], strict=True):
            if (
                isinstance(node, ast.AnnAssign)
                and isinstance(node.target, ast.Name)
                and isinstance(nxt, ast.Expr)
                and isinstance(nxt.value, ast.Constant)
                and isinstance(nxt.value.value, str)
            ):
                out[node.target.id] = " ".join(nxt.value.value.split())
    return out


def _type_name(tp: Any) -> str:
    text = getattr(tp, "__name__", None) if not typing.get_args(tp) else None
    return text or re.sub(r"\bgfwlab\.[\w.]+\.", "", str(tp).replace("typing.", ""))


def _default(field: dataclasses.Field[Any]) -> str:
    value = field.default
    if value is dataclasses.MISSING:
        return "required"
    name = type(value).__name__
    if name in ("DomainSet", "KeywordSet"):
        return "empty list"
    if name == "Prefixes":
        return "none"
    if name == "DateRange":
        return "always"
    if isinstance(value, tuple) and value and dataclasses.is_dataclass(value[0]):
        return f"{len(value)} injectors (see below)"
    return f"`{value!r}`"


def section(title: str, cls: type[Any], intro: str = "") -> list[str]:
    docs = field_docs(cls)
    hints = _build.type_hints(cls)
    lines = [f"## {title}", ""]
    if intro:
        lines += [intro, ""]
    lines += ["| parameter | type | default | meaning |", "|---|---|---|---|"]
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        if f.name not in docs:
            raise RuntimeError(f"{cls.__name__}.{f.name} has no docstring")
        kind = _type_name(hints[f.name]).replace("|", "or")
        lines.append(f"| `{f.name}` | {kind} | {_default(f)} | {docs[f.name]} |")
    return [*lines, ""]


def render() -> str:

    out = [HEADER]
    out += section("[engine]", EngineParams)
    out += section("[tcb]: the censor's view of TCP", TcbParams)
    for name, cls in sorted(registry().items()):
        doc = inspect.getdoc(readable(sys.modules[cls.__module__])) or ""
        out += section(f"[mechanisms.{name}]", cls.params_cls, doc.split("\n\n")[0])
        if name == "dns_injection":
            out += section("[[mechanisms.dns_injection.injectors]]", DnsInjectorParams)
            out.append(
                "Default injectors: "
                + ", ".join(
                    f"`{i.name}` (coverage {i.coverage}, flags "
                    f"{'by RD bit' if i.flags is None else hex(i.flags)}"
                    f"{', mirrors TTL' if i.mirror_ttl else ''})"
                    for i in DEFAULT_INJECTORS
                )
                + "."
            )
            out.append("")
    return "\n".join(out).rstrip() + "\n"


EVENTS_HEADER = """# Event fields

Every event has the fields of the DESIGN.md contract (`ts`, `flow`, `direction`, `mechanism`,
`action`, `rule`, `residual_until`, `citation`). The fields below come after them: each kind of
event declares its own, typed, in code (`EventFields` subclasses). A field whose default is
`None` is left out of an event where it does not apply.

Generated from the code by `python -m gfwlab.profiles.reference --events`; do not edit by hand.
"""


def render_tcb() -> str:
    """``docs/tcb.md``: the censor's TCP transition table for the default parameters, as a
    table and a Mermaid diagram, both generated from :func:`gfwlab.engine.tcb.transition_table`."""
    params = TcbParams()
    table = transition_table(params)
    out = [
        "# The censor's TCP view: transition table",
        "",
        "Generated from `gfwlab.engine.tcb.transition_table(TcbParams())` by",
        "`python -m gfwlab.profiles.reference --tcb`; do not edit by hand. The parameters that",
        "change it are in [profiles.md](profiles.md) under `[tcb]`. A RST acts with probability",
        f"`rst_probability` ({params.rst_probability}) and a FIN with `fin_probability`",
        f"({params.fin_probability}), a server SYN with `simultaneous_open_probability`",
        f"({params.simultaneous_open_probability}), drawn per packet from the flow's keyed stream;",
        "one that does not act is an *other segment*. The *turnaround* effect swaps the flow's",
        "client and server and restarts the TCB from the server's SYN (a simultaneous open the",
        "censor believes: the real client's data is then server data). Reassembly (first bytes",
        "seen win; segments shorter than",
        f"`small_segment_bytes` ({params.small_segment_bytes}) not reassembled before",
        f"`small_segment_reassembly` ({params.small_segment_reassembly})) is not a state: see",
        "`Tcb._append`. The table covers a flow still being inspected; a flow the censor has",
        "judged (blocked, or bypassed) holds no TCB, and a client SYN with a new initial",
        "sequence number on its 5-tuple opens a new flow, with a new TCB from *syn-seen*",
        "(`Flow.opened_anew_by`; after a bypass only with `reopen_bypassed`, by default",
        f"`{str(params.reopen_bypassed).lower()}`).",
        "",
        "| state | input | effect | next state |",
        "|---|---|---|---|",
    ]
    for state in TcbState:
        for inp in TcbInput:
            if (state, inp) in table:
                effect, nxt = table[(state, inp)]
                out.append(f"| {state.value} | {inp.value} | {effect or '—'} | {nxt.value} |")
    out += ["", "```mermaid", "stateDiagram-v2", "    [*] --> syn_seen: client SYN"]
    edges: dict[tuple[str, str], list[str]] = {}
    for (state, inp), (effect, nxt) in table.items():
        if nxt is state and effect is None:
            continue  # self-loops without effect are in the table above
        label = inp.value + (f" / {effect}" if effect else "")
        edges.setdefault((state.value, nxt.value), []).append(label)
    for (a, b), labels in edges.items():
        out.append(f"    {a.replace('-', '_')} --> {b.replace('-', '_')}: {', '.join(labels)}")
    out += ["```", ""]
    return "\n".join(out)


def event_classes(module: Any) -> list[type[EventFields]]:
    """The EventFields classes a module defines, in the order they are written."""
    found = [
        obj
        for obj in vars(module).values()
        if isinstance(obj, type)
        and issubclass(obj, EventFields)
        and obj is not EventFields
        and obj.__module__ == module.__name__
    ]
    return sorted(found, key=lambda c: inspect.getsourcelines(c)[1])


def _fields_table(cls: type[EventFields]) -> list[str]:
    cls = _build.source_class(cls)
    docs = field_docs(cls)
    hints = _build.type_hints(cls)
    lines = [f"#### `{cls.__name__}`", "", inspect.getdoc(cls) or "", ""]
    lines += ["| field | type | when | meaning |", "|---|---|---|---|"]
    for f in dataclasses.fields(cls):
        when = "if it applies" if f.default is None else "always"
        kind = _type_name(hints[f.name]).replace("|", "or")
        lines.append(f"| `{f.name}` | {kind} | {when} | {docs[f.name]} |")
    return [*lines, ""]


def render_events() -> str:
    """docs/events.md: the declared fields of every kind of event."""
    out = [EVENTS_HEADER, "## engine", ""]
    for module in (verdicts, dissect):
        for cls in event_classes(readable(module)):
            out += _fields_table(cls)
    seen: set[type[EventFields]] = set()
    for name, mech in sorted(registry().items()):
        module = readable(sys.modules[mech.__module__])
        classes = [c for c in event_classes(module) if c not in seen]
        shared = {
            c
            for other in vars(module).values()
            if isinstance(other, type) and issubclass(other, EventFields)
            for c in (other,)
            if c.__module__ != module.__name__ and c is not EventFields
        }
        out += [f"## {name}", ""]
        for cls in classes:
            out += _fields_table(cls)
        for cls in sorted(shared, key=lambda c: c.__name__):
            out += [f"Also `{cls.__name__}` (from `{cls.__module__}`).", ""]
            if cls not in seen:
                out += _fields_table(cls)
            seen.add(cls)
        seen.update(classes)
    return "\n".join(out).rstrip() + "\n"


if __name__ == "__main__":
    args = sys.argv[1:]
    print(
        render_events() if "--events" in args else render_tcb() if "--tcb" in args else render(),
        end="",
    )
