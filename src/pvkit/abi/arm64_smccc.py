"""SMCCC over HVC/SMC on AArch64: registers to a Call, and results back in one place.

SMCCC 1.1 passes arguments in x1..x7 and results in x0..x3. The function ID is W0.
SMC32/HVC32 calls see only the low 32 bits of every argument (KVM narrows the same way).
"""

from __future__ import annotations

from collections.abc import Sequence

from pvkit.abi.smccc import MASK32, MASK64, FunctionId, SmcccReturn
from pvkit.hypercall.call import Call, Conduit
from pvkit.hypercall.dispatcher import Dispatcher

NOT_SUPPORTED_ANSWER = (SmcccReturn.NOT_SUPPORTED & MASK64, 0, 0, 0)
_SMC64 = 1 << 30
_FAST = 1 << 31
_MBZ_1_1 = 0x00FF_0000  # bits 23:16 for an SMCCC 1.1 implementation


class SmcccAbi:
    """Implements the backend's HypercallPort for arm64 guests: x0..x7 in, x0..x3 out."""

    argument_count = 8
    result_count = 4

    def __init__(self, dispatcher: Dispatcher):
        self._dispatcher = dispatcher

    def on_hypercall(
        self, gprs: Sequence[int], conduit: Conduit, immediate: int, vcpu: int
    ) -> Call:
        call = self.decode(gprs, conduit, immediate, vcpu)
        self._dispatcher.dispatch(call, NOT_SUPPORTED_ANSWER)
        return call

    @staticmethod
    def decode(x: Sequence[int], conduit: Conduit, immediate: int, vcpu: int) -> Call:
        # Hot path (one call per trapped hypercall): positional construction, and the
        # SMC32 narrowing only when some argument really has upper bits set.
        fid = x[0] & MASK32
        args = tuple(x[1:])
        wide = bool(fid & _SMC64)
        if not wide and args and max(args) > MASK32:
            args = tuple([v & MASK32 for v in args])
        call = Call(conduit, fid, args, vcpu, list(NOT_SUPPORTED_ANSWER), immediate, 1, wide)
        if immediate != 0:
            call.rejected = f"{conduit.value.upper()} immediate {immediate:#x} is not 0"
        elif fid & _FAST and fid & _MBZ_1_1:
            call.rejected = "bits 23:16 of a fast call ID must be zero"
        return call


def describe(function_id: int) -> str:
    """Fallback name for IDs no service claims, for traces and `pvkit decode`."""
    f = FunctionId.decode(function_id)
    return f"unknown {f.call_type} {f.convention} owner {f.owner} #{f.number:#06x}"
