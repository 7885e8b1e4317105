"""Host input reaches the guest as PL011 receive interrupts through the GIC (SPI 1, INTID 33)."""

from __future__ import annotations

from pvkit.machine.vm import StopKind
from pvkit.platform.virt_arm64 import VirtArm64, VirtConfig

from .conftest import assemble

# A guest that sleeps in WFI with the UART's receive interrupt enabled, and for each
# interrupt acknowledges it, echoes every waiting byte + 1, and powers off after a '\n'.
GUEST = """
    adr x1, vec
    msr vbar_el1, x1
    isb
    ldr x20, =0x09000000
    mov w3, #(1 << 4) | (1 << 6)      // UARTIMSC: RXIM and RTIM
    str w3, [x20, #0x38]
    ldr x2, =0x08000000
    mov w3, #0x13                     // GICD_CTLR: ARE, EnableGrp0, EnableGrp1
    str w3, [x2]
    mov w3, #2                        // GICD_ISENABLER1: INTID 33
    str w3, [x2, #0x104]
    str w3, [x2, #0x84]               // GICD_IGROUPR1: group 1
    ldr x4, =0x080A0000
    str wzr, [x4, #0x14]              // GICR_WAKER: awake
    mov x3, #0xff
    msr s3_0_c4_c6_0, x3              // ICC_PMR_EL1
    mov x3, #1
    msr s3_0_c12_c12_7, x3            // ICC_IGRPEN1_EL1
    msr daifclr, #2
1:  wfi
    b 1b
    .balign 2048
vec:
    .rept 5
    b .
    .balign 128
    .endr
    mrs x5, s3_0_c12_c12_0            // ICC_IAR1_EL1
2:  ldr w6, [x20, #0x18]              // UARTFR
    tbnz w6, #4, 3f                   // RXFE: nothing left
    ldr w7, [x20]
    cmp w7, #10
    b.eq off
    add w7, w7, #1
    str w7, [x20]
    b 2b
3:  msr s3_0_c12_c12_1, x5            // ICC_EOIR1_EL1
    eret
off:
    ldr x0, =0x84000008
    hvc #0
"""


def test_bytes_fed_to_the_uart_interrupt_the_guest_and_come_back(tmp_path) -> None:  # type: ignore[no-untyped-def]
    out: list[bytes] = []
    machine = VirtArm64(VirtConfig(console=out.append), assemble(tmp_path, GUEST))
    machine.uart.feed(b"HAL")
    machine.uart.feed(b"\n")
    reason = machine.run(timeout=30)
    assert reason.kind is StopKind.SHUTDOWN, reason
    assert b"".join(out) == b"IBM"


def test_input_arriving_later_wakes_the_guest_from_wfi(tmp_path) -> None:  # type: ignore[no-untyped-def]
    import threading

    out: list[bytes] = []
    machine = VirtArm64(VirtConfig(console=out.append), assemble(tmp_path, GUEST))
    sent = threading.Event()
    machine.uart.more_input = lambda: not sent.is_set()  # a host input that is still open

    def type_line() -> None:
        machine.uart.feed(b"abc\n")
        sent.set()

    threading.Timer(0.3, type_line).start()
    reason = machine.run(timeout=30)
    assert reason.kind is StopKind.SHUTDOWN, reason  # not IDLE: a device can still wake it
    assert b"".join(out) == b"bcd"


def test_with_no_input_to_come_a_guest_waiting_for_it_is_idle(tmp_path) -> None:  # type: ignore[no-untyped-def]
    machine = VirtArm64(VirtConfig(console=lambda b: None), assemble(tmp_path, GUEST))
    machine.uart.more_input = lambda: False  # stdin at its end
    assert machine.run(timeout=30).kind is StopKind.IDLE
