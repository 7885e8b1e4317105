"""PSCI power state machine, including CPU_ON races, driven through the real dispatcher."""

from __future__ import annotations

import threading
from pathlib import Path

from pvkit.abi.arm64_smccc import NOT_SUPPORTED_ANSWER, SmcccAbi
from pvkit.hypercall.call import Call, Conduit
from pvkit.machine.power import PowerOnResult, PowerState, StartRequest, VcpuPower
from pvkit.platform.virt_arm64 import RAM_BASE, VirtArm64, VirtConfig
from pvkit.services.psci import AffinityState, PsciReturn

from .conftest import SMP_HELLO

ENTRY = RAM_BASE + 0x20_0000


def machine(smp: int = 4) -> VirtArm64:
    return VirtArm64(VirtConfig(smp=smp, console=lambda b: None), Path(SMP_HELLO))


def call(m: VirtArm64, fid: int, *args: int, vcpu: int = 0) -> Call:
    c = SmcccAbi.decode([fid, *args] + [0] * (7 - len(args)), Conduit.HVC, 0, vcpu)
    m.dispatcher.dispatch(c, NOT_SUPPORTED_ANSWER)
    return c


def ret(c: Call) -> int:
    v = c.results[0]
    return v - (1 << 64) if v >= 1 << 63 else v


def test_power_on_is_accepted_once_then_pending() -> None:
    p = VcpuPower()
    assert p.request_on(StartRequest(0, 0)) is PowerOnResult.ACCEPTED
    assert p.state is PowerState.ON_PENDING
    assert p.request_on(StartRequest(0, 0)) is PowerOnResult.PENDING
    p.mark_on()
    assert p.request_on(StartRequest(0, 0)) is PowerOnResult.ALREADY_ON


def _racer(m: VirtArm64, barrier: threading.Barrier, answers: list[int], vcpu: int) -> None:
    barrier.wait()
    answers.append(ret(call(m, 0xC400_0003, 3, ENTRY, 0, vcpu=vcpu)))


def test_two_cpus_racing_cpu_on_for_one_target_get_exactly_one_success() -> None:
    for _ in range(200):
        m = machine()
        barrier = threading.Barrier(2)
        answers: list[int] = []
        threads = [threading.Thread(target=_racer, args=(m, barrier, answers, v)) for v in (0, 1)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert sorted(answers) == [PsciReturn.ON_PENDING, PsciReturn.SUCCESS]


def test_affinity_info_follows_the_state_machine() -> None:
    m = machine()
    assert ret(call(m, 0xC400_0004, 2, 0)) == AffinityState.OFF
    assert ret(call(m, 0xC400_0003, 2, ENTRY, 7)) == PsciReturn.SUCCESS
    assert ret(call(m, 0xC400_0004, 2, 0)) == AffinityState.ON_PENDING
    m.vm.power[2].mark_on()
    assert ret(call(m, 0xC400_0004, 2, 0)) == AffinityState.ON
    assert ret(call(m, 0xC400_0003, 2, ENTRY, 7)) == PsciReturn.ALREADY_ON
    # Level 1 covers the whole cluster 0: ON because vCPU 2 is.
    assert ret(call(m, 0xC400_0004, 0, 1)) == AffinityState.ON


def test_cpu_on_checks_target_then_entry_point() -> None:
    m = machine()
    assert ret(call(m, 0xC400_0003, 99, ENTRY, 0)) == PsciReturn.INVALID_PARAMETERS
    assert ret(call(m, 0xC400_0003, 1, RAM_BASE - 4, 0)) == PsciReturn.INVALID_ADDRESS
    assert ret(call(m, 0xC400_0003, 1, ENTRY + 1, 0)) == PsciReturn.INVALID_ADDRESS
    assert m.vm.power[1].state is PowerState.OFF  # a refused CPU_ON changes nothing


def test_cpu_on_32_bit_id_sees_only_the_low_halves() -> None:
    m = machine()
    # Target 1 with junk in the upper half: the SMC32 call sees target 1 and succeeds.
    assert ret(call(m, 0x8400_0003, 0xFFFF_FFFF_0000_0001, ENTRY, 0)) == PsciReturn.SUCCESS


def test_psci_features_reports_served_functions_and_smccc_version() -> None:
    m = machine()
    for fid in (0x8400_0000, 0x8400_0002, 0xC400_0003, 0x8400_0008, 0x8400_000A, 0x8000_0000):
        assert ret(call(m, 0x8400_000A, fid)) == PsciReturn.SUCCESS, hex(fid)
    for fid in (0x8400_0005, 0x8400_001F, 0xC200_0000, 0x8600_FF01):
        assert ret(call(m, 0x8400_000A, fid)) == PsciReturn.NOT_SUPPORTED, hex(fid)
