"""The x86 PV services on their own, against a fake platform (Linux
Documentation/virt/kvm/x86/hypercalls.rst)."""

from __future__ import annotations

import pytest

from pvkit.abi.x86_kvm import KvmError, KvmHypercall, kvm_error
from pvkit.hypercall.call import Call, Conduit
from pvkit.hypercall.namespace import Abi
from pvkit.services.map_gpa_range import MapGpaRangeService
from pvkit.services.pv_ipi import PvIpiService
from pvkit.services.pv_unhalt import PvUnhaltService
from pvkit.services.sched_yield import SchedYieldService

EINVAL = kvm_error(KvmError.EINVAL)


class FakePc:
    """vCPUs 0..2 with APIC IDs 0..2, and vCPU 3 with APIC ID 32; records what it is asked."""

    vcpu_count = 4

    def __init__(self) -> None:
        self.woken: list[int] = []
        self.interrupts: list[tuple[int, int]] = []

    def vcpu_for_apic_id(self, apic_id: int) -> int | None:
        return {0: 0, 1: 1, 2: 2, 32: 3}.get(apic_id)

    def wake(self, vcpu: int) -> bool:
        self.woken.append(vcpu)
        return True

    def post_interrupt(self, vcpu: int, vector: int) -> bool:
        self.interrupts.append((vcpu, vector))
        return True


def serve(service: object, nr: int, *args: int, wide: bool = True) -> tuple[int, FakePc]:
    platform = FakePc()
    service.bind(platform)  # type: ignore[attr-defined]
    [fn] = [f for f in service.functions(Abi.KVM_X86) if f.function_id == nr]  # type: ignore[attr-defined]
    call = Call(Conduit.VMCALL, nr, (*args, 0, 0, 0, 0)[:4], 0, [0], 0, 0, wide)
    fn.handler(call)
    return call.results[0], platform


def test_kick_cpu_wakes_the_target_by_apic_id() -> None:
    result, pc = serve(PvUnhaltService(), KvmHypercall.KICK_CPU, 0, 2)
    assert result == 0 and pc.woken == [2]
    result, pc = serve(PvUnhaltService(), KvmHypercall.KICK_CPU, 0, 9)
    assert result == 0 and pc.woken == []  # no such CPU: KVM answers 0 all the same


def test_send_ipi_walks_the_bitmap_from_the_base_apic_id() -> None:
    result, pc = serve(PvIpiService(), KvmHypercall.SEND_IPI, 0b101, 0, 0, 0x40)
    assert result == 2 and pc.interrupts == [(0, 0x40), (2, 0x40)]
    result, pc = serve(PvIpiService(), KvmHypercall.SEND_IPI, 0b11, 0, 1, 0x41)
    assert result == 2 and pc.interrupts == [(1, 0x41), (2, 0x41)]


def test_send_ipi_high_word_starts_at_bit_64_or_32() -> None:
    _r, pc = serve(PvIpiService(), KvmHypercall.SEND_IPI, 0, 1, 0, 0x40)
    assert pc.interrupts == []  # APIC ID 64 does not exist
    result, pc = serve(PvIpiService(), KvmHypercall.SEND_IPI, 0, 1, 0, 0x40, wide=False)
    assert result == 1 and pc.interrupts == [(3, 0x40)]  # 32-bit caller: APIC ID 32


def test_send_ipi_refuses_other_delivery_modes() -> None:
    result, pc = serve(PvIpiService(), KvmHypercall.SEND_IPI, 1, 0, 0, 0x400 | 0x40)
    assert result == EINVAL and pc.interrupts == []


def test_sched_yield_answers_zero() -> None:
    assert serve(SchedYieldService(), KvmHypercall.SCHED_YIELD, 1)[0] == 0


@pytest.mark.parametrize(
    ("gpa", "pages", "attrs"),
    [(0x1001, 1, 0), (0x1000, 0, 0), (0x1000, 1, 1 << 5), (0x1000, 1, 3), (2**64 - 4096, 2, 0)],
)
def test_map_gpa_range_rejects_bad_ranges_before_the_vmm_sees_them(
    gpa: int, pages: int, attrs: int
) -> None:
    seen: list[tuple[int, int, int]] = []
    service = MapGpaRangeService(lambda *a: seen.append(a) or 0)
    assert serve(service, KvmHypercall.MAP_GPA_RANGE, gpa, pages, attrs)[0] == EINVAL
    assert seen == []


def test_map_gpa_range_forwards_a_valid_range_to_the_vmm() -> None:
    seen: list[tuple[int, int, int]] = []
    service = MapGpaRangeService(lambda *a: seen.append(a) or 7)
    result, _pc = serve(service, KvmHypercall.MAP_GPA_RANGE, 0x20_0000, 512, 1 | 1 << 4)
    assert result == 7 and seen == [(0x20_0000, 512, 0x11)]
