"""The neutral hypercall object every ABI produces and every service consumes."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

_ZEROS = (0,) * 32


class Conduit(Enum):
    """The instruction the guest used to reach the hypervisor."""

    HVC = "hvc"
    SMC = "smc"
    VMCALL = "vmcall"
    VMMCALL = "vmmcall"


class Outcome(Enum):
    """What the vCPU does after the call: Firecracker-style, not a bool."""

    RESUME = "resume"
    POWER_OFF = "power_off"  # the calling vCPU parks (PSCI CPU_OFF)
    STOP_VM = "stop_vm"  # a system event stops every vCPU


@dataclass(slots=True)
class Call:
    """One hypercall as the ABI decoded it.

    `results` starts as the ABI's "not supported" answer so that any path that does not
    set it (denied, unknown, rejected) answers correctly without extra code.
    """

    conduit: Conduit
    function_id: int
    args: tuple[int, ...]
    vcpu: int
    results: list[int]
    immediate: int = 0
    privilege: int = 1
    wide: bool = True  # False: SMC32/HVC32 or a 32-bit x86 caller; args were narrowed
    rejected: str | None = None  # set by the ABI when the call is malformed for it
    outcome: Outcome = Outcome.RESUME

    def arg(self, index: int) -> int:
        """Argument `index` (1-based like x1/w1), zero when the ABI carried fewer."""
        return self.args[index - 1] if index <= len(self.args) else 0

    def answer(self, *values: int) -> None:
        """Set results; registers not named are written as zero."""
        n = len(self.results)
        k = len(values)
        self.results[:] = values[:n] if k >= n else values + _ZEROS[: n - k]
