"""Well-known SMCCC function IDs pvkit does not (yet) serve, so `pvkit decode` can name them.

Values from the specifications and the Linux headers that carry them: Arm DEN0028 §7 (SMCCC
architecture calls; SOC_ID in DEN0028C §7.4), DEN0022 §5 and include/uapi/linux/psci.h (PSCI),
DEN0098 (TRNG), DEN0057 (PV time), include/linux/arm-smccc.h and
Documentation/virt/kvm/arm/hypercalls.rst (KVM's vendor calls, pKVM),
arch/arm64/include/uapi/asm/kvm.h (KVM's PSCI 0.1 IDs), arch/arm64/hyperv/hv_core.c (Hyper-V).
Served IDs are named by their services.
"""

from __future__ import annotations

KNOWN_IDS: dict[int, str] = {
    0x8000_0002: "SMCCC_ARCH_SOC_ID",
    0xC000_0002: "SMCCC_ARCH_SOC_ID64",
    0x8000_0003: "SMCCC_ARCH_FEATURE_AVAILABILITY",
    0x8400_0005: "PSCI MIGRATE",
    0xC400_0005: "PSCI MIGRATE64",
    0x8400_0007: "PSCI MIGRATE_INFO_UP_CPU",
    0xC400_0007: "PSCI MIGRATE_INFO_UP_CPU64",
    0x8400_000B: "PSCI CPU_FREEZE",
    0x8400_000C: "PSCI CPU_DEFAULT_SUSPEND",
    0x8400_000E: "PSCI SYSTEM_SUSPEND",
    0xC400_000E: "PSCI SYSTEM_SUSPEND64",
    0x8400_0015: "PSCI SYSTEM_OFF2",
    0x8400_0050: "TRNG_VERSION",
    0x8400_0051: "TRNG_FEATURES",
    0x8400_0052: "TRNG_GET_UUID",
    0x8400_0053: "TRNG_RND32",
    0xC400_0053: "TRNG_RND64",
    0xC500_0020: "PV_TIME_FEATURES",
    0xC500_0021: "PV_TIME_ST",
    0x8600_0001: "KVM_FUNC_PTP",
    0xC600_0002: "KVM_HYP_MEMINFO (pKVM)",
    0xC600_0003: "KVM_MEM_SHARE (pKVM)",
    0xC600_0004: "KVM_MEM_UNSHARE (pKVM)",
    0xC600_0007: "KVM_MMIO_GUARD (pKVM)",
    0xC600_0040: "KVM_DISCOVER_IMPL_VER",
    0xC600_0041: "KVM_DISCOVER_IMPL_CPUS",
    0x4600_0001: "Hyper-V hypercall (arm64)",
    0x95C1_BA5E: "KVM PSCI 0.1 CPU_SUSPEND",
    0x95C1_BA5F: "KVM PSCI 0.1 CPU_OFF",
    0x95C1_BA60: "KVM PSCI 0.1 CPU_ON",
    0x95C1_BA61: "KVM PSCI 0.1 MIGRATE",
}
