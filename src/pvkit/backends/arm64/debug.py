"""AArch64 as a debugger sees it: gdb's core and fpu registers, system registers worth
having, and guest-virtual addresses translated by walking the guest's page tables.

The walk is pvkit's own (Unicorn 2.1 reads memory by physical address only, and an AT
instruction would have to run inside the guest): stage 1 of the EL1&0 regime, as the
VMSAv8-64 describes it (Arm ARM D8), with 4, 16 and 64 KiB granules, TTBR0/TTBR1 chosen
by the top address bit, top-byte-ignore, block and page descriptors, 48-bit output
addresses. Permissions are not checked: a debugger may look at what the guest may not.
"""

from __future__ import annotations

from collections.abc import Sequence

from unicorn import Uc  # type: ignore[attr-defined]  # re-exported name
from unicorn import arm64_const as r

from pvkit.backends.arm64 import regs as a
from pvkit.backends.debug_port import DebugRegister
from pvkit.machine.memory import GuestMemory

CORE = "org.gnu.gdb.aarch64.core"
FPU = "org.gnu.gdb.aarch64.fpu"
SYSREGS = "org.pvkit.aarch64.sysregs"

# (crn, crm, op0, op1, op2), as reg_read's CP_REG takes them
_SCTLR_EL1 = (1, 0, 3, 0, 0)
_TCR_EL1 = (2, 0, 3, 0, 2)
_SPSR_EL1 = (4, 0, 3, 0, 0)
_CONTEXTIDR_EL1 = (13, 0, 3, 0, 1)
_VPIDR_EL2 = (0, 0, 3, 4, 0)  # what MIDR_EL1 reads at EL1 below an EL2

SCTLR_M = 1 << 0  # the stage 1 MMU is on
_OA = 0x0000_FFFF_FFFF_F000  # output address bits of a descriptor (48-bit)
_WORD = (1 << 64) - 1


# Where each register comes from: a Unicorn register, a CP_REG tuple, or a rule.
_X = [(DebugRegister(f"x{i}", 64, CORE), getattr(r, f"UC_ARM64_REG_X{i}")) for i in range(31)]
_V = [
    (DebugRegister(f"v{i}", 128, FPU, "aarch64v", "vector"), getattr(r, f"UC_ARM64_REG_V{i}"))
    for i in range(32)
]
_SOURCES: list[tuple[DebugRegister, object]] = [
    *_X,
    (DebugRegister("sp", 64, CORE, "data_ptr"), r.UC_ARM64_REG_SP),
    (DebugRegister("pc", 64, CORE, "code_ptr"), r.UC_ARM64_REG_PC),
    (DebugRegister("cpsr", 32, CORE), r.UC_ARM64_REG_PSTATE),
    *_V,
    (DebugRegister("fpsr", 32, FPU, group="float"), r.UC_ARM64_REG_FPSR),
    (DebugRegister("fpcr", 32, FPU, group="float"), r.UC_ARM64_REG_FPCR),
    (DebugRegister("SCTLR_EL1", 64, SYSREGS, group="system"), _SCTLR_EL1),
    (DebugRegister("TCR_EL1", 64, SYSREGS, group="system"), _TCR_EL1),
    (DebugRegister("TTBR0_EL1", 64, SYSREGS, group="system"), r.UC_ARM64_REG_TTBR0_EL1),
    (DebugRegister("TTBR1_EL1", 64, SYSREGS, group="system"), r.UC_ARM64_REG_TTBR1_EL1),
    (DebugRegister("MAIR_EL1", 64, SYSREGS, group="system"), r.UC_ARM64_REG_MAIR_EL1),
    (DebugRegister("VBAR_EL1", 64, SYSREGS, "code_ptr", "system"), r.UC_ARM64_REG_VBAR_EL1),
    (DebugRegister("ESR_EL1", 64, SYSREGS, group="system"), r.UC_ARM64_REG_ESR_EL1),
    (DebugRegister("FAR_EL1", 64, SYSREGS, "data_ptr", "system"), r.UC_ARM64_REG_FAR_EL1),
    (DebugRegister("ELR_EL1", 64, SYSREGS, "code_ptr", "system"), r.UC_ARM64_REG_ELR_EL1),
    (DebugRegister("SPSR_EL1", 64, SYSREGS, group="system"), _SPSR_EL1),
    (DebugRegister("SP_EL0", 64, SYSREGS, "data_ptr", "system"), r.UC_ARM64_REG_SP_EL0),
    (DebugRegister("SP_EL1", 64, SYSREGS, "data_ptr", "system"), r.UC_ARM64_REG_SP_EL1),
    (DebugRegister("TPIDR_EL0", 64, SYSREGS, group="system"), r.UC_ARM64_REG_TPIDR_EL0),
    (DebugRegister("TPIDR_EL1", 64, SYSREGS, group="system"), r.UC_ARM64_REG_TPIDR_EL1),
    (DebugRegister("CPACR_EL1", 64, SYSREGS, group="system"), r.UC_ARM64_REG_CPACR_EL1),
    (DebugRegister("PAR_EL1", 64, SYSREGS, group="system"), r.UC_ARM64_REG_PAR_EL1),
    (DebugRegister("CONTEXTIDR_EL1", 64, SYSREGS, group="system"), _CONTEXTIDR_EL1),
    (DebugRegister("CurrentEL", 64, SYSREGS, group="system"), "CurrentEL"),
    (DebugRegister("MPIDR_EL1", 64, SYSREGS, group="system"), "MPIDR_EL1"),
    (DebugRegister("MIDR_EL1", 64, SYSREGS, group="system"), _VPIDR_EL2),
]
_READ_ONLY = frozenset({"CurrentEL", "MPIDR_EL1", "MIDR_EL1"})


class Arm64Registers:
    arch = "aarch64"
    registers: Sequence[DebugRegister] = tuple(reg for reg, _ in _SOURCES)

    def __init__(self) -> None:
        self._sources = [source for _, source in _SOURCES]

    def read(self, uc: Uc, number: int) -> int:
        source = self._sources[number]
        if source == "CurrentEL":
            return uc.reg_read(r.UC_ARM64_REG_PSTATE) & (3 << a.PSTATE_EL_SHIFT)  # type: ignore[no-any-return]
        if source == "MPIDR_EL1":
            # What the guest reads at EL1 below an EL2: VMPIDR_EL2 (engine.py sets it).
            return _cp(uc, (0, 0, 3, 4, 5))
        if isinstance(source, tuple):
            return _cp(uc, source)
        return uc.reg_read(source)  # type: ignore[no-any-return]

    def write(self, uc: Uc, number: int, value: int) -> bool:
        reg, source = _SOURCES[number]
        if reg.name in _READ_ONLY:
            return False
        if isinstance(source, tuple):
            uc.reg_write(r.UC_ARM64_REG_CP_REG, (*source, value))
        else:
            uc.reg_write(source, value)
        return True

    def translate(self, uc: Uc, memory: GuestMemory, address: int) -> int | None:
        sctlr = _cp(uc, _SCTLR_EL1)
        if not sctlr & SCTLR_M:
            return address  # MMU off: flat
        tcr = _cp(uc, _TCR_EL1)
        upper = bool(address >> 55 & 1)
        if upper:
            tsz, tbi, epd = tcr >> 16 & 0x3F, tcr >> 38 & 1, tcr >> 23 & 1
            grain = {1: 14, 2: 12, 3: 16}.get(tcr >> 30 & 3)
            ttbr = uc.reg_read(r.UC_ARM64_REG_TTBR1_EL1)
        else:
            tsz, tbi, epd = tcr & 0x3F, tcr >> 37 & 1, tcr >> 7 & 1
            grain = {0: 12, 1: 16, 2: 14}.get(tcr >> 14 & 3)
            ttbr = uc.reg_read(r.UC_ARM64_REG_TTBR0_EL1)
        if epd or grain is None or not 16 <= tsz <= 48:
            return None
        bits = 64 - tsz
        high = _WORD >> bits << bits  # must be all ones (upper range) or all zeros
        if tbi:
            high &= (1 << 56) - 1  # top byte ignored
        if address & high != (high if upper else 0):
            return None  # in neither range: a translation fault
        return walk(memory, ttbr, address & ((1 << bits) - 1), bits, grain)


def walk(memory: GuestMemory, ttbr: int, va: int, bits: int, grain: int) -> int | None:
    """Translate `va` (its low `bits` bits) through the tables from `ttbr`."""
    stride = grain - 3
    levels = -(-(bits - grain) // stride)  # ceiling
    level = 4 - levels
    shift = grain + stride * (3 - level)
    table = ttbr & 0x0000_FFFF_FFFF_FFFE & ~((1 << max(3, bits - shift + 3)) - 1)
    while True:
        index = va >> shift & ((1 << min(stride, bits - shift)) - 1)
        slot = table + index * 8
        if not memory.contains(slot, 8):
            return None
        desc = memory.read_u64(slot)
        if not desc & 1:
            return None
        size = 1 << shift
        if level == 3 or not desc & 2:  # a page, or a block
            page_ok = level == 3 and desc & 2
            block_ok = level == 2 or (level == 1 and grain == 12)  # 48-bit output
            if not (page_ok or (level < 3 and block_ok)):
                return None
            return (desc & _OA & ~(size - 1)) | (va & (size - 1))
        table = desc & _OA & ~((1 << grain) - 1)
        level += 1
        shift -= stride


def _cp(uc: Uc, key: tuple[int, int, int, int, int]) -> int:
    value: int = uc.reg_read(r.UC_ARM64_REG_CP_REG, key)
    return value
