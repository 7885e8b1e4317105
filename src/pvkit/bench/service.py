"""A service for benchmarks: one call served by a Python handler that does real work.

It lives in the OEM service range (owner 3), which no default service claims, and is
only ever added to benchmark VMs. On x86 the same number is the hypercall nr in RAX
(a0..a2 in RBX, RCX, RDX; the sum comes back in RAX): KVM defines nothing there.
"""

from __future__ import annotations

from pvkit.hypercall.call import Call
from pvkit.hypercall.namespace import Abi, Function, IdRange
from pvkit.services.base import Service

BENCH_RANGE = IdRange(0xC300_0000, 0xC300_00FF)
BENCH_SUM = 0xC300_0001
_MASK64 = (1 << 64) - 1


class BenchService(Service):
    name = "bench"
    abis = frozenset({Abi.SMCCC, Abi.KVM_X86})

    def claims(self, abi: Abi = Abi.SMCCC) -> list[IdRange]:
        return [BENCH_RANGE]

    def functions(self, abi: Abi = Abi.SMCCC) -> list[Function]:
        return [Function(BENCH_SUM, "BENCH_SUM", self._sum)]

    def _sum(self, call: Call) -> None:
        a, b, c = call.arg(1), call.arg(2), call.arg(3)
        call.answer((a + b + c) & _MASK64, a ^ b, call.vcpu)
