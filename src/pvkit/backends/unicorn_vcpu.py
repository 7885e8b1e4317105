"""What the arm64 and x86 Unicorn engines share: kicks, slices, MMIO, and how faults end a run."""

from __future__ import annotations

import threading
from typing import ClassVar

from unicorn import (  # type: ignore[attr-defined]  # re-exported names
    UC_HOOK_MEM_FETCH_PROT,
    UC_HOOK_MEM_READ_PROT,
    UC_HOOK_MEM_WRITE_PROT,
    Uc,
    UcError,
)

from pvkit.backends import uc_controls
from pvkit.backends.base import ExitKind, VcpuExit
from pvkit.backends.budget import InsnBudget
from pvkit.backends.faults import unmapped_fault
from pvkit.devices.base import MmioDevice
from pvkit.machine.memory import GuestMemory
from pvkit.machine.residency import HostResidency


class UnicornVcpu:
    """Base of the engines; each names its program counter and sets the fields below."""

    PC_REG: ClassVar[int]
    PC_NAME: ClassVar[str]  # "PC" or "RIP", in fault messages

    vcpu: int
    _uc: Uc
    _memory: GuestMemory
    _budget: InsnBudget | None
    _kicked: threading.Event
    _exit: VcpuExit | None
    _unmapped: tuple[int, int, int] | None
    _residency: HostResidency | None = None
    _absent: int | None = None  # the absent page an access just touched
    # A debugger's stop (backends/debug_port.py): the flag, and the instruction hook
    # whose `hold` also ends the run (the budget, or the debugger's own).
    _debug_stop = False
    _debug_hold: InsnBudget | None = None

    def kick(self) -> None:
        self._kicked.set()
        uc = self._uc  # the vCPU thread may close the engine meanwhile; this keeps it alive
        if uc is not None:
            uc.emu_stop()

    def debug_stop(self) -> None:
        hold = self._debug_hold
        if hold is not None:
            hold.hold = 1  # the count hook stops first, leaving the count exact
        self._debug_stop = True
        uc = self._uc
        if uc is not None:
            uc.emu_stop()

    def pc(self) -> int:
        """The program counter (read it only while the engine is stopped)."""
        return int(self._uc.reg_read(self.PC_REG))

    def _debug_pending(self) -> bool:
        hold = self._debug_hold
        return self._debug_stop or (hold is not None and hold.hold != 0)

    def begin_slice(self, budget: int) -> None:
        if self._budget is not None:
            self._budget.executed = 0
            self._budget.budget = budget

    def executed(self) -> int:
        return self._budget.executed if self._budget is not None else 0

    def _follow_dirty_log(self, uc: Uc, memory: GuestMemory) -> None:
        """This engine logs the pages it writes whenever a migration copies RAM
        (machine/dirty_log.py); called by the vCPU's thread, before the engine runs."""
        log = memory.dirty

        def arm(address: int | None) -> None:
            uc_controls.set_dirty_pages(uc, address, log.base, log.pages)

        log.join(id(self), arm)

    def _leave_dirty_log(self) -> None:
        self._memory.dirty.leave(id(self))

    def _watch_residency(self, uc: Uc, memory: GuestMemory, residency: HostResidency) -> None:
        """Accesses to RAM pages the host does not hold stop the engine before the
        instruction (the engine checks only those pages: UC_CTL_ABSENT_PAGES)."""
        self._residency = residency
        uc_controls.set_absent_pages(uc, residency.map, residency.base)
        uc.hook_add(
            UC_HOOK_MEM_READ_PROT | UC_HOOK_MEM_WRITE_PROT | UC_HOOK_MEM_FETCH_PROT,
            self._on_absent_access,
            begin=memory.base,
            end=memory.base + memory.size - 1,
        )

    def _on_absent_access(
        self, uc: Uc, access: int, address: int, size: int, value: int, data: object
    ) -> bool:
        """Stop before the instruction (False), unless the page arrived since the engine
        looked (True: the access goes on)."""
        residency = self._residency
        if residency is None or not residency.is_absent(address):
            return True
        self._absent = address
        return False

    # -- hooks -------------------------------------------------------------------------
    def _on_unmapped(
        self, uc: Uc, access: int, address: int, size: int, value: int, _user: object
    ) -> bool:
        self._unmapped = (access, address, size)
        return False

    def _mmio_read(self, uc: Uc, offset: int, size: int, dev: MmioDevice) -> int:
        try:
            return dev.read(offset, size)
        except Exception as exc:
            self._stop_with_fault(uc, f"device error reading {dev.region.name}+{offset:#x}: {exc}")
            return 0

    def _mmio_write(self, uc: Uc, offset: int, size: int, value: int, dev: MmioDevice) -> None:
        try:
            dev.write(offset, size, value)
        except Exception as exc:
            self._stop_with_fault(uc, f"device error writing {dev.region.name}+{offset:#x}: {exc}")

    # -- faults ------------------------------------------------------------------------
    def _stop_with_fault(self, uc: Uc, message: str, pc: int | None = None) -> None:
        if pc is None:
            pc = uc.reg_read(self.PC_REG)
        self._exit = VcpuExit(ExitKind.FAULT, f"vCPU {self.vcpu}: {message}", pc=pc)
        uc.emu_stop()

    def _fault_from(self, err: UcError) -> VcpuExit:
        pc = self._uc.reg_read(self.PC_REG)
        unmapped, self._unmapped = self._unmapped, None
        return unmapped_fault(self.vcpu, unmapped, err, pc, self.PC_NAME)
