"""Where the virt board puts the initrd and the device tree, decided in one place.

A direct kernel boot follows QEMU's rules (hw/arm/boot.c) so that a kernel finds its
initrd and DTB at the same addresses on both: the initrd goes to RAM + min(RAM / 2,
128 MiB), or just past the image if that is higher, page aligned; the DTB follows the
initrd, aligned to 2 MiB (the arm64 boot protocol, Linux Documentation/arch/arm64/
booting.rst, wants it 8-byte aligned and within one 2 MiB block). An ELF guest is not
taken for Linux: its DTB follows its highest segment. With firmware (`--bios`) the DTB
sits at the start of RAM, where firmware built for QEMU's virt looks for it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from pvkit.devices.cfi_flash import FLASH_BANK_SIZE
from pvkit.loader.image import BootImage, ImageError, load_image
from pvkit.machine.memory import GuestMemory, Region

INITRD_OFFSET_MAX = 128 << 20
PAGE = 0x1000
DTB_ALIGN = 2 << 20
ELF_DTB_ALIGN = 0x1_0000
DTB_MAX = 2 << 20  # booting.rst: the DTB must not exceed 2 MiB
NO_ROOM = "the guest image leaves no room for the device tree; add --mem"
FIRMWARE_ENTRY = 0x0  # the reset vector: the start of flash bank 0


def _align_up(value: int, align: int) -> int:
    return -(-value // align) * align


@dataclass(frozen=True, slots=True)
class BootLayout:
    dtb: int
    initrd: Region | None = None

    def check_dtb(self, ram: Region, size: int) -> None:
        """ImageError unless a DTB of `size` bytes fits at `dtb`."""
        if size > DTB_MAX:
            raise ImageError(f"the device tree is {size} bytes; the boot protocol allows 2 MiB")
        if not ram.contains(self.dtb, size):
            raise ImageError(NO_ROOM)


def kernel_layout(ram: Region, image: BootImage, initrd_size: int = 0) -> BootLayout:
    """Initrd and DTB addresses for a kernel loaded into RAM (the initrd's does not depend
    on the DTB, so the DTB can name it before its own address is known)."""
    if image.kind == "elf" and not initrd_size:
        return BootLayout(_align_up(image.end, ELF_DTB_ALIGN))
    start = ram.base + min(ram.size // 2, INITRD_OFFSET_MAX)
    start = _align_up(max(start, image.end), PAGE)
    if initrd_size and not ram.contains(start, initrd_size):
        raise ImageError(
            f"the initrd ({initrd_size} bytes) does not fit in RAM after the kernel at "
            f"{start:#x}; give the VM more memory with --mem"
        )
    initrd = Region(start, initrd_size, "initrd") if initrd_size else None
    return BootLayout(_align_up(start + initrd_size, DTB_ALIGN), initrd)


def firmware_layout(ram: Region) -> BootLayout:
    return BootLayout(ram.base)


@dataclass(frozen=True, slots=True)
class BootPlan:
    """What goes into RAM (and flash) at power-on and at every reset, and where the boot
    vCPU starts: a kernel's entry with x0 = the DTB, or firmware at 0 with x0 = 0."""

    image: BootImage | None
    dtb: bytes
    layout: BootLayout
    initrd: bytes = b""
    firmware: bytes | None = None
    dtb_changes: tuple[str, ...] = ()  # what pvkit patched in a user's --dtb

    @property
    def entry(self) -> int:
        return FIRMWARE_ENTRY if self.image is None else self.image.entry

    @property
    def x0(self) -> int:
        return 0 if self.image is None else self.layout.dtb

    def used(self) -> list[Region]:
        """RAM the plan writes (for clash checks with service regions)."""
        out = [Region(self.layout.dtb, len(self.dtb), "dtb")]
        if self.image is not None:
            out += [Region(s.address, s.memsize, "image") for s in self.image.segments]
        if self.layout.initrd is not None:
            out.append(self.layout.initrd)
        return out

    def load(self, memory: GuestMemory) -> None:
        if self.image is not None:
            for seg in self.image.segments:
                memory.write(seg.address, seg.data)
        if self.layout.initrd is not None:
            memory.write(self.layout.initrd.base, self.initrd)
        memory.write(self.layout.dtb, self.dtb)


def read_file(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ImageError(f"cannot read {what} {path}: {exc.strerror}") from None


DtbBuilder = Callable[[Region | None], tuple[bytes, list[str]]]


def plan_boot(
    ram: Region,
    kernel: Path | BootImage | None,
    firmware: Path | None,
    initrd: Path | None,
    dtb_for: DtbBuilder,
    reserved: Sequence[Region] = (),
) -> BootPlan:
    """Read the boot files and decide the layout; ImageError says what does not fit.

    `dtb_for(initrd)` is the DTB naming that initrd and what it changed in a user's DTB;
    nothing the plan writes may overlap the `reserved` regions services carve from RAM."""
    if firmware is not None and (kernel is not None or initrd is not None):
        raise ImageError(
            "--bios with --kernel or --initrd needs firmware to fetch them (QEMU's fw_cfg), "
            "which pvkit does not have; boot the kernel directly or from the firmware's disk"
        )
    if firmware is None and kernel is None:
        raise ImageError("nothing to boot: give a kernel (IMAGE or --kernel) or --bios FILE")
    rd = read_file(initrd, "initrd") if initrd is not None else b""
    image: BootImage | None = None
    fw: bytes | None = None
    if firmware is not None:
        fw = read_file(firmware, "firmware")
        if not fw or len(fw) > FLASH_BANK_SIZE:
            raise ImageError(
                f"the firmware {firmware} is {len(fw)} bytes; flash bank 0 holds 1 byte to "
                f"{FLASH_BANK_SIZE >> 20} MiB"
            )
        layout = firmware_layout(ram)
    else:
        assert kernel is not None
        image = kernel if isinstance(kernel, BootImage) else load_image(kernel, ram)
        layout = kernel_layout(ram, image, len(rd))
    dtb, changes = dtb_for(layout.initrd)
    layout.check_dtb(ram, len(dtb))
    plan = BootPlan(image, dtb, layout, rd, fw, tuple(changes))
    if any(r.overlaps(u) for r in reserved for u in plan.used()):
        raise ImageError(NO_ROOM)
    return plan
