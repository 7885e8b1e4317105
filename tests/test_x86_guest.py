"""x86-hello on the pc board: discovery, both instructions, patching, CPL 3, IPIs, kicks.

The guest prints what it observes; these tests compare it with what the interface
promises (Linux Documentation/virt/kvm/x86/cpuid.rst, hypercalls.rst, msr.rst) and with the
host's own record (patch events, traces).
"""

from __future__ import annotations

import pytest

from pvkit.abi.x86_kvm import KvmHypercall
from pvkit.backends.x86.regs import VMCALL, VMMCALL
from pvkit.hypercall.call import Call
from pvkit.hypercall.namespace import IdRange
from pvkit.hypercall.policy import Action, Rule
from pvkit.machine.vm import StopKind
from pvkit.platform.pc_x86 import PcX86

from .conftest import X86_HELLO, boot_x86, pvkit

PASS_STATUS = 1  # isa-debug-exit: the guest writes 0, the VM exits with (0 << 1) | 1
VENDOR = {"intel": ("GenuineIntel", VMCALL, VMMCALL), "amd": ("AuthenticAMD", VMMCALL, VMCALL)}


@pytest.mark.parametrize("protocol", ["pvh", "multiboot"])
@pytest.mark.parametrize("vendor", ["intel", "amd"])
def test_x86_hello_boots_on_two_vcpus(vendor: str, protocol: str) -> None:
    b = boot_x86(smp=2, vendor=vendor, boot=protocol, bootargs="quiet")
    name, native, foreign = VENDOR[vendor]
    assert b.reason.kind is StopKind.SHUTDOWN and b.reason.status == PASS_STATUS, b.console
    expected_protocol = "PVH" if protocol == "pvh" else "multiboot"
    assert b.line("booted by").startswith(f"x86-hello: booted by {expected_protocol} on {name}")
    assert "cmdline 'quiet', 3 memory-map entries" in b.line("booted by")
    assert b.line("2 CPU(s) up")
    assert b.line("native call nr 11") == "x86-hello: native call nr 11 -> 0"
    assert b.line("unknown nr") == "x86-hello: unknown nr -> -1000"
    # Both CPUs went through the same foreign site: patched once, both calls served.
    site = b.line("foreign site")
    assert f"bytes {foreign.hex(' ')} -> {native.hex(' ')} (patched), #UD taken 0" in site
    assert site.endswith("results 0 0")
    [patch] = b.machine.patcher.patches if b.machine.patcher else []
    assert (patch.old, patch.new) == (foreign, native)
    assert f"{patch.address:#x}" in site
    assert [e.fields for e in b.trace.events if e.kind == "patch"] == [
        {"address": f"{patch.address:#x}", "old": foreign.hex(" "), "new": native.hex(" ")}
    ]
    assert b.line("SEND_IPI") == "x86-hello: SEND_IPI vector 0x40 -> delivered to 1 CPU(s)"
    assert b.line("KICK_CPU") == "x86-hello: KICK_CPU -> 0, cpu 1 left HLT"
    assert b.line("call from CPL 3") == "x86-hello: call from CPL 3 -> -1"  # -KVM_EPERM
    assert b.lines[-1] == "x86-hello: done"


def test_many_vcpus_on_one_site_patch_it_exactly_once() -> None:
    b = boot_x86(smp=4)
    assert b.reason.status == PASS_STATUS, b.console
    assert b.line("foreign site").endswith("results 0 0 0 0")
    assert len(b.machine.patcher.patches if b.machine.patcher else []) == 1


def test_without_the_quirk_the_guest_sees_ud_and_the_bytes_stay() -> None:
    b = boot_x86(smp=2, fix_hypercall=False)
    assert b.reason.status == PASS_STATUS, b.console
    site = b.line("foreign site")
    assert "0f 01 d9 -> 0f 01 d9 (unchanged), #UD taken" in site
    assert site.endswith(f"results {KvmHypercall.SCHED_YIELD} {KvmHypercall.SCHED_YIELD}")
    assert b.machine.patcher is not None and b.machine.patcher.patches == []
    assert not [e for e in b.trace.events if e.kind == "patch"]


def test_cpl3_call_is_not_executed() -> None:
    b = boot_x86()
    cpl3 = [c for c in b.trace.calls if c.action == "rejected"]
    assert len(cpl3) == 1 and "CPL 3" in (cpl3[0].detail or "")
    assert cpl3[0].results == ((-1) & (2**64 - 1),)


def test_a_guest_that_finds_no_signature_issues_no_hypercall() -> None:
    b = boot_x86(profile=_profile("none"))
    assert b.reason.status == PASS_STATUS
    assert b.line("no hypervisor signature found")
    assert b.trace.calls == []


def test_interface_at_a_moved_base_is_found_by_the_0x100_scan() -> None:
    b = boot_x86(profile=_profile("pvkit"), cpuid_base=0x4000_0100)
    assert b.reason.status == PASS_STATUS, b.console
    assert b.line("found").startswith("x86-hello: found 'pvkitpvkitpv' at CPUID 0x40000100")


def test_disabled_service_has_no_cpuid_bit_and_answers_enosys() -> None:
    b = boot_x86(disabled=frozenset({"pv-sched-yield"}))
    assert b.reason.status == PASS_STATUS, b.console
    features = int(b.line("found").split("features ")[1].split(",")[0], 16)
    assert not features >> 13 & 1 and features >> 11 & 1  # PV_SCHED_YIELD gone, others stay
    assert b.line("SCHED_YIELD without") == "x86-hello: SCHED_YIELD without its CPUID bit -> -1000"


def test_hidden_feature_is_not_callable_although_the_service_exists() -> None:
    b = boot_x86(hidden_features=1 << 13)
    assert b.reason.status == PASS_STATUS, b.console
    assert b.line("SCHED_YIELD without") == "x86-hello: SCHED_YIELD without its CPUID bit -> -1000"
    [refused] = [c for c in b.trace.calls if c.function_id == KvmHypercall.SCHED_YIELD]
    assert refused.action == "rejected" and "bit 13" in (refused.detail or "")


def test_after_moving_to_the_other_vendor_the_old_native_sites_are_patched_back() -> None:
    """The guest booted on Intel (VMCALL); mid-run the VM lands on an AMD host."""

    def setup(machine: PcX86) -> None:
        def migrate(call: Call) -> None:
            machine.move_to_host("amd")
            call.answer((-1000) & (2**64 - 1))

        unknown = 0x7FFF_0000  # x86-hello calls it once, before the foreign-site step
        machine.policy.add(Rule(IdRange(unknown, unknown), Action.FORWARD, migrate))

    b = boot_x86(smp=2, setup=setup)
    assert b.reason.status == PASS_STATUS, b.console
    # VMMCALL is native on the new host: the "foreign" site now runs unpatched ...
    assert "0f 01 d9 -> 0f 01 d9 (unchanged), #UD taken 0, results 0 0" in b.line("foreign site")
    # ... and the guest's VMCALL site, native at boot, is patched to VMMCALL once.
    patches = b.machine.patcher.patches if b.machine.patcher else []
    assert [(p.old, p.new) for p in patches] == [(VMCALL, VMMCALL)]


def _profile(name: str) -> object:
    from pvkit.services.profiles import PROFILES

    return PROFILES[name]


def test_deterministic_runs_repeat_to_the_nanosecond_up_to_the_exit() -> None:
    """x86-hello ends through isa-debug-exit: the vCPU that writes it stops there, not
    a few instructions later when another thread gets round to it (as the CLI runs it,
    where that thread is slowest)."""
    runs = [
        pvkit("run", str(X86_HELLO), "--smp", "2", "--deterministic", "--stats") for _ in range(6)
    ]
    times = [[line for line in r.stderr.splitlines() if "run_ns=" in line] for r in runs]
    assert len(times[0]) == 2 and all(r.returncode == runs[0].returncode for r in runs)
    assert all(t == times[0] for t in times), times


def test_untraced_kick_cpu_and_sched_yield_are_served_directly_with_the_same_answers() -> None:
    """Nothing traces: KICK_CPU and SCHED_YIELD take the trap's direct route (no Call, no
    dispatcher), and the guest prints what the traced run's dispatcher answered it."""
    traced = boot_x86(smp=2)
    untraced = boot_x86(smp=2, traced=False)
    assert untraced.reason.status == PASS_STATUS
    assert untraced.console == traced.console
    engines = untraced.machine._engines.values()
    assert sum(engine.trap.direct_calls for engine in engines) >= 2
    served = {c.function_id for c in traced.trace.calls}
    assert {KvmHypercall.KICK_CPU, KvmHypercall.SCHED_YIELD} <= served
