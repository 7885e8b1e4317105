"""x86-64 as a debugger sees it: gdb's core, SSE and segment-base registers, the control
registers, and guest-virtual addresses through the guest's page tables (paging.py).

Only what pvkit's x86 guests run is translated: paging off (flat) and 4-level long-mode
paging; 32-bit paging, PAE without long mode and 5-level paging answer "unmapped".
"""

from __future__ import annotations

from collections.abc import Sequence

from unicorn import Uc  # type: ignore[attr-defined]  # re-exported name
from unicorn import x86_const as r

from pvkit.backends.debug_port import DebugRegister
from pvkit.backends.x86 import regs as x
from pvkit.backends.x86.paging import TranslationFault, translate
from pvkit.machine.memory import GuestMemory

CORE = "org.gnu.gdb.i386.core"
SSE = "org.gnu.gdb.i386.sse"
SEGMENTS = "org.gnu.gdb.i386.segments"
SYS = "org.pvkit.i386.sys"
CR4_PAE = 1 << 5
CR4_LA57 = 1 << 12

_GPRS = ("rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rbp", "rsp", *(f"r{i}" for i in range(8, 16)))
_FPU = ("fctrl", "fstat", "ftag", "fiseg", "fioff", "foseg", "fooff", "fop")
_FPU_REGS = ("FPCW", "FPSW", "FPTAG", "FCS", "FIP", "FDS", "FDP", "FOP")
_SELECTORS = ("cs", "ss", "ds", "es", "fs", "gs")


def _regs(
    names: Sequence[str],
    bits: int,
    feature: str,
    type_: str = "int",
    group: str | None = None,
    ids: Sequence[str] | None = None,
) -> list[tuple[DebugRegister, object]]:
    return [
        (DebugRegister(n, bits, feature, type_, group), getattr(r, f"UC_X86_REG_{u.upper()}"))
        for n, u in zip(names, ids or names, strict=True)
    ]


_SOURCES: list[tuple[DebugRegister, object]] = [
    *_regs(_GPRS, 64, CORE),
    (DebugRegister("rip", 64, CORE, "code_ptr"), r.UC_X86_REG_RIP),
    (DebugRegister("eflags", 32, CORE, "i386_eflags"), r.UC_X86_REG_EFLAGS),
    *_regs(_SELECTORS, 32, CORE),
    *_regs(
        [f"st{i}" for i in range(8)], 80, CORE, "i387_ext", "float", [f"FP{i}" for i in range(8)]
    ),
    *_regs(_FPU, 32, CORE, group="float", ids=_FPU_REGS),
    *_regs([f"xmm{i}" for i in range(16)], 128, SSE, "vec128", "vector"),
    (DebugRegister("mxcsr", 32, SSE, "i386_mxcsr", "vector"), r.UC_X86_REG_MXCSR),
    *_regs(["fs_base", "gs_base"], 64, SEGMENTS),
    *_regs(["cr0", "cr2", "cr3", "cr4", "cr8"], 64, SYS, group="system"),
    (DebugRegister("efer", 64, SYS, group="system"), "efer"),
]
# Selectors: in 64-bit mode the engine would load the selector without its descriptor.
_READ_ONLY = frozenset(_SELECTORS)


class X86Registers:
    arch = "i386:x86-64"
    registers: Sequence[DebugRegister] = tuple(reg for reg, _ in _SOURCES)

    def read(self, uc: Uc, number: int) -> int:
        reg, source = _SOURCES[number]
        if source == "efer":
            return uc.reg_read(r.UC_X86_REG_MSR, x.MSR_EFER)  # type: ignore[no-any-return]
        value = uc.reg_read(source)
        if reg.bits == 80:  # (mantissa, exponent): the 80-bit extended format, little-endian
            mantissa, exponent = value
            return mantissa | exponent << 64  # type: ignore[no-any-return]
        return value  # type: ignore[no-any-return]

    def write(self, uc: Uc, number: int, value: int) -> bool:
        reg, source = _SOURCES[number]
        if reg.name in _READ_ONLY:
            return False
        if source == "efer":
            uc.reg_write(r.UC_X86_REG_MSR, (x.MSR_EFER, value))
        elif reg.bits == 80:
            uc.reg_write(source, (value & ((1 << 64) - 1), value >> 64))
        else:
            uc.reg_write(source, value)
        return True

    def translate(self, uc: Uc, memory: GuestMemory, address: int) -> int | None:
        paging = bool(uc.reg_read(r.UC_X86_REG_CR0) & x.CR0_PG)
        if paging:
            long_mode = uc.reg_read(r.UC_X86_REG_MSR, x.MSR_EFER) & x.EFER_LMA
            cr4 = uc.reg_read(r.UC_X86_REG_CR4)
            if not long_mode or not cr4 & CR4_PAE or cr4 & CR4_LA57:
                return None
        elif address >> 32:
            return None
        try:
            return translate(memory, paging, uc.reg_read(r.UC_X86_REG_CR3), address)
        except TranslationFault:
            return None
