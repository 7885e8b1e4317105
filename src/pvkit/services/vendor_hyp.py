"""Vendor-specific hypervisor service (owner 6): the call UID and the features bitmap.

The bitmap is computed from what this VM serves in the vendor range (bit n <=> function
number n, four 32-bit words for numbers 0..127), so it can never disagree with dispatch.

This service owns only the numbers whose meaning the range owner defines: function 0 (the
bitmap, whose own bit is 0) and the general-query block 0xFF00..0xFFFF (SMCCC's call count,
Call UID and revision), in both conventions; it serves the SMC32 bitmap and Call UID. Every
other vendor number is free: a service claims its own (KVM_FUNC_PTP claims function 1), the
namespace checks clashes function by function, and an unclaimed ID answers NOT_SUPPORTED.
"""

from __future__ import annotations

from pvkit.abi.smccc import CALL_UID, uuid_words
from pvkit.hypercall.call import Call
from pvkit.hypercall.namespace import Abi, Function, IdRange, Memo
from pvkit.services.base import Service

VENDOR_SMC32 = 0x8600_0000
VENDOR_SMC64 = 0xC600_0000
FEATURES = VENDOR_SMC32 + 0
UID = VENDOR_SMC32 + CALL_UID
GENERAL_QUERIES = 0xFF00  # first number of the block SMCCC reserves in every owner range
VENDOR_CLAIMS = tuple(
    r
    for base in (VENDOR_SMC32, VENDOR_SMC64)
    for r in (IdRange(base, base), IdRange(base + GENERAL_QUERIES, base + 0xFFFF))
)
BITMAP_FUNCTIONS = 128


class VendorHypService(Service):
    STATELESS = True  # its answers depend on the VM's configuration only
    name = "vendor-hyp"
    firmware_gate = ("vendor-hyp-bmap", 0)  # KVM_REG_ARM_VENDOR_HYP_BIT_FUNC_FEAT

    def __init__(self, uid: bytes, features_name: str = "VENDOR_HYP_FEATURES"):
        super().__init__()
        self._uid = uuid_words(uid)
        self._features_name = features_name

    def claims(self, abi: Abi = Abi.SMCCC) -> list[IdRange]:
        return list(VENDOR_CLAIMS)

    def c_name(self, fn: Function) -> str:
        # The profile names the bitmap in traces (KVM_FUNC_FEATURES); guest code is neutral.
        return "VENDOR_HYP_FEATURES" if fn.function_id == FEATURES else super().c_name(fn)

    def functions(self, abi: Abi = Abi.SMCCC) -> list[Function]:
        return [
            Function(FEATURES, self._features_name, self._features, memo=Memo.CONSTANT),
            Function(
                UID, "VENDOR_HYP_CALL_UID", lambda c: c.answer(*self._uid), memo=Memo.CONSTANT
            ),
        ]

    def bitmap(self) -> tuple[int, int, int, int]:
        words = [0, 0, 0, 0]
        p = self.platform
        for n in range(BITMAP_FUNCTIONS):
            if p.feature(VENDOR_SMC32 + n) is not None or p.feature(VENDOR_SMC64 + n) is not None:
                words[n // 32] |= 1 << (n % 32)
        return (words[0], words[1], words[2], words[3])

    def _features(self, call: Call) -> None:
        call.answer(*self.bitmap())
