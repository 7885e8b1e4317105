"""Host profiles: which hypervisor the guest believes it runs on."""

from __future__ import annotations

import uuid
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class HostProfile:
    name: str
    summary: str
    vendor_uid: uuid.UUID | None  # None: no hypervisor at all
    features_name: str = "VENDOR_HYP_FEATURES"
    hypervisor_compatible: tuple[str, ...] = ()  # DT /hypervisor node, if the profile has one
    cpuid_signature: bytes | None = None  # x86: the 12 bytes at the hypervisor CPUID base

    @property
    def has_hypervisor(self) -> bool:
        return self.vendor_uid is not None


KVM = HostProfile(
    name="kvm",
    summary="KVM's vendor UID and features bitmap; guests written for KVM recognise it",
    vendor_uid=uuid.UUID("28b46fb6-2ec5-11e9-a9ca-4b564d003a74"),
    features_name="KVM_FUNC_FEATURES",
    cpuid_signature=b"KVMKVMKVM\0\0\0",
)
# Our own UID (random, fixed forever; its first word is not 0xFFFFFFFF). Trailing bytes
# spell "pvkit\0" so a hex dump is recognisable.
PVKIT = HostProfile(
    name="pvkit",
    summary="pvkit's own vendor UID and a /hypervisor device-tree node",
    vendor_uid=uuid.UUID("9b3c7e52-8d1a-4f6e-b0c4-70766b697400"),
    features_name="PVKIT_FEATURES",
    hypervisor_compatible=("pvkit,hypervisor-0.1", "pvkit,hypervisor"),
    cpuid_signature=b"pvkitpvkitpv",  # same KVM hypercall ABI behind our own name
)
NONE = HostProfile(
    name="none",
    summary="no hypervisor: HVC and SMC are undefined instructions, as on bare metal",
    vendor_uid=None,
)

PROFILES: dict[str, HostProfile] = {p.name: p for p in (KVM, PVKIT, NONE)}
