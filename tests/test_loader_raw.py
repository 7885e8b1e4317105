"""Raw (headerless) arm64 binaries load like QEMU's virt loads them: RAM + 0x80000."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from pvkit.loader.image import IMAGE_MAGIC, ImageError, load_image
from pvkit.machine.memory import Region
from pvkit.machine.vm import StopKind

from .conftest import boot

RAM = Region(0x4000_0000, 16 << 20, "ram")
WFI_LOOP = struct.pack("<II", 0xD503207F, 0x17FFFFFF)  # wfi; b .-4


def test_a_raw_blob_is_placed_at_ram_plus_0x80000_and_entered_at_its_first_byte(
    tmp_path: Path,
) -> None:
    flat = tmp_path / "selftest.flat"
    flat.write_bytes(WFI_LOOP)
    image = load_image(flat, RAM)
    assert image.kind == "raw"
    assert image.entry == 0x4008_0000
    (seg,) = image.segments
    assert seg.address == 0x4008_0000 and seg.data == WFI_LOOP and seg.memsize == 8
    assert image.end == 0x4080_0000  # RAM / 2: its bss is not in the file (see below)


@pytest.mark.parametrize(
    ("ram_size", "end"),
    [(16 << 20, 0x4080_0000), (256 << 20, 0x4800_0000), (1 << 30, 0x4800_0000)],
)
def test_a_raw_blob_owns_ram_up_to_where_qemu_puts_the_initrd(
    tmp_path: Path, ram_size: int, end: int
) -> None:
    """QEMU (hw/arm/boot.c) puts the initrd at RAM + min(RAM / 2, 128 MiB) and the DTB
    after it; a raw binary's bss and stack lie beyond its file, so `end` (where the board
    puts the DTB) must not be the end of the file."""
    flat = tmp_path / "k.flat"
    flat.write_bytes(WFI_LOOP)
    assert load_image(flat, Region(0x4000_0000, ram_size, "ram")).end == end
    big = tmp_path / "big.flat"
    big.write_bytes(bytes(9 << 20) + b"x")  # past RAM / 2: the next page after the file
    assert load_image(big, RAM).end == 0x4008_0000 + (9 << 20) + 0x1000


def test_the_dtb_of_a_raw_guest_survives_it_clearing_its_bss(tmp_path: Path) -> None:
    """kvm-unit-tests' .flat files end where .data ends; the guest clears bss and stack
    after that (selftest: 0xd3a0 + 64 KiB) and then reads the DTB. This guest zeroes the
    64 KiB after its file, then checks the FDT magic at x0 and powers off (else: UNDEF)."""
    code = [
        0xAA0003E1,  # mov x1, x0
        0x100001C2,  # adr x2, end
        0x91404043,  # add x3, x2, #0x10, lsl #12
        0xF800845F,  # 1: str xzr, [x2], #8
        0xEB03005F,  # cmp x2, x3
        0x54FFFFC3,  # b.lo 1b
        0xB9400024,  # ldr w4, [x1]
        0x5281BA05,  # mov w5, #0xdd0
        0x72BDBFC5,  # movk w5, #0xedfe, lsl #16 (d00dfeed read little-endian)
        0x6B05009F,  # cmp w4, w5
        0x54000081,  # b.ne 2f
        0x52800100,  # mov w0, #0x8
        0x72B08000,  # movk w0, #0x8400, lsl #16: PSCI SYSTEM_OFF
        0xD4000002,  # hvc #0
        0x00000000,  # 2: udf #0
    ]
    flat = tmp_path / "bss.flat"
    flat.write_bytes(struct.pack(f"<{len(code)}I", *code))
    result = boot(flat, timeout=30)
    assert result.reason.kind is StopKind.SHUTDOWN, result.reason
    assert result.machine.dtb_address == 0x4800_0000  # where QEMU's virt puts it (256 MiB)


def test_raw_placement_follows_the_ram_base(tmp_path: Path) -> None:
    flat = tmp_path / "a.bin"
    flat.write_bytes(b"\x1f\x20\x03\xd5")
    assert load_image(flat, Region(0x8000_0000, 1 << 20, "ram")).entry == 0x8008_0000


def test_a_zero_length_file_is_refused_in_one_sentence(tmp_path: Path) -> None:
    empty = tmp_path / "empty.flat"
    empty.write_bytes(b"")
    with pytest.raises(ImageError) as info:
        load_image(empty, RAM)
    assert str(info.value) == f"{empty} is empty; give a kernel Image, an ELF file or a raw binary"


def test_a_raw_blob_that_does_not_fit_in_ram_is_refused(tmp_path: Path) -> None:
    big = tmp_path / "big.flat"
    big.write_bytes(bytes(RAM.size - 0x80000 + 1))
    with pytest.raises(ImageError, match=r"outside RAM .*give the VM more memory with --mem"):
        load_image(big, RAM)
    exact = tmp_path / "exact.flat"
    exact.write_bytes(bytes(RAM.size - 0x80000))
    assert load_image(exact, RAM).end == RAM.end


def test_an_arm64_image_still_goes_to_its_text_offset_above_2mib(tmp_path: Path) -> None:
    header = struct.pack("<IIQQQQQQII", 0x14000010, 0, 0x10000, 0x2000, 0, 0, 0, 0, IMAGE_MAGIC, 0)
    kernel = tmp_path / "Image"
    kernel.write_bytes(header)
    image = load_image(kernel, RAM)
    assert image.kind == "image" and image.entry == 0x4021_0000


def test_a_blob_shorter_than_an_image_header_is_raw(tmp_path: Path) -> None:
    tiny = tmp_path / "tiny.bin"
    tiny.write_bytes(b"\x7fEL")  # not quite an ELF magic either
    assert load_image(tiny, RAM).kind == "raw"
