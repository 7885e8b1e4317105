"""AArch64 architectural constants the Unicorn backend needs (ARM ARM values)."""

from __future__ import annotations

# Unicorn exception numbers (QEMU's EXCP_*) as seen by UC_HOOK_INTR.
EXCP_UDEF = 1
EXCP_SWI = 2
EXCP_PREFETCH_ABORT = 3
EXCP_DATA_ABORT = 4
EXCP_BKPT = 7
EXCP_HVC = 11
EXCP_SMC = 13

# Exceptions the patched engine takes architecturally (through QEMU's own entry code):
# everything synchronous except HVC and SMC, which stay with the hypercall trap.
DELIVERED_EXCEPTIONS = (EXCP_UDEF, EXCP_SWI, EXCP_PREFETCH_ABORT, EXCP_DATA_ABORT, EXCP_BKPT)

# ESR_ELx exception classes.
EC_UNKNOWN = 0x00
EC_SVC64 = 0x15
ESR_IL = 1 << 25

PSTATE_EL1H_MASKED = 0x3C5  # EL1 using SP_EL1, DAIF all masked: the exception-entry state
PSTATE_SP_BIT = 1
PSTATE_EL_SHIFT = 2

# Vector offsets from VBAR_EL1 for synchronous exceptions.
VECTOR_CURRENT_EL_SP0 = 0x000
VECTOR_CURRENT_EL_SPX = 0x200
VECTOR_LOWER_EL_A64 = 0x400

WFI = 0xD503207F
HVC_MASK, HVC_BITS = 0xFFE0001F, 0xD4000002
SMC_MASK, SMC_BITS = 0xFFE0001F, 0xD4000003

# System registers through Unicorn's CP_REG interface: (crn, crm, op0, op1, op2).
SCR_EL3 = (1, 1, 3, 6, 0)
SCR_NS = 1 << 0
SCR_SMD = 1 << 7  # SMC undefined: no firmware behind it
SCR_HCE = 1 << 8
SCR_RW = 1 << 10  # EL2 (and so EL1) is AArch64
HCR_EL2 = (1, 1, 3, 4, 0)
HCR_RW = 1 << 31  # EL1 is AArch64
VMPIDR_EL2 = (0, 0, 3, 4, 5)
SPSR_EL1 = (4, 0, 3, 0, 0)
MPIDR_RES1 = 1 << 31


def immediate16(word: int) -> int:
    """imm16 of an HVC/SMC/SVC encoding (bits 20:5)."""
    return (word >> 5) & 0xFFFF


# Generic-timer registers as (op0, op1, CRn, CRm, op2), the key MRS hooks compare.
CNTFRQ_EL0 = (3, 3, 14, 0, 0)
CNTPCT_EL0 = (3, 3, 14, 0, 1)
CNTVCT_EL0 = (3, 3, 14, 0, 2)


def sysreg_key(cp_reg: object) -> tuple[int, int, int, int, int]:
    """The (op0, op1, CRn, CRm, op2) of the uc_arm64_cp_reg an MRS hook receives."""
    return (
        getattr(cp_reg, "op0"),  # noqa: B009  # a ctypes structure without type hints
        getattr(cp_reg, "op1"),  # noqa: B009
        getattr(cp_reg, "crn"),  # noqa: B009
        getattr(cp_reg, "crm"),  # noqa: B009
        getattr(cp_reg, "op2"),  # noqa: B009
    )
