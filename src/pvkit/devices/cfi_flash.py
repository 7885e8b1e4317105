"""CFI parallel NOR flash with the Intel/Sharp command set, as QEMU's arm `virt` has two of.

Bank 0 (at 0) holds the firmware the vCPU starts in and executes in place; bank 1 (at
64 MiB) starts erased and is where U-Boot keeps its environment. Each bank is 64 MiB of
two x16 devices side by side (bank width 4 bytes, device width 2), with uniform 256 KiB
erase blocks (128 KiB in each device), and answers as primary vendor command set 0x0001
(Intel/Sharp extended, JEDEC JEP137), which is what U-Boot's drivers/mtd/cfi_flash.c and
Linux's cfi_cmdset_0001 drive.

Commands (Intel "Basic Command Set", Intel application note 646 and the Intel StrataFlash
datasheets), each taken from the low byte of a write, the two devices being driven as one
(guests write every command replicated in each 16-bit lane):
  FFh (also F0h, 00h) read array      70h read status       50h clear status
  90h read identifier                 98h CFI query         B0h/D0h suspend/resume (no-op)
  20h + D0h block erase               10h/40h + data: word or byte program
  E8h + count + data + D0h buffered program (count N-1 in bank-width words, at most
      2 KiB per device; programmed on D0h only; the data addresses are not checked
      against one write-buffer window, as real parts require)
  60h + 01h/D0h/2Fh block lock, unlock, lock-down: accepted, not enforced
Operations finish at once, so SR7 (ready) always reads 1. Any other command, a bad
second cycle, or a buffer count too large is a command sequence error (SR4 and SR5),
never an exception. A bank made with `writable=False` behaves as if every block were
locked: program and erase fail with SR1 plus SR4 or SR5, and the identifier's block
lock status reads 1, so U-Boot marks its sectors protected. Programming only clears bits
(new = old AND data), as on NOR cells; erase sets a block back to all FFh.

Query, identifier and status reads answer per device: the 16-bit value of one device is
repeated in each 16-bit lane of a bank word, and the word index is the bank offset / 4
(so the CFI 'Q' is at offset 0x10 * 4 and the query command is written at 0x55 * 4).
The CFI table is JEDEC JESD68 Common Flash Interface, per device: 32 MiB devices of
256 x 128 KiB blocks, 2 KiB write buffers, then the Intel "PRI" extended table 1.0.

Backing store and mapping: the bank's contents live in one page-aligned host buffer
(`host_address`, `size` bytes), so a board can map it straight into each engine for
reads and execution while `in_array_mode` is true, and send writes to `write()`; while
not in array mode every access must go through `read()` / `write()`. `read()` answers
correctly in every mode, array included, so a mapping that lags behind a change back to
array mode is harmless. `on_mode_change(array)` is called, on the writer's thread and
outside the device lock, whenever `in_array_mode` flips; act on `in_array_mode` itself.
The buffer must outlive every engine that maps it. Program and erase change the buffer
from Python, which an engine's translation cache does not notice: an engine that may
have translated code from the bank should drop its mapping (which invalidates that
code) while the bank is out of array mode.

Contents persist only in host memory for the life of the device (a system `reset()`
keeps them, as real flash does); nothing is written back to a file, unlike QEMU with a
`-drive` image.
"""

from __future__ import annotations

import ctypes
import enum
import mmap
import threading
from collections.abc import Callable

from pvkit.machine.memory import Region

FLASH0_BASE = 0x0000_0000
FLASH1_BASE = 0x0400_0000
FLASH_BANK_SIZE = 64 << 20
FLASH_BLOCK_SIZE = 256 << 10
BANK_WIDTH = 4  # bytes per bank word
DEVICE_WIDTH = 2  # bytes per device word (x16 parts)
DEVICES = BANK_WIDTH // DEVICE_WIDTH
WRITE_BUFFER_BITS = 11  # 2 KiB write buffer per device (CFI 2Ah)
MANUFACTURER_ID = 0x0089  # Intel
DEVICE_ID = 0x0018  # the identifier QEMU's virt flash answers

SR_READY = 0x80  # SR7: write state machine ready
SR_ERASE_ERROR = 0x20  # SR5
SR_PROGRAM_ERROR = 0x10  # SR4
SR_LOCKED = 0x02  # SR1: operation refused on a locked block
SR_SEQUENCE_ERROR = SR_ERASE_ERROR | SR_PROGRAM_ERROR

CMD_READ_ARRAY = 0xFF
CMD_AMD_RESET = 0xF0  # probers (U-Boot, Linux) send it before the Intel reset
CMD_READ_STATUS = 0x70
CMD_CLEAR_STATUS = 0x50
CMD_READ_ID = 0x90
CMD_QUERY = 0x98
CMD_ERASE = 0x20
CMD_PROGRAM = 0x40
CMD_PROGRAM_ALT = 0x10
CMD_BUFFERED_PROGRAM = 0xE8
CMD_CONFIRM = 0xD0
CMD_LOCK_SETUP = 0x60
CMD_LOCK = 0x01
CMD_LOCK_DOWN = 0x2F
CMD_SUSPEND = 0xB0

_SIZES = (1, 2, 4, 8)
_LANE_MASK = (1 << (8 * DEVICE_WIDTH)) - 1
_BUFFER_WORDS = (1 << WRITE_BUFFER_BITS) // DEVICE_WIDTH  # device words per buffered program


class _Mode(enum.Enum):
    ARRAY = enum.auto()
    STATUS = enum.auto()
    IDENTIFIER = enum.auto()
    QUERY = enum.auto()
    PROGRAM = enum.auto()  # 10h/40h seen: the next write is the data
    ERASE = enum.auto()  # 20h seen: the next write must be D0h
    LOCK = enum.auto()  # 60h seen: the next write is 01h, D0h or 2Fh
    BUFFER_COUNT = enum.auto()  # E8h seen: the next write is the word count N-1
    BUFFER_DATA = enum.auto()
    BUFFER_CONFIRM = enum.auto()


_READ_MODES = frozenset((_Mode.ARRAY, _Mode.STATUS, _Mode.IDENTIFIER, _Mode.QUERY))


def cfi_query_table(size: int, block_size: int) -> bytes:
    """The CFI query structure one device answers (JESD68), indexed by device word."""
    device_size = size // DEVICES
    device_block = block_size // DEVICES
    blocks = size // block_size
    t = bytearray(0x40)
    t[0x10:0x13] = b"QRY"
    t[0x13:0x15] = (0x0001).to_bytes(2, "little")  # primary command set: Intel/Sharp ext.
    t[0x15:0x17] = (0x0031).to_bytes(2, "little")  # its extended table, at 31h
    # 17h-1Ah: no alternate command set nor table.
    t[0x1B], t[0x1C] = 0x27, 0x36  # Vcc 2.7-3.6 V (BCD volts and tenths)
    # 1Dh-1Eh: no Vpp pin.
    t[0x1F] = 6  # typical word program 2^6 us
    t[0x20] = 7  # typical buffer program 2^7 us
    t[0x21] = 10  # typical block erase 2^10 ms
    t[0x22] = 0  # no chip erase
    t[0x23] = t[0x24] = t[0x25] = 4  # maximum = typical x 2^4
    t[0x27] = device_size.bit_length() - 1  # device size 2^N bytes
    t[0x28:0x2A] = (0x0002).to_bytes(2, "little")  # x8/x16 asynchronous interface
    t[0x2A:0x2C] = WRITE_BUFFER_BITS.to_bytes(2, "little")  # write buffer 2^N bytes
    t[0x2C] = 1  # one erase block region, uniform
    t[0x2D:0x2F] = (blocks - 1).to_bytes(2, "little")  # blocks - 1
    t[0x2F:0x31] = (device_block // 256).to_bytes(2, "little")  # block size / 256
    t[0x31:0x36] = b"PRI10"  # Intel primary extended query, version 1.0
    # 36h-39h optional features, 3Ah after-suspend functions, 3Bh-3Ch block status
    # register: none (no suspend, no lock features advertised).
    t[0x3D] = 0x33  # optimum program/erase Vcc 3.3 V
    return bytes(t)


class CfiFlash:
    """One flash bank: an MMIO device whose array can also be mapped as memory."""

    def __init__(
        self,
        base: int,
        data: bytes | bytearray | memoryview = b"",
        *,
        size: int = FLASH_BANK_SIZE,
        block_size: int = FLASH_BLOCK_SIZE,
        writable: bool = True,
        name: str = "flash",
        on_mode_change: Callable[[bool], None] | None = None,
    ) -> None:
        """`data` fills the start of the bank, the rest reads erased (FFh). A bank that is
        not `writable` refuses program and erase with status errors, as locked blocks do."""
        if size <= 0 or size & (size - 1) or size % mmap.PAGESIZE:
            raise ValueError(f"flash bank size {size:#x} must be a power of two of whole pages")
        if block_size % (DEVICES * 256) or not 0 < block_size <= size or size % block_size:
            raise ValueError(
                f"flash block size {block_size:#x} must divide the bank size {size:#x} "
                f"and be a multiple of {DEVICES * 256:#x}"
            )
        if len(data) > size:
            raise ValueError(
                f"{name}: an image of {len(data)} bytes does not fit the {size >> 20} MiB "
                "flash bank; use a smaller image"
            )
        self.region = Region(base, size, name)
        self.size = size
        self.block_size = block_size
        self.writable = writable
        self.on_mode_change = on_mode_change
        self._buf = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        self._anchor = ctypes.c_char.from_buffer(self._buf)
        ctypes.memset(self.host_address, 0xFF, size)
        self._buf[: len(data)] = bytes(data)
        self._erased = b"\xff" * block_size
        self._query = cfi_query_table(size, block_size)
        self._lock = threading.Lock()
        self._mode = _Mode.ARRAY
        self._status = 0  # error bits; SR7 is added on read
        self._remaining = 0  # buffered program: bank words still to come
        self._pending: list[tuple[int, int, int]] = []  # (offset, size, value) to program

    @property
    def host_address(self) -> int:
        """Host pointer to the array, for engines that map it (`size` bytes)."""
        return ctypes.addressof(self._anchor)

    @property
    def in_array_mode(self) -> bool:
        """Reads return the contents: the array may be mapped as memory."""
        return self._mode is _Mode.ARRAY

    @property
    def status(self) -> int:
        """The status register as a device reports it."""
        return SR_READY | self._status

    def array(self, offset: int, size: int) -> bytes:
        """Host-side view of the contents, whatever mode the guest left the bank in."""
        if offset < 0 or size < 0 or offset + size > self.size:
            raise ValueError(f"{offset:#x}+{size:#x} is outside the {self.size:#x}-byte bank")
        return self._buf[offset : offset + size]

    def reset(self) -> None:
        """System reset: back to read array, status clear, any command abandoned."""
        with self._lock:
            flipped = self._enter(_Mode.ARRAY)
            self._status = 0
        if flipped:
            self._notify(True)

    # -- MMIO ---------------------------------------------------------------------------------
    def read(self, offset: int, size: int) -> int:
        if size not in _SIZES or offset < 0 or offset + size > self.size:
            return 0
        with self._lock:
            if self._mode is _Mode.ARRAY:
                return int.from_bytes(self._buf[offset : offset + size], "little")
            value = 0
            for i in range(size):
                address = offset + i
                word = self._device_word(address // BANK_WIDTH)
                byte = (word >> (8 * (address % BANK_WIDTH % DEVICE_WIDTH))) & 0xFF
                value |= byte << (8 * i)
            return value

    def write(self, offset: int, size: int, value: int) -> None:
        if size not in _SIZES or offset < 0 or offset + size > self.size:
            return
        value &= (1 << (8 * size)) - 1
        with self._lock:
            flipped = self._cycle(offset, size, value)
            array = self._mode is _Mode.ARRAY
        if flipped:
            self._notify(array)

    def _notify(self, array: bool) -> None:
        """Outside the lock: the board's callback may remap, kick vCPUs, or read us."""
        callback = self.on_mode_change
        if callback is not None:
            callback(array)

    # -- internals (callers hold the lock) ----------------------------------------------------
    def _device_word(self, index: int) -> int:
        """What one device drives in a read mode other than array, at device word `index`."""
        mode = self._mode
        if mode is _Mode.QUERY:
            return self._query[index] if index < len(self._query) else 0
        if mode is _Mode.IDENTIFIER:
            in_block = index % (self.block_size // BANK_WIDTH)
            if in_block == 0:
                return MANUFACTURER_ID
            if in_block == 1:
                return DEVICE_ID
            if in_block == 2:
                return 0 if self.writable else 1  # block lock status: bit 0 = locked
            return 0
        return SR_READY | self._status  # status, also while a command waits for its data

    def _cycle(self, offset: int, size: int, value: int) -> bool:
        """One bus write; returns whether array mode was entered or left."""
        mode = self._mode
        cmd = value & 0xFF
        if mode in _READ_MODES:
            return self._command(cmd)
        if mode is _Mode.PROGRAM:
            self._program([(offset, size, value)])
        elif mode is _Mode.ERASE:
            if cmd == CMD_CONFIRM:
                self._erase(offset - offset % self.block_size)
            else:
                self._status |= SR_SEQUENCE_ERROR
        elif mode is _Mode.LOCK:
            if cmd not in (CMD_LOCK, CMD_CONFIRM, CMD_LOCK_DOWN):
                self._status |= SR_SEQUENCE_ERROR
        elif mode is _Mode.BUFFER_COUNT:
            count = (value & _LANE_MASK) + 1
            if count > _BUFFER_WORDS:
                self._status |= SR_SEQUENCE_ERROR
            else:
                self._remaining = count
                self._pending = []
                return self._enter(_Mode.BUFFER_DATA)
        elif mode is _Mode.BUFFER_DATA:
            words = max(1, size // BANK_WIDTH)
            if words > self._remaining:
                self._status |= SR_SEQUENCE_ERROR
                self._pending = []
            else:
                self._pending.append((offset, size, value))
                self._remaining -= words
                return self._enter(_Mode.BUFFER_CONFIRM if not self._remaining else mode)
        elif mode is _Mode.BUFFER_CONFIRM:
            if cmd == CMD_CONFIRM:
                self._program(self._pending)
            else:
                self._status |= SR_SEQUENCE_ERROR
            self._pending = []
        return self._enter(_Mode.STATUS)

    def _command(self, cmd: int) -> bool:
        """A write in one of the read modes: the first cycle of a command."""
        if cmd in (CMD_READ_ARRAY, CMD_AMD_RESET, 0x00):
            return self._enter(_Mode.ARRAY)
        if cmd == CMD_CLEAR_STATUS:
            self._status = 0
            return False  # the read mode does not change
        mode = _FIRST_CYCLE.get(cmd)
        if mode is None:
            self._status |= SR_SEQUENCE_ERROR
            mode = _Mode.STATUS
        return self._enter(mode)

    def _enter(self, mode: _Mode) -> bool:
        was = self._mode is _Mode.ARRAY
        self._mode = mode
        return was != (mode is _Mode.ARRAY)

    def _program(self, writes: list[tuple[int, int, int]]) -> None:
        if not self.writable:
            self._status |= SR_PROGRAM_ERROR | SR_LOCKED
            return
        buf = self._buf
        for offset, size, value in writes:
            old = int.from_bytes(buf[offset : offset + size], "little")
            buf[offset : offset + size] = (old & value).to_bytes(size, "little")

    def _erase(self, start: int) -> None:
        if not self.writable:
            self._status |= SR_ERASE_ERROR | SR_LOCKED
            return
        self._buf[start : start + self.block_size] = self._erased


_FIRST_CYCLE = {
    CMD_READ_STATUS: _Mode.STATUS,
    CMD_READ_ID: _Mode.IDENTIFIER,
    CMD_QUERY: _Mode.QUERY,
    CMD_PROGRAM: _Mode.PROGRAM,
    CMD_PROGRAM_ALT: _Mode.PROGRAM,
    CMD_ERASE: _Mode.ERASE,
    CMD_LOCK_SETUP: _Mode.LOCK,
    CMD_BUFFERED_PROGRAM: _Mode.BUFFER_COUNT,
    CMD_SUSPEND: _Mode.STATUS,  # nothing is ever in progress to suspend
    CMD_CONFIRM: _Mode.STATUS,  # resume: likewise nothing to resume
}
