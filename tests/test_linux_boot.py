"""Debian 12's arm64 kernel (linux-image-6.1.0-50-arm64) boots on pvkit's virt board.

scripts/fetch-linux.sh downloads the pinned package once into pvkit's cache (outside git);
the kernel then boots through the CLI, in a subprocess, as a user would run it. Without a
root file system it ends in "VFS: Unable to mount root fs", which is where QEMU's virt
board stops too (about 10 s there on a 2-core machine). The test stops reading at that
panic, or when pvkit exits, or at a deadline.
"""

from __future__ import annotations

import re
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from .conftest import ROOT

FETCH = ROOT / "scripts" / "fetch-linux.sh"
APPEND = "earlycon=pl011,0x09000000 console=ttyAMA0 panic=-1"
BOOT_SECONDS = 100.0  # pvkit gets to the root-fs panic in ~20 s once the kernel runs on
FETCH_SECONDS = 60.0  # ~60 MB, a few seconds from Debian's mirror
END = "Unable to mount root fs"

pytestmark = [pytest.mark.linux, pytest.mark.slow, pytest.mark.timeout(180)]


@dataclass
class LinuxBoot:
    lines: list[str]
    exit_code: int | None  # None: still running at the end marker or the deadline, killed
    seconds: float

    def has(self, pattern: str) -> bool:
        return any(re.search(pattern, line) for line in self.lines)

    def tail(self, n: int = 15) -> str:
        return "\n".join(self.lines[-n:])


def fetch_kernel() -> Path:
    try:
        done = subprocess.run(
            ["bash", str(FETCH)],
            capture_output=True,
            text=True,
            timeout=FETCH_SECONDS,
            stdin=subprocess.DEVNULL,
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"scripts/fetch-linux.sh did not finish in {FETCH_SECONDS:.0f} s")
    if done.returncode != 0:
        pytest.fail(done.stderr.strip() or f"scripts/fetch-linux.sh exited {done.returncode}")
    return Path(done.stdout.strip().splitlines()[-1])


def boot(kernel: Path) -> LinuxBoot:
    cmd = [
        sys.executable, "-m", "pvkit", "run", str(kernel),
        "--smp", "2", "--mem", "512M", "--append", APPEND, "--timeout", str(BOOT_SECONDS),
    ]  # fmt: skip
    start = time.monotonic()
    proc = subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        text=True,
        errors="replace",
    )
    lines: list[str] = []
    ended = threading.Event()

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line.rstrip("\r\n"))
            if END in line:
                break
        ended.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    ended.wait(BOOT_SECONDS + 15)
    exit_code = proc.poll()
    if exit_code is None:
        proc.kill()
    proc.wait(10)
    reader.join(5)
    return LinuxBoot(list(lines), exit_code, time.monotonic() - start)


@pytest.fixture(scope="module")
def linux() -> LinuxBoot:
    return boot(fetch_kernel())


def test_the_debian_kernel_runs_with_its_mmu_on_and_prints_its_boot_log(
    linux: LinuxBoot,
) -> None:
    # Every line below is printed by start_kernel() or later, at the kernel's virtual
    # addresses: __enable_mmu is behind it. The DT is pvkit's; PSCI and the KVM vendor
    # UID are answered through HVC by pvkit's dispatcher.
    expected = [
        r"^\[ *0\.000000\] Booting Linux on physical CPU 0x0+ \[0x[0-9a-f]{8}\]$",
        r"Linux version 6\.1\.0-50-arm64 .* SMP Debian 6\.1\.176-1",
        r"Machine model: pvkit virt$",
        r"earlycon: pl11 at MMIO 0x0+9000000",
        r"NUMA: Faking a node at \[mem 0x0+40000000-0x0+5fffffff\]$",  # --mem 512M
        r"psci: PSCIv1\.1 detected in firmware\.$",
        r"smccc: KVM: hypervisor services detected",
        r"Detected PIPT I-cache on CPU0$",
    ]
    missing = [p for p in expected if not linux.has(p)]
    assert not missing, f"missing {missing}; the boot ended with:\n{linux.tail()}"


def test_the_debian_kernel_finds_the_gic_timer_second_cpu_and_console(
    linux: LinuxBoot,
) -> None:
    expected = [
        r"GICv3: \d+ SPIs implemented$",
        r"GICv3: CPU0: found redistributor 0 region",
        r"arch_timer: cp15 timer\(s\) running at [0-9.]+MHz \(virt\)\.$",
        r"smp: Brought up 1 node, 2 CPUs$",
        r"printk: console \[ttyAMA0\] enabled$",
        r"Kernel panic - not syncing: VFS: Unable to mount root fs",
    ]
    missing = [p for p in expected if not linux.has(p)]
    assert not missing, f"missing {missing}; the boot ended with:\n{linux.tail()}"
