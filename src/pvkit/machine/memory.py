"""Guest physical RAM: one host buffer shared by every vCPU engine, bounds-checked access."""

from __future__ import annotations

import ctypes
import mmap
import struct
from dataclasses import dataclass
from typing import NewType

from pvkit.machine.dirty_log import DirtyLog

GuestAddress = NewType("GuestAddress", int)


class GuestMemoryError(Exception):
    """An access outside guest RAM; names the failing address like vm-memory does."""

    def __init__(self, address: int, size: int, what: str = "access"):
        super().__init__(f"{what} of {size} bytes at guest address {address:#x} is outside RAM")
        self.address = address
        self.size = size


class HostMemoryError(RuntimeError):
    """The host cannot give the VM that much RAM (the mmap was refused)."""


@dataclass(frozen=True, slots=True)
class Region:
    base: int
    size: int
    name: str = ""

    @property
    def end(self) -> int:
        return self.base + self.size

    def contains(self, address: int, size: int = 1) -> bool:
        return size >= 0 and self.base <= address and address + size <= self.end

    def overlaps(self, other: Region) -> bool:
        return self.base < other.end and other.base < self.end


_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")


GUARD_BYTES = 1 << 20  # PROT_NONE on each side of RAM when guarded (pvkit fuzz)
_PROT_NONE = 0


def _mprotect_none(address: int, size: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mprotect.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
    if libc.mprotect(address, size, _PROT_NONE) != 0:
        raise HostMemoryError(
            f"cannot protect the guard pages around RAM (errno {ctypes.get_errno()})"
        )


class GuestMemory:
    """RAM as an anonymous mmap so that pages cost nothing until touched.

    `guarded=True` maps RAM inside a larger mapping whose first and last GUARD_BYTES are
    PROT_NONE, so a host write that strays past either end of RAM (through `host_address`,
    from C or from an engine) faults at once instead of corrupting the host heap."""

    def __init__(self, base: int, size: int, guarded: bool = False):
        if size <= 0 or size % mmap.PAGESIZE:
            raise ValueError(f"RAM size {size:#x} must be a positive multiple of the page size")
        self.region = Region(base, size, "ram")
        self._shift = GUARD_BYTES if guarded else 0  # host offset of guest byte 0
        try:
            self._buf = mmap.mmap(
                -1, size + 2 * self._shift, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS
            )
        except OSError as exc:
            raise HostMemoryError(
                f"this host cannot reserve {size / (1 << 20):.0f} MiB of guest RAM "
                f"({exc.strerror}); give less with --mem"
            ) from None
        self._anchor = ctypes.c_char.from_buffer(self._buf)
        if guarded:
            start = ctypes.addressof(self._anchor)
            _mprotect_none(start, GUARD_BYTES)
            _mprotect_none(start + GUARD_BYTES + size, GUARD_BYTES)
        self.reserved: list[Region] = []
        self._views: set[tuple[int, int]] = set()  # windows handed out (view())
        # written pages, while a migration copies RAM (engines join it as they are built)
        self.dirty = DirtyLog(base, size, lambda: list(self._views))

    def _written(self, address: int, size: int) -> None:
        if self.dirty.active:
            self.dirty.mark(address, size)

    @property
    def guarded(self) -> bool:
        return self._shift != 0

    @property
    def base(self) -> int:
        return self.region.base

    @property
    def size(self) -> int:
        return self.region.size

    @property
    def host_address(self) -> int:
        """Host pointer for engines that map this buffer (no copy per vCPU)."""
        return ctypes.addressof(self._anchor) + self._shift

    def contains(self, address: int, size: int = 1) -> bool:
        return self.region.contains(address, size)

    def _offset(self, address: int, size: int, what: str) -> int:
        if not self.region.contains(address, size):
            raise GuestMemoryError(address, size, what)
        return address - self.region.base + self._shift

    def read(self, address: int, size: int) -> bytes:
        off = self._offset(address, size, "read")
        return self._buf[off : off + size]

    def write(self, address: int, data: bytes) -> None:
        off = self._offset(address, len(data), "write")
        self._buf[off : off + len(data)] = data
        self._written(address, len(data))

    def read_u32(self, address: int) -> int:
        value: int = _U32.unpack_from(self._buf, self._offset(address, 4, "read"))[0]
        return value

    def read_u64(self, address: int) -> int:
        value: int = _U64.unpack_from(self._buf, self._offset(address, 8, "read"))[0]
        return value

    def write_u32(self, address: int, value: int) -> None:
        _U32.pack_into(self._buf, self._offset(address, 4, "write"), value)
        self._written(address, 4)

    def write_u64(self, address: int, value: int) -> None:
        _U64.pack_into(self._buf, self._offset(address, 8, "write"), value)
        self._written(address, 8)

    def store_u64(self, address: int, value: int) -> None:
        """One aligned 64-bit store, single-copy atomic for a vCPU reading concurrently
        (struct.pack_into may copy byte by byte; a c_uint64 assignment is one store)."""
        if address % 8:
            raise GuestMemoryError(address, 8, "aligned 64-bit store")
        off = self._offset(address, 8, "write")
        ctypes.c_uint64.from_address(ctypes.addressof(self._anchor) + off).value = value
        self._written(address, 8)

    def view(self, address: int, size: int) -> memoryview:
        """A writable window on guest RAM, bounds-checked once here (for records a service
        updates often). `view(...).cast("Q")` stores of aligned words are single 8-byte
        stores, as `store_u64`'s are; both are in host (little-endian) byte order."""
        off = self._offset(address, size, "view")
        self._views.add((address, size))  # written behind our back: see dirty_log.py
        return memoryview(self._buf)[off : off + size]

    def reserve(self, region: Region) -> None:
        """Mark RAM the firmware tables must describe as not for the guest's allocator."""
        if not self.region.contains(region.base, region.size):
            raise ValueError(f"reserved region {region.name!r} lies outside RAM")
        for r in self.reserved:
            if r.overlaps(region):
                raise ValueError(f"reserved region {region.name!r} overlaps {r.name!r}")
        self.reserved.append(region)

    def clear(self) -> None:
        """Zero all of RAM (for a system reset) without touching untouched pages."""
        self._buf.madvise(mmap.MADV_DONTNEED, self._shift, self.region.size)
        self._written(self.base, self.size)
