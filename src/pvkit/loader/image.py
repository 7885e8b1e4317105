"""Load a guest image into RAM the way the arm64 boot protocol (booting.rst) asks.

An Image goes to a 2 MiB-aligned base plus its text_offset; like QEMU's virt board we
use RAM + 2 MiB as the base, so the same file lands at the same address on both.
A file that is neither an ELF file nor an Image (kvm-unit-tests' `.flat`, bare-metal
`objcopy -O binary` output) is a raw binary: like QEMU (hw/arm/boot.c, KERNEL64_LOAD_ADDR)
it is copied to RAM + 0x80000 and entered at its first byte. Its bss and stack are not in
the file, so nothing says how far it reaches: like QEMU, which puts the initrd at
RAM + min(RAM / 2, 128 MiB) and the DTB after it, we treat RAM up to there as the image's,
so the board's DTB goes where QEMU's does (0x48000000 with 256 MiB) and not onto the bss.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

from pvkit.machine.memory import Region

IMAGE_MAGIC = 0x644D_5241  # "ARM\x64" at offset 56
_HEADER = struct.Struct("<IIQQQQQQII")
_FLAG_BIG_ENDIAN = 1
_LEGACY_TEXT_OFFSET = 0x80000
IMAGE_BASE_OFFSET = 2 << 20
RAW_LOAD_OFFSET = 0x80000  # QEMU's KERNEL64_LOAD_ADDR: where a headerless kernel goes
RAW_RESERVE_MAX = 128 << 20  # QEMU (hw/arm/boot.c): initrd at RAM + min(RAM / 2, 128 MiB)
_PAGE = 0x1000


class ImageError(ValueError):
    """The file cannot be booted; the message says why."""


@dataclass(frozen=True, slots=True)
class Segment:
    address: int
    data: bytes
    memsize: int  # >= len(data); the rest is zero (bss)


@dataclass(frozen=True, slots=True)
class BootImage:
    kind: str  # "image", "elf" or "raw"
    entry: int
    segments: tuple[Segment, ...]
    # RAM below this is the image's even beyond its segments (a raw binary's bss and stack).
    reserved_to: int = 0

    @property
    def end(self) -> int:
        """The first address free for what the board adds (the DTB)."""
        return max(self.reserved_to, *(s.address + s.memsize for s in self.segments))


def load_image(path: Path, ram: Region) -> BootImage:
    try:
        blob = path.read_bytes()
    except OSError as exc:
        raise ImageError(f"cannot read guest image {path}: {exc.strerror}") from exc
    if not blob:
        raise ImageError(f"{path} is empty; give a kernel Image, an ELF file or a raw binary")
    if blob[:4] == b"\x7fELF":
        from pvkit.loader.elf import parse_elf

        image = parse_elf(blob, path)
    elif len(blob) >= _HEADER.size and _HEADER.unpack_from(blob)[8] == IMAGE_MAGIC:
        image = parse_arm64_image(blob, ram, path)
    else:
        image = parse_raw(blob, ram)
    for seg in image.segments:
        if not ram.contains(seg.address, seg.memsize):
            raise ImageError(
                f"{path} needs {seg.address:#x}..{seg.address + seg.memsize:#x}, outside RAM "
                f"{ram.base:#x}..{ram.end:#x}; give the VM more memory with --mem"
            )
    return image


def parse_arm64_image(blob: bytes, ram: Region, path: Path) -> BootImage:
    _c0, _c1, text_offset, image_size, flags, *_rest = _HEADER.unpack_from(blob)
    if flags & _FLAG_BIG_ENDIAN:
        raise ImageError(f"{path} is a big-endian kernel; pvkit runs little-endian guests")
    if image_size == 0:  # kernels before 3.17: offset fixed, size unknown
        text_offset = _LEGACY_TEXT_OFFSET
        image_size = len(blob)
    load = ram.base + IMAGE_BASE_OFFSET + text_offset
    return BootImage("image", load, (Segment(load, blob, max(image_size, len(blob))),))


def parse_raw(blob: bytes, ram: Region) -> BootImage:
    """A headerless binary: its bytes at RAM + 0x80000, entered at the first of them; RAM up
    to where QEMU would put an initrd counts as its own (its bss is not in the file)."""
    load = ram.base + RAW_LOAD_OFFSET
    reserved = ram.base + min(ram.size // 2, RAW_RESERVE_MAX)
    reserved = max(reserved, load + len(blob))
    reserved = min(-(-reserved // _PAGE) * _PAGE, ram.end)
    return BootImage("raw", load, (Segment(load, blob, len(blob)),), reserved_to=reserved)
