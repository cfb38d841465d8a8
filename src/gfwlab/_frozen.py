"""The base of the compiled modules' frozen dataclasses, so that they pickle.

Compiled (:mod:`gfwlab._build`), a class unpickles by setting each attribute, which a frozen
dataclass refuses; events, flows and parsed messages cross processes on a Dask cluster
(:mod:`gfwlab.offline.scale`). Pickled through ``__reduce__`` they are made again by their
constructor instead, interpreted and compiled alike.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from mypy_extensions import mypyc_attr


def _rebuild(cls: type[Any], state: dict[str, Any]) -> Any:
    return cls(**state)


@mypyc_attr(allow_interpreted_subclasses=True)
class Frozen:
    """A frozen dataclass that pickles as its constructor call (its init fields)."""

    def __reduce__(self) -> tuple[Any, ...]:
        fields = dataclasses.fields(self)  # type: ignore[arg-type]  # on dataclasses only
        return (_rebuild, (type(self), {f.name: getattr(self, f.name) for f in fields if f.init}))
