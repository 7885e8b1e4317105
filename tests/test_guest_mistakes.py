"""Guest mistakes with exceptions and interrupts stay the guest's problem.

A bad vector table, a fault inside the handler or an interrupt that is never acknowledged
becomes what the architecture says (the guest loops, or takes the same interrupt again) or
a clean VM fault that names the vCPU, the PC and the syndrome; never a host exception.
"""

from __future__ import annotations

import pytest

from pvkit.machine.vm import StopKind

from .conftest import boot

pytestmark = pytest.mark.usefixtures("trap")  # every test runs on both traps

UART = "ldr x20, =0x09000000\n"
SYSTEM_OFF = "ldr x0, =0x84000008\nhvc #0\n"


def test_vectors_in_unmapped_memory_are_a_fault_at_the_vector(asm) -> None:  # type: ignore[no-untyped-def]
    b = boot(asm("ldr x1, =0x20000000\nmsr vbar_el1, x1\nisb\n.inst 0\nb ."))
    assert b.reason.kind is StopKind.FAULT
    # UNDEF at the current EL with SP_ELx goes to VBAR_EL1 + 0x200, where nothing is
    # mapped: the fetch is a synchronous external abort (EC 0x21, IFSC 0x10), taken at
    # the same vector again, and again.
    assert b.reason.message == (
        "vCPU 0: instruction abort inside the exception vectors (VBAR_EL1 0x20000000), "
        "which would repeat forever: ESR_EL1 0x86000010 FAR_EL1 0x20000200 at PC 0x20000200"
    )


def test_an_access_to_unmapped_memory_is_an_external_abort_the_guest_handles(asm) -> None:  # type: ignore[no-untyped-def]
    """As on QEMU's virt board, nothing mapped at an address means a bus error the guest
    takes: a data abort with DFSC 0x10 (synchronous external abort), FAR the address."""
    elf = asm(
        UART + "adr x1, vec\nmsr vbar_el1, x1\nisb\n"
        "ldr x1, =0x20000000\nldr x2, [x1]\n" + SYSTEM_OFF + "b .\n"
        ".balign 2048\nvec:\n.rept 4\nb .\n.balign 128\n.endr\n"
        "mrs x3, esr_el1\nmrs x4, far_el1\nldr x5, =0x96000010\ncmp x3, x5\nb.ne 1f\n"
        "cmp x4, x1\nb.ne 1f\nmov w6, #'Y'\nstrb w6, [x20]\n"
        "mrs x3, elr_el1\nadd x3, x3, #4\nmsr elr_el1, x3\neret\n"
        "1: mov w6, #'N'\nstrb w6, [x20]\n" + SYSTEM_OFF
    )
    b = boot(elf)
    assert b.reason.kind is StopKind.SHUTDOWN, b.reason
    assert b.console == "Y"


def test_a_fault_inside_the_vectors_is_reported_with_its_syndrome(asm) -> None:  # type: ignore[no-untyped-def]
    elf = asm(
        "adr x1, vec\nmsr vbar_el1, x1\nisb\n.inst 0\nb .\n"
        ".balign 2048\nvec:\n.rept 16\n.inst 0\n.balign 128\n.endr\n"
    )
    b = boot(elf)
    assert b.reason.kind is StopKind.FAULT
    message = b.reason.message
    assert message.startswith("vCPU 0: undefined instruction inside the exception vectors")
    # EC 0 (unknown reason), IL set; taken at the UNDEF in the SPx synchronous vector
    assert "ESR_EL1 0x2000000" in message and "at PC 0x40080a00" in message


def test_an_unacknowledged_interrupt_is_taken_again_and_again(asm) -> None:  # type: ignore[no-untyped-def]
    """A level interrupt the handler never acknowledges stays pending: the CPU takes it
    each time it unmasks IRQs (an interrupt storm), as on hardware. After 1000 entries the
    guest powers off, which shows the VM stays in control throughout."""
    elf = asm(
        "adr x1, vec\nmsr vbar_el1, x1\nisb\n"
        "ldr x2, =0x08000000\nmov w3, #0x13\nstr w3, [x2]\n"  # GICD_CTLR: ARE, Grp0, Grp1
        "ldr x4, =0x080B0000\nmvn w3, wzr\nstr w3, [x4, #0x80]\n"  # GICR_IGROUPR0: group 1
        "mov w3, #0xffff\nstr w3, [x4, #0x100]\n"  # GICR_ISENABLER0: SGIs
        "mov x3, #0xff\nmsr s3_0_c4_c6_0, x3\n"  # ICC_PMR_EL1
        "mov x3, #1\nmsr s3_0_c12_c12_7, x3\n"  # ICC_IGRPEN1_EL1
        "mov x3, #1\nmsr s3_0_c12_c11_5, x3\nisb\n"  # ICC_SGI1R_EL1: SGI 0 to CPU 0
        "mov x10, #0\nmsr daifclr, #2\n1: b 1b\n"
        ".balign 2048\nvec:\n.rept 5\nb .\n.balign 128\n.endr\n"
        # IRQ, current EL with SP_ELx (VBAR + 0x280): count, never read ICC_IAR1_EL1
        "add x10, x10, #1\ncmp x10, #1000\nb.eq 2f\neret\n"
        "2:\n" + SYSTEM_OFF
    )
    b = boot(elf, timeout=30)
    assert b.reason.kind is StopKind.SHUTDOWN, b.reason


def test_tracing_reports_each_exception_the_cpu_takes(asm) -> None:  # type: ignore[no-untyped-def]
    elf = asm(
        "adr x1, vec\nmsr vbar_el1, x1\nisb\nsvc #7\nbrk #3\n" + SYSTEM_OFF + "b .\n"
        ".balign 2048\nvec:\n.rept 4\nb .\n.balign 128\n.endr\n"
        # synchronous, current EL with SP_ELx: step over BRK (ELR is the BRK itself)
        "mrs x2, esr_el1\nlsr x2, x2, #26\ncmp x2, #0x3c\nb.ne 1f\n"
        "mrs x3, elr_el1\nadd x3, x3, #4\nmsr elr_el1, x3\n1: eret\n"
    )
    b = boot(elf)
    assert b.reason.kind is StopKind.SHUTDOWN, b.reason
    taken = [(e.fields["what"], e.fields["pc"]) for e in b.trace.events if e.kind == "exception"]
    assert taken == [("SVC", "0x4008000c"), ("breakpoint (BRK)", "0x40080010")]
