"""The CPUID table a vCPU sees: a documented, fixed answer for every leaf.

Hypervisor leaves follow Linux Documentation/virt/kvm/x86/cpuid.rst: `base` answers the
highest hypervisor leaf and the profile's 12-byte signature, `base + 1` the
KVM_CPUID_FEATURES bits of the services this VM serves. Leaves `leaf()` does not list
answer zeros, as AMD CPUs do for unknown leaves (Intel would repeat the highest basic leaf;
a zero answer is the honest one).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from pvkit.hypercall.call import Conduit

HYPERVISOR_LEAVES = range(0x4000_0000, 0x4001_0000)
DEFAULT_BASE = 0x4000_0000

Regs = tuple[int, int, int, int]  # EAX, EBX, ECX, EDX

# Leaf 1 EDX: FPU, TSC, MSR, PAE, CX8, APIC, PGE, CMOV, PAT, MMX, FXSR, SSE, SSE2.
_LEAF1_EDX = sum(1 << b for b in (0, 4, 5, 6, 8, 9, 13, 15, 16, 23, 24, 25, 26))
_LEAF1_ECX_SSE3 = 1 << 0
LEAF1_ECX_HYPERVISOR = 1 << 31
_LEAF1_EDX_HTT = 1 << 28
# Leaf 0x80000001 EDX: SYSCALL, NX, LM (long mode).
_EXT1_EDX = (1 << 11) | (1 << 20) | (1 << 29)
_ADDRESS_SIZES = (48 << 8) | 40  # 48-bit virtual, 40-bit physical


@dataclass(frozen=True, slots=True)
class CpuVendor:
    name: str
    signature: bytes  # leaf 0 EBX, EDX, ECX
    native: Conduit  # the hypercall instruction this vendor's CPUs execute
    family_model_stepping: int  # leaf 1 EAX; a model name, not a promise of its features


INTEL = CpuVendor("intel", b"GenuineIntel", Conduit.VMCALL, 0x0005_0654)  # family 6 model 0x55
AMD = CpuVendor("amd", b"AuthenticAMD", Conduit.VMMCALL, 0x00A0_0F11)  # family 0x19 model 1
VENDORS = {v.name: v for v in (INTEL, AMD)}


def words(text: bytes) -> tuple[int, int, int]:
    """12 bytes as three little-endian register words, in order."""
    a, b, c = struct.unpack("<III", text)
    return a, b, c


@dataclass(frozen=True, slots=True)
class CpuidTable:
    vendor: CpuVendor
    vcpu_count: int
    signature: bytes | None  # None: no hypervisor leaves and no hypervisor bit
    base: int = DEFAULT_BASE
    features: int = 0  # KVM_CPUID_FEATURES EAX
    hints: int = 0  # KVM_CPUID_FEATURES EDX

    def __post_init__(self) -> None:
        if self.base not in HYPERVISOR_LEAVES or self.base & 0xFF:
            raise ValueError(
                f"CPUID base {self.base:#x} must be a multiple of 0x100 in 0x40000000..0x4000ff00"
            )
        if self.signature is not None and len(self.signature) != 12:
            raise ValueError("a CPUID hypervisor signature is exactly 12 bytes")

    def leaf(self, apic_id: int, eax: int, ecx: int = 0) -> Regs:
        b, d, c = words(self.vendor.signature)
        if eax == 0:
            return 1, b, c, d
        if eax == 1:
            ebx = (apic_id & 0xFF) << 24 | (min(self.vcpu_count, 255) << 16) | (8 << 8)
            ecx_out = _LEAF1_ECX_SSE3 | (LEAF1_ECX_HYPERVISOR if self.signature else 0)
            edx = _LEAF1_EDX | (_LEAF1_EDX_HTT if self.vcpu_count > 1 else 0)
            return self.vendor.family_model_stepping, ebx, ecx_out, edx
        if eax == 0x8000_0000:
            return (0x8000_0008, b, c, d) if self.vendor is AMD else (0x8000_0008, 0, 0, 0)
        if eax == 0x8000_0001:
            return 0, 0, 1, _EXT1_EDX  # ECX bit 0: LAHF/SAHF in 64-bit mode
        if eax == 0x8000_0008:
            return _ADDRESS_SIZES, 0, 0, 0
        if self.signature is not None and eax == self.base:
            s1, s2, s3 = words(self.signature)
            return self.base + 1, s1, s2, s3
        if self.signature is not None and eax == self.base + 1:
            return self.features, 0, 0, self.hints
        return 0, 0, 0, 0
