"""Types of the compiled module gfwlab.rules._names (src/gfwlab/rules/_names.c says what)."""

from collections.abc import Iterator

class NameSet:
    """A set of names read from a list file's text: ASCII, one name a line."""

    def __new__(cls, text: bytes, longest: int) -> NameSet: ...
    def __contains__(self, name: object, /) -> bool: ...
    def __len__(self) -> int: ...
    def __iter__(self) -> Iterator[str]: ...
    @property
    def lines(self) -> int:
        """The names counted as lines, repeats included."""
