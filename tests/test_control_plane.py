"""The control plane and the debugger over it, in-process (no gdb, no socket): stop every
vCPU, look, change, resume; breakpoints on engines that come later, across resets; no
engine is touched while the VM runs."""

from __future__ import annotations

import struct
import threading
from pathlib import Path

from pvkit.backends.arm64.debug import Arm64Registers
from pvkit.backends.debug_port import Hit
from pvkit.debug.debugger import FREEZE, INTERRUPT, Debugger
from pvkit.machine.vm import StopKind, StopReason
from pvkit.platform.virt_arm64 import VirtArm64, VirtConfig

from .conftest import SMP_HELLO

PC = 32  # gdb's aarch64 numbering: x0-x30, sp, pc
ENTRY = 0x4008_0000  # where conftest's asm links a guest


def _start(machine: VirtArm64) -> tuple[threading.Thread, list[StopReason]]:
    reasons: list[StopReason] = []
    thread = threading.Thread(target=lambda: reasons.append(machine.run(60)), daemon=True)
    thread.start()
    return thread, reasons


def _pc(dbg: Debugger, vcpu: int) -> int:
    values = dbg.read_registers(vcpu, [PC])
    assert values is not None
    return int.from_bytes(values[0], "little")


def test_freeze_breakpoints_on_later_vcpus_and_resume() -> None:
    machine = VirtArm64(VirtConfig(smp=2, console=lambda b: None), SMP_HELLO)
    dbg = Debugger(machine.vm.control, Arm64Registers())
    dbg.pause(FREEZE, vcpu=0)
    thread, reasons = _start(machine)
    stop = dbg.wait(30)
    assert stop is not None and stop.vcpu == 0 and stop.cause == FREEZE
    assert dbg.threads() == [0]
    entry = _pc(dbg, 0)
    assert entry == machine.plan.entry
    # The secondary's entry: its CPU_ON will name it; 0x360 into this image (a test checks
    # it against the trace in test_gdb_stub.py).
    secondary = entry + 0x360
    assert dbg.insert(0, secondary, 4)
    dbg.resume()
    assert not dbg.insert(1, secondary, 4)  # running: no engine is touched
    stop = dbg.wait(30)
    assert stop is not None and stop.vcpu == 1
    assert stop.cause == Hit("breakpoint", secondary)
    assert dbg.threads() == [0, 1] and _pc(dbg, 1) == secondary
    assert dbg.read_memory(1, secondary, 4) == SMP_HELLO.read_bytes()[0x360:0x364]
    dbg.resume(step=1, alone=[1])
    stop = dbg.wait(30)
    assert stop is not None and stop.vcpu == 1 and stop.cause == Hit("step"), stop
    assert _pc(dbg, 1) == secondary + 4
    assert dbg.remove(0, secondary, 4)
    dbg.resume()
    thread.join(60)
    assert reasons and reasons[0].kind is StopKind.SHUTDOWN, reasons


def test_breakpoints_survive_resets_and_an_interrupt_stops_a_spinning_vm(asm) -> None:
    resetter: Path = asm("mov x1, #1\nldr x0, =0x84000009\nhvc #0\nb .")  # SYSTEM_RESET
    machine = VirtArm64(VirtConfig(console=lambda b: None), resetter)
    dbg = Debugger(machine.vm.control, Arm64Registers())
    dbg.pause(FREEZE, vcpu=0)
    thread, reasons = _start(machine)
    assert dbg.wait(30) is not None
    assert dbg.insert(0, ENTRY + 4, 4)
    dbg.resume()
    for _ in range(3):  # each reset brings a new engine: the breakpoint is on it too
        stop = dbg.wait(30)
        assert stop is not None and stop.cause == Hit("breakpoint", ENTRY + 4)
        dbg.resume(step=0, alone=[0])  # over the breakpoint first, as gdb does
        stop = dbg.wait(30)
        assert stop is not None and stop.cause == Hit("step")
        dbg.resume()
    assert machine.vm.resets >= 2
    assert dbg.wait(30) is not None
    assert dbg.remove(0, ENTRY + 4, 4)
    dbg.resume()
    dbg.interrupt()  # it resets over and over now: stop it wherever it is
    stop = dbg.wait(30)
    assert stop is not None and stop.cause == INTERRUPT
    machine.vm.request_stop(StopReason(StopKind.INTERRUPTED, "test over"))
    thread.join(60)
    assert reasons and reasons[0].kind is StopKind.INTERRUPTED
    assert dbg.read_registers(0, [PC]) is None  # the run is over: no engine is used


def _after_sctlr_writes(image: bytes) -> list[int]:
    """Offsets of the instructions right after each MSR SCTLR_EL1, Xt (0xD5181000 | t)."""
    words = struct.unpack(f"<{len(image) // 4}I", image[: len(image) // 4 * 4])
    return [4 * i + 4 for i, w in enumerate(words) if w & 0xFFFF_FFE0 == 0xD518_1000]


def test_memory_reads_go_through_the_guests_page_tables() -> None:
    """exceptions.Image turns its MMU on (identity RAM, device pages, holes): stop it
    right after it does, then read by virtual address as the guest's tables say."""
    image = SMP_HELLO.parent / "exceptions.Image"
    machine = VirtArm64(VirtConfig(console=lambda b: None), image)
    dbg = Debugger(machine.vm.control, Arm64Registers())
    names = [r.name for r in dbg.arch.registers]
    dbg.pause(FREEZE, vcpu=0)
    thread, reasons = _start(machine)
    assert dbg.wait(30) is not None
    after = [machine.plan.entry + o for o in _after_sctlr_writes(image.read_bytes())]
    assert after, "the image never writes SCTLR_EL1"
    for address in after:
        assert dbg.insert(1, address, 4)
    regs: dict[str, int] = {}
    for _ in after:
        dbg.resume()
        stop = dbg.wait(30)
        assert stop is not None, "the guest ended first"
        assert isinstance(stop.cause, Hit) and stop.cause.address in after
        values = dbg.read_registers(0, range(len(names)))
        assert values is not None
        regs = {n: int.from_bytes(v, "little") for n, v in zip(names, values, strict=True)}
        if regs["SCTLR_EL1"] & 1:
            break
    assert regs["SCTLR_EL1"] & 1, "the guest never turned its MMU on"
    assert regs["TTBR0_EL1"] and regs["TCR_EL1"] & 0x3F == 25  # the SDK's 39-bit space
    for address in after:
        assert dbg.remove(1, address, 4)
    pc = regs["pc"]
    offset = pc - machine.plan.entry
    assert dbg.read_memory(0, pc, 8) == image.read_bytes()[offset : offset + 8]
    assert dbg.read_memory(0, 0, 4) is None  # page 0 is not mapped
    assert dbg.read_memory(0, 0x0900_0000, 4) is None  # the UART: mapped, but not RAM
    assert int.from_bytes(dbg.read_registers(0, [names.index("MIDR_EL1")])[0], "little")
    dbg.resume()
    thread.join(60)
    assert reasons and reasons[0].kind is StopKind.SHUTDOWN
