"""Profiles: which mechanisms run, with which parameters, lists and dates.

The loader resolves a profile's mechanism names against the registry (:mod:`gfwlab.mechanisms`)
and validates their parameters into the plain-data types of :mod:`gfwlab.rules`.
"""

from gfwlab.profiles.loader import (
    build_censor,
    builtin_path,
    load_profile,
    load_profiles,
    parse_date,
)
from gfwlab.rules import DateRange, DomainSet, EngineParams, KeywordSet, Prefixes, Profile

__all__ = [
    "DateRange",
    "DomainSet",
    "EngineParams",
    "KeywordSet",
    "Prefixes",
    "Profile",
    "build_censor",
    "builtin_path",
    "load_profile",
    "load_profiles",
    "parse_date",
]
