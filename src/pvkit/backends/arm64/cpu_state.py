"""One arm64 vCPU's architectural state, by name, for snapshots.

What a fresh engine does not recreate by itself: the general-purpose and SIMD/FP
registers, PSTATE and both stack pointers, and the EL1 (and EL0-visible) system registers
a kernel programs (Arm ARM DDI 0487, D13 "AArch64 System Register Descriptions"). The EL2
and EL3 configuration is the board's, set again when the engine is built; the generic
timer and the GIC CPU interface are the board's devices and save themselves. SVE's Z, P
and FFR registers are held whole, at the largest vector length the engine has (2048 bits:
ZCR_EL1 says how much of it the guest uses), through registers the engine patch adds;
version 1 sections have only the V registers, their low 128 bits. Not held: the exclusive
monitor, which a restore clears, as an exception return may (D1.19: a guest's LDXR/STXR
retries).
"""

from __future__ import annotations

from typing import Any, cast

from unicorn import Uc  # type: ignore[attr-defined]
from unicorn import arm64_const as r

from pvkit.backends import uc_controls as ucc
from pvkit.snapshot.state import Fields, State

STATE_SECTION = "cpu"
STATE_VERSION = 2  # 2: SVE's Z, P and FFR registers whole

_X = [getattr(r, f"UC_ARM64_REG_X{i}") for i in range(31)]
_V = [getattr(r, f"UC_ARM64_REG_V{i}") for i in range(32)]
_NAMED = {
    "pc": r.UC_ARM64_REG_PC,
    "sp_el0": r.UC_ARM64_REG_SP_EL0,
    "sp_el1": r.UC_ARM64_REG_SP_EL1,
    "fpcr": r.UC_ARM64_REG_FPCR,
    "fpsr": r.UC_ARM64_REG_FPSR,
}
# (op0, op1, CRn, CRm, op2) of each EL1/EL0 system register a guest may have programmed.
SYSREGS: dict[str, tuple[int, int, int, int, int]] = {
    "SCTLR_EL1": (3, 0, 1, 0, 0),
    "ACTLR_EL1": (3, 0, 1, 0, 1),
    "CPACR_EL1": (3, 0, 1, 0, 2),
    "ZCR_EL1": (3, 0, 1, 2, 0),
    "TTBR0_EL1": (3, 0, 2, 0, 0),
    "TTBR1_EL1": (3, 0, 2, 0, 1),
    "TCR_EL1": (3, 0, 2, 0, 2),
    "APIAKEYLO_EL1": (3, 0, 2, 1, 0),
    "APIAKEYHI_EL1": (3, 0, 2, 1, 1),
    "APIBKEYLO_EL1": (3, 0, 2, 1, 2),
    "APIBKEYHI_EL1": (3, 0, 2, 1, 3),
    "APDAKEYLO_EL1": (3, 0, 2, 2, 0),
    "APDAKEYHI_EL1": (3, 0, 2, 2, 1),
    "APDBKEYLO_EL1": (3, 0, 2, 2, 2),
    "APDBKEYHI_EL1": (3, 0, 2, 2, 3),
    "APGAKEYLO_EL1": (3, 0, 2, 3, 0),
    "APGAKEYHI_EL1": (3, 0, 2, 3, 1),
    "SPSR_EL1": (3, 0, 4, 0, 0),
    "ELR_EL1": (3, 0, 4, 0, 1),
    "AFSR0_EL1": (3, 0, 5, 1, 0),
    "AFSR1_EL1": (3, 0, 5, 1, 1),
    "ESR_EL1": (3, 0, 5, 2, 0),
    "FAR_EL1": (3, 0, 6, 0, 0),
    "PAR_EL1": (3, 0, 7, 4, 0),
    "MAIR_EL1": (3, 0, 10, 2, 0),
    "AMAIR_EL1": (3, 0, 10, 3, 0),
    "VBAR_EL1": (3, 0, 12, 0, 0),
    "CONTEXTIDR_EL1": (3, 0, 13, 0, 1),
    "TPIDR_EL1": (3, 0, 13, 0, 4),
    "CNTKCTL_EL1": (3, 0, 14, 1, 0),
    "CSSELR_EL1": (3, 2, 0, 0, 0),
    "TPIDR_EL0": (3, 3, 13, 0, 2),
    "TPIDRRO_EL0": (3, 3, 13, 0, 3),
    "MDSCR_EL1": (2, 0, 0, 2, 2),
}
_U128 = (1 << 128) - 1
_Z = [(ucc.UC_ARM64_REG_Z0 + i, ucc.SVE_Z_BYTES) for i in range(32)]
_P = [(ucc.UC_ARM64_REG_P0 + i, ucc.SVE_P_BYTES) for i in range(16)]
_P.append((ucc.UC_ARM64_REG_FFR, ucc.SVE_P_BYTES))


def _cp(key: tuple[int, int, int, int, int]) -> tuple[int, int, int, int, int]:
    op0, op1, crn, crm, op2 = key
    return crn, crm, op0, op1, op2  # Unicorn's CP_REG order


def save_cpu(uc: object) -> State:
    """`uc` is the vCPU's Unicorn engine, stopped (between slices)."""
    read = uc.reg_read  # type: ignore[attr-defined]
    engine = cast(Uc, uc)
    return {
        "x": [read(reg) for reg in _X],
        "v": [read(reg) for reg in _V],
        "z": [ucc.read_wide(engine, reg, n) for reg, n in _Z],
        "p": [ucc.read_wide(engine, reg, n) for reg, n in _P],  # P0-P15, then FFR
        "pstate": read(r.UC_ARM64_REG_PSTATE),
        "sp": read(r.UC_ARM64_REG_SP),
        **{name: read(reg) for name, reg in _NAMED.items()},
        "sysregs": {name: read(r.UC_ARM64_REG_CP_REG, _cp(k)) for name, k in SYSREGS.items()},
    }


def parse_cpu(state: Fields) -> dict[str, Any]:
    """The saved state, checked (SnapshotError names what is wrong), ready for load_cpu."""
    sysregs = state.sub("sysregs")
    pstate = state.integer("pstate", hi=0xFFFF_FFFF)
    if (pstate >> 2) & 3 > 1 or pstate & 0x10:
        raise state.bad("pstate", "EL0 or EL1 in AArch64")
    return {
        "x": state.integers("x", 31),
        "v": state.integers("v", 32, _U128),
        "z": state.integers("z", 32, (1 << 8 * ucc.SVE_Z_BYTES) - 1) if state.has("z") else None,
        "p": state.integers("p", 17, (1 << 8 * ucc.SVE_P_BYTES) - 1) if state.has("z") else None,
        "sysregs": {name: sysregs.integer(name) for name in SYSREGS},
        "pstate": pstate,
        "sp": state.integer("sp"),
        **{name: state.integer(name) for name in _NAMED},
    }


def load_cpu(uc: object, saved: dict[str, Any]) -> None:
    """Load parsed state into a freshly built engine (its EL2/EL3 set-up is the board's)."""
    write = uc.reg_write  # type: ignore[attr-defined]
    for name, value in saved["sysregs"].items():
        write(r.UC_ARM64_REG_CP_REG, (*_cp(SYSREGS[name]), value))
    if saved["z"] is not None:  # first: the V registers are their low bits
        for (reg, n), value in zip(_Z + _P, saved["z"] + saved["p"], strict=True):
            ucc.write_wide(cast(Uc, uc), reg, n, value)
    for reg, value in zip(_V, saved["v"], strict=True):
        write(reg, value)
    write(r.UC_ARM64_REG_PSTATE, saved["pstate"])  # first: it banks the stack pointers
    for name, reg in _NAMED.items():
        write(reg, saved[name])
    write(r.UC_ARM64_REG_SP, saved["sp"])
    for reg, value in zip(_X, saved["x"], strict=True):
        write(reg, value)
