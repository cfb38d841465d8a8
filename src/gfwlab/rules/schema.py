"""Typed parameters: dataclasses whose annotated fields say how a TOML value is validated.

Every mechanism declares its parameters as a frozen dataclass (one docstring per field). The
loader turns a TOML table into such a dataclass with :func:`build_params`, naming the file and
the dotted key in every error. Supported field types: ``bool``, ``int``, ``float``, ``str``,
``Literal[...]``, fixed and variable tuples of those, :class:`DateRange`,
:class:`~gfwlab.rules.domains.DomainSet`, :class:`~gfwlab.rules.domains.KeywordSet`,
``Prefixes`` and nested parameter dataclasses (as a list of tables).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import ipaddress
import types
import typing
from dataclasses import dataclass
from typing import Any, Literal, get_args, get_origin

from gfwlab.errors import ConfigError
from gfwlab.rules.domains import DomainSet, KeywordSet, resolve_path


@dataclass(frozen=True, slots=True)
class DateRange:
    """The days a mechanism was active; either end may be open. ``end`` is exclusive."""

    start: dt.date | None = None
    end: dt.date | None = None

    def contains(self, day: dt.date) -> bool:
        return (self.start is None or day >= self.start) and (self.end is None or day < self.end)

    def __str__(self) -> str:
        start = self.start.isoformat() if self.start else "…"
        end = self.end.isoformat() if self.end else "…"
        return f"{start} → {end}"


@dataclass(frozen=True, slots=True)
class Prefixes:
    """A list of IP networks (IPv4 and IPv6), matched against packed addresses."""

    networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.networks)

    def contains(self, addr: bytes) -> bool:
        if not self.networks:
            return False
        ip = ipaddress.ip_address(addr)
        return any(ip.version == net.version and ip in net for net in self.networks)

    def __str__(self) -> str:
        return ", ".join(str(n) for n in self.networks)


class Context:
    """Where values come from, for error messages and relative list paths."""

    def __init__(self, source: str, base_dir: str | None) -> None:
        self.source = source
        self.base_dir = base_dir


def build_params(cls: type[Any], table: dict[str, Any], ctx: Context, prefix: str) -> Any:
    """Validate ``table`` against the dataclass ``cls``; unknown keys are errors."""
    if not isinstance(table, dict):
        raise ConfigError(ctx.source, prefix, f"expected a table, got {_tname(table)}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls) if f.init}
    for key in table:
        if key not in names:
            known = ", ".join(sorted(names))
            raise ConfigError(ctx.source, f"{prefix}.{key}", f"unknown parameter (known: {known})")
    values: dict[str, Any] = {}
    for key, value in table.items():
        values[key] = coerce(value, hints[key], ctx, f"{prefix}.{key}")
    try:
        return cls(**values)
    except ValueError as exc:  # __post_init__ checks
        raise ConfigError(ctx.source, prefix, str(exc)) from None


def coerce(value: Any, tp: Any, ctx: Context, key: str) -> Any:
    """Check and convert one TOML value to the annotated type ``tp``."""
    origin = get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        members = [a for a in get_args(tp) if a is not type(None)]
        if value is None or (value == "" and type(None) in get_args(tp)):
            return None
        return coerce(value, members[0], ctx, key)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise _bad(ctx, key, "true or false", value)
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise _bad(ctx, key, "an integer", value)
    if tp is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        raise _bad(ctx, key, "a number", value)
    if tp is str:
        if isinstance(value, str):
            return value
        raise _bad(ctx, key, "a string", value)
    if origin is Literal:
        choices = get_args(tp)
        if value in choices:
            return value
        raise ConfigError(
            ctx.source, key, f"must be one of {', '.join(map(repr, choices))}, got {value!r}"
        )
    if origin is tuple:
        args: tuple[Any, ...] = get_args(tp)
        if not isinstance(value, list | tuple):
            raise _bad(ctx, key, "a list", value)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(coerce(v, args[0], ctx, f"{key}[{i}]") for i, v in enumerate(value))
        if len(value) != len(args):
            raise ConfigError(ctx.source, key, f"expected a list of {len(args)}, got {len(value)}")
        return tuple(
            coerce(v, a, ctx, f"{key}[{i}]")
            for i, (v, a) in enumerate(zip(value, args, strict=True))
        )
    if tp is DateRange:
        return _date_range(value, ctx, key)
    if tp is DomainSet:
        if isinstance(value, str):
            return _load_list(DomainSet.from_file, value, ctx, key)
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            return DomainSet(value, source=f"{ctx.source}: {key}")
        raise _bad(ctx, key, "a list of domains or a list-file path", value)
    if tp is KeywordSet:
        if isinstance(value, str):
            return _load_list(KeywordSet.from_file, value, ctx, key)
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            return KeywordSet(value, source=f"{ctx.source}: {key}")
        raise _bad(ctx, key, "a list of keywords or a keyword-file path", value)
    if tp is Prefixes:
        items = [value] if isinstance(value, str) else value
        if not isinstance(items, list):
            raise _bad(ctx, key, "a list of IP prefixes", value)
        nets = []
        for i, item in enumerate(items):
            try:
                nets.append(ipaddress.ip_network(str(item), strict=False))
            except ValueError:
                raise ConfigError(
                    ctx.source, f"{key}[{i}]", f"not an IP prefix: {item!r}"
                ) from None
        return Prefixes(tuple(nets))
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        return build_params(tp, value, ctx, key)
    raise TypeError(f"unsupported parameter type {tp!r} for {key}")  # a bug, not a user error


def _load_list(loader: Any, value: str, ctx: Context, key: str) -> Any:
    path = resolve_path(value, ctx.base_dir)
    try:
        return loader(path)
    except ConfigError as exc:
        raise ConfigError(ctx.source, key, f"{path}: {exc.reason}") from None


def _date_range(value: Any, ctx: Context, key: str) -> DateRange:
    if isinstance(value, dict):
        unknown = set(value) - {"start", "end"}
        if unknown:
            raise ConfigError(ctx.source, f"{key}.{sorted(unknown)[0]}", "unknown key (start, end)")
        start, end = value.get("start"), value.get("end")
    elif isinstance(value, list) and len(value) == 2:
        start, end = value
    else:
        raise _bad(ctx, key, "{ start = DATE, end = DATE } or [START, END]", value)
    return DateRange(_date(start, ctx, f"{key}.start"), _date(end, ctx, f"{key}.end"))


def _date(value: Any, ctx: Context, key: str) -> dt.date | None:
    if value is None or value == "":
        return None
    if isinstance(value, dt.datetime):
        return value.date()
    if isinstance(value, dt.date):
        return value
    if isinstance(value, str):
        try:
            return dt.date.fromisoformat(value)
        except ValueError:
            pass
    raise _bad(ctx, key, "a date YYYY-MM-DD", value)


def _bad(ctx: Context, key: str, expected: str, value: Any) -> ConfigError:
    return ConfigError(ctx.source, key, f"expected {expected}, got {_tname(value)} {value!r}")


def _tname(value: Any) -> str:
    return {
        bool: "boolean",
        int: "integer",
        float: "number",
        str: "string",
        list: "list",
        dict: "table",
    }.get(type(value), type(value).__name__)
