"""Guest-level tests: real arm64 images boot and their console says what the spec requires."""

from __future__ import annotations

import pytest

from pvkit.machine.vm import StopKind
from pvkit.platform.virt_arm64 import mpidr_for
from pvkit.services.profiles import KVM, NONE, PVKIT

from .conftest import PSCI_WALK, SMP_HELLO, boot

pytestmark = pytest.mark.usefixtures("trap")  # every test runs on both traps


@pytest.mark.parametrize("smp", [1, 4, 8, 20])
def test_smp_hello_says_hello_from_every_cpu_and_powers_off(smp: int) -> None:
    b = boot(SMP_HELLO, smp=smp)
    assert b.reason.kind is StopKind.SHUTDOWN, b.reason
    for i in range(smp):
        assert f"hello from cpu {i} (mpidr {mpidr_for(i):#x})" in b.lines
    assert f"all {smp - 1} secondary cpus came and went; powering off" in b.lines
    assert b.machine.dispatcher.internal_errors == 0


def test_kvm_profile_is_recognised_as_kvm() -> None:
    b = boot(SMP_HELLO, smp=2, profile=KVM)
    assert "hypervisor: KVM, uid b66fb428-e911c52e-564bcaa9-743a004d" in b.lines
    # bit 0: FEATURES and the Call UID; bit 1: KVM_FUNC_PTP (services/ptp_kvm.py);
    # bit 126: async page faults (services/async_pf.py)
    assert "vendor features: 00000003 00000000 00000000 40000000" in b.lines
    assert "PSCI version 1.1" in b.lines and "SMCCC version 1.1" in b.lines


def test_pvkit_profile_has_its_own_uid() -> None:
    b = boot(SMP_HELLO, smp=2, profile=PVKIT)
    assert "hypervisor: pvkit, uid 527e3c9b-6e4f1a8d-7670c4b0-0074696b" in b.lines


def test_smc_conduit_is_advertised_and_used() -> None:
    b = boot(SMP_HELLO, smp=2, conduit="smc")
    assert "conduit: smc" in b.lines
    assert b.reason.kind is StopKind.SHUTDOWN
    assert {c.conduit for c in b.trace.calls} == {"smc"}


def test_no_hypervisor_means_no_call_at_all() -> None:
    b = boot(SMP_HELLO, smp=2, profile=NONE)
    assert "no PSCI in the device tree: not issuing any hypervisor call" in b.lines
    assert b.trace.calls == []
    assert b.reason.kind is StopKind.IDLE


def test_denying_the_vendor_range_hides_the_hypervisor_but_not_psci() -> None:
    from pvkit.hypercall.namespace import IdRange
    from pvkit.hypercall.policy import Action, Rule

    rule = Rule(IdRange(0x8600_0000, 0x8600_FFFF), Action.DENY)
    b = boot(SMP_HELLO, smp=2, rules=[rule])
    assert "hypervisor: unknown (no vendor call will be made)" in b.lines
    assert "hello from cpu 1 (mpidr 0x1)" in b.lines
    assert [c.action for c in b.trace.calls if c.function_id == 0x8600_FF01] == ["deny"]


def test_every_call_is_traced_with_its_decoded_name() -> None:
    b = boot(SMP_HELLO, smp=2)
    names = {c.name for c in b.trace.calls}
    assert {"PSCI_VERSION", "CPU_ON64", "CPU_OFF", "AFFINITY_INFO64", "SYSTEM_OFF"} <= names
    cpu_on = next(c for c in b.trace.calls if c.name == "CPU_ON64")
    assert cpu_on.vcpu == 0 and cpu_on.args[0] == 1 and cpu_on.results[0] == 0
    assert cpu_on.duration_ns > 0


# What the PSCI spec fixes for the psci-walk "spec" table, for a 2-CPU VM.
SPEC_ANSWERS = {
    **{
        f"features_{n}": 0
        for n in (
            "psci_version",
            "cpu_suspend",
            "cpu_suspend64",
            "cpu_off",
            "cpu_on",
            "cpu_on64",
            "affinity_info",
            "affinity_info64",
            "system_off",
            "system_reset",
            "features",
        )
    },
    "features_not_psci": -1,
    "migrate_info_type": 2,
    "affinity_self": 0,
    "affinity_other_before_on": 1,
    "affinity_no_such_cpu": -2,
    "cpu_on_self": -4,
    "cpu_on_no_such_cpu": -2,
    "cpu_on_other": 0,
    "secondary_ran": 1,
    "affinity_other_after_off": 1,
}

HOSTILE_ANSWERS = {
    "cpu_on_all_ones": -2,
    "cpu_on_entry_zero": -9,
    "cpu_on_entry_unaligned": -9,
    "cpu_on_entry_above_ram": -9,
    "cpu_on_entry_device": -9,
    "cpu_on32_high_bits_target": -2,
    "cpu_on_stray_mpidr_bits": -2,
    "affinity_all_ones": -2,
    "affinity_level4": -2,
    "affinity_level1_cluster": 0,
    "cpu_suspend_garbage": 0,
    "reset2_reserved_type": -2,
    "features_all_ones": -1,
    "features_reset2": 0,
    "migrate": -1,
    "migrate_info_up_cpu": -1,
    "arch_features_all_ones": -1,
    "arch_features_psci_version": 0,
    "arch_features_wa1": 1,
    "arch_features_wa2": -2,
    "arch_features_wa3": 1,
    "arch_features_vendor_uid": 0,
    "arch_unknown": -1,
    "psci_unknown_number": -1,
    "yielding_psci_version": -1,
    "mbz_bits_psci_version": -1,
    "vendor_unknown": -1,
    "vendor_features_64": -1,
    "unknown_ids_not_supported": 256,
    "nonzero_immediate": -1,
}


@pytest.mark.parametrize("traced", [True, False], ids=["dispatcher", "answer-table"])
@pytest.mark.parametrize("conduit", ["hvc", "smc"])
def test_psci_walk_gets_the_spec_answers_and_survives_hostile_calls(
    conduit: str, traced: bool
) -> None:
    b = boot(PSCI_WALK, smp=2, conduit=conduit, traced=traced)
    assert b.reason.kind is StopKind.SHUTDOWN, b.console
    assert b.results("spec") == SPEC_ANSWERS
    assert b.results("hostile") == HOSTILE_ANSWERS
    assert b.machine.dispatcher.internal_errors == 0
    assert "done" in b.lines
