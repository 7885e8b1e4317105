"""ELF guests: PT_LOAD segments at their physical addresses, entry from the header."""

from __future__ import annotations

import io
from pathlib import Path

from elftools.common.exceptions import ELFError
from elftools.elf.elffile import ELFFile

from pvkit.loader.image import BootImage, ImageError, Segment

_EM_AARCH64 = "EM_AARCH64"


def parse_elf(blob: bytes, path: Path) -> BootImage:
    try:
        elf = ELFFile(io.BytesIO(blob))
        if elf["e_machine"] != _EM_AARCH64 or elf.elfclass != 64 or not elf.little_endian:
            raise ImageError(f"{path} is not a little-endian 64-bit arm64 ELF file")
        segments = tuple(
            Segment(seg["p_paddr"], seg.data(), seg["p_memsz"])
            for seg in elf.iter_segments()
            if seg["p_type"] == "PT_LOAD" and seg["p_memsz"] > 0
        )
        entry = elf["e_entry"]
    except ELFError as exc:
        raise ImageError(f"{path} is a damaged ELF file: {exc}") from exc
    if not segments:
        raise ImageError(f"{path} has no loadable segments")
    return BootImage("elf", entry, segments)
