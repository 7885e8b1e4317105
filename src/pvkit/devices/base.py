"""The MMIO device interface engines call into."""

from __future__ import annotations

from typing import Protocol

from pvkit.machine.memory import Region


class MmioDevice(Protocol):
    region: Region

    def read(self, offset: int, size: int) -> int: ...

    def write(self, offset: int, size: int, value: int) -> None: ...


class PortDevice(Protocol):
    """An x86 I/O-port device: `ports` is the range of port numbers it decodes."""

    ports: range

    def read_port(self, port: int, size: int) -> int: ...

    def write_port(self, port: int, size: int, value: int) -> None: ...
