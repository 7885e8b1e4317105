"""Which architecture an image is for, read from its header (as `file` would).

A file that is neither ELF nor an arm64 Image is a raw binary, which pvkit boots only on
arm64 (as qemu-system-aarch64 -kernel does); so that is its default."""

from __future__ import annotations

from pathlib import Path

from pvkit.loader.image import ImageError

ARCHES = ("arm64", "x86_64")
_EM_386 = 3
_EM_X86_64 = 62
_EM_AARCH64 = 183


def detect_arch(path: Path) -> str:
    try:
        with path.open("rb") as f:
            head = f.read(64)
    except OSError as exc:
        raise ImageError(f"cannot read guest image {path}: {exc.strerror}") from exc
    if head[:4] == b"\x7fELF" and len(head) >= 20:
        machine = int.from_bytes(head[18:20], "little")
        if machine in (_EM_386, _EM_X86_64):
            return "x86_64"
        if machine == _EM_AARCH64:
            return "arm64"
        raise ImageError(f"{path} is an ELF file for machine {machine}, not arm64 or x86_64")
    return "arm64"  # an arm64 Image (magic at offset 56) or a raw binary
