"""The MMIO device interface engines call into."""

from __future__ import annotations

from typing import Protocol

from pvkit.machine.memory import Region


class MmioDevice(Protocol):
    region: Region

    def read(self, offset: int, size: int) -> int: ...

    def write(self, offset: int, size: int, value: int) -> None: ...
