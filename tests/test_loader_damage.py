"""Damaged guest images: every loader answers ImageError (one sentence in the CLI), nothing else.

Regression tests for the ELF headers that made pyelftools raise OverflowError (a huge
e_phoff, p_offset or p_filesz) and for a segment past the end of the file, which used to
load as zeros; then a property test feeding random bytes and random mutations of every
shipped image to each loader.
"""

from __future__ import annotations

import contextlib
import struct
import tempfile
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pvkit.loader.detect import detect_arch
from pvkit.loader.elf import parse_elf
from pvkit.loader.image import ImageError, load_image
from pvkit.loader.x86_boot import parse_x86_elf
from pvkit.machine.memory import GuestMemory, Region
from pvkit.platform.pc_x86 import load_x86_image

from .conftest import PREBUILT, X86_HELLO, pvkit

ARM64_ELF = PREBUILT / "phc-read.elf"
ARM_RAM = Region(0x4000_0000, 256 << 20, "ram")
X86_RAM = GuestMemory(0, 64 << 20)
SHIPPED = sorted(PREBUILT.iterdir())
E_PHOFF = 0x20
PHDR_SIZE = 56
P_OFFSET, P_FILESZ = 8, 32
HUGE = (1 << 63, (1 << 64) - 1, (1 << 64) - 0x1000, 1 << 62)


def _first_phdr(blob: bytes) -> int:
    return int.from_bytes(blob[E_PHOFF : E_PHOFF + 8], "little")


def _patched(blob: bytes, offset: int, value: int) -> bytes:
    out = bytearray(blob)
    struct.pack_into("<Q", out, offset, value)
    return bytes(out)


def _arm64(blob: bytes, path: Path) -> object:
    return parse_elf(blob, path)


def _x86(blob: bytes, path: Path) -> object:
    return parse_x86_elf(blob, path)


ELF_LOADERS: list[tuple[Path, Callable[[bytes, Path], object]]] = [
    (ARM64_ELF, _arm64),
    (X86_HELLO, _x86),
]


@pytest.mark.parametrize(("image", "parse"), ELF_LOADERS, ids=["arm64", "x86_64"])
@pytest.mark.parametrize("value", HUGE)
@pytest.mark.parametrize("field", ["e_phoff", "p_offset", "p_filesz"])
def test_a_huge_elf_offset_or_size_is_an_image_error(
    image: Path, parse: Callable[[bytes, Path], object], value: int, field: str
) -> None:
    blob = image.read_bytes()
    at = {
        "e_phoff": E_PHOFF,
        "p_offset": _first_phdr(blob) + P_OFFSET,
        "p_filesz": _first_phdr(blob) + P_FILESZ,
    }[field]
    with pytest.raises(ImageError, match="damaged ELF file"):
        parse(_patched(blob, at, value), image)


@pytest.mark.parametrize(("image", "parse"), ELF_LOADERS, ids=["arm64", "x86_64"])
def test_a_segment_past_the_end_of_the_file_is_refused_not_zero_filled(
    image: Path, parse: Callable[[bytes, Path], object]
) -> None:
    blob = image.read_bytes()
    damaged = _patched(blob, _first_phdr(blob) + P_OFFSET, len(blob) + 0x1000)
    with pytest.raises(ImageError, match="past the end of the file"):
        parse(damaged, image)


def test_the_cli_names_a_damaged_elf_file_in_one_sentence(tmp_path: Path) -> None:
    blob = X86_HELLO.read_bytes()
    bad = tmp_path / "bad.elf"
    bad.write_bytes(_patched(blob, E_PHOFF, (1 << 64) - 1))
    r = pvkit("run", str(bad))
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert r.stderr.startswith(f"pvkit: {bad} is a damaged ELF file") and r.stderr.count("\n") == 1


# -- property: random bytes and mutations of every shipped image ----------------------------
def _every_loader(blob: bytes) -> None:
    """Each loader that takes a file, on `blob`: it loads, or it raises ImageError."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "guest"
        path.write_bytes(blob)
        for load in (
            lambda: load_image(path, ARM_RAM),
            lambda: load_x86_image(path, X86_RAM),
            lambda: detect_arch(path),
        ):
            try:
                load()
            except ImageError as exc:
                assert str(exc) and "\n" not in str(exc)
    if blob[:4] == b"\x7fELF":  # the ELF parsers themselves, whatever the machine field says
        for parse in (parse_elf, parse_x86_elf):
            with contextlib.suppress(ImageError):
                parse(blob, Path("guest"))


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    """A shipped image with a few bytes, header words or its length changed."""
    blob = bytearray(draw(st.sampled_from(SHIPPED)).read_bytes())
    if draw(st.booleans()):  # as arm64 or x86: every ELF goes through both parsers' paths
        machine = draw(st.sampled_from([183, 62, 3]))
        if blob[:4] == b"\x7fELF":
            struct.pack_into("<H", blob, 18, machine)
    for _ in range(draw(st.integers(0, 6))):
        header = draw(st.booleans())  # most damage that matters is in the first page
        limit = min(len(blob), 0x1000 if header else len(blob)) - 8
        at = draw(st.integers(0, limit))
        if draw(st.booleans()):
            value = draw(st.sampled_from([*HUGE, 0, len(blob), len(blob) + 1, 0xFFFF_FFFF]))
            value = value if draw(st.booleans()) else draw(st.integers(0, (1 << 64) - 1))
            struct.pack_into("<Q", blob, at & ~3, value)
        else:
            blob[at] = draw(st.integers(0, 255))
    if draw(st.booleans()):
        del blob[draw(st.integers(0, len(blob))) :]
    return bytes(blob)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated())
def test_mutated_shipped_images_load_or_are_image_errors(blob: bytes) -> None:
    _every_loader(blob)


@settings(max_examples=200, deadline=None)
@given(st.one_of(st.binary(max_size=512), st.binary(max_size=64).map(lambda b: b"\x7fELF" + b)))
def test_random_bytes_load_or_are_image_errors(blob: bytes) -> None:
    _every_loader(blob)
