"""PSCI 1.1 (Arm DEN0022): power control of vCPUs and of the system.

Behaviour follows the spec where it is fixed and KVM where it leaves a choice
(Linux arch/arm64/kvm/psci.c): CPU_SUSPEND returns at once, MIGRATE_INFO_TYPE says no
migration is needed, AFFINITY_INFO accepts levels 0..3.

The version a guest is served is the `psci-version` firmware register (KVM's
KVM_REG_ARM_PSCI_VERSION): 0.2, 1.0 or 1.1. PSCI_VERSION answers it, and a call newer than
it (PSCI_FEATURES is 1.0's, SYSTEM_RESET2 1.1's) is hidden: NOT_SUPPORTED, as KVM's PSCI
0.2 and 1.0 handlers answer it. PSCI 0.1 (KVM's own function IDs, named in the device
tree) is not served.
"""

from __future__ import annotations

from collections.abc import Callable
from enum import IntEnum

from pvkit.abi.smccc import MASK32
from pvkit.hypercall.call import Call, Outcome
from pvkit.hypercall.namespace import Abi, Function, IdRange, Memo
from pvkit.machine.power import POWER_ORDER, PowerOnResult, PowerState, StartRequest
from pvkit.services.base import Service, SystemEvent
from pvkit.services.firmware import Register
from pvkit.services.smccc_arch import SMCCC_VERSION

VERSION_0_2 = 0x2
VERSION_1_0 = 0x1_0000
VERSION_1_1 = 0x1_0001
VERSIONS = (VERSION_0_2, VERSION_1_0, VERSION_1_1)  # what pvkit serves, oldest first
KVM_REG_ARM_PSCI_VERSION = 0x6030_0000_0014_0000
SMC32_BASE = 0x8400_0000
SMC64_BASE = 0xC400_0000
PSCI_RANGES = (IdRange(SMC32_BASE, SMC32_BASE + 0x1F), IdRange(SMC64_BASE, SMC64_BASE + 0x1F))
MPIDR_AFFINITY_MASK = 0xFF_00FF_FFFF  # Aff3 [39:32], Aff2..Aff0 [23:0]


class PsciReturn(IntEnum):
    SUCCESS = 0
    NOT_SUPPORTED = -1
    INVALID_PARAMETERS = -2
    DENIED = -3
    ALREADY_ON = -4
    ON_PENDING = -5
    INTERNAL_FAILURE = -6
    NOT_PRESENT = -7
    DISABLED = -8
    INVALID_ADDRESS = -9


class AffinityState(IntEnum):
    ON = 0
    OFF = 1
    ON_PENDING = 2


AFFINITY_OF = {
    PowerState.ON: AffinityState.ON,
    PowerState.ON_PENDING: AffinityState.ON_PENDING,
    PowerState.OFF: AffinityState.OFF,
}
MIGRATE_NOT_REQUIRED = 2  # multiprocessor or no Trusted OS
RESET2_VENDOR = 1 << 31
RESET2_WARM = 0

# The one list of served functions: name, number, whether an SMC64 ID exists too, and
# the PSCI version that introduced it (DEN0022's function table).
FUNCTIONS: tuple[tuple[str, int, bool, int], ...] = (
    ("PSCI_VERSION", 0x00, False, VERSION_0_2),
    ("CPU_SUSPEND", 0x01, True, VERSION_0_2),
    ("CPU_OFF", 0x02, False, VERSION_0_2),
    ("CPU_ON", 0x03, True, VERSION_0_2),
    ("AFFINITY_INFO", 0x04, True, VERSION_0_2),
    ("MIGRATE_INFO_TYPE", 0x06, False, VERSION_0_2),
    ("SYSTEM_OFF", 0x08, False, VERSION_0_2),
    ("SYSTEM_RESET", 0x09, False, VERSION_0_2),
    ("PSCI_FEATURES", 0x0A, False, VERSION_1_0),
    ("SYSTEM_RESET2", 0x12, True, VERSION_1_1),
)


def version_text(version: int) -> str:
    """A PSCI version word as "major.minor" (bits 31:16 and 15:0)."""
    return f"{version >> 16}.{version & 0xFFFF}"


def function_id(name: str, smc64: bool = False) -> int:
    for fn_name, number, has64, _since in FUNCTIONS:
        if fn_name == name:
            if smc64 and not has64:
                raise KeyError(f"{name} has no SMC64 ID")
            return (SMC64_BASE if smc64 else SMC32_BASE) + number
    raise KeyError(name)


def affinity_mask(level: int) -> int:
    """MPIDR bits that identify a node at affinity `level` (fields below it ignored)."""
    fields = (0xFF, 0xFF00, 0xFF_0000, 0xFF_0000_0000)
    return sum(fields[level:])


class PsciService(Service):
    STATELESS = True  # the vCPUs' power states are the VM's, saved with it
    name = "psci"
    revision = f"{VERSION_1_1 >> 16}.{VERSION_1_1 & 0xFFFF} (PSCI_VERSION)"
    discovery = "the device tree's /psci node names the conduit; PSCI_FEATURES(ID) == 0"
    c_prefix = "PSCI_"
    return_codes = PsciReturn

    def __init__(self) -> None:
        super().__init__()
        self.version = Register(
            "psci-version", "KVM_REG_ARM_PSCI_VERSION", KVM_REG_ARM_PSCI_VERSION,
            VERSION_1_1,
            ", ".join(f"{v:#x} ({version_text(v)})" for v in VERSIONS),
            "what PSCI_VERSION answers; calls newer than it answer NOT_SUPPORTED",
            self._refuse_version,
        )  # fmt: skip

    def _refuse_version(self, value: int) -> str | None:
        if value in VERSIONS:
            return None
        served = ", ".join(version_text(v) for v in VERSIONS)
        return f"pvkit serves PSCI {served}, not {version_text(value & 0xFFFF_FFFF)}"

    def firmware_registers(self) -> list[Register]:
        return [self.version]

    def revisions(self, abi: Abi) -> tuple[str, ...]:
        return tuple(version_text(v) for v in VERSIONS)

    def revision_in_use(self) -> str | None:
        return version_text(self.version.value)

    def hidden_function_ids(self) -> frozenset[int]:
        newer = [(n, has64) for _, n, has64, since in FUNCTIONS if since > self.version.value]
        return frozenset(
            base + n for n, has64 in newer for base in (SMC32_BASE, SMC64_BASE) if has64
        ) | frozenset(SMC32_BASE + n for n, _ in newer)

    def c_name(self, fn: Function) -> str:
        base = super().c_name(fn)  # SMC64 IDs: PSCI_CPU_ON_64, as the guest SDK spells them
        return f"{base[:-2]}_64" if fn.function_id >= SMC64_BASE else base

    def claims(self, abi: Abi = Abi.SMCCC) -> list[IdRange]:
        return list(PSCI_RANGES)

    def functions(self, abi: Abi = Abi.SMCCC) -> list[Function]:
        handlers: dict[str, Callable[[Call], None]] = {
            "PSCI_VERSION": lambda c: c.answer(self.version.value),
            "CPU_SUSPEND": lambda c: c.answer(PsciReturn.SUCCESS),
            "CPU_OFF": self._cpu_off,
            "CPU_ON": self._cpu_on,
            "MIGRATE_INFO_TYPE": lambda c: c.answer(MIGRATE_NOT_REQUIRED),
            "SYSTEM_OFF": self._system_off,
            "SYSTEM_RESET": self._system_reset,
            "PSCI_FEATURES": self._features,
            "SYSTEM_RESET2": self._system_reset2,
        }
        memo = {
            "PSCI_VERSION": Memo.CONSTANT,
            "MIGRATE_INFO_TYPE": Memo.CONSTANT,
            "PSCI_FEATURES": Memo.BY_QUERIED_ID,
        }
        direct = {"AFFINITY_INFO": self._affinity_info}  # polled while CPUs come and go
        # ...and at level 0 answered from the vCPUs' power-state bytes, without Python
        by_state = {"AFFINITY_INFO": tuple(int(AFFINITY_OF[s]) for s in POWER_ORDER)}
        out = []
        for name, number, has64, _since in FUNCTIONS:
            m = memo.get(name)
            ids = [(SMC32_BASE + number, name)]
            if has64:
                ids.append((SMC64_BASE + number, f"{name}64"))
            for fid, fn_name in ids:
                if name in direct:
                    fn = Function.served_directly(fid, fn_name, direct[name])
                    if name in by_state:
                        fn = fn.answered_by_vcpu_state(by_state[name])
                    out.append(fn)
                else:
                    out.append(Function(fid, fn_name, handlers[name], memo=m))
        return out

    # -- per-vCPU calls ----------------------------------------------------------------
    def _cpu_on(self, call: Call) -> None:
        target, entry, context = call.arg(1), call.arg(2), call.arg(3)
        p = self.platform
        vcpu = p.vcpu_for_mpidr(target) if not target & ~MPIDR_AFFINITY_MASK else None
        if vcpu is None:
            call.answer(PsciReturn.INVALID_PARAMETERS)
            return
        if not p.is_valid_entry(entry):
            call.answer(PsciReturn.INVALID_ADDRESS)
            return
        result = p.power_on(vcpu, StartRequest(entry, context))
        call.answer(
            {
                PowerOnResult.ACCEPTED: PsciReturn.SUCCESS,
                PowerOnResult.ALREADY_ON: PsciReturn.ALREADY_ON,
                PowerOnResult.PENDING: PsciReturn.ON_PENDING,
            }[result]
        )

    def _cpu_off(self, call: Call) -> None:
        # Seen only if the vCPU were resumed without a CPU_ON; the spec's failure answer.
        call.answer(PsciReturn.DENIED)
        call.outcome = Outcome.POWER_OFF

    def _affinity_info(self, _vcpu: int, target: int, level: int, _x3: int) -> tuple[int, ...]:
        if level > 3 or target & ~MPIDR_AFFINITY_MASK:
            return (PsciReturn.INVALID_PARAMETERS,)
        p = self.platform
        if level == 0:  # one vCPU, found in O(1): what a guest waiting for a CPU polls
            vcpu = p.vcpu_for_mpidr(target)
            states = [] if vcpu is None else [p.power_state(vcpu)]
        else:
            mask = affinity_mask(level)
            states = [
                p.power_state(i) for i in range(p.vcpu_count) if p.mpidr(i) & mask == target & mask
            ]
        if not states:
            return (PsciReturn.INVALID_PARAMETERS,)
        if PowerState.ON in states:
            return (AffinityState.ON,)
        if PowerState.ON_PENDING in states:
            return (AffinityState.ON_PENDING,)
        return (AffinityState.OFF,)

    # -- system calls ------------------------------------------------------------------
    def _system_off(self, call: Call) -> None:
        self._system(call, SystemEvent.SHUTDOWN, "PSCI SYSTEM_OFF")

    def _system_reset(self, call: Call) -> None:
        self._system(call, SystemEvent.RESET, "PSCI SYSTEM_RESET")

    def _system_reset2(self, call: Call) -> None:
        reset_type = call.arg(1) & MASK32
        if reset_type != RESET2_WARM and not reset_type & RESET2_VENDOR:
            call.answer(PsciReturn.INVALID_PARAMETERS)
            return
        self._system(call, SystemEvent.RESET, f"PSCI SYSTEM_RESET2 type {reset_type:#x}")

    def _system(self, call: Call, event: SystemEvent, detail: str) -> None:
        # If the vCPU were ever resumed it would see INTERNAL_FAILURE, as KVM arranges.
        call.answer(PsciReturn.INTERNAL_FAILURE)
        call.outcome = Outcome.STOP_VM
        self.platform.system_event(event, f"{detail} from vCPU {call.vcpu}")

    def _features(self, call: Call) -> None:
        queried = call.arg(1) & MASK32
        psci = any(queried in r for r in PSCI_RANGES)
        if (psci or queried == SMCCC_VERSION) and self.platform.feature(queried) is not None:
            # CPU_SUSPEND flags 0: platform-coordinated mode, original power_state format.
            call.answer(PsciReturn.SUCCESS)
        else:
            call.answer(PsciReturn.NOT_SUPPORTED)
