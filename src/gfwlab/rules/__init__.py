"""Plain-data rule types: dates, prefixes, domain and keyword sets, and the parsed profile."""

from gfwlab.rules.domains import DomainSet, KeywordSet
from gfwlab.rules.profile import CommonParams, EngineParams, Profile, ResidualKey, TcbParams
from gfwlab.rules.schema import DateRange, Prefixes

__all__ = [
    "CommonParams",
    "DateRange",
    "DomainSet",
    "EngineParams",
    "KeywordSet",
    "Prefixes",
    "Profile",
    "ResidualKey",
    "TcbParams",
]
