"""SMCCC Arm Architecture calls (owner 0): VERSION, ARCH_FEATURES, the workarounds.

What ARCH_FEATURES answers for each workaround follows its firmware register (KVM's
KVM_REG_ARM_SMCCC_ARCH_WORKAROUND_1/2/3, Linux Documentation/virt/kvm/arm/
fw-pseudo-registers.rst): a level the VMM set, never better than the host's. pvkit's vCPU
is an emulator with nothing to mitigate, so its own level is the best one (NOT_REQUIRED)
and every level is accepted; a lower one lets a guest's mitigation paths be tested, and
keeps what a guest saw when it moves here from a host that needed mitigations. (KVM
checks the level a VMM writes but answers with the host's; pvkit answers with the one set.)
The calls themselves stay no-ops that return SUCCESS.
"""

from __future__ import annotations

from dataclasses import dataclass

from pvkit.abi.smccc import MASK32, SmcccReturn
from pvkit.hypercall.call import Call
from pvkit.hypercall.namespace import Abi, Function, IdRange, Memo
from pvkit.services.base import Service
from pvkit.services.firmware import Register

SMCCC_VERSION = 0x8000_0000
SMCCC_ARCH_FEATURES = 0x8000_0001
WORKAROUND_1 = 0x8000_8000
WORKAROUND_2 = 0x8000_7FFF
WORKAROUND_3 = 0x8000_3FFF
VERSION_1_1 = 0x1_0001
ARCH_RANGES = (IdRange(0x8000_0000, 0x8000_FFFF), IdRange(0xC000_0000, 0xC000_FFFF))

# ARCH_FEATURES answers meaning "this vCPU needs no mitigation" per workaround, as newer
# KVM reports them and Linux reads them (Arm DEN0028 §7, SMCCC_ARCH_FEATURES; Linux
# arch/arm64/kvm/hypercalls.c and include/linux/arm-smccc.h).
_UNAFFECTED = 1
_LEVEL = 0xF  # the level is the register's low nibble
WA2_ENABLED = 0x10  # WORKAROUND_2's "mitigation enabled" bit, legal only with level AVAIL


@dataclass(frozen=True, slots=True)
class Workaround:
    """One workaround register: its levels and what ARCH_FEATURES answers at each."""

    number: int
    function_id: int
    kvm_id: int
    levels: tuple[tuple[str, int], ...]  # (KVM's level name, ARCH_FEATURES answer), by value

    @property
    def best(self) -> int:
        return len(self.levels) - 1


NOT_SUP = SmcccReturn.NOT_SUPPORTED
WORKAROUNDS = (
    Workaround(1, WORKAROUND_1, 0x6030_0000_0014_0001,
               (("NOT_AVAIL", NOT_SUP), ("AVAIL", 0), ("NOT_REQUIRED", _UNAFFECTED))),
    Workaround(2, WORKAROUND_2, 0x6030_0000_0014_0002,
               (("NOT_AVAIL", NOT_SUP), ("UNKNOWN", NOT_SUP), ("AVAIL", 0),
                ("NOT_REQUIRED", SmcccReturn.NOT_REQUIRED))),
    Workaround(3, WORKAROUND_3, 0x6030_0000_0014_0003,
               (("NOT_AVAIL", NOT_SUP), ("AVAIL", 0), ("NOT_REQUIRED", _UNAFFECTED))),
)  # fmt: skip


def _workaround_register(w: Workaround) -> Register:
    def refuse(value: int) -> str | None:
        level, extra = value & _LEVEL, value & ~_LEVEL
        if w.number == 2 and extra == WA2_ENABLED:
            if w.levels[level : level + 1] != (("AVAIL", 0),):
                return "the ENABLED bit (0x10) goes only with level 2 (AVAIL)"
            extra = 0
        if extra:
            return f"bits {extra:#x} are not part of the level"
        if level > w.best:
            return f"level {level} is better than this host's best, {w.best}"
        return None

    levels = ", ".join(f"{i} {name}" for i, (name, _) in enumerate(w.levels))
    extra = "; 0x12: AVAIL and ENABLED" if w.number == 2 else ""
    return Register(
        f"smccc-arch-workaround-{w.number}", f"KVM_REG_ARM_SMCCC_ARCH_WORKAROUND_{w.number}",
        w.kvm_id, w.best, levels + extra,
        f"what SMCCC_ARCH_FEATURES(WORKAROUND_{w.number}) answers: "
        + ", ".join(f"{name} {answer}" for name, answer in w.levels),
        refuse,
    )  # fmt: skip


class SmcccArchService(Service):
    STATELESS = True  # its answers depend on the VM's configuration only
    name = "smccc-arch"
    revision = f"{VERSION_1_1 >> 16}.{VERSION_1_1 & 0xFFFF} (SMCCC_VERSION)"

    def __init__(self) -> None:
        super().__init__()
        self.workarounds = {w.function_id: (w, _workaround_register(w)) for w in WORKAROUNDS}

    def firmware_registers(self) -> list[Register]:
        return [reg for _, reg in self.workarounds.values()]

    def claims(self, abi: Abi = Abi.SMCCC) -> list[IdRange]:
        return list(ARCH_RANGES)

    def functions(self, abi: Abi = Abi.SMCCC) -> list[Function]:
        # The workaround calls do nothing here (no mitigation is needed), so their answer
        # is a constant; Linux issues WORKAROUND_1 on context switches, which makes it hot.
        const = Memo.CONSTANT
        return [
            Function(SMCCC_VERSION, "SMCCC_VERSION", self._version, memo=const),
            Function(
                SMCCC_ARCH_FEATURES,
                "SMCCC_ARCH_FEATURES",
                self._features,
                memo=Memo.BY_QUERIED_ID,
            ),
            Function(WORKAROUND_1, "SMCCC_ARCH_WORKAROUND_1", self._nop, _UNAFFECTED, const),
            Function(
                WORKAROUND_2, "SMCCC_ARCH_WORKAROUND_2", self._nop, SmcccReturn.NOT_REQUIRED, const
            ),
            Function(WORKAROUND_3, "SMCCC_ARCH_WORKAROUND_3", self._nop, _UNAFFECTED, const),
        ]

    def _version(self, call: Call) -> None:
        call.answer(VERSION_1_1)

    def _features(self, call: Call) -> None:
        queried = call.arg(1) & MASK32
        workaround = self.workarounds.get(queried)
        if workaround is not None:
            w, reg = workaround
            call.answer(w.levels[reg.value & _LEVEL][1])
            return
        value = self.platform.feature(queried)
        call.answer(SmcccReturn.NOT_SUPPORTED if value is None else value)

    def _nop(self, call: Call) -> None:
        call.answer(SmcccReturn.SUCCESS)
