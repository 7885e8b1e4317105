"""Linux boot time: Debian's kernel and pvkit's test initramfs, to the shell's doorstep.

Each probe times one boot from process start to the `pvkit-init: ready` line that
guests/linux/init prints before its probes and shell, under pvkit and under QEMU's TCG
with the same kernel, initramfs, vCPU count and RAM. The files come from the project's
fetch scripts (cached after the first run); outside a source tree, or when a fetch fails,
the metrics are absent rather than guessed.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from pvkit.bench.probes import QEMU

SCRIPTS = Path(__file__).resolve().parents[3] / "scripts"
READY = b"pvkit-init: ready"
APPEND = "console=ttyAMA0 panic=-1 pvkit.poweroff=1"
SMP = 1
MEMORY = "512M"
BOOT_LIMIT_S = 300.0
_FETCH_LIMIT_S = 600.0


@dataclass(frozen=True, slots=True)
class LinuxFiles:
    kernel: Path
    initrd: Path


class FetchError(RuntimeError):
    """A fetch script failed; the message is its own sentence."""


def fetch(script: str, limit: float = _FETCH_LIMIT_S) -> Path:
    """Run scripts/`script` (one of the project's pinned, cached fetches) and return the
    path it printed."""
    path = SCRIPTS / script
    if not path.is_file():
        raise FetchError(f"{path} is not there (the fetch scripts live in pvkit's source tree)")
    try:
        done = subprocess.run(
            ["bash", str(path)],
            capture_output=True,
            text=True,
            timeout=limit,
            stdin=subprocess.DEVNULL,
        )
    except subprocess.TimeoutExpired:
        raise FetchError(f"scripts/{script} did not finish in {limit:.0f} s") from None
    if done.returncode != 0 or not done.stdout.strip():
        raise FetchError(done.stderr.strip() or f"scripts/{script} exited {done.returncode}")
    return Path(done.stdout.strip().splitlines()[-1])


def fetch_files() -> LinuxFiles | None:
    """The kernel and initramfs the Linux tests boot, or None if they cannot be had."""
    try:
        return LinuxFiles(fetch("fetch-linux.sh"), fetch("fetch-linux-rootfs.sh"))
    except FetchError:
        return None


def pvkit_command(files: LinuxFiles) -> list[str]:
    return [
        sys.executable, "-m", "pvkit", "run", "--kernel", str(files.kernel),
        "--initrd", str(files.initrd), "-smp", str(SMP), "-m", MEMORY, "--append", APPEND,
    ]  # fmt: skip


def qemu_command(files: LinuxFiles) -> list[str]:
    return [
        QEMU, "-M", "virt,gic-version=3", "-cpu", "max", "-accel", "tcg", "-smp", str(SMP),
        "-m", MEMORY, "-nographic", "-monitor", "none", "-serial", "stdio", "-nic", "none",
        "-kernel", str(files.kernel), "-initrd", str(files.initrd), "-append", APPEND,
    ]  # fmt: skip


def seconds_to_marker(cmd: list[str], marker: bytes = READY, limit: float = BOOT_LIMIT_S) -> float:
    """Wall seconds from starting `cmd` to `marker` on its output (the process is killed
    then); inf if it never comes within `limit`."""
    start = time.perf_counter()
    proc = subprocess.Popen(
        cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    seen = threading.Event()
    elapsed = [float("inf")]

    def read() -> None:
        assert proc.stdout is not None
        fd = proc.stdout.fileno()
        tail = b""
        while chunk := os.read(fd, 65536):
            tail = tail[-len(marker) :] + chunk
            if marker in tail:
                elapsed[0] = time.perf_counter() - start
                seen.set()
                return
        seen.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    seen.wait(limit)
    proc.kill()
    proc.wait()
    reader.join(5)
    assert proc.stdout is not None
    proc.stdout.close()
    return elapsed[0]
