"""x86 boot protocols: PVH direct boot and multiboot v1, with an E820-style memory map.

Both start the kernel in 32-bit protected mode with paging off; the kernel enables long
mode itself. The image is an ELF file; which protocols it supports is read from it (the
PVH entry ELF note, the multiboot header in its first 8 KiB). Structure layouts: Xen's
public hvm/start_info.h (version 1) and the Multiboot 0.6.96 specification.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import Enum, IntEnum
from pathlib import Path

from elftools.elf.elffile import ELFFile

from pvkit.loader.elf import check_in_file, elf_errors, load_segments, open_elf
from pvkit.loader.image import BootImage, ImageError

XEN_ELFNOTE_PHYS32_ENTRY = 18
PVH_MAGIC = 0x336E_C578
PVH_VERSION = 1
MULTIBOOT_HEADER_MAGIC = 0x1BAD_B002
MULTIBOOT_BOOTLOADER_MAGIC = 0x2BAD_B002
MULTIBOOT_SEARCH = 8192
MB_FLAGS_UNDERSTOOD = 0b11  # bit 0 page-align modules (none here), bit 1 memory info
MB_AOUT_KLUDGE = 1 << 16
MBI_MEMORY = 1 << 0
MBI_CMDLINE = 1 << 2
MBI_MMAP = 1 << 6
MBI_LOADER_NAME = 1 << 9

# Low memory the platform keeps for itself (reserved in the memory map): the boot GDT, the
# boot structures, and the AP reset stub with its per-vCPU SIPI far pointers.
LOW_RAM_END = 0x9_E000
HIGH_RAM_START = 0x10_0000
RESET_STUB = 0x9_E000
SIPI_SLOTS = 0x9_E800  # one real-mode far pointer (offset, segment) per vCPU
STUB_SEGMENT_BASE = 0x9_0000  # base of the stub's 16-bit segments (descriptors 0x20, 0x28)
BOOT_GDT = 0x9_F000
BOOT_INFO = 0x9_F100  # hvm_start_info or multiboot_info
BOOT_MEMMAP = 0x9_F200
BOOT_CMDLINE = 0x9_F800
CMDLINE_MAX = 0x700  # bytes including the terminating NUL
BOOT_LOADER_NAME = 0x9_FF00
# null, null, flat 32-bit code (0x10), flat data (0x18), and for the reset stub 16-bit
# code (0x20) and data (0x28) based at STUB_SEGMENT_BASE / 0 with 64 KiB limits.
_BOOT_GDT = struct.pack(
    "<6Q", 0, 0, 0x00CF_9A00_0000_FFFF, 0x00CF_9200_0000_FFFF, 0x0000_9A09_0000_FFFF,
    0x0000_9200_0000_FFFF,
)  # fmt: skip
BOOT_GDT_LIMIT = len(_BOOT_GDT) - 1
# How an AP reaches real mode with consistent hidden segment state: the engine cannot
# load a real-mode CS itself, so the CPU does it, like microcode after INIT-SIPI:
#   .code32: ljmp $0x20, $0xE008; nop
#   .code16: mov $0x28, %ax; mov %ax, %ds/%es/%ss/%fs/%gs; clear CR0.PE;
#            xor %ax, %ax; mov %ax, %ds/%es/%ss/%fs/%gs; ljmp *%cs:(%si)
# with SI = the vCPU's SIPI slot offset from STUB_SEGMENT_BASE.
_RESET_STUB = bytes.fromhex(
    "ea08e00000200090b828008ed88ec08ed08ee08ee80f20c024fe0f22c031c08ed88ec08ed08ee08ee82eff2c"
)


class MemoryType(IntEnum):
    """E820 / PVH memmap / multiboot mmap type numbers (they agree)."""

    RAM = 1
    RESERVED = 2


class BootProtocol(Enum):
    PVH = "pvh"
    MULTIBOOT = "multiboot"


@dataclass(frozen=True, slots=True)
class X86Image:
    image: BootImage
    pvh_entry: int | None
    multiboot_entry: int | None  # the ELF entry, when a valid multiboot header exists

    @property
    def protocols(self) -> list[BootProtocol]:
        out = []
        if self.pvh_entry is not None:
            out.append(BootProtocol.PVH)
        if self.multiboot_entry is not None:
            out.append(BootProtocol.MULTIBOOT)
        return out


def parse_x86_elf(blob: bytes, path: Path) -> X86Image:
    with elf_errors(path):
        elf = open_elf(blob)
        if elf["e_machine"] not in ("EM_X86_64", "EM_386") or not elf.little_endian:
            raise ImageError(f"{path} is not an x86 ELF file")
        segments = load_segments(elf, blob, path)
        pvh = _pvh_entry(elf, blob, path)
        entry = elf["e_entry"]
    if not segments:
        raise ImageError(f"{path} has no loadable segments")
    multiboot = entry if _has_multiboot_header(blob, path) else None
    if pvh is None and multiboot is None:
        raise ImageError(f"{path} has neither a PVH entry note nor a multiboot header")
    return X86Image(BootImage("elf", entry, segments), pvh, multiboot)


def _pvh_entry(elf: ELFFile, blob: bytes, path: Path) -> int | None:
    for seg in elf.iter_segments():
        if seg["p_type"] != "PT_NOTE":
            continue
        check_in_file(blob, seg, path)  # before pyelftools reads the notes
        for note in seg.iter_notes():  # type: ignore[attr-defined]  # NoteSegment
            if note["n_name"] == "Xen" and note["n_type"] == XEN_ELFNOTE_PHYS32_ENTRY:
                desc = note["n_descdata"]
                raw = desc.encode("latin-1") if isinstance(desc, str) else bytes(desc)
                if len(raw) not in (4, 8):
                    return None
                value: int = int.from_bytes(raw, "little")
                return value
    return None


def _has_multiboot_header(blob: bytes, path: Path) -> bool:
    for offset in range(0, min(len(blob), MULTIBOOT_SEARCH) - 11, 4):
        magic, flags, checksum = struct.unpack_from("<III", blob, offset)
        if magic != MULTIBOOT_HEADER_MAGIC or (magic + flags + checksum) & 0xFFFF_FFFF:
            continue
        if flags & MB_AOUT_KLUDGE:
            raise ImageError(f"{path}: multiboot address fields (flag 16) are not supported")
        unknown = flags & 0xFFFF & ~MB_FLAGS_UNDERSTOOD
        if unknown:
            raise ImageError(f"{path}: its multiboot header requires flags {unknown:#x}")
        return True
    return False


def memory_map(ram_size: int) -> list[tuple[int, int, MemoryType]]:
    """(address, size, type) for a VM with `ram_size` bytes of RAM at address 0."""
    return [
        (0, LOW_RAM_END, MemoryType.RAM),
        (LOW_RAM_END, HIGH_RAM_START - LOW_RAM_END, MemoryType.RESERVED),
        (HIGH_RAM_START, ram_size - HIGH_RAM_START, MemoryType.RAM),
    ]


@dataclass(frozen=True, slots=True)
class BootData:
    """What the platform writes below 1 MiB before the first instruction."""

    blobs: tuple[tuple[int, bytes], ...]
    info_address: int  # EBX
    magic: int  # EAX (multiboot) or 0


def boot_data(protocol: BootProtocol, ram_size: int, cmdline: str) -> BootData:
    raw_cmdline = cmdline.encode() + b"\0"
    if len(raw_cmdline) > CMDLINE_MAX:
        raise ImageError(f"the command line is longer than {CMDLINE_MAX - 1} bytes")
    regions = memory_map(ram_size)
    blobs = [(BOOT_GDT, _BOOT_GDT), (RESET_STUB, _RESET_STUB), (BOOT_CMDLINE, raw_cmdline)]
    if protocol is BootProtocol.PVH:
        table = b"".join(struct.pack("<QQII", a, s, t, 0) for a, s, t in regions)
        info = struct.pack(
            "<IIIIQQQQII", PVH_MAGIC, PVH_VERSION, 0, 0, 0, BOOT_CMDLINE, 0, BOOT_MEMMAP,
            len(regions), 0,
        )  # fmt: skip
        blobs += [(BOOT_INFO, info), (BOOT_MEMMAP, table)]
        return BootData(tuple(blobs), BOOT_INFO, 0)
    # multiboot: each mmap entry starts with its size, not counting the size field itself
    table = b"".join(struct.pack("<IQQI", 20, a, s, t) for a, s, t in regions)
    flags = MBI_MEMORY | MBI_CMDLINE | MBI_MMAP | MBI_LOADER_NAME
    mem_lower_kib = LOW_RAM_END // 1024
    mem_upper_kib = (ram_size - HIGH_RAM_START) // 1024
    info = struct.pack(
        "<IIIIIII16sII12sI", flags, mem_lower_kib, mem_upper_kib, 0, BOOT_CMDLINE, 0, 0,
        b"", len(table), BOOT_MEMMAP, b"", BOOT_LOADER_NAME,
    )  # fmt: skip
    blobs += [(BOOT_INFO, info), (BOOT_MEMMAP, table), (BOOT_LOADER_NAME, b"pvkit\0")]
    return BootData(tuple(blobs), BOOT_INFO, MULTIBOOT_BOOTLOADER_MAGIC)
