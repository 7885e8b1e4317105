"""The x86-64 probes: guests/x86/bench/bench.c on the `pc` board, timed by its console markers.

The reference for guest speed is the same guest on the same board with no hypervisor
(profile `none`: no PV MSRs, so nothing watches RDMSR/WRMSR); the probed run has the `kvm`
profile, whose kvmclock, steal-time and async-PF MSRs pvkit must catch. The hypercall and
MSR probes are served by Python (BENCH_SUM; kvmclock's MSR_KVM_SYSTEM_TIME_NEW), to set
beside the arm64 `python_call_us`.
"""

from __future__ import annotations

from collections.abc import Callable

from pvkit.bench.probes import GUESTS, BenchError, MarkerClock
from pvkit.bench.service import BENCH_SUM, BenchService
from pvkit.machine.vm import StopKind
from pvkit.services.profiles import KVM, NONE, HostProfile

BENCH_X86 = GUESTS / "bench-x86.elf"
MSR_KVM_SYSTEM_TIME_NEW = 0x4B56_4D01
ALU_INSTRUCTIONS = 5  # per iteration of the guest's loop
DEBUG_EXIT_ZERO = 1  # isa-debug-exit status of the guest's exit(0)


def available() -> bool:
    return BENCH_X86.is_file()


def x86_loop(
    bootargs: str, *, profile: HostProfile = KVM, trap: str = "auto", timeout: float = 120
) -> float:
    """Seconds the bench loop took inside an x86 pvkit VM of `profile`."""
    from pvkit.platform.pc_x86 import PcConfig, PcX86  # the x86 board only when probed

    clock = MarkerClock()
    config = PcConfig(
        console=clock.feed,
        bootargs=bootargs,
        profile=profile,
        extra_services=[BenchService()] if profile.has_hypervisor else [],
        trap=trap,
    )
    stop = PcX86(config, BENCH_X86).run(timeout)
    if stop.kind is not StopKind.SHUTDOWN or stop.status != DEBUG_EXIT_ZERO:
        shown = clock.text.decode(errors="replace").strip() or "(nothing)"
        raise BenchError(f"x86 {bootargs!r}: the guest did not finish ({stop.message}): {shown}")
    return clock.seconds(f"x86 pvkit {bootargs!r}")


def samplers(alu: int, calls: int) -> dict[str, Callable[[], float]]:
    """`x86_mips_bare` (profile none), `x86_mips_pvkit` (kvm), `x86_vmcall_us`, `x86_msr_us`."""
    return {
        "x86_mips_bare": lambda: (
            alu * ALU_INSTRUCTIONS / x86_loop(f"alu {alu}", profile=NONE) / 1e6
        ),
        "x86_mips_pvkit": lambda: alu * ALU_INSTRUCTIONS / x86_loop(f"alu {alu}") / 1e6,
        "x86_vmcall_us": lambda: x86_loop(f"vmcall {BENCH_SUM:#x} {calls}") / calls * 1e6,
        "x86_msr_us": lambda: x86_loop(f"rdmsr {MSR_KVM_SYSTEM_TIME_NEW:#x} {calls}") / calls * 1e6,
    }
