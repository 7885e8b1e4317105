"""The pc board's parts: boot structures, devices, patching under contention, hostile guests."""

from __future__ import annotations

import struct
import subprocess
import threading
from pathlib import Path

import pytest

from pvkit.backends.x86.patch import HypercallPatcher
from pvkit.backends.x86.regs import VMCALL, VMMCALL
from pvkit.devices.isa_debug_exit import exit_status
from pvkit.devices.local_apic import DeliveryMode, Ipi, LocalApic, Shorthand
from pvkit.devices.uart16550 import Uart16550
from pvkit.loader.image import ImageError
from pvkit.loader.x86_boot import (
    BOOT_CMDLINE,
    BOOT_MEMMAP,
    MULTIBOOT_BOOTLOADER_MAGIC,
    PVH_MAGIC,
    BootProtocol,
    boot_data,
    parse_x86_elf,
)
from pvkit.machine.memory import GuestMemory
from pvkit.machine.quiesce import ExecutionGate
from pvkit.machine.vm import StopKind
from pvkit.trace.events import TraceHub

from .conftest import ROOT, X86_HELLO, boot_x86

LINK_SCRIPT = ROOT / "guests" / "x86" / "sdk" / "link.ld"

RAM = 64 << 20


def blobs(protocol: BootProtocol, cmdline: str = "console=ttyS0") -> dict[int, bytes]:
    data = boot_data(protocol, RAM, cmdline)
    return dict(data.blobs)


def test_pvh_start_info_and_memory_map() -> None:
    data = boot_data(BootProtocol.PVH, RAM, "console=ttyS0")
    info = dict(data.blobs)[data.info_address]
    magic, version, _flags, modules, _mods, cmdline, _rsdp, memmap, entries, _r = struct.unpack(
        "<IIIIQQQQII", info
    )
    assert (magic, version, modules, data.magic) == (PVH_MAGIC, 1, 0, 0)
    assert (cmdline, memmap, entries) == (BOOT_CMDLINE, BOOT_MEMMAP, 3)
    table = blobs(BootProtocol.PVH)[memmap]
    rows = [struct.unpack_from("<QQII", table, 24 * i)[:3] for i in range(entries)]
    assert rows[0][2] == 1 and rows[1][2] == 2 and rows[2] == (1 << 20, RAM - (1 << 20), 1)
    assert blobs(BootProtocol.PVH)[BOOT_CMDLINE] == b"console=ttyS0\0"


def test_multiboot_information_and_mmap() -> None:
    data = boot_data(BootProtocol.MULTIBOOT, RAM, "")
    info = dict(data.blobs)[data.info_address]
    flags, lower, upper = struct.unpack_from("<III", info)
    assert data.magic == MULTIBOOT_BOOTLOADER_MAGIC
    assert flags == (1 << 0) | (1 << 2) | (1 << 6) | (1 << 9)
    assert upper == (RAM - (1 << 20)) // 1024 and lower < 640
    length, address = struct.unpack_from("<II", info, 44)
    (loader_name,) = struct.unpack_from("<I", info, 64)
    assert dict(data.blobs)[loader_name] == b"pvkit\0"
    table = dict(data.blobs)[address]
    assert length == len(table) == 3 * 24
    size, base, size_bytes, kind = struct.unpack_from("<IQQI", table, 48)
    assert (size, base, size_bytes, kind) == (20, 1 << 20, RAM - (1 << 20), 1)


def test_an_overlong_command_line_is_refused() -> None:
    with pytest.raises(ImageError, match="command line"):
        boot_data(BootProtocol.PVH, RAM, "x" * 5000)


def test_x86_hello_offers_both_protocols() -> None:
    image = parse_x86_elf(X86_HELLO.read_bytes(), X86_HELLO)
    assert image.protocols == [BootProtocol.PVH, BootProtocol.MULTIBOOT]
    assert image.pvh_entry != image.multiboot_entry


def test_an_elf_without_pvh_note_or_multiboot_header_is_refused(tmp_path: Path) -> None:
    blob = bytearray(X86_HELLO.read_bytes())
    blob[blob.find(struct.pack("<I", 0x1BADB002))] ^= 0xFF  # break the multiboot magic
    note = blob.find(b"Xen\0")
    blob[note : note + 4] = b"Xyz\0"
    with pytest.raises(ImageError, match="neither a PVH entry note nor a multiboot header"):
        parse_x86_elf(bytes(blob), tmp_path / "x.elf")


def test_uart_reports_an_empty_transmitter_and_forwards_bytes() -> None:
    out: list[bytes] = []
    uart = Uart16550(out.append)
    assert uart.read_port(0x3FD, 1) & 0x60 == 0x60
    uart.write_port(0x3F8, 1, ord("A"))
    uart.write_port(0x3FB, 1, 0x80)  # DLAB: THR becomes the divisor latch
    uart.write_port(0x3F8, 1, 1)
    assert out == [b"A"] and uart.read_port(0x3F8, 1) == 1


@pytest.mark.parametrize("value", [0, 1, 0x10, 0x7F])
def test_isa_debug_exit_status(value: int) -> None:
    assert exit_status(value) == (value << 1) | 1


def test_local_apic_decodes_icr_writes() -> None:
    sent: list[Ipi] = []
    apic = LocalApic(3, sent.append)
    assert apic.read(0x20, 4) == 3 << 24
    apic.write(0x310, 4, 5 << 24)
    apic.write(0x300, 4, 0x4608)
    assert sent == [Ipi(3, 5, Shorthand.NONE, DeliveryMode.STARTUP, 0x08)]


def test_contending_vcpus_patch_a_site_exactly_once() -> None:
    memory = GuestMemory(0, 1 << 20)
    site = 0x1000
    memory.write(site, VMMCALL)
    vcpus = 8
    gate = ExecutionGate(vcpus, kick=lambda _i: None)
    patcher = HypercallPatcher(memory, gate, TraceHub(), VMCALL, VMMCALL)
    start = threading.Barrier(vcpus)

    def vcpu(index: int) -> None:
        gate.enter(index)  # running guest code, then trapping on the same site
        start.wait()
        patcher.patch(index, site, [site, site + 1, site + 2])
        gate.leave(index)

    threads = [threading.Thread(target=vcpu, args=(i,)) for i in range(vcpus)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert not any(t.is_alive() for t in threads)
    assert len(patcher.patches) == 1 and memory.read(site, 3) == VMCALL
    assert gate.generation == vcpus  # every pause ended with a code-generation bump


def test_the_pause_waits_for_running_vcpus_and_kicks_them() -> None:
    kicked: list[int] = []
    gate = ExecutionGate(2, kick=kicked.append)
    gate.enter(1)  # vCPU 1 is in guest code
    released = threading.Timer(0.05, lambda: gate.leave(1))
    released.start()
    with gate.others_paused(0):
        assert 1 in kicked
        entered = threading.Event()
        t = threading.Thread(target=lambda: (gate.enter(1), entered.set()))
        t.start()
        assert not entered.wait(0.05)  # no vCPU re-enters guest code during the pause
    assert entered.wait(5)
    t.join()


def pvh_guest(tmp_path: Path, body32: str) -> Path:
    """A PVH ELF whose 32-bit entry runs `body32` (built with the system gcc)."""
    src = tmp_path / "g.S"
    src.write_text(
        '.section .note.Xen, "a", @note\n.balign 4\n.long 4, 4, 18\n.asciz "Xen"\n.long start\n'
        ".text\n.code32\n.globl start\nstart:\n" + body32 + "\n"
    )
    elf = tmp_path / "g.elf"
    subprocess.run(
        ["gcc", "-m32", "-nostdlib", "-static", "-no-pie", f"-Wl,-T,{LINK_SCRIPT}",
         "-Wl,--build-id=none", "-Wl,-e,start", "-o", str(elf), str(src)],
        check=True,
    )  # fmt: skip
    return elf


def test_ud_before_the_guest_has_an_idt_is_a_reported_triple_fault(tmp_path: Path) -> None:
    b = boot_x86(pvh_guest(tmp_path, "ud2"))
    assert b.reason.kind is StopKind.FAULT
    assert "triple fault: vector 6" in b.reason.message and "64-bit mode" in b.reason.message
    assert [e.fields["vector"] for e in b.trace.events if e.kind == "inject"] == [6]


def test_acpi_s5_powers_off(tmp_path: Path) -> None:
    b = boot_x86(pvh_guest(tmp_path, "movw $0x2000, %ax\nmovw $0x604, %dx\noutw %ax, %dx\nhlt"))
    assert b.reason.kind is StopKind.SHUTDOWN and b.reason.status is None
    assert "ACPI S5" in b.reason.message


def test_a_32_bit_caller_is_served_with_32_bit_values(tmp_path: Path) -> None:
    code = "movl $0x7fff0001, %eax\nmovl $-1, %ebx\nvmcall\nmovb %al, %al\noutb %al, $0xf4\n"
    b = boot_x86(pvh_guest(tmp_path, code))
    [call] = b.trace.calls
    assert call.function_id == 0x7FFF_0001 and call.args[0] == 0xFFFF_FFFF
    assert b.reason.status == (((-1000) & 0xFF) << 1 | 1) & 0xFF  # AL of -KVM_ENOSYS


def test_a_guest_halting_with_nothing_to_wake_it_ends_idle(tmp_path: Path) -> None:
    b = boot_x86(pvh_guest(tmp_path, "cli\nhlt\njmp start"))
    assert b.reason.kind is StopKind.IDLE


def test_unmapped_access_is_a_fault_naming_the_address(tmp_path: Path) -> None:
    b = boot_x86(pvh_guest(tmp_path, "movl 0xd0000000, %eax"))
    assert b.reason.kind is StopKind.FAULT and "0xd0000000" in b.reason.message


@pytest.mark.parametrize("vendor", ["intel", "amd"])
def test_an_invalid_opcode_in_the_last_bytes_of_ram_is_ud_not_a_host_error(
    tmp_path: Path, vendor: str
) -> None:
    # UD2 in the last two bytes of 32 MiB: the trap's third byte would be past RAM.
    end = 32 << 20
    body = f"movw $0x0b0f, {end - 2:#x}\nmovl ${end - 2:#x}, %eax\njmp *%eax"
    b = boot_x86(pvh_guest(tmp_path, body), memory=end, vendor=vendor)
    assert b.reason.kind is StopKind.FAULT
    assert "triple fault: vector 6" in b.reason.message, b.reason.message
    assert [e.fields["vector"] for e in b.trace.events if e.kind == "inject"] == [6]
