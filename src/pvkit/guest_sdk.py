"""The guest SDKs: where they are, what a guest built on them is compiled with, the template.

The SDKs are C and assembly in pvkit's source tree (`guests/sdk` for arm64, `guests/x86/sdk`
for x86-64), found beside the package when pvkit is installed from a checkout (`pip install
-e .`, as the project's Makefile does). A pvkit installed from a wheel has no tree beside it,
and then every question here is answered with `SdkMissing`.

Each SDK's compiler, flags and sources are written once, in its `sdk.mk`: guests/Makefile
includes it, a guest's own Makefile includes it, and `sdk_variables` asks GNU make for the
values rather than keeping a second copy here.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

TREE = Path(__file__).resolve().parents[2]  # src/pvkit/guest_sdk.py -> the checkout


@dataclass(frozen=True)
class Sdk:
    """One architecture's SDK: its folder in the tree and the prefix of its make variables."""

    arch: str
    folder: tuple[str, ...]
    prefix: str


SDKS = {
    "arm64": Sdk("arm64", ("guests", "sdk"), "PVKIT_ARM64_"),
    "x86_64": Sdk("x86_64", ("guests", "x86", "sdk"), "PVKIT_X86_64_"),
}
VARIABLES = ("CC", "CFLAGS", "LDFLAGS", "SOURCES")  # what `pvkit sdk` prints, one each
# `pvkit sdk new`: the files of a template guest (name written -> source in the tree).
TEMPLATE = {
    "Makefile": ("guests", "sdk", "template", "Makefile"),
    "vendor-call.c": ("guests", "examples", "vendor-call.c"),
}
TEMPLATE_ARCH = "arm64"  # its discovery is SMCCC's: the vendor Call UID and features bitmap


class SdkMissing(Exception):
    """No SDK, no make, or a template that would overwrite a file: one sentence each."""


def sdk_dir(arch: str) -> Path:
    """The folder that holds `sdk.mk`, `include/`, `src/` and `link.ld` for `arch`."""
    path = TREE.joinpath(*SDKS[arch].folder)
    if not (path / "sdk.mk").is_file():
        raise SdkMissing(
            f"this pvkit (in {TREE}) has no guest SDK beside it: the SDKs are part of pvkit's "
            "source tree, so install pvkit from a checkout (pip install -e CHECKOUT)"
        )
    return path


def sdk_variables(arch: str) -> dict[str, str]:
    """CC, CFLAGS, LDFLAGS and SOURCES as `sdk.mk` defines them, asked of GNU make.

    The environment's own overrides (say `PVKIT_ARM64_CROSS`) count, as they would in a
    Makefile; a calling make's flags (`MAKEFLAGS`, such as -n) do not.
    """
    mk = sdk_dir(arch) / "sdk.mk"
    make = shutil.which("make")
    if make is None:
        raise SdkMissing(
            f"the SDK's flags are in {mk}, read with GNU make, and make is not on PATH"
        )
    prefix = SDKS[arch].prefix
    shown = "".join(f"$(info {v}=$({prefix}{v}))" for v in VARIABLES)
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL")}
    r = subprocess.run(
        [
            make,
            "-s",
            "--no-print-directory",
            "-f",
            str(mk),
            f"--eval=pvkit-sdk: ; {shown}@:",
            "pvkit-sdk",
        ],
        capture_output=True,
        text=True,
        env=env,
        stdin=subprocess.DEVNULL,
        check=False,
    )
    found = dict(line.split("=", 1) for line in r.stdout.splitlines() if "=" in line)
    if r.returncode != 0 or set(found) != set(VARIABLES):
        why = " ".join(r.stderr.split()) or "no output"
        raise SdkMissing(f"make could not read {mk}: {why}")
    return found


def new_guest(directory: Path, arch: str = TEMPLATE_ARCH) -> list[Path]:
    """Write the template guest into `directory`; refuse, writing nothing, if a file exists."""
    if arch != TEMPLATE_ARCH:
        raise SdkMissing(
            f"the template guest is {TEMPLATE_ARCH} only (its discovery is SMCCC's); for "
            f"{arch}, start from pvkit's guests/x86/examples and `pvkit sdk cflags --arch {arch}`"
        )
    sdk_dir(arch)
    sources = {name: TREE.joinpath(*where) for name, where in TEMPLATE.items()}
    targets = [directory / name for name in sources]
    taken = [str(t) for t in targets if t.exists()]
    if taken:
        exist = "already exists" if len(taken) == 1 else "already exist"
        raise SdkMissing(f"{' and '.join(taken)} {exist}: pvkit sdk new overwrites nothing")
    written: list[Path] = []
    try:
        directory.mkdir(parents=True, exist_ok=True)
        for target, source in zip(targets, sources.values(), strict=True):
            tmp = target.with_name(target.name + ".tmp")
            tmp.write_bytes(source.read_bytes())
            tmp.replace(target)
            written.append(target)
    except OSError as exc:
        for path in written:  # all of the template or none of it
            path.unlink(missing_ok=True)
        for target in targets:
            target.with_name(target.name + ".tmp").unlink(missing_ok=True)
        raise SdkMissing(f"cannot write the template into {directory}: {exc.strerror}") from None
    return targets
