"""A service for benchmarks: one call served by a Python handler that does real work.

The handler is a direct one (docs/hot-path.md): the trap hands it x1..x3 as integers. It
lives in the OEM service range (owner 3), which no default service claims, and is
only ever added to benchmark VMs. On x86 the same number is the hypercall nr in RAX
(a0..a2 in RBX, RCX, RDX; the sum comes back in RAX): KVM defines nothing there.
"""

from __future__ import annotations

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
        return [Function.served_directly(BENCH_SUM, "BENCH_SUM", self._sum)]

    @staticmethod
    def _sum(vcpu: int, a: int, b: int, c: int) -> tuple[int, ...]:
        return ((a + b + c) & _MASK64, a ^ b, vcpu)
