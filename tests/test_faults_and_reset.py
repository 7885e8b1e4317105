"""Guest faults stop the VM with one clear message; SYSTEM_RESET restarts from the initial state."""

from __future__ import annotations

import pytest

from pvkit.machine.vm import StopKind
from pvkit.platform.virt_arm64 import VirtArm64, VirtConfig
from pvkit.services.profiles import NONE
from pvkit.trace.events import TraceHub

from .conftest import SMP_HELLO, boot

pytestmark = pytest.mark.usefixtures("trap")  # every test runs on both traps

UART = "ldr x20, =0x09000000\n"


def test_unmapped_read_names_vcpu_pc_and_address(asm) -> None:  # type: ignore[no-untyped-def]
    elf = asm("ldr x1, =0x20000000\nnop\nldr x2, [x1]\nb .")
    b = boot(elf)
    assert b.reason.kind is StopKind.FAULT
    assert b.reason.message == (
        "vCPU 0: 8-byte read from unmapped address 0x20000000 at PC 0x40080008"
    )


def test_undefined_instruction_without_vectors_is_a_fault(asm) -> None:  # type: ignore[no-untyped-def]
    b = boot(asm("nop\n.inst 0x00000000\nb ."))
    assert b.reason.kind is StopKind.FAULT
    assert "undefined instruction 0x00000000 at PC 0x40080004" in b.reason.message
    assert b.reason.message.startswith("vCPU 0:")


def test_undefined_instruction_is_injected_when_the_guest_has_vectors(asm) -> None:  # type: ignore[no-untyped-def]
    elf = asm(
        UART + "adr x1, vec\nmsr vbar_el1, x1\nisb\n.inst 0\n"
        "mov w1, #'K'\nstrb w1, [x20]\nldr x0, =0x84000008\nhvc #0\n"
        ".balign 2048\nvec:\n.rept 4\nb .\n.balign 128\n.endr\n"
        "mrs x2, esr_el1\nlsr x2, x2, #26\nadd w1, w2, #'0'\nstrb w1, [x20]\n"
        "mrs x3, elr_el1\nadd x3, x3, #4\nmsr elr_el1, x3\neret\n"
    )
    b = boot(elf)
    assert b.console == "0K"  # EC 0 (unknown reason) taken at VBAR+0x200, then resumed
    assert b.reason.kind is StopKind.SHUTDOWN


def test_without_a_hypervisor_hvc_is_undefined(asm) -> None:  # type: ignore[no-untyped-def]
    b = boot(asm("ldr x0, =0x84000000\nhvc #0\nb ."), profile=NONE)
    assert b.reason.kind is StopKind.FAULT
    assert "undefined instruction 0xd4000002 at PC 0x40080004" in b.reason.message


def test_system_reset_restarts_from_the_initial_image(asm) -> None:  # type: ignore[no-untyped-def]
    # Each boot increments a counter in its data and prints it: after a reset RAM is
    # reloaded, so every boot prints 1. The guest resets forever; the timeout ends it.
    elf = asm(
        UART + "adr x1, counter\nldr w2, [x1]\nadd w2, w2, #1\nstr w2, [x1]\n"
        "add w3, w2, #'0'\nstrb w3, [x20]\nldr x0, =0x84000009\nhvc #0\nb .\n"
        ".data\ncounter: .word 0\n"
    )
    b = boot(elf, timeout=2)
    assert b.reason.kind is StopKind.TIMEOUT
    assert b.machine.vm.resets >= 2
    assert set(b.console) == {"1"} and len(b.console) >= 3


def test_all_vcpus_halted_with_no_wakeup_source_ends_the_run(asm) -> None:  # type: ignore[no-untyped-def]
    b = boot(asm("wfi\nb ."), smp=2)
    assert b.reason.kind is StopKind.IDLE


def test_kicking_an_engine_that_was_just_closed_is_harmless() -> None:
    m = VirtArm64(VirtConfig(console=lambda b: None), SMP_HELLO)
    engine = m._engine(0)
    engine.close()
    engine.kick()  # the race _halt_all can lose: no exception, nothing to stop


def test_a_pvkit_error_on_a_vcpu_thread_ends_the_run_with_a_fault() -> None:
    """An exception outside every guest call (here while the vCPU's engine is built) is
    pvkit's own bug: the run ends with it, instead of waiting for a thread that is gone."""
    machine = VirtArm64(VirtConfig(console=lambda b: None), SMP_HELLO, TraceHub())

    def broken(engine: object) -> None:
        raise RuntimeError("engine set-up failed")

    machine.on_engine = broken
    reason = machine.run(30)
    assert reason.kind is StopKind.FAULT
    assert reason.message == "vCPU 0: internal error: RuntimeError('engine set-up failed')"
