"""KVM's PTP call: the host's wall clock paired with the guest's counter at one instant.

Vendor-specific hypervisor function 1 (KVM_FUNC_PTP, 0x86000001, an SMC32/HVC32 fast call),
as Linux Documentation/virt/kvm/arm/ptp_kvm.rst describes it. W1 picks the counter:
0 the virtual counter, 1 the physical counter; any other value answers NOT_SUPPORTED (-1)
with W1..W3 zero. On success, W0:W1 are the high and low 32 bits of the host's real time
(CLOCK_REALTIME, ns since the Unix epoch) and W2:W3 those of the chosen counter, sampled
together. Linux's ptp_kvm turns the pair into the "KVM virtual PTP" clock that chrony and
friends read as a reference clock.

pvkit's counters tick at 1 GHz (CNTFRQ_EL0), read the vCPU's hypervisor clock
(`Platform.now_ns`), and the virtual count equals the physical count (CNTVOFF is 0), so
both selectors return the same value. With deterministic time the wall clock is the
board's fixed epoch plus that clock, so runs repeat exactly (`Platform.wall_clock_ns`).

The call sits in the vendor range, whose meaning depends on the vendor UID: a guest calls it
only after the Call UID and the features bitmap (bit 1, which `vendor-hyp` sets from what
is served) say so. It is served under every profile with a vendor UID: under `kvm` Linux
finds it; under `pvkit` it is pvkit's own vendor function 1 with the same meaning, as the
x86 `pvkit` profile offers KVM's hypercall ABI under pvkit's name.
"""

from __future__ import annotations

from enum import IntEnum

from pvkit.abi.smccc import MASK32, SmcccReturn
from pvkit.hypercall.call import Call
from pvkit.hypercall.namespace import Abi, Function, IdRange
from pvkit.services.base import Service

KVM_FUNC_PTP = 0x8600_0001
FUNCTION_NUMBER = 1  # its bit in the vendor features bitmap (ARM_SMCCC_KVM_FUNC_PTP)


class PtpCounter(IntEnum):
    VIRTUAL = 0  # KVM_PTP_VIRT_COUNTER
    PHYSICAL = 1  # KVM_PTP_PHYS_COUNTER


def split(value: int) -> tuple[int, int]:
    """A 64-bit value as (high 32 bits, low 32 bits)."""
    return (value >> 32) & MASK32, value & MASK32


class KvmPtpService(Service):
    STATELESS = True  # its answers depend on the VM's configuration only
    name = "ptp-kvm"
    firmware_gate = ("vendor-hyp-bmap", 1)  # KVM_REG_ARM_VENDOR_HYP_BIT_PTP

    def claims(self, abi: Abi = Abi.SMCCC) -> list[IdRange]:
        return [IdRange(KVM_FUNC_PTP, KVM_FUNC_PTP)]

    def functions(self, abi: Abi = Abi.SMCCC) -> list[Function]:
        # Discovered through the vendor bitmap, not ARCH_FEATURES (which answers -1, as KVM);
        # never memoised: every call samples the clocks.
        return [Function(KVM_FUNC_PTP, "KVM_FUNC_PTP", self._ptp, SmcccReturn.NOT_SUPPORTED)]

    def _ptp(self, call: Call) -> None:
        if call.arg(1) & MASK32 not in (PtpCounter.VIRTUAL, PtpCounter.PHYSICAL):
            call.answer(SmcccReturn.NOT_SUPPORTED)
            return
        wall_ns, counter = self.platform.wall_clock_ns(call.vcpu)
        call.answer(*split(wall_ns), *split(counter))
