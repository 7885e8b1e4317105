"""Committed guest images are exactly what the sources build to."""

from __future__ import annotations

import subprocess
from pathlib import Path

from .conftest import PREBUILT, ROOT


def test_rebuilding_the_guests_is_byte_identical(tmp_path: Path) -> None:
    subprocess.run(
        ["make", "-s", "-C", str(ROOT / "guests"), f"BUILD={tmp_path}"],
        check=True,
        capture_output=True,
    )
    images = sorted([*PREBUILT.glob("*.Image"), *PREBUILT.glob("*.elf")])
    assert any(i.suffix == ".elf" for i in images)  # the x86-64 guests are checked too
    for image in images:
        assert (tmp_path / image.name).read_bytes() == image.read_bytes(), image.name
