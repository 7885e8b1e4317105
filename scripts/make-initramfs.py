#!/usr/bin/env python3
"""Write the initramfs that pvkit's Linux tests boot: a gzip'ed cpio archive ("newc" format).

    make-initramfs.py --busybox PATH --modules DIR --init FILE -o OUT

It holds a static busybox as /bin/busybox with symlinks for the applets that FILE uses,
FILE as /init, DIR (a /lib/modules/<release> tree, named for the kernel release, as
scripts/fetch-linux.sh leaves it) as /lib/modules/<release>/, the mount points /proc, /sys,
/dev and /tmp, and /dev/console, which the kernel opens for /init before anything is mounted.
Prints OUT. Standard library only.

The archive is deterministic: entries sorted by path, every mtime 0, owner root, inode
numbers counted up in that order, a gzip header with no name and mtime 0, so the same inputs
give the same bytes. The cpio format is the kernel's (Documentation/driver-api/
early-userspace/buffer-format.rst): for each entry a 110-byte ASCII header, "070701" and
thirteen 8-digit hex fields, then the NUL-terminated name, padded to 4 bytes, then the data,
padded to 4 bytes; a last entry named TRAILER!!! ends it.
"""

from __future__ import annotations

import argparse
import gzip
import os
import stat
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

# The applets guests/linux/init runs (shell mode links the rest at run time). ash has echo,
# printf, read and test built in; the links for them serve commands typed at the shell too.
APPLETS = (
    "cat", "cttyhack", "dd", "dmesg", "echo", "grep", "head", "hexdump", "insmod", "ls",
    "lsmod", "mkdir", "mount", "poweroff", "reboot", "setsid", "sh", "sleep", "timeout",
    "uname",
)  # fmt: skip
MOUNT_POINTS = ("dev", "proc", "sys", "tmp")
CONSOLE = (5, 1)  # /dev/console: TTYAUX_MAJOR, minor 1
EM_AARCH64 = 183
NEWC_MAGIC = b"070701"
TRAILER = "TRAILER!!!"


class InputError(Exception):
    """An input is missing or unsuitable; the message is one sentence for the user."""


@dataclass(frozen=True)
class Entry:
    name: str  # path inside the archive, no leading "/"
    mode: int  # file type and permission bits, as st_mode
    data: bytes = b""  # a file's contents or a symlink's target
    rdev: tuple[int, int] = (0, 0)  # a device node's major and minor


def _pad4(n: int) -> bytes:
    return b"\0" * (-n % 4)


def newc_record(ino: int, entry: Entry) -> bytes:
    """One entry of the archive: header, name and data, each padded to 4 bytes."""
    name = entry.name.encode() + b"\0"
    nlink = 2 if stat.S_ISDIR(entry.mode) else 1
    fields = (
        ino, entry.mode, 0, 0, nlink, 0, len(entry.data),  # ino mode uid gid nlink mtime size
        0, 0, entry.rdev[0], entry.rdev[1],  # devmajor devminor rdevmajor rdevminor
        len(name), 0,  # namesize check
    )  # fmt: skip
    header = NEWC_MAGIC + b"".join(b"%08X" % f for f in fields)
    assert len(header) == 110
    return header + name + _pad4(len(header) + len(name)) + entry.data + _pad4(len(entry.data))


def newc_archive(entries: list[Entry]) -> bytes:
    """The cpio archive of entries, parents added and everything sorted by path."""
    by_name = {e.name: e for e in entries}
    for e in entries:
        parent = Path(e.name).parent
        while str(parent) != ".":
            by_name.setdefault(str(parent), Entry(str(parent), stat.S_IFDIR | 0o755))
            parent = parent.parent
    ordered = sorted(by_name.values(), key=lambda e: Path(e.name).parts)
    out = [newc_record(ino, e) for ino, e in enumerate(ordered, start=1)]
    out.append(newc_record(0, Entry(TRAILER, 0)))
    return b"".join(out)


def _regular(path: Path, name: str, mode: int | None = None) -> Entry:
    if mode is None:
        mode = 0o755 if path.stat().st_mode & 0o111 else 0o644
    return Entry(name, stat.S_IFREG | mode, path.read_bytes())


def _check_arm64_executable(path: Path, what: str) -> None:
    head = path.read_bytes()[:20] if path.is_file() else b""
    if len(head) < 20 or head[:4] != b"\x7fELF":
        raise InputError(f"{path} is not an ELF executable (it should be {what}).")
    if head[4] != 2 or head[5] != 1 or int.from_bytes(head[18:20], "little") != EM_AARCH64:
        raise InputError(f"{path} is not a 64-bit arm64 executable.")


def busybox_entries(busybox: Path, applets: tuple[str, ...]) -> list[Entry]:
    _check_arm64_executable(busybox, "busybox-static")
    entries = [_regular(busybox, "bin/busybox", 0o755)]
    entries += [Entry(f"bin/{a}", stat.S_IFLNK | 0o777, b"busybox") for a in applets]
    return entries


def program_entries(programs: list[Path]) -> list[Entry]:
    """Static arm64 programs of the project's own (guests/linux), as /bin/<name without
    .elf>."""
    for path in programs:
        _check_arm64_executable(path, "a static arm64 program")
    return [_regular(path, f"bin/{path.name.removesuffix('.elf')}", 0o755) for path in programs]


def module_entries(modules: Path) -> list[Entry]:
    if not modules.is_dir():
        raise InputError(f"{modules} is not a directory (it should be a lib/modules/<release>).")
    base = f"lib/modules/{modules.name}"
    entries = [Entry(base, stat.S_IFDIR | 0o755)]
    for path in sorted(modules.rglob("*")):
        name = f"{base}/{path.relative_to(modules).as_posix()}"
        if path.is_symlink() or not (path.is_dir() or path.is_file()):
            raise InputError(f"{path} is neither a plain file nor a directory.")
        if path.is_dir():
            entries.append(Entry(name, stat.S_IFDIR | 0o755))
        else:
            entries.append(_regular(path, name, 0o644))
    if not any(e.name.endswith(".ko") for e in entries):
        raise InputError(f"{modules} holds no .ko file.")
    return entries


def init_entry(init: Path) -> Entry:
    if not init.is_file():
        raise InputError(f"{init} is not a file.")
    data = init.read_bytes()
    if not data.startswith(b"#!"):
        raise InputError(f"{init} does not start with #!, so the kernel cannot run it as /init.")
    return Entry("init", stat.S_IFREG | 0o755, data)


def initramfs(
    busybox: Path,
    modules: Path,
    init: Path,
    applets: tuple[str, ...],
    programs: list[Path] | None = None,
) -> bytes:
    """The gzip'ed archive: deterministic, so the same inputs give the same bytes."""
    entries = busybox_entries(busybox, applets) + module_entries(modules) + [init_entry(init)]
    entries += program_entries(programs or [])
    entries += [Entry(d, stat.S_IFDIR | (0o1777 if d == "tmp" else 0o755)) for d in MOUNT_POINTS]
    entries.append(Entry("dev/console", stat.S_IFCHR | 0o600, rdev=CONSOLE))
    return gzip.compress(newc_archive(entries), compresslevel=9, mtime=0)


def write_atomically(out: Path, data: bytes) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", dir=out.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o644)
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--busybox", type=Path, required=True, help="a static arm64 busybox")
    parser.add_argument(
        "--modules", type=Path, required=True, help="a lib/modules/<release> directory"
    )
    parser.add_argument("--init", type=Path, required=True, help="the script to run as /init")
    parser.add_argument("-o", "--output", type=Path, required=True, help="the .cpio.gz to write")
    parser.add_argument(
        "--applet", action="append", default=[], help="link one more busybox applet in /bin"
    )
    parser.add_argument(
        "--program",
        type=Path,
        action="append",
        default=[],
        help="a static arm64 program to put in /bin (its name without .elf)",
    )
    args = parser.parse_args(argv)
    applets = tuple(sorted(set(APPLETS) | set(args.applet)))
    try:
        for a in args.applet:
            if not a or "/" in a or a in (".", "..", "busybox"):
                raise InputError(f"{a!r} cannot be an applet's name in /bin.")
        names = [p.name.removesuffix(".elf") for p in args.program]
        if set(names) & (set(applets) | {"busybox"}) or len(set(names)) != len(names):
            raise InputError(f"the programs {names} clash with each other or with busybox.")
        data = initramfs(args.busybox, args.modules, args.init, applets, args.program)
        write_atomically(args.output, data)
    except InputError as e:
        print(f"make-initramfs: {e}", file=sys.stderr)
        return 1
    except OSError as e:
        print(f"make-initramfs: {e.filename or args.output}: {e.strerror}.", file=sys.stderr)
        return 1
    print(args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
