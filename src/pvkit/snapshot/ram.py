"""Guest RAM in a snapshot: only pages that are not all zero, in runs, optionally zlib.

Payload (little-endian): u64 base | u64 size | u32 page size | u8 compression (0 none,
1 zlib) | u32 run count | runs: u64 first page | u32 pages | u64 stored length | bytes.
A run is consecutive non-zero pages; zero pages cost nothing in the file, and RAM the
guest never touched stays untouched on restore (the host mapping is anonymous).
"""

from __future__ import annotations

import struct
import zlib

from pvkit.machine.memory import GuestMemory
from pvkit.snapshot.errors import SnapshotError
from pvkit.snapshot.format import ENCODING_BYTES, Section

RAM_VERSION = 1
PAGE = 4096
COMPRESS_NONE = 0
COMPRESS_ZLIB = 1
_HEAD = struct.Struct("<QQIBI")
_RUN = struct.Struct("<QIQ")
_SCAN = 256 * PAGE  # RAM is scanned in chunks this large for non-zero pages
_ZERO_CHUNK = bytes(_SCAN)
_ZERO_PAGE = bytes(PAGE)


def nonzero_runs(memory: GuestMemory) -> list[tuple[int, int]]:
    """(first page, page count) of every run of non-zero pages."""
    runs: list[tuple[int, int]] = []
    base, pages = memory.base, memory.size // PAGE
    start = None
    for chunk in range(0, memory.size, _SCAN):
        size = min(_SCAN, memory.size - chunk)
        data = memory.read(base + chunk, size)
        if data == _ZERO_CHUNK[:size]:
            if start is not None:
                runs.append((start, chunk // PAGE - start))
                start = None
            continue
        for off in range(0, size, PAGE):
            page = (chunk + off) // PAGE
            zero = data[off : off + PAGE] == _ZERO_PAGE
            if zero and start is not None:
                runs.append((start, page - start))
                start = None
            elif not zero and start is None:
                start = page
    if start is not None:
        runs.append((start, pages - start))
    return runs


def save_ram(memory: GuestMemory, compress: bool = True) -> Section:
    runs = nonzero_runs(memory)
    method = COMPRESS_ZLIB if compress else COMPRESS_NONE
    head = _HEAD.pack(memory.base, memory.size, PAGE, method, len(runs))
    return Section(RAM_VERSION, head + _encode_runs(memory, runs, compress), ENCODING_BYTES)


def _encode_runs(memory: GuestMemory, runs: list[tuple[int, int]], compress: bool) -> bytes:
    """Each run as `u64 first page | u32 pages | u64 stored length | bytes`."""
    parts = []
    for first, count in runs:
        data = memory.read(memory.base + first * PAGE, count * PAGE)
        stored = zlib.compress(data, 1) if compress else data
        parts += [_RUN.pack(first, count, len(stored)), stored]
    return b"".join(parts)


def ram_pages(section: Section) -> tuple[int, int, int]:
    """(base, size, stored non-zero pages) of a RAM section, for `pvkit snapshot info`."""
    base, size, _page, _method, count = _header(section)
    at, pages = _HEAD.size, 0
    for _ in range(count):
        _first, n, length = _RUN.unpack_from(section.payload, at)
        at += _RUN.size + length
        pages += n
    return base, size, pages


def _header(section: Section) -> tuple[int, int, int, int, int]:
    if section.encoding != ENCODING_BYTES or len(section.payload) < _HEAD.size:
        raise SnapshotError("section 'ram' is damaged: its header is missing")
    base, size, page, method, count = _HEAD.unpack_from(section.payload)
    if page != PAGE or method not in (COMPRESS_NONE, COMPRESS_ZLIB):
        raise SnapshotError(f"section 'ram' uses page size {page} or compression {method}, "
                            "which this pvkit does not read")  # fmt: skip
    return base, size, page, method, count


def restore_ram(memory: GuestMemory, section: Section) -> None:
    """Fill `memory` (zeroed first) from a RAM section of the same base and size."""
    base, size, _page, method, count = _header(section)
    if (base, size) != (memory.base, memory.size):
        raise SnapshotError(
            f"section 'ram' holds {size:#x} bytes at {base:#x}, but this VM has "
            f"{memory.size:#x} at {memory.base:#x}"
        )
    memory.clear()
    _write_runs(memory, section.payload, _HEAD.size, count, method, "section 'ram'")


def _write_runs(
    memory: GuestMemory, payload: bytes, at: int, count: int, method: int, what: str
) -> None:
    """Write `count` runs from `payload[at:]` into RAM."""
    pages = memory.size // PAGE
    for _ in range(count):
        if at + _RUN.size > len(payload):
            raise SnapshotError(f"{what} is damaged: a run runs past its end")
        first, n, length = _RUN.unpack_from(payload, at)
        at += _RUN.size
        if first + n > pages or n == 0 or at + length > len(payload):
            raise SnapshotError(f"{what} is damaged: a run lies outside RAM")
        stored = payload[at : at + length]
        at += length
        data = stored if method == COMPRESS_NONE else _inflate(stored, n * PAGE, what)
        if len(data) != n * PAGE:
            raise SnapshotError(f"{what} is damaged: a run has the wrong length")
        memory.write(memory.base + first * PAGE, data)
    if at != len(payload):
        raise SnapshotError(f"{what} is damaged: bytes follow its last run")


# A migration's PAGES message (pre-copy): u8 compression | u32 run count | runs, as in
# the section, but every page listed is sent, zero or not (it may have become zero).
_PAGES_HEAD = struct.Struct("<BI")


def encode_pages(memory: GuestMemory, runs: list[tuple[int, int]], compress: bool = True) -> bytes:
    """The pages of `runs` ((first page, count) pairs) as they are now."""
    method = COMPRESS_ZLIB if compress else COMPRESS_NONE
    return _PAGES_HEAD.pack(method, len(runs)) + _encode_runs(memory, runs, compress)


def apply_pages(memory: GuestMemory, payload: bytes) -> None:
    """Write a PAGES message into RAM; SnapshotError if it is damaged."""
    what = "a PAGES message"
    if len(payload) < _PAGES_HEAD.size:
        raise SnapshotError(f"{what} is damaged: its header is missing")
    method, count = _PAGES_HEAD.unpack_from(payload)
    if method not in (COMPRESS_NONE, COMPRESS_ZLIB):
        raise SnapshotError(f"{what} uses compression {method}, which this pvkit does not read")
    _write_runs(memory, payload, _PAGES_HEAD.size, count, method, what)


def pages_bound(pages: int) -> int:
    """The longest PAGES message `pages` pages make, compressed or not."""
    data = pages * PAGE
    return _PAGES_HEAD.size + pages * _RUN.size + data + data // 64 + 64


def _inflate(stored: bytes, expected: int, what: str) -> bytes:
    """Decompress at most `expected` bytes (a crafted run cannot inflate without bound)."""
    try:
        inflater = zlib.decompressobj()
        data = inflater.decompress(stored, expected)
        if inflater.unconsumed_tail or not inflater.eof:
            raise SnapshotError(f"{what} is damaged: a run does not decompress to a page")
        return data
    except zlib.error:
        raise SnapshotError(f"{what} is damaged: a run does not decompress") from None
