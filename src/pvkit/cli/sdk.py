"""`pvkit sdk path|cc|cflags|ldflags|sources|new`: build a guest of your own on pvkit's SDK.

As `pkg-config` does for a library: `path` is the SDK's folder (its `sdk.mk` is what a
Makefile includes), `cc`, `cflags`, `ldflags` and `sources` print what a guest is compiled
with, in one line each for `$(shell ...)` or a script, and `new DIR` writes a template guest
with a Makefile that uses them (docs/library.md).
"""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

from pvkit.cli.options import fail


class What(StrEnum):
    PATH = "path"
    CC = "cc"
    CFLAGS = "cflags"
    LDFLAGS = "ldflags"
    SOURCES = "sources"
    NEW = "new"


def sdk(
    what: Annotated[
        What,
        typer.Argument(
            metavar="WHAT",
            help="path: the SDK folder; cc, cflags, ldflags, sources: what a guest is built "
            "with; new DIR: write a template guest (Makefile, vendor-call.c) into DIR",
            case_sensitive=False,
        ),
    ],
    directory: Annotated[
        Path | None, typer.Argument(metavar="DIR", help="for new: where to write")
    ] = None,
    arch: Annotated[str, typer.Option(help="arm64 or x86_64")] = "arm64",
) -> None:
    """Where the guest SDK is and what a guest is built with; a template guest of your own."""
    from pvkit.guest_sdk import SDKS, SdkMissing, new_guest, sdk_dir, sdk_variables

    if arch not in SDKS:
        raise fail(f"--arch {arch!r} is not arm64 or x86_64")
    if (what is What.NEW) != (directory is not None):
        raise fail(
            "sdk new needs a directory to write into: pvkit sdk new DIR"
            if what is What.NEW
            else f"sdk {what.value} takes no directory; only sdk new does"
        )
    try:
        if what is What.PATH:
            typer.echo(str(sdk_dir(arch)))
        elif directory is not None:
            for written in new_guest(directory, arch):
                typer.echo(f"created {written}")
        else:
            typer.echo(sdk_variables(arch)[what.value.upper()])
    except SdkMissing as exc:
        raise fail(str(exc)) from None
