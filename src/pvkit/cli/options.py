"""Option parsing shared by the verbs that build a VM."""

from __future__ import annotations

import re
from pathlib import Path

import typer

from pvkit.services.profiles import PROFILES, HostProfile

_SIZE = re.compile(r"^(\d+)([KMG]?)i?B?$", re.IGNORECASE)
_UNITS = {"": 1 << 20, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}


def parse_size(text: str) -> int:
    """`256M`, `1G`, `65536K`; a bare number means MiB, as in QEMU's -m."""
    m = _SIZE.match(text.strip())
    if not m:
        raise typer.BadParameter(f"{text!r} is not a size such as 256M or 1G")
    return int(m.group(1)) * _UNITS[m.group(2).upper()]


def parse_profile(name: str) -> HostProfile:
    try:
        return PROFILES[name]
    except KeyError:
        raise typer.BadParameter(
            f"unknown profile {name!r}; choose one of {', '.join(PROFILES)}"
        ) from None


def fail(message: str, code: int = 2) -> typer.Exit:
    typer.echo(f"pvkit: {message}", err=True)
    return typer.Exit(code)


def write_file(path: Path, data: bytes) -> None:
    """Write via a temporary file and rename, so a failure leaves nothing half-written."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        tmp.write_bytes(data)
        tmp.replace(path)
    except OSError as exc:
        raise fail(f"cannot write {path}: {exc.strerror}") from None
