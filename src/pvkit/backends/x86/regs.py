"""x86-64 architectural constants the backend needs (Intel SDM vol. 3 numbering)."""

from __future__ import annotations

CR0_PE = 1 << 0
CR0_ET = 1 << 4
CR0_PG = 1 << 31
MSR_EFER = 0xC000_0080
EFER_LMA = 1 << 10

RFLAGS_RESERVED1 = 1 << 1
RFLAGS_TF = 1 << 8
RFLAGS_IF = 1 << 9
RFLAGS_NT = 1 << 14
RFLAGS_RF = 1 << 16
RFLAGS_VM = 1 << 17

VECTOR_UD = 6
VECTOR_GP = 13
VECTOR_PF = 14
EXCEPTIONS_WITH_ERROR_CODE = frozenset({8, 10, 11, 12, 13, 14, 17, 21})

INSN_INT = 0xCD  # int imm8
INSN_HLT = 0xF4
VMCALL = bytes((0x0F, 0x01, 0xC1))  # Intel
VMMCALL = bytes((0x0F, 0x01, 0xD9))  # AMD

GATE_INTERRUPT = 0xE
GATE_TRAP = 0xF
TSS_IST1 = 0x24  # IST1..IST7 follow, 8 bytes each
DESCRIPTOR_LONG = 1 << 53  # the L bit of a code-segment descriptor
