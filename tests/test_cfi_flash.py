"""CFI NOR flash bank, Intel/Sharp command set (JEDEC JESD68; Intel AP-646), driven the way
U-Boot's drivers/mtd/cfi_flash.c drives QEMU virt's flash: port width 4, two x16 chips, so
every command is replicated in both 16-bit lanes and CFI offsets are scaled by 4."""

from __future__ import annotations

import ctypes
import threading

import pytest

from pvkit.devices.cfi_flash import (
    FLASH0_BASE,
    FLASH1_BASE,
    FLASH_BANK_SIZE,
    FLASH_BLOCK_SIZE,
    SR_ERASE_ERROR,
    SR_LOCKED,
    SR_PROGRAM_ERROR,
    SR_READY,
    SR_SEQUENCE_ERROR,
    CfiFlash,
)

PORT = 4  # U-Boot's portwidth in bytes
BLOCK = FLASH_BLOCK_SIZE
SMALL = 2 << 20  # behaviour tests use a small bank of the same blocks: quicker to build


def bank(data: bytes = b"", *, writable: bool = True) -> CfiFlash:
    return CfiFlash(FLASH1_BASE, data, size=SMALL, writable=writable)


def cmd(c: int) -> int:
    """flash_make_cmd() for two x16 chips on a 32-bit port."""
    return c | c << 16


def write_cmd(dev: CfiFlash, sector: int, offset: int, c: int) -> None:
    """flash_write_cmd(): the command word at sector + offset * portwidth."""
    dev.write(sector + offset * PORT, 4, cmd(c))


def read_uchar(dev: CfiFlash, offset: int) -> int:
    """flash_read_uchar(): the low byte at offset * portwidth."""
    return dev.read(offset * PORT, 1)


def isequal(dev: CfiFlash, sector: int, offset: int, c: int) -> bool:
    return dev.read(sector + offset * PORT, 4) == cmd(c)


def status(dev: CfiFlash, at: int = 0) -> int:
    return dev.read(at, 4)


def lanes(sr: int) -> int:
    return sr | sr << 16


def query(dev: CfiFlash) -> None:
    write_cmd(dev, 0, 0, 0xF0)  # flash_cmd_reset(): AMD reset, then Intel read array
    write_cmd(dev, 0, 0, 0xFF)
    write_cmd(dev, 0, 0x55, 0x98)


def test_a_fresh_bank_reads_erased_and_bank0_holds_the_image_padded() -> None:
    blank = CfiFlash(FLASH1_BASE, name="flash1")
    assert blank.region.base == 0x0400_0000 and blank.region.size == 64 << 20
    assert blank.in_array_mode
    assert blank.read(0, 4) == 0xFFFF_FFFF
    assert blank.read(FLASH_BANK_SIZE - 8, 8) == (1 << 64) - 1
    firmware = bytes(range(1, 256))
    bank0 = CfiFlash(FLASH0_BASE, firmware, writable=False, name="flash0")
    assert bank0.read(0, 4) == 0x04030201
    assert bank0.read(254, 2) == 0xFFFF  # image ends at 255; padding is erased
    assert bank0.array(0, 255) == firmware
    assert ctypes.string_at(bank0.host_address, 4) == firmware[:4]


def test_an_image_bigger_than_the_bank_is_refused_in_one_sentence() -> None:
    with pytest.raises(ValueError, match="does not fit the 1 MiB flash bank"):
        CfiFlash(0, bytes((1 << 20) + 1), size=1 << 20, block_size=BLOCK)


def test_qry_table_as_u_boot_reads_it() -> None:
    dev = CfiFlash(FLASH1_BASE)  # the virt geometry
    query(dev)
    assert not dev.in_array_mode
    assert isequal(dev, 0, 0x10, ord("Q"))
    assert isequal(dev, 0, 0x11, ord("R"))
    assert isequal(dev, 0, 0x12, ord("Y"))
    # U-Boot's width probe must not also match one x32 chip or four x8 chips.
    assert dev.read(0x10 * PORT, 4) not in (0x51, 0x5151_5151)

    def u16(offset: int) -> int:
        return read_uchar(dev, offset) | read_uchar(dev, offset + 1) << 8

    assert u16(0x13) == 0x0001  # primary vendor command set: Intel/Sharp extended
    assert u16(0x15) == 0x0031  # primary extended table address
    assert u16(0x17) == 0 and u16(0x19) == 0
    assert u16(0x28) == 0x0002  # x8/x16 asynchronous
    size_ratio = 4 // 2  # portwidth / chipwidth
    assert (1 << read_uchar(dev, 0x27)) * size_ratio == FLASH_BANK_SIZE
    buffer_size = (1 << u16(0x2A)) * size_ratio
    assert buffer_size == 4096
    assert read_uchar(dev, 0x2C) == 1  # one erase block region
    info = u16(0x2D) | u16(0x2F) << 16
    count, region_size = (info & 0xFFFF) + 1, (info >> 16) * 256
    assert count == 256 and region_size * size_ratio == FLASH_BLOCK_SIZE
    assert count * region_size * size_ratio == FLASH_BANK_SIZE
    pri = bytes(read_uchar(dev, 0x31 + i) for i in range(5))
    assert pri == b"PRI10"
    assert read_uchar(dev, 0x200) == 0  # beyond the table


def test_query_answers_per_device_lane_for_every_access_size() -> None:
    dev = bank()
    query(dev)
    q = 0x10 * PORT
    assert dev.read(q, 1) == ord("Q") and dev.read(q + 1, 1) == 0  # chip 0, x16
    assert dev.read(q + 2, 1) == ord("Q") and dev.read(q + 2, 2) == ord("Q")  # chip 1
    assert dev.read(q, 8) == cmd(ord("Q")) | cmd(ord("R")) << 32


def test_leaving_query_mode_with_read_array() -> None:
    dev = bank()
    query(dev)
    write_cmd(dev, 0, 0, 0xFF)
    assert dev.in_array_mode and dev.read(0x40, 4) == 0xFFFF_FFFF


def test_read_identifier_and_block_lock_status() -> None:
    dev = bank()
    write_cmd(dev, 0, 0, 0x90)
    assert dev.read(0, 4) == cmd(0x89)  # Intel
    assert dev.read(1 * PORT, 4) == cmd(0x18)
    sector = 5 * BLOCK
    write_cmd(dev, sector, 0, 0x90)
    assert not isequal(dev, sector, 2, 0x01)  # flash_isset(..., FLASH_OFFSET_PROTECT, 1)
    locked = bank(writable=False)
    write_cmd(locked, sector, 0, 0x90)
    assert isequal(locked, sector, 2, 0x01)


def test_read_status_and_clear_status() -> None:
    dev = bank()
    write_cmd(dev, 0, 0, 0x70)
    assert status(dev) == lanes(SR_READY)
    assert status(dev, 12345 * 4) == lanes(SR_READY)  # any address
    assert dev.read(1, 1) == 0 and dev.read(2, 1) == SR_READY
    write_cmd(dev, 0, 0, 0xAA)  # not a command of this set
    assert status(dev) == lanes(SR_READY | SR_SEQUENCE_ERROR)
    write_cmd(dev, 0, 0, 0x50)
    assert status(dev) == lanes(SR_READY) and not dev.in_array_mode


def test_word_program_then_read_back() -> None:
    dev = bank()
    write_cmd(dev, 0, 0, 0x50)
    dev.write(0x100, 4, cmd(0x40))
    dev.write(0x100, 4, 0x1234_5678)
    assert status(dev, 0x100) == lanes(SR_READY)
    write_cmd(dev, 0, 0, 0xFF)
    assert dev.read(0x100, 4) == 0x1234_5678
    assert dev.array(0x100, 4) == bytes.fromhex("78563412")
    assert dev.read(0x104, 4) == 0xFFFF_FFFF


def test_programming_only_clears_bits() -> None:
    dev = bank()
    for value in (0x1234_5678, 0xFFFF_0000):
        dev.write(0x200, 4, cmd(0x10))
        dev.write(0x200, 4, value)
    write_cmd(dev, 0, 0, 0xFF)
    assert dev.read(0x200, 4) == 0x1234_0000


def test_byte_and_doubleword_program() -> None:
    dev = bank()
    dev.write(0x301, 1, 0x40)
    dev.write(0x301, 1, 0xA5)
    dev.write(0x308, 4, cmd(0x40))
    dev.write(0x308, 8, 0x0102_0304_0506_0708)
    write_cmd(dev, 0, 0, 0xFF)
    assert dev.read(0x300, 4) == 0xFFFF_A5FF
    assert dev.read(0x308, 8) == 0x0102_0304_0506_0708


def test_block_erase() -> None:
    dev = bank(b"\x00" * (3 * BLOCK))
    sector = 1 * BLOCK
    write_cmd(dev, sector, 0, 0x50)
    write_cmd(dev, sector, 0, 0x20)
    write_cmd(dev, sector, 0, 0xD0)
    assert status(dev, sector) == lanes(SR_READY)
    write_cmd(dev, sector, 0, 0xFF)
    assert dev.array(sector, BLOCK) == b"\xff" * BLOCK
    assert dev.array(0, BLOCK) == bytes(BLOCK)  # neighbours untouched
    assert dev.array(2 * BLOCK, BLOCK) == bytes(BLOCK)


def test_erase_without_confirm_is_a_sequence_error_and_erases_nothing() -> None:
    dev = bank(b"\x00" * BLOCK)
    write_cmd(dev, 0, 0, 0x20)
    write_cmd(dev, 0, 0, 0xFF)
    assert status(dev) == lanes(SR_READY | SR_SEQUENCE_ERROR)
    write_cmd(dev, 0, 0, 0xFF)
    assert dev.read(0, 4) == 0


def u_boot_buffered_write(dev: CfiFlash, dest: int, data: bytes) -> int:
    """flash_write_cfibuffer() for Intel: clear status, read status, E8h, wait for the
    buffer, count - 1, the words, D0h, then the full status check."""
    sector = dest - dest % BLOCK
    write_cmd(dev, sector, 0, 0x50)
    write_cmd(dev, sector, 0, 0x70)
    write_cmd(dev, sector, 0, 0xE8)
    assert status(dev, sector) & lanes(SR_READY) == lanes(SR_READY)  # buffer available
    words = len(data) // PORT
    write_cmd(dev, sector, 0, words - 1)
    for i in range(words):
        dev.write(dest + i * PORT, 4, int.from_bytes(data[i * PORT : (i + 1) * PORT], "little"))
    write_cmd(dev, sector, 0, 0xD0)
    sr = status(dev, sector)
    write_cmd(dev, sector, 0, 0xFF)
    return sr


def test_buffered_write_of_a_full_buffer() -> None:
    dev = bank()
    data = bytes((i * 7) & 0xFF for i in range(4096))
    dest = 3 * BLOCK + 0x1000
    assert u_boot_buffered_write(dev, dest, data) == lanes(SR_READY)
    assert dev.in_array_mode
    assert dev.array(dest, len(data)) == data
    assert dev.read(dest + 4096, 4) == 0xFFFF_FFFF


def test_buffered_write_programs_nothing_until_confirmed() -> None:
    dev = bank()
    write_cmd(dev, 0, 0, 0xE8)
    write_cmd(dev, 0, 0, 1)  # two words
    dev.write(0, 4, 0)
    dev.write(4, 4, 0)
    assert dev.array(0, 8) == b"\xff" * 8
    write_cmd(dev, 0, 0, 0x70)  # not D0h: the buffer is abandoned
    assert status(dev) == lanes(SR_READY | SR_SEQUENCE_ERROR)
    write_cmd(dev, 0, 0, 0xFF)
    assert dev.array(0, 8) == b"\xff" * 8


def test_a_buffer_count_beyond_the_buffer_is_a_sequence_error() -> None:
    dev = bank()
    write_cmd(dev, 0, 0, 0xE8)
    write_cmd(dev, 0, 0, 1024)  # 1025 words > 2 KiB per chip
    assert status(dev) == lanes(SR_READY | SR_SEQUENCE_ERROR)
    dev.write(0, 4, 0)  # a new command cycle (00h: read array), not buffer data
    assert dev.in_array_mode and dev.read(0, 4) == 0xFFFF_FFFF


def test_too_much_data_for_the_count_is_a_sequence_error() -> None:
    dev = bank()
    write_cmd(dev, 0, 0, 0xE8)
    write_cmd(dev, 0, 0, 0)  # one word
    dev.write(0, 8, 0)  # two words at once
    assert status(dev) == lanes(SR_READY | SR_SEQUENCE_ERROR)
    write_cmd(dev, 0, 0, 0xFF)
    assert dev.read(0, 8) == (1 << 64) - 1


def test_lock_and_unlock_are_accepted() -> None:
    dev = bank()
    for second in (0x01, 0xD0, 0x2F):
        write_cmd(dev, BLOCK, 0, 0x60)
        write_cmd(dev, BLOCK, 0, second)
        assert status(dev, BLOCK) == lanes(SR_READY)
    write_cmd(dev, BLOCK, 0, 0x60)
    write_cmd(dev, BLOCK, 0, 0x42)
    assert status(dev, BLOCK) == lanes(SR_READY | SR_SEQUENCE_ERROR)
    # Locks are not enforced: programming still works.
    write_cmd(dev, 0, 0, 0x50)
    dev.write(BLOCK, 4, cmd(0x40))
    dev.write(BLOCK, 4, 0)
    assert status(dev, BLOCK) == lanes(SR_READY)


def test_a_read_only_bank_refuses_program_and_erase_with_status_errors() -> None:
    image = b"\x5a" * 16
    dev = bank(image, writable=False)
    dev.write(0, 4, cmd(0x40))
    dev.write(0, 4, 0)
    assert status(dev) == lanes(SR_READY | SR_PROGRAM_ERROR | SR_LOCKED)
    write_cmd(dev, 0, 0, 0x50)
    write_cmd(dev, 0, 0, 0x20)
    write_cmd(dev, 0, 0, 0xD0)
    assert status(dev) == lanes(SR_READY | SR_ERASE_ERROR | SR_LOCKED)
    write_cmd(dev, 0, 0, 0x50)
    assert u_boot_buffered_write(dev, 0, bytes(8)) == lanes(SR_READY | SR_PROGRAM_ERROR | SR_LOCKED)
    assert dev.array(0, 16) == image and dev.in_array_mode


def test_mode_changes_are_announced_only_when_array_mode_flips() -> None:
    seen: list[bool] = []
    dev = CfiFlash(FLASH1_BASE, size=SMALL, on_mode_change=seen.append)
    write_cmd(dev, 0, 0, 0x50)  # clear status keeps read array
    assert seen == []
    write_cmd(dev, 0, 0x55, 0x98)
    write_cmd(dev, 0, 0, 0x70)
    write_cmd(dev, 0, 0, 0x90)
    assert seen == [False]
    write_cmd(dev, 0, 0, 0xFF)
    write_cmd(dev, 0, 0, 0xFF)
    assert seen == [False, True]
    dev.write(0, 4, cmd(0x40))
    dev.reset()
    assert seen == [False, True, False, True] and dev.in_array_mode
    dev.write(0, 4, 0)  # after the reset this is a command (00h), not program data
    assert dev.read(0, 4) == 0xFFFF_FFFF


@pytest.mark.parametrize(
    ("offset", "size"),
    [(-4, 4), (SMALL, 1), (SMALL - 2, 4), (0, 3), (0, 16), (0, 0)],
)
def test_every_guest_offset_and_size_is_answered_safely(offset: int, size: int) -> None:
    dev = bank()
    assert dev.read(offset, size) == 0
    dev.write(offset, size, 0x40)
    assert dev.in_array_mode
    query(dev)
    assert dev.read(offset, size) == 0


def test_concurrent_readers_see_data_or_status_never_an_exception() -> None:
    dev = bank(b"\x11" * 64)
    stop = threading.Event()
    seen: set[int] = set()

    def reader() -> None:
        while not stop.is_set():
            seen.add(dev.read(0, 4))

    threads = [threading.Thread(target=reader) for _ in range(3)]
    for t in threads:
        t.start()
    for _ in range(500):
        write_cmd(dev, 0, 0, 0x70)
        write_cmd(dev, 0, 0, 0xFF)
    stop.set()
    for t in threads:
        t.join()
    assert seen <= {0x1111_1111, lanes(SR_READY)}


def test_geometry_is_validated() -> None:
    with pytest.raises(ValueError, match="power of two"):
        CfiFlash(0, size=3 << 20)
    with pytest.raises(ValueError, match="block size"):
        CfiFlash(0, size=1 << 20, block_size=3 << 10)
