"""SMCCC Arm Architecture calls (owner 0): VERSION, ARCH_FEATURES, the workarounds."""

from __future__ import annotations

from pvkit.abi.smccc import MASK32, SmcccReturn
from pvkit.hypercall.call import Call
from pvkit.hypercall.namespace import Abi, Function, IdRange, Memo
from pvkit.services.base import Service

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


class SmcccArchService(Service):
    STATELESS = True  # its answers depend on the VM's configuration only
    name = "smccc-arch"
    revision = f"{VERSION_1_1 >> 16}.{VERSION_1_1 & 0xFFFF} (SMCCC_VERSION)"

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
        value = self.platform.feature(call.arg(1) & MASK32)
        call.answer(SmcccReturn.NOT_SUPPORTED if value is None else value)

    def _nop(self, call: Call) -> None:
        call.answer(SmcccReturn.SUCCESS)
