"""KVM_HC_SCHED_YIELD: "the vCPU I am waiting for was preempted; run something else".

a0 is the APIC ID of the preempted vCPU. The host yields the calling vCPU's thread so the
target's thread can run. Needs KVM_FEATURE_PV_SCHED_YIELD (bit 13); answers 0. Served
directly (no `Call`, no dispatcher), as a spinning waiter may call it often.
"""

from __future__ import annotations

import os

from pvkit.abi.x86_kvm import KvmHypercall
from pvkit.hypercall.namespace import Abi, Function, IdRange
from pvkit.services.base import Service


class SchedYieldService(Service):
    STATELESS = True  # its answers depend on the VM's configuration only
    name = "pv-sched-yield"
    abis = frozenset({Abi.KVM_X86})
    cpuid_feature_bit = 13

    def claims(self, abi: Abi = Abi.KVM_X86) -> list[IdRange]:
        return [IdRange(KvmHypercall.SCHED_YIELD, KvmHypercall.SCHED_YIELD)]

    def functions(self, abi: Abi = Abi.KVM_X86) -> list[Function]:
        return [
            Function.served_directly(KvmHypercall.SCHED_YIELD, "KVM_HC_SCHED_YIELD", self._yield)
        ]

    def _yield(self, vcpu: int, apic_id: int, _a1: int, _a2: int) -> tuple[int, ...]:
        if self.platform.vcpu_for_apic_id(apic_id) is not None:
            os.sched_yield()
        return (0,)
