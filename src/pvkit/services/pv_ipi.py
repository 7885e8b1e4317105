"""KVM_HC_SEND_IPI: send one fixed-vector IPI to many vCPUs with a single exit.

a0/a1 are a bitmap of destination APIC IDs starting at a2 (bit 0 of a0 is APIC ID a2);
a3 is the ICR value. Each bitmap word holds 64 IDs for a 64-bit caller and 32 for a
32-bit one. The answer is how many vCPUs got the interrupt. Needs KVM_FEATURE_PV_SEND_IPI
(bit 11). pvkit has no NMI, so only the fixed delivery mode is accepted (-KVM_EINVAL
otherwise: pvkit's choice where KVM would also take NMIs).
"""

from __future__ import annotations

from pvkit.abi.x86_kvm import KvmError, KvmHypercall, kvm_error
from pvkit.hypercall.call import Call
from pvkit.hypercall.namespace import Abi, Function, IdRange
from pvkit.services.base import Service

_ICR_MODE = 0x700
_ICR_VECTOR = 0xFF


class PvIpiService(Service):
    STATELESS = True  # its answers depend on the VM's configuration only
    name = "pv-send-ipi"
    abis = frozenset({Abi.KVM_X86})
    cpuid_feature_bit = 11

    def claims(self, abi: Abi = Abi.KVM_X86) -> list[IdRange]:
        return [IdRange(KvmHypercall.SEND_IPI, KvmHypercall.SEND_IPI)]

    def functions(self, abi: Abi = Abi.KVM_X86) -> list[Function]:
        return [Function(KvmHypercall.SEND_IPI, "KVM_HC_SEND_IPI", self._send)]

    def _send(self, call: Call) -> None:
        low, high, first, icr = call.arg(1), call.arg(2), call.arg(3), call.arg(4)
        if icr & _ICR_MODE:
            call.answer(kvm_error(KvmError.EINVAL))
            return
        width = 64 if call.wide else 32
        bitmap = (low & ((1 << width) - 1)) | (high & ((1 << width) - 1)) << width
        delivered = 0
        p = self.platform
        for bit in range(2 * width):
            if bitmap >> bit & 1:
                target = p.vcpu_for_apic_id(first + bit)
                if target is not None and p.post_interrupt(target, icr & _ICR_VECTOR):
                    delivered += 1
        call.answer(delivered)
