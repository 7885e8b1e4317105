"""myhv: one vendor hypercall. MYHV_ADD(x1, x2) answers x0 = 0, x1 = x1 + x2, x2 = calls."""

from pvkit import Abi, Call, Function, IdRange, Service

MYHV_ADD = 0xC600_0042  # an SMC64 fast call: vendor-specific hypervisor function 66


class MyService(Service):
    name = "myhv"

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def claims(self, abi: Abi = Abi.SMCCC) -> list[IdRange]:
        return [IdRange(MYHV_ADD, MYHV_ADD)]

    def functions(self, abi: Abi = Abi.SMCCC) -> list[Function]:
        return [Function(MYHV_ADD, "MYHV_ADD", self.add)]

    def add(self, call: Call) -> None:
        self.calls += 1
        call.answer(0, (call.arg(1) + call.arg(2)) % 2**64, self.calls)
