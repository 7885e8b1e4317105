"""What a component with state implements so that a snapshot can hold it.

Each component saves a JSON-able map of its own state and restores from one, next to its
own code; the snapshot calls it by `STATE_SECTION` and checks `STATE_VERSION`. A restore
reads the map through `Fields`, which turns a missing or ill-typed value (a crafted file
that passed its checksum) into one SnapshotError naming the section and the field.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar, Protocol, runtime_checkable

from pvkit.snapshot.errors import SnapshotError

State = dict[str, object]


@runtime_checkable
class Stateful(Protocol):
    STATE_SECTION: ClassVar[str]
    STATE_VERSION: ClassVar[int]

    def save_state(self) -> State: ...

    def restore_state(self, state: Fields) -> None: ...


class Fields:
    """Typed, checked access to one section's saved map."""

    def __init__(self, section: str, state: Mapping[str, object]):
        self.section = section
        self._state = state

    def bad(self, key: str, what: str) -> SnapshotError:
        return SnapshotError(f"section {self.section!r} is damaged: {key!r} is not {what}")

    def has(self, key: str) -> bool:
        """For a field a newer version added: an older file lacks it."""
        return key in self._state

    def raw(self, key: str) -> object:
        if key not in self._state:
            raise SnapshotError(f"section {self.section!r} lacks {key!r}")
        return self._state[key]

    def integer(self, key: str, lo: int = 0, hi: int = (1 << 64) - 1) -> int:
        value = self.raw(key)
        if type(value) is not int or not lo <= value <= hi:
            raise self.bad(key, f"an integer in {lo}..{hi}")
        return value

    def opt_int(self, key: str, lo: int = 0, hi: int = (1 << 64) - 1) -> int | None:
        return None if self.raw(key) is None else self.integer(key, lo, hi)

    def flag(self, key: str) -> bool:
        value = self.raw(key)
        if type(value) is not bool:
            raise self.bad(key, "true or false")
        return value

    def text(self, key: str) -> str:
        value = self.raw(key)
        if not isinstance(value, str):
            raise self.bad(key, "a string")
        return value

    def integers(
        self, key: str, length: int | None = None, hi: int = (1 << 64) - 1, lo: int = 0
    ) -> list[int]:
        value = self.raw(key)
        if (
            not isinstance(value, list)
            or (length is not None and len(value) != length)
            or not all(type(v) is int and lo <= v <= hi for v in value)
        ):
            size = f"{length} " if length is not None else ""
            raise self.bad(key, f"a list of {size}integers in {lo}..{hi}")
        return list(value)

    def flags(self, key: str, length: int) -> list[bool]:
        value = self.raw(key)
        if not isinstance(value, list) or len(value) != length:
            raise self.bad(key, f"a list of {length} booleans")
        if not all(type(v) is bool for v in value):
            raise self.bad(key, f"a list of {length} booleans")
        return list(value)

    def int_map(self, key: str, hi: int = (1 << 64) - 1) -> dict[int, int]:
        """A map saved with decimal string keys (JSON's keys are strings)."""
        value = self.raw(key)
        if not isinstance(value, dict):
            raise self.bad(key, "a map")
        out = {}
        for k, v in value.items():
            if not (isinstance(k, str) and k.isdigit() and type(v) is int and 0 <= v <= hi):
                raise self.bad(key, f"a map of numbers to integers in 0..{hi}")
            out[int(k)] = v
        return out

    def sub(self, key: str) -> Fields:
        value = self.raw(key)
        if not isinstance(value, dict):
            raise self.bad(key, "a map")
        return Fields(f"{self.section}.{key}", value)

    def subs(self, key: str, length: int | None = None) -> list[Fields]:
        value = self.raw(key)
        if not isinstance(value, list) or (length is not None and len(value) != length):
            raise self.bad(key, "a list of maps" if length is None else f"{length} maps")
        if not all(isinstance(v, dict) for v in value):
            raise self.bad(key, "a list of maps")
        return [Fields(f"{self.section}.{key}[{i}]", v) for i, v in enumerate(value)]


def int_keys(mapping: Mapping[int, int]) -> dict[str, int]:
    """A map of numbers as JSON keeps it (string keys), sorted for a stable file."""
    return {str(k): v for k, v in sorted(mapping.items())}
