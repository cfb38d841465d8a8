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
import os
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Literal, get_args, get_origin

from gfwlab import _build
from gfwlab._frozen import Frozen
from gfwlab.errors import ConfigError
from gfwlab.rules.domains import DomainSet, KeywordSet, resolve_path


@dataclass(frozen=True)
class DateRange(Frozen):
    """When a mechanism was active; either end may be open. ``end`` is exclusive.

    An end is a day, or a moment to the minute (a UTC ``datetime``) for events that lasted
    minutes or hours (spec §14a): such a range "contains" every day it overlaps, and
    :meth:`contains_moment` says whether one instant is inside it.
    """

    start: dt.date | None = None
    end: dt.date | None = None

    @property
    def timed(self) -> bool:
        """Whether an end carries a time of day (a dated event rather than a span of days)."""
        return isinstance(self.start, dt.datetime) or isinstance(self.end, dt.datetime)

    def contains(self, day: dt.date) -> bool:
        """Whether the range overlaps ``day`` (for day bounds: start <= day < end)."""
        lo, hi = _moment(day), _moment(day + dt.timedelta(days=1))
        return (self.start is None or _moment(self.start) < hi) and (
            self.end is None or _moment(self.end) > lo
        )

    def contains_moment(self, when: dt.datetime) -> bool:
        """Whether the UTC instant ``when`` is inside the range (start inclusive, end exclusive)."""
        return (self.start is None or when >= _moment(self.start)) and (
            self.end is None or when < _moment(self.end)
        )

    def bounds(self) -> tuple[dt.datetime | None, dt.datetime | None]:
        """Both ends as UTC instants (a day's bound is its midnight)."""
        return (
            None if self.start is None else _moment(self.start),
            None if self.end is None else _moment(self.end),
        )

    def __str__(self) -> str:
        return f"{_text(self.start)} → {_text(self.end)}"


def _moment(value: dt.date) -> dt.datetime:
    """A day or a moment as a UTC instant (a day is its midnight; a naive time is UTC)."""
    if isinstance(value, dt.datetime):
        return value if value.tzinfo is not None else value.replace(tzinfo=dt.UTC)
    return dt.datetime(value.year, value.month, value.day, tzinfo=dt.UTC)


def _text(value: dt.date | None) -> str:
    if value is None:
        return "…"
    if isinstance(value, dt.datetime):
        return _moment(value).astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%MZ")
    return value.isoformat()


@dataclass(frozen=True)
class Prefixes(Frozen):
    """A list of IP networks (IPv4 and IPv6), matched against packed addresses."""

    networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()
    _spans: tuple[tuple[int, int, int], ...] = field(init=False, repr=False, compare=False)
    """Each network as (packed address length, first, last address as an integer): a lookup
    is integer comparisons, not an ``ipaddress`` object per packet (the engine asks per flow)."""

    def __post_init__(self) -> None:
        spans = tuple(
            (4 if net.version == 4 else 16, int(net.network_address), int(net.broadcast_address))
            for net in self.networks
        )
        object.__setattr__(self, "_spans", spans)

    def __bool__(self) -> bool:
        return bool(self.networks)

    def contains(self, addr: bytes) -> bool:
        if not self.networks:
            return False
        size = len(addr)
        if size not in (4, 16):
            ipaddress.ip_address(addr)  # raises ValueError, as it always did
        value = int.from_bytes(addr, "big")
        return any(n == size and lo <= value <= hi for n, lo, hi in self._spans)

    def __str__(self) -> str:
        return ", ".join(str(n) for n in self.networks)


class Context:
    """Where values come from, for error messages and relative list paths."""

    def __init__(
        self, source: str, base_dir: str | None, lists: dict[tuple[Any, str], Any] | None = None
    ) -> None:
        self.source = source
        self.base_dir = base_dir
        self.lists: dict[tuple[Any, str], Any] = {} if lists is None else lists
        """List files loaded so far, by loader and real path: a file named by several rules
        (every domain rule given the same million-name list) is read once and shared; the
        sets are never changed after loading."""


def build_params(cls: type[Any], table: dict[str, Any], ctx: Context, prefix: str) -> Any:
    """Validate ``table`` against the dataclass ``cls``; unknown keys are errors."""
    if not isinstance(table, dict):
        raise ConfigError(ctx.source, prefix, f"expected a table, got {_tname(table)}")
    hints = _build.type_hints(cls)
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
    cache_key = (loader, os.path.realpath(path))
    if cache_key in ctx.lists:
        return ctx.lists[cache_key]
    try:
        ctx.lists[cache_key] = loaded = loader(path)
        return loaded
    except ConfigError as exc:
        where = f"{path}: {exc.key}" if exc.key else path  # the list file's line, if known
        raise ConfigError(ctx.source, key, f"{where}: {exc.reason}") from None


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
        return _moment(value)
    if isinstance(value, dt.date):
        return value
    if isinstance(value, str):
        try:
            if "T" in value or " " in value.strip():
                return _moment(dt.datetime.fromisoformat(value.strip()))
            return dt.date.fromisoformat(value)
        except ValueError:
            pass
    raise _bad(ctx, key, "a date YYYY-MM-DD or a UTC moment YYYY-MM-DDTHH:MMZ", value)


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
