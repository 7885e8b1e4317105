"""What a debugger does to one Unicorn vCPU engine while the VM stands (machine/control.py):
registers by number, memory by guest-virtual address, breakpoints, watchpoints, one step.

Nothing costs anything while unset. A breakpoint is a code hook on its own address only
(deleted, and the code translated with it dropped, when cleared); an engine that already
counts instructions (deterministic time, x86 PV MSRs) keeps breakpoints in its count
hook instead (budget.py), so no hook is added and its count stays exact. A step and a
watchpoint need a look between every two instructions: the count hook's `hold` and
`step`, on an engine without one through a count hook of the debugger's own that lives
as long as they do. All of this runs on the debugger's thread while the vCPU is parked,
but for the hooks, which run on the vCPU's thread inside the engine.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Protocol

from unicorn import (  # type: ignore[attr-defined]  # re-exported names
    UC_HOOK_CODE,
    UC_HOOK_MEM_READ,
    UC_HOOK_MEM_WRITE,
    Uc,
    UcError,
)

from pvkit.backends.budget import NOT_STOPPED, InsnBudget, make_budget
from pvkit.backends.unicorn_vcpu import UnicornVcpu
from pvkit.machine.memory import GuestMemory

PAGE = 4096
_TOP = (1 << 64) - 1
MAX_ACCESS = 64  # the widest single guest access a hook reports (DC ZVA, 512-bit stores)


@dataclass(frozen=True, slots=True)
class DebugRegister:
    """One register as gdb numbers it: the order of the table is gdb's numbering."""

    name: str
    bits: int
    feature: str  # the target-description feature it belongs to
    type: str = "int"  # a gdb type name, or one the feature defines
    group: str | None = None


class ArchRegisters(Protocol):
    """An architecture's registers and MMU as the debugger sees them (arm64, x86)."""

    arch: str  # gdb's architecture name
    registers: Sequence[DebugRegister]

    def read(self, uc: Uc, number: int) -> int: ...

    def write(self, uc: Uc, number: int, value: int) -> bool: ...

    def translate(self, uc: Uc, memory: GuestMemory, address: int) -> int | None:
        """The guest-physical address of a guest-virtual one, None if unmapped."""


class WatchKind(Enum):
    WRITE = 2  # gdb's Z2
    READ = 3  # Z3
    ACCESS = 4  # Z4


@dataclass(frozen=True, slots=True)
class Watchpoint:
    address: int
    length: int
    kind: WatchKind


@dataclass(frozen=True, slots=True)
class Hit:
    """What stopped the vCPU: "breakpoint" (at `address`), "watch" (the data `address`
    a watchpoint of `watch` kind saw) or "step" (one instruction ran)."""

    what: str
    address: int = 0
    watch: WatchKind | None = None


class UnicornDebugPort:
    def __init__(self, engine: UnicornVcpu, arch: ArchRegisters):
        self.vcpu = engine.vcpu
        self._engine = engine
        self._uc: Uc = engine._uc
        self._arch = arch
        self._memory = engine._memory
        self._budget: InsnBudget | None = engine._budget  # the engine's own count hook
        self._ticker: InsnBudget | None = None  # the debugger's, while it needs one
        engine._debug_hold = self._budget
        self._bp_hooks: dict[int, int] = {}
        self._watch_hooks: list[int] = []
        self._watches: tuple[Watchpoint, ...] = ()
        self._hit: Hit | None = None  # set by a hook on the vCPU's thread
        self._stepping = False
        self._step_from = -1

    # -- registers ----------------------------------------------------------------------
    @property
    def registers(self) -> Sequence[DebugRegister]:
        return self._arch.registers

    def read_register(self, number: int) -> bytes | None:
        regs = self._arch.registers
        if not 0 <= number < len(regs):
            return None
        try:
            value = self._arch.read(self._uc, number)
        except (UcError, ValueError, OverflowError):
            value = 0  # one this engine cannot read shows as 0
        bits = regs[number].bits
        return (value & ((1 << bits) - 1)).to_bytes(bits // 8, "little")

    def write_register(self, number: int, data: bytes) -> bool:
        regs = self._arch.registers
        if not 0 <= number < len(regs) or len(data) != regs[number].bits // 8:
            return False
        try:
            return self._arch.write(self._uc, number, int.from_bytes(data, "little"))
        except (UcError, ValueError, OverflowError):
            return False

    def pc(self) -> int:
        return self._uc.reg_read(self._engine.PC_REG)  # type: ignore[no-any-return]

    # -- memory -------------------------------------------------------------------------
    def physical(self, address: int) -> int | None:
        try:
            return self._arch.translate(self._uc, self._memory, address)
        except (UcError, ValueError):
            return None

    def read_memory(self, address: int, size: int) -> bytes | None:
        """Guest-virtual `address`, through this vCPU's MMU; None if any byte is unmapped
        or not RAM (device registers are not read: a read could change them)."""
        out = bytearray()
        for at, length in _pages(address, size):
            phys = self.physical(at)
            if phys is None or not self._memory.contains(phys, length):
                return None
            out += self._memory.read(phys, length)
        return bytes(out)

    def write_memory(self, address: int, data: bytes) -> bool:
        """All or nothing: every page is checked before the first byte is written."""
        targets = []
        offset = 0
        for at, length in _pages(address, len(data)):
            phys = self.physical(at)
            if phys is None or not self._memory.contains(phys, length):
                return False
            targets.append((phys, data[offset : offset + length]))
            offset += length
        for phys, chunk in targets:
            self._memory.write(phys, chunk)
        return True

    def forget_code(self, address: int, size: int) -> None:
        """Drop code translated from `address` (guest-virtual) after the memory changed."""
        end = min(address + max(1, size), _TOP)
        if address < end:
            self._uc.ctl_remove_cache(address, end)

    # -- breakpoints, watchpoints, steps ------------------------------------------------
    def set_breakpoints(self, addresses: Iterable[int]) -> None:
        wanted = set(addresses)
        if self._budget is not None:
            self._budget.set_breakpoints(sorted(wanted))
            return
        uc = self._uc
        for address in set(self._bp_hooks) - wanted:
            uc.hook_del(self._bp_hooks.pop(address))
            self.forget_code(address, 1)  # translate it again without the hook: no cost
        for address in wanted - set(self._bp_hooks):
            self._bp_hooks[address] = uc.hook_add(
                UC_HOOK_CODE, self._on_breakpoint, None, address, address
            )
            self.forget_code(address, 1)  # the code translated before had no hook there

    def set_watchpoints(self, watches: Sequence[Watchpoint]) -> None:
        watches = tuple(watches)
        if watches == self._watches:
            return
        uc = self._uc
        for handle in self._watch_hooks:
            uc.hook_del(handle)
        self._watch_hooks = []
        self._watches = watches
        for w in watches:
            kinds = {
                WatchKind.WRITE: UC_HOOK_MEM_WRITE,
                WatchKind.READ: UC_HOOK_MEM_READ,
                WatchKind.ACCESS: UC_HOOK_MEM_READ | UC_HOOK_MEM_WRITE,
            }[w.kind]
            begin = max(0, w.address - MAX_ACCESS + 1)  # an access may start before it
            self._watch_hooks.append(
                uc.hook_add(kinds, self._on_access, w, begin, w.address + w.length - 1)
            )
        self._need_ticker(bool(watches) or self._stepping)
        # Loads and stores are translated differently while memory hooks exist.
        uc.ctl_flush_tb()  # type: ignore[attr-defined]

    def arm_step(self) -> None:
        """The next run executes one instruction and stops before the one after it."""
        self._stepping = True
        self._step_from = self.pc()
        hook = self._need_ticker(True)
        hook.step = 1

    @property
    def stepping(self) -> bool:
        """A step is armed and its instruction has not run yet."""
        counting = self._engine._debug_hold
        return self._stepping and counting is not None and counting.step == 1

    def take_hit(self) -> Hit | None:
        """After an engine run: what stopped it for the debugger, if anything did."""
        hit, self._hit = self._hit, None
        counting = self._engine._debug_hold
        if counting is not None:
            if hit is None and counting.bp_hit != NOT_STOPPED:
                hit = Hit("breakpoint", counting.bp_hit)
            counting.bp_hit = NOT_STOPPED
            if hit is None and self._stepping and counting.step == 2:
                hit = Hit("step")  # its instruction ran, however the run ended
        return hit

    def release(self) -> None:
        """Before the vCPU runs again: no hold, no step left (unless armed again)."""
        counting = self._engine._debug_hold
        if counting is not None:
            counting.hold = 0
            counting.step = 0
            counting.bp_hit = NOT_STOPPED
        self._stepping = False
        self._hit = None
        self._engine._debug_stop = False
        self._need_ticker(bool(self._watches))

    def close(self) -> None:
        """The engine goes (its hooks go with it); the debugger's count hook first."""
        if self._ticker is not None:
            self._ticker.remove()
            self._ticker = None
        self._engine._debug_hold = self._budget

    # -- hooks (the vCPU's thread, inside the engine) -------------------------------------
    def _on_breakpoint(self, uc: Uc, address: int, size: int, _data: object) -> None:
        if self._stepping and address == self._step_from:
            return  # the instruction a step starts at runs (the step stops after it)
        self._hit = Hit("breakpoint", address)
        self._engine.debug_stop()  # before the instruction: a code hook stops at once

    def _on_access(
        self, uc: Uc, access: int, address: int, size: int, value: int, w: Watchpoint
    ) -> None:
        if address + size <= w.address or address >= w.address + w.length:
            return  # the hook's range starts early so that wide accesses are seen
        if self._hit is None:
            self._hit = Hit("watch", address if address > w.address else w.address, w.kind)
        counting = self._engine._debug_hold
        if counting is not None:
            counting.hold = 1  # the access completes; stop before the next instruction

    # -- helpers ------------------------------------------------------------------------
    def _need_ticker(self, needed: bool) -> InsnBudget:
        """The count hook `hold` and `step` live in: the engine's own, or the debugger's
        (added while a step or a watchpoint needs one, then removed: no cost after)."""
        if self._budget is not None:
            return self._budget
        if needed and self._ticker is None:
            self._ticker = make_budget(self._uc)
            self._engine._debug_hold = self._ticker
            # Code translated before has no look between its instructions.
            self._uc.ctl_flush_tb()  # type: ignore[attr-defined]
        elif not needed and self._ticker is not None:
            self._ticker.remove()
            self._ticker = None
            self._engine._debug_hold = None
            self._uc.ctl_flush_tb()  # type: ignore[attr-defined]
        return self._ticker  # type: ignore[return-value]  # None only when not needed


def _pages(address: int, size: int) -> list[tuple[int, int]]:
    """`size` bytes from `address` cut at page boundaries (each page maps on its own)."""
    out = []
    while size > 0:
        length = min(size, PAGE - address % PAGE)
        out.append((address, length))
        address += length
        size -= length
    return out
