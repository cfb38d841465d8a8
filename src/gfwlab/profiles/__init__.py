"""Profiles: which mechanisms run, with which parameters, lists and dates.

The loader's names are imported on first use: the mechanisms import this package's schema, and
the loader imports the mechanisms.
"""

from typing import TYPE_CHECKING, Any

from gfwlab.profiles.domains import DomainSet, KeywordSet
from gfwlab.profiles.schema import DateRange, Prefixes

if TYPE_CHECKING:
    from gfwlab.profiles.loader import EngineParams, Profile, load_profile, parse_date

__all__ = [
    "DateRange",
    "DomainSet",
    "EngineParams",
    "KeywordSet",
    "Prefixes",
    "Profile",
    "load_profile",
    "parse_date",
]


def __getattr__(name: str) -> Any:
    if name in ("EngineParams", "Profile", "load_profile", "parse_date"):
        from gfwlab.profiles import loader  # noqa: PLC0415

        return getattr(loader, name)
    raise AttributeError(name)
