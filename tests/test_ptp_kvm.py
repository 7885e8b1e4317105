"""KVM's PTP call (Linux Documentation/virt/kvm/arm/ptp_kvm.rst) and the shared vendor range.

KVM_FUNC_PTP (0x86000001) pairs the host's real time with the guest's counter. It lives in
owner 6 beside `vendor-hyp`, which owns only the features bitmap and the general queries:
every service claims its own vendor function, and the bitmap follows what is served.
Calls go in as registers through the SMCCC ABI of a real `virt` VM.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest

from pvkit.abi.arm64_smccc import NOT_SUPPORTED_ANSWER, SmcccAbi
from pvkit.hypercall.answer_table import build_answer_table
from pvkit.hypercall.call import Call, Conduit
from pvkit.hypercall.namespace import Abi, Function, IdRange, NamespaceClash
from pvkit.platform.board import DETERMINISTIC_EPOCH_NS
from pvkit.platform.virt_arm64 import VirtArm64, VirtConfig
from pvkit.services.base import Service
from pvkit.services.profiles import PVKIT
from pvkit.services.ptp_kvm import KVM_FUNC_PTP, PtpCounter
from pvkit.services.smccc_arch import SMCCC_ARCH_FEATURES
from pvkit.services.trng import TRNG_FEATURES
from pvkit.services.vendor_hyp import FEATURES, UID

from .conftest import SMP_HELLO, boot

M64 = (1 << 64) - 1
M32 = (1 << 32) - 1
NOT_SUPPORTED = M64
KVM_UID_WORDS = [0xB66F_B428, 0xE911_C52E, 0x564B_CAA9, 0x743A_004D]

Hvc = Callable[..., list[int]]


def vm(**config: object) -> VirtArm64:
    return VirtArm64(VirtConfig(console=lambda b: None, **config), Path(SMP_HELLO))  # type: ignore[arg-type]


def caller(machine: VirtArm64, vcpu: int = 0) -> Hvc:
    abi = SmcccAbi(machine.dispatcher)

    def call(fid: int, *args: int) -> list[int]:
        regs = [fid, *args] + [0] * (7 - len(args))
        return [r & M64 for r in abi.on_hypercall(regs, Conduit.HVC, 0, vcpu).results]

    return call


def joined(regs: list[int]) -> tuple[int, int]:
    """What Linux's kvm_arch_ptp_get_crosststamp computes: (a0 << 32 | a1, a2 << 32 | a3)."""
    return (regs[0] << 32 | regs[1]) & M64, (regs[2] << 32 | regs[3]) & M64


# -- the call ------------------------------------------------------------------------------
@pytest.mark.parametrize("counter", list(PtpCounter), ids=lambda c: c.name.lower())
def test_ptp_pairs_host_real_time_with_the_guest_counter(counter: PtpCounter) -> None:
    m = vm()
    hvc = caller(m)
    wall_before, count_before = time.time_ns(), m.now_ns(0)
    regs = hvc(KVM_FUNC_PTP, counter)
    wall_after, count_after = time.time_ns(), m.now_ns(0)
    assert all(r <= M32 for r in regs)  # four 32-bit halves, zero-extended
    assert regs[0] & (1 << 31) == 0  # Linux reads (int)a0 < 0 as failure
    wall, count = joined(regs)
    assert wall_before <= wall <= wall_after
    assert count_before <= count <= count_after


def test_virtual_and_physical_counters_read_the_same_clock() -> None:
    # CNTVOFF is 0 on pvkit's board, so the selectors agree; the reads follow each other.
    m = vm()
    hvc = caller(m)
    counts = [joined(hvc(KVM_FUNC_PTP, c))[1] for c in (0, 1, 0, 1)]
    assert counts == sorted(counts) and counts[-1] - counts[0] < 1_000_000_000


def test_successive_calls_are_monotonic_with_a_steady_offset() -> None:
    hvc = caller(vm())
    pairs = [joined(hvc(KVM_FUNC_PTP, PtpCounter.VIRTUAL)) for _ in range(200)]
    counts = [c for _w, c in pairs]
    assert counts == sorted(counts) and counts[-1] > counts[0]
    offsets = [w - c for w, c in pairs]  # real time at counter 0
    assert max(offsets) - min(offsets) < 50_000_000


@pytest.mark.parametrize("selector", [2, 3, 0x8000_0000, M32], ids=hex)
def test_an_unknown_counter_selector_is_not_supported(selector: int) -> None:
    regs = caller(vm())(KVM_FUNC_PTP, selector)
    assert regs == [NOT_SUPPORTED, 0, 0, 0]  # W0 = 0xFFFFFFFF, sign-extended
    assert regs[0] & M32 == 0xFFFF_FFFF


def test_the_selector_is_w1_only_as_in_any_smc32_call() -> None:
    assert caller(vm())(KVM_FUNC_PTP, 1 << 32 | PtpCounter.PHYSICAL)[0] != NOT_SUPPORTED


def test_there_is_no_smc64_ptp_call() -> None:
    assert caller(vm())(0xC600_0001, 0) == list(NOT_SUPPORTED_ANSWER)


def test_deterministic_time_gives_the_fixed_epoch_plus_the_counter_every_run() -> None:
    answers = []
    for _ in range(2):
        b = boot(SMP_HELLO, deterministic=True, smp=2, traced=False)
        hvc = caller(b.machine, vcpu=1)
        regs = hvc(KVM_FUNC_PTP, PtpCounter.VIRTUAL)
        wall, count = joined(regs)
        assert count == b.machine.now_ns(1) > 0  # where vCPU 1's clock stopped
        assert wall == DETERMINISTIC_EPOCH_NS + count
        answers.append(regs)
    assert answers[0] == answers[1]


def test_ptp_is_never_memoised_and_arch_features_does_not_report_it() -> None:
    m = vm()
    hvc = caller(m)
    table = build_answer_table(m.namespace, m.policy, NOT_SUPPORTED_ANSWER)
    assert table.lookup(KVM_FUNC_PTP, 0) is None
    assert hvc(SMCCC_ARCH_FEATURES, KVM_FUNC_PTP)[0] == NOT_SUPPORTED  # as KVM answers
    assert hvc(TRNG_FEATURES, KVM_FUNC_PTP)[0] == NOT_SUPPORTED


# -- discovery: Call UID, then the features bitmap (Linux's kvm_init_hyp_services) -----------
def test_linux_discovers_ptp_with_the_kvm_profile() -> None:
    hvc = caller(vm())
    assert hvc(UID) == KVM_UID_WORDS  # compared as whole registers by Linux
    words = [r & M32 for r in hvc(FEATURES)]
    bitmap = sum(w << 32 * i for i, w in enumerate(words))
    # bit 0 FEATURES/UID, bit 1 KVM_FUNC_PTP (ARM_SMCCC_KVM_FUNC_PTP), bit 126 async-pf
    assert bitmap == 0b11 | 1 << 126
    assert (bitmap >> 1) & 1  # kvm_arm_hyp_service_available(1): ptp_kvm registers
    assert hvc(KVM_FUNC_PTP, PtpCounter.VIRTUAL)[0] != NOT_SUPPORTED


def test_disable_ptp_kvm_clears_bit_1_and_the_call() -> None:
    hvc = caller(vm(disabled=frozenset({"ptp-kvm", "async-pf"})))
    assert hvc(FEATURES) == [0b01, 0, 0, 0]
    assert hvc(KVM_FUNC_PTP, 0) == list(NOT_SUPPORTED_ANSWER)


def test_the_pvkit_profile_serves_it_as_its_own_vendor_function_1() -> None:
    hvc = caller(vm(profile=PVKIT))
    assert hvc(UID) != KVM_UID_WORDS  # so Linux, looking for KVM, never calls it
    assert hvc(FEATURES)[0] == 0b11
    assert hvc(KVM_FUNC_PTP, 0)[0] != NOT_SUPPORTED


def test_without_vendor_hyp_the_bitmap_and_uid_are_gone() -> None:
    hvc = caller(vm(disabled=frozenset({"vendor-hyp"})))
    assert hvc(UID) == list(NOT_SUPPORTED_ANSWER) and hvc(FEATURES) == list(NOT_SUPPORTED_ANSWER)


# -- the shared vendor range ---------------------------------------------------------------
class VendorCall(Service):
    """A designer's own vendor hypercall at `fid` (issue 14's first example: 0xC6000042)."""

    name = "my-call"

    def __init__(self, fid: int = 0xC600_0042):
        super().__init__()
        self.fid = fid

    def claims(self, abi: Abi = Abi.SMCCC) -> list[IdRange]:
        return [IdRange(self.fid, self.fid)]

    def functions(self, abi: Abi = Abi.SMCCC) -> list[Function]:
        return [Function(self.fid, "MY_CALL", self._call)]

    def _call(self, call: Call) -> None:
        call.answer(42)


def test_another_service_claims_its_own_vendor_function_and_gets_its_bit() -> None:
    m = vm(extra_services=[VendorCall()])
    hvc = caller(m)
    assert hvc(0xC600_0042)[0] == 42
    # function 66: word 2, bit 2 (and async-pf, function 126: word 3, bit 30)
    assert hvc(FEATURES) == [0b11, 0, 1 << (66 - 64), 1 << (126 - 96)]


@pytest.mark.parametrize("fid", [KVM_FUNC_PTP, UID, FEATURES, 0xC600_0000, 0xC600_FF03])
def test_a_clash_inside_the_vendor_range_names_both_claimants(fid: int) -> None:
    with pytest.raises(NamespaceClash, match="my-call"):
        vm(extra_services=[VendorCall(fid)])


@pytest.mark.parametrize("fid", [0x8600_0002, 0x8600_007F, 0xC600_0002, 0x8600_FF00, 0x8600_FF03])
def test_unserved_vendor_ids_answer_not_supported(fid: int) -> None:
    assert caller(vm())(fid, 0) == list(NOT_SUPPORTED_ANSWER)
