"""KVM_HC_KICK_CPU: wake a vCPU halted in HLT (the host half of PV spinlocks).

A waiter halts; the lock holder kicks it by APIC ID when it releases the lock. A kick
that arrives before the HLT is kept, so the HLT returns at once and no wake-up is lost.
Needs KVM_FEATURE_PV_UNHALT (bit 7). KVM answers 0 whatever the target. A contended lock
kicks at every release, so the function is served directly (no `Call`, no dispatcher).
"""

from __future__ import annotations

from pvkit.abi.x86_kvm import KvmHypercall
from pvkit.hypercall.namespace import Abi, Function, IdRange
from pvkit.services.base import Service


class PvUnhaltService(Service):
    STATELESS = True  # its answers depend on the VM's configuration only
    name = "pv-unhalt"
    abis = frozenset({Abi.KVM_X86})
    cpuid_feature_bit = 7

    def claims(self, abi: Abi = Abi.KVM_X86) -> list[IdRange]:
        return [IdRange(KvmHypercall.KICK_CPU, KvmHypercall.KICK_CPU)]

    def functions(self, abi: Abi = Abi.KVM_X86) -> list[Function]:
        return [Function.served_directly(KvmHypercall.KICK_CPU, "KVM_HC_KICK_CPU", self._kick)]

    def _kick(self, vcpu: int, _flags: int, apic_id: int, _a2: int) -> tuple[int, ...]:
        # a0 holds flags (reserved), a1 the target's APIC ID.
        target = self.platform.vcpu_for_apic_id(apic_id)
        if target is not None:
            self.platform.wake(target)
        return (0,)
