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

VECTORS_SIZE = 0x800  # VBAR_EL1's table: 4 groups of 4 entries of 128 bytes

WFI = 0xD503207F

# System registers through Unicorn's CP_REG interface: (crn, crm, op0, op1, op2).
SCR_EL3 = (1, 1, 3, 6, 0)
SCR_NS = 1 << 0
SCR_SMD = 1 << 7  # SMC undefined: no firmware behind it
SCR_HCE = 1 << 8
SCR_RW = 1 << 10  # EL2 (and so EL1) is AArch64
SCR_APK = 1 << 16  # pointer-authentication key registers not trapped to EL3
SCR_API = 1 << 17  # pointer-authentication instructions not trapped to EL3
HCR_EL2 = (1, 1, 3, 4, 0)
HCR_RW = 1 << 31  # EL1 is AArch64
HCR_APK = 1 << 40  # ...nor to EL2
HCR_API = 1 << 41
CPTR_EL3 = (1, 1, 3, 6, 2)
CPTR_EZ = 1 << 8  # SVE not trapped to EL3
ZCR_EL3 = (1, 2, 3, 6, 0)
ZCR_EL2 = (1, 2, 3, 4, 0)
ZCR_LEN_MAX = 0xF  # the lower ELs may use every vector length the CPU has
PSTATE_EL_SHIFT = 2
PSTATE_I = 1 << 7  # IRQs masked
VMPIDR_EL2 = (0, 0, 3, 4, 5)
MPIDR_RES1 = 1 << 31
