"""Profiles: TOML files that say which mechanisms run, with which parameters and lists.

A profile has four top-level keys::

    name = "gfw"
    description = "..."
    [engine]                        # EngineParams: inside prefixes, flow timeouts
    [tcb]                           # TcbParams: the censor's TCP quirks
    [mechanisms.tls_sni]            # one table per mechanism, by registry name
    active = { start = "2008-01-01" }
    domains = ["google.com", ...]   # or a list file path, relative to the profile

``--set mechanism.parameter=value`` overrides any parameter (the value is read as a TOML value,
or as a string if it is not one); ``--date YYYY-MM-DD`` keeps only the mechanisms active that
day. Every error names the file (or ``--set``), the dotted key and the reason.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import os
import tomllib
from importlib import resources
from typing import Any

from gfwlab import _build
from gfwlab.engine.censor import Censor
from gfwlab.errors import ConfigError
from gfwlab.mechanisms import registry
from gfwlab.profiles.networks import network_sets
from gfwlab.rules.profile import EngineParams, Profile, TcbParams
from gfwlab.rules.schema import Context, build_params, coerce

BUILTIN = ("gfw", "henan")
_TOP = {
    "name",
    "description",
    "reference_date",
    "measured_from",
    "engine",
    "tcb",
    "mechanisms",
}


def build_censor(profile: Profile, seed: int = 0, *, runs_probes: bool = True) -> Censor:
    """A censor for ``profile``, with the built-in mechanisms (the registry) handed to it.
    ``runs_probes`` off: the adapter sends no probe and reports no probe's result (an analysis
    of a capture), so the censor plans and reports its probes but holds none
    (:attr:`~gfwlab.engine.verdicts.Verdicts.runs_probes`)."""
    censor = Censor(profile, seed, mechanisms=registry())
    censor.verdicts.runs_probes = runs_probes
    return censor


def builtin_path(name: str) -> str:
    return str(resources.files("gfwlab.profiles").joinpath(f"{name}.toml"))


def load_profiles(
    names: list[str],
    *,
    date: dt.date | None = None,
    overrides: list[str] | tuple[str, ...] = (),
    network: str = "national",
) -> list[Profile]:
    """Several profiles for censors in series; with more than one, each takes only the
    ``--network`` and ``--set`` values of its own sections (``engine``, ``tcb`` and the
    mechanisms it configures), so that a value meant for one censor does not switch a mechanism
    on in another."""
    if len(names) == 1:
        return [load_profile(names[0], date=date, overrides=overrides, network=network)]
    out = []
    for name in names:
        own = load_profile(name, date=date)
        sections = ("engine", "tcb", *own.mechanisms)
        given = [*network_sets(network), *overrides]
        mine = [o for o in given if o.split(".", 1)[0].strip() in sections]
        out.append(load_profile(name, date=date, overrides=mine))
    return out


def load_profile(
    profile: str = "gfw",
    *,
    date: dt.date | None = None,
    overrides: list[str] | tuple[str, ...] = (),
    network: str = "national",
) -> Profile:
    """Load a built-in profile by name or a profile file by path, apply ``--network``'s
    overrides, then the ``--set`` ones (which win: see :mod:`gfwlab.profiles.networks`)."""
    overrides = [*network_sets(network), *overrides]
    path = builtin_path(profile) if profile in BUILTIN else profile
    try:
        with open(path, "rb") as fh:
            data = tomllib.load(fh)
    except FileNotFoundError:
        builtin = ", ".join(BUILTIN)
        raise ConfigError(profile, None, f"no such profile file (built-in: {builtin})") from None
    except IsADirectoryError:
        raise ConfigError(profile, None, "is a directory, not a profile file") from None
    except PermissionError:
        raise ConfigError(profile, None, "profile file is not readable") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(profile, None, f"not valid TOML: {exc}") from None
    except UnicodeDecodeError:
        raise ConfigError(profile, None, "not UTF-8 text") from None
    except ValueError as exc:  # valid TOML that Python will not convert (a 5000-digit number)
        raise ConfigError(profile, None, f"unusable value: {exc}") from None
    source = profile if profile in BUILTIN else path
    ctx = Context(source, os.path.dirname(os.path.abspath(path)))
    for key in data:
        if key not in _TOP:
            raise ConfigError(source, key, f"unknown key (known: {', '.join(sorted(_TOP))})")
    known = registry()
    mech_tables = data.get("mechanisms", {})
    if not isinstance(mech_tables, dict):
        raise ConfigError(source, "mechanisms", "expected a table of mechanism tables")
    for name in mech_tables:
        if name not in known:
            raise ConfigError(
                source,
                f"mechanisms.{name}",
                f"unknown mechanism (known: {', '.join(sorted(known))})",
            )
    set_ctx = Context("--set", os.getcwd(), ctx.lists)
    engine_t = dict(data.get("engine", {}))
    tcb_t = dict(data.get("tcb", {}))
    mech_t = {name: dict(table) for name, table in mech_tables.items()}
    set_keys: dict[str, set[str]] = {}
    for item in overrides:
        section, key, value = _parse_override(item, known)
        target = (
            engine_t
            if section == "engine"
            else tcb_t
            if section == "tcb"
            else mech_t.setdefault(section, {})
        )
        target[key] = value
        set_keys.setdefault(section, set()).add(key)

    def params(cls: type[Any], table: dict[str, Any], prefix: str, section: str) -> Any:
        # Values given with --set are validated (and their list paths resolved) as --set's own.
        from_set = set_keys.get(section, set())
        base = {k: v for k, v in table.items() if k not in from_set}
        built = build_params(cls, base, ctx, prefix)
        if from_set:
            hints = _build.type_hints(cls)
            changes = {}
            for key in from_set:
                if key not in hints:
                    build_params(cls, {key: table[key]}, set_ctx, section)  # raises: unknown
                changes[key] = coerce(table[key], hints[key], set_ctx, f"{section}.{key}")
            try:
                built = _replace(built, changes)
            except ValueError as exc:
                raise ConfigError("--set", section, str(exc)) from None
        return built

    mechanisms = {
        name: params(known[name].params_cls, table, f"mechanisms.{name}", name)
        for name, table in mech_t.items()
    }
    name = data.get("name", os.path.splitext(os.path.basename(path))[0])
    if not isinstance(name, str):
        raise ConfigError(source, "name", "expected a string")
    reference, measured_from = (_day(data, source, k) for k in ("reference_date", "measured_from"))
    description = data.get("description", "")
    if not isinstance(description, str):
        raise ConfigError(source, "description", "expected a string")
    return Profile(
        name=name,
        source=source,
        description=description,
        date=date,
        reference_date=reference,
        measured_from=measured_from,
        engine=params(EngineParams, engine_t, "engine", "engine"),
        tcb=params(TcbParams, tcb_t, "tcb", "tcb"),
        mechanisms=mechanisms,
    )


def _day(data: dict[str, Any], source: str, key: str) -> dt.date | None:
    value = data.get(key)
    if value is not None and (not isinstance(value, dt.date) or isinstance(value, dt.datetime)):
        raise ConfigError(source, key, "expected a date (YYYY-MM-DD, unquoted)")
    return value


def _replace(obj: Any, changes: dict[str, Any]) -> Any:
    return dataclasses.replace(obj, **changes)


def _parse_override(item: str, known: dict[str, Any]) -> tuple[str, str, Any]:
    target, eq, raw = item.partition("=")
    section, dot, key = target.strip().partition(".")
    if not eq or not dot or not key or "." in key:
        raise ConfigError("--set", item, "expected mechanism.parameter=value")
    if section not in known and section not in ("engine", "tcb"):
        names = ", ".join(sorted([*known, "engine", "tcb"]))
        raise ConfigError("--set", target, f"unknown section {section!r} (known: {names})")
    try:
        value = tomllib.loads(f"v = {raw.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw.strip()
    except ValueError as exc:  # valid TOML that Python will not convert (a 5000-digit number)
        raise ConfigError("--set", target, f"unusable value: {exc}") from None
    return section, key, value


def parse_date(text: str) -> dt.date:
    """A ``--date`` value; raises ConfigError naming the option."""
    try:
        return dt.date.fromisoformat(text)
    except ValueError:
        raise ConfigError("--date", None, f"expected YYYY-MM-DD, got {text!r}") from None
