"""Who has which function number in the vendor-specific hypervisor range (SMCCC owner 6).

The range is the hypervisor vendor's to manage (Arm DEN0028 §6.2). Under KVM's Call UID,
KVM uses or reserves numbers 0 (FEATURES), 1 (PTP), 2..63 (pKVM), 64 and 65
(DISCOVER_IMPL_VER/_CPUS) and 127 (FEATURES_2), per Linux
Documentation/virt/kvm/arm/hypercalls.rst and include/linux/arm-smccc.h. pvkit gives its own
services numbers from the rest, from the top down, so that the low free numbers stay for
users' prototypes; each assignment is made here, once, and checked against KVM's.
"""

from __future__ import annotations

NUMBERS = 128  # bitmap bits: four 32-bit words of KVM_FUNC_FEATURES
KVM_NUMBERS = frozenset({0, 1, *range(2, 64), 64, 65, 127})
FREE = tuple(n for n in range(NUMBERS) if n not in KVM_NUMBERS)
PVKIT_NUMBERS: dict[str, int] = {
    "async-pf": FREE[-1],  # 126
}


def pvkit_number(service: str) -> int:
    """The vendor function number pvkit assigns to `service` (KeyError if none)."""
    number = PVKIT_NUMBERS[service]
    if number in KVM_NUMBERS or list(PVKIT_NUMBERS.values()).count(number) != 1:
        raise ValueError(f"vendor function {number} of {service!r} is KVM's or given twice")
    return number
