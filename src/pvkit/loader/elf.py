"""ELF guests: PT_LOAD segments at their physical addresses, entry from the header.

The file is untrusted input. pyelftools follows whatever offsets and sizes the headers
hold and raises what it happens to hit (ELFError, OverflowError, struct.error, ...), so
every use of it goes through `elf_errors`, which turns anything it raises into an
ImageError naming the file; segment bytes are cut from the file here, only after the
segment's file range has been checked to lie inside the file.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from elftools.elf.elffile import ELFFile

from pvkit.loader.image import BootImage, ImageError, Segment

_EM_AARCH64 = "EM_AARCH64"
ADDRESS_LIMIT = 1 << 64


@contextlib.contextmanager
def elf_errors(path: Path) -> Iterator[None]:
    """Inside: whatever a damaged file makes pyelftools raise becomes one ImageError."""
    try:
        yield
    except ImageError:
        raise
    except (Exception, RecursionError) as exc:  # pyelftools' errors are not one type
        detail = str(exc) or type(exc).__name__
        raise ImageError(f"{path} is a damaged ELF file: {detail}") from None


def open_elf(blob: bytes) -> ELFFile:
    """Call inside `elf_errors`."""
    return ELFFile(io.BytesIO(blob))


def check_in_file(blob: bytes, seg: Any, path: Path) -> None:
    """ImageError unless the segment's bytes lie inside the file."""
    offset, filesz = seg["p_offset"], seg["p_filesz"]
    if offset + filesz > len(blob):
        raise ImageError(
            f"{path} is a damaged ELF file: a segment's bytes ({offset:#x}+{filesz:#x}) reach "
            f"past the end of the file ({len(blob):#x} bytes)"
        )


def segment_bytes(blob: bytes, seg: Any, path: Path) -> bytes:
    """A segment's bytes from the file, after checking its ranges (inside `elf_errors`)."""
    check_in_file(blob, seg, path)
    offset, filesz, memsz = seg["p_offset"], seg["p_filesz"], seg["p_memsz"]
    if filesz > memsz:
        raise ImageError(
            f"{path} is a damaged ELF file: a segment holds more bytes in the file "
            f"({filesz:#x}) than in memory ({memsz:#x})"
        )
    if seg["p_paddr"] + memsz > ADDRESS_LIMIT:
        raise ImageError(f"{path} is a damaged ELF file: a segment wraps around the address space")
    return blob[offset : offset + filesz]


def load_segments(elf: ELFFile, blob: bytes, path: Path) -> tuple[Segment, ...]:
    """The PT_LOAD segments that occupy memory (inside `elf_errors`)."""
    return tuple(
        Segment(seg["p_paddr"], segment_bytes(blob, seg, path), seg["p_memsz"])
        for seg in elf.iter_segments()
        if seg["p_type"] == "PT_LOAD" and seg["p_memsz"] > 0
    )


def parse_elf(blob: bytes, path: Path) -> BootImage:
    with elf_errors(path):
        elf = open_elf(blob)
        if elf["e_machine"] != _EM_AARCH64 or elf.elfclass != 64 or not elf.little_endian:
            raise ImageError(f"{path} is not a little-endian 64-bit arm64 ELF file")
        segments = load_segments(elf, blob, path)
        entry = elf["e_entry"]
    if not segments:
        raise ImageError(f"{path} has no loadable segments")
    return BootImage("elf", entry, segments)
