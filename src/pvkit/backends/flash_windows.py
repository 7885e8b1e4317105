"""Flash banks in one engine: memory while they read as an array, a device otherwise.

A NOR flash bank in read-array mode is memory the vCPU executes in place (firmware at the
reset vector), so it is mapped straight from the bank's buffer, read and execute only.
A write to it is a command: Unicorn reports it as a write to protected memory and drops
the store; the hook passes it to the device, and if the bank has left array mode (status,
query, program) the window is re-mapped at once as MMIO, so that the very next load, even
in the same translation block, reads what the device answers. The way back is lazy: the
device answers array reads through MMIO too, so the window becomes memory again only
when the vCPU fetches an instruction from it (QEMU's pflash does the same dance with its
"ROM device" mode). Another vCPU sees the switch at its next run-loop turn (`refresh`).

Never unmap a window from inside its own MMIO callback: the binding frees the callback
that is running.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol

from unicorn import (  # type: ignore[attr-defined]  # re-exported names
    UC_HOOK_MEM_WRITE_PROT,
    UC_PROT_ALL,
    UC_PROT_EXEC,
    UC_PROT_READ,
    Uc,
)

from pvkit.machine.memory import Region

MmioRead = Callable[[Uc, int, int, Any], int]
MmioWrite = Callable[[Uc, int, int, int, Any], None]


class FlashBank(Protocol):
    region: Region

    @property
    def host_address(self) -> int: ...

    @property
    def in_array_mode(self) -> bool: ...

    def read(self, offset: int, size: int) -> int: ...

    def write(self, offset: int, size: int, value: int) -> None: ...


class FlashWindows:
    def __init__(
        self, uc: Uc, banks: Sequence[FlashBank], mmio_read: MmioRead, mmio_write: MmioWrite
    ):
        self._uc = uc
        self._banks = list(banks)
        self._read = mmio_read
        self._write = mmio_write
        self._as_memory = [False] * len(self._banks)
        for i in range(len(self._banks)):
            self._map_memory(i, replace=False)
            bank = self._banks[i].region
            uc.hook_add(UC_HOOK_MEM_WRITE_PROT, self._on_write, i, bank.base, bank.end - 1)

    def _map_memory(self, i: int, replace: bool = True) -> None:
        bank = self._banks[i]
        r = bank.region
        if replace:
            self._uc.mem_unmap(r.base, r.size)
        self._uc.mem_map_ptr(r.base, r.size, UC_PROT_ALL, bank.host_address)
        self._uc.mem_protect(r.base, r.size, UC_PROT_READ | UC_PROT_EXEC)
        self._as_memory[i] = True

    def _map_device(self, i: int) -> None:
        bank = self._banks[i]
        r = bank.region
        self._uc.mem_unmap(r.base, r.size)
        self._uc.mmio_map(r.base, r.size, self._read, bank, self._write, bank)
        self._as_memory[i] = False

    def _on_write(self, uc: Uc, access: int, address: int, size: int, value: int, i: int) -> bool:
        bank = self._banks[i]
        self._write(uc, address - bank.region.base, size, value, bank)
        if not bank.in_array_mode:
            self._map_device(i)
        return True  # the store into the read-only window is dropped

    def refresh(self) -> None:
        """At a run-loop turn: a bank another vCPU took out of array mode reads through
        the device here too."""
        for i, bank in enumerate(self._banks):
            if self._as_memory[i] and not bank.in_array_mode:
                self._map_device(i)

    def fetch_back(self, pc: int) -> bool:
        """The vCPU fetched from a window mapped as a device: if its bank reads as an
        array again, map it as memory and say so (the caller resumes at `pc`)."""
        for i, bank in enumerate(self._banks):
            if bank.region.contains(pc) and not self._as_memory[i] and bank.in_array_mode:
                self._map_memory(i)
                return True
        return False
