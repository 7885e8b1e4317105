"""Raw (headerless) arm64 binaries load like QEMU's virt loads them: RAM + 0x80000."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from pvkit.loader.image import IMAGE_MAGIC, ImageError, load_image
from pvkit.machine.memory import Region

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
    assert image.end == 0x4008_0008


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
