"""One x86-64 vCPU's architectural state, by name, for snapshots.

General-purpose registers, RIP and RFLAGS, the control registers and EFER, the
descriptor-table registers (GDTR, IDTR, LDTR, TR with their hidden base, limit and
attributes), the segment selectors with the FS/GS bases, the system-call and PAT MSRs,
and the x87/SSE registers (Intel SDM vol. 3A, 2.5 "Control Registers", 3.4.3 "Segment
Registers", 2.2.1 "Extended Feature Enable Register"). pvkit's own MSRs (kvmclock, steal
time, async PF) belong to their services and save themselves; the local APIC is the
board's. A vCPU is held in 64-bit mode only: the engine loads the hidden parts of CS, DS,
ES and SS only from a descriptor, so a vCPU still in its real-mode or 32-bit boot code
cannot be held (`holdable` says why).
"""

from __future__ import annotations

from typing import Any

from unicorn import x86_const as r

from pvkit.backends.x86 import regs as x
from pvkit.snapshot.state import Fields, State

STATE_SECTION = "cpu"
STATE_VERSION = 1

_GPRS = {
    name: getattr(r, f"UC_X86_REG_{name.upper()}")
    for name in (
        "rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rbp", "rsp",
        "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15", "rip", "rflags",
        "cr2", "cr8", "fs_base", "gs_base", "mxcsr", "fpcw", "fpsw", "fptag",
    )
}  # fmt: skip
_SELECTORS = {name: getattr(r, f"UC_X86_REG_{name.upper()}") for name in
              ("cs", "ds", "es", "ss", "fs", "gs")}  # fmt: skip
_TABLES = {name: getattr(r, f"UC_X86_REG_{name.upper()}") for name in
           ("gdtr", "idtr", "ldtr", "tr")}  # fmt: skip
_XMM = [getattr(r, f"UC_X86_REG_XMM{i}") for i in range(16)]
_FP = [getattr(r, f"UC_X86_REG_FP{i}") for i in range(8)]
MSRS = {
    "STAR": 0xC000_0081,
    "LSTAR": 0xC000_0082,
    "CSTAR": 0xC000_0083,
    "SFMASK": 0xC000_0084,
    "KERNEL_GS_BASE": 0xC000_0102,
    "TSC_AUX": 0xC000_0103,
    "SYSENTER_CS": 0x174,
    "SYSENTER_ESP": 0x175,
    "SYSENTER_EIP": 0x176,
    "PAT": 0x277,
}
CR0_PG = x.CR0_PG


def holdable(uc: object) -> str | None:
    """None if the vCPU's state can be saved, else why not (one phrase)."""
    read = uc.reg_read  # type: ignore[attr-defined]
    if not read(r.UC_X86_REG_CR0) & CR0_PG or not read(r.UC_X86_REG_MSR, x.MSR_EFER) & x.EFER_LMA:
        return "it is not in 64-bit mode yet (still in its boot code)"
    return None


def save_cpu(uc: object) -> State:
    read = uc.reg_read  # type: ignore[attr-defined]
    return {
        **{name: read(reg) for name, reg in _GPRS.items()},
        **{name: read(reg) for name, reg in _SELECTORS.items()},
        **{name: list(read(reg)) for name, reg in _TABLES.items()},
        "cr0": read(r.UC_X86_REG_CR0),
        "cr3": read(r.UC_X86_REG_CR3),
        "cr4": read(r.UC_X86_REG_CR4),
        "efer": read(r.UC_X86_REG_MSR, x.MSR_EFER),
        "msrs": {name: read(r.UC_X86_REG_MSR, index) for name, index in MSRS.items()},
        "xmm": [read(reg) for reg in _XMM],
        "fp": [list(read(reg)) for reg in _FP],
    }


def parse_cpu(state: Fields) -> dict[str, Any]:
    """The saved state, checked (SnapshotError names what is wrong), ready for load_cpu."""
    msrs = state.sub("msrs")
    saved: dict[str, Any] = {
        "gprs": {name: state.integer(name) for name in _GPRS},
        "selectors": {name: state.integer(name, hi=0xFFFF) for name in _SELECTORS},
        "tables": {name: state.integers(name, 4) for name in _TABLES},
        "msrs": {name: msrs.integer(name) for name in MSRS},
        "efer": state.integer("efer"),
        "cr0": state.integer("cr0"),
        "cr3": state.integer("cr3"),
        "cr4": state.integer("cr4"),
        "xmm": state.integers("xmm", 16, (1 << 128) - 1),
        "fp": _fp(state),
    }
    if not saved["efer"] & x.EFER_LMA or not saved["cr0"] & CR0_PG:
        raise state.bad("cr0", "a 64-bit mode value (CR0.PG with EFER.LMA)")
    return saved


def load_cpu(uc: object, saved: dict[str, Any]) -> None:
    """Load parsed 64-bit state into a freshly built engine (it starts in long mode)."""
    write = uc.reg_write  # type: ignore[attr-defined]
    write(r.UC_X86_REG_CR4, saved["cr4"])
    write(r.UC_X86_REG_CR3, saved["cr3"])
    write(r.UC_X86_REG_MSR, (x.MSR_EFER, saved["efer"]))
    write(r.UC_X86_REG_CR0, saved["cr0"])
    tables, selectors = saved["tables"], saved["selectors"]
    gprs, msrs = saved["gprs"], saved["msrs"]
    for name, reg in _TABLES.items():
        write(reg, tuple(tables[name]))
    for name, reg in _SELECTORS.items():
        write(reg, selectors[name])
    for name, index in MSRS.items():
        write(r.UC_X86_REG_MSR, (index, msrs[name]))
    for name, reg in _GPRS.items():
        write(reg, gprs[name])
    for reg, value in zip(_XMM, saved["xmm"], strict=True):
        write(reg, value)
    for reg, pair in zip(_FP, saved["fp"], strict=True):
        write(reg, tuple(pair))


def _fp(state: Fields) -> list[list[int]]:
    value = state.raw("fp")
    if not isinstance(value, list) or len(value) != 8:
        raise state.bad("fp", "8 x87 registers (mantissa, exponent)")
    return [Fields(state.section, {"fp": p}).integers("fp", 2) for p in value]
