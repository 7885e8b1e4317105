"""The conformance guests under QEMU's own GIC and generic timer: the reference pvkit must match.

Each prebuilt guest (timer, ipi, spinlock, exceptions, wfi) runs on QEMU's virt board with
GICv3 and with GICv2, and its whole console output must be exactly the expected lines, which
hold no timings, so that pvkit's output can later be compared with the same lists.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from .conftest import PREBUILT

QEMU = shutil.which("qemu-system-aarch64")

pytestmark = [
    pytest.mark.qemu,
    pytest.mark.skipif(QEMU is None, reason="qemu-system-aarch64 is not installed"),
]

SMP = 4
EXCEPTION_CHECKS = [
    "el0 load from an unmapped page",
    "el0 store to an unmapped page",
    "el0 store to a read-only page",
    "el0 level 2 translation fault",
    "el0 level 1 translation fault",
    "el0 svc #0",
    "el0 svc #1",
    "el0 svc #0x1234",
    "el0 svc #0xffff",
    "el0 svc with every register live",
    "el0 brk #0x42",
    "el0 udf #0x99",
    "el0 ldxr at an odd address",
    "el0 call into an unmapped page",
    "el0 exit",
    "el1 load from an unmapped page",
    "el1 svc #0x42",
]
EXPECTED = {
    "timer": ["timer: 10 ticks ok", "timer: istatus ok", "timer: physical ok"],
    "ipi": [f"ipi: {100 * (SMP - 1)} round trips ok"],
    "spinlock": [
        f"spinlock: ldxr total={100000 * SMP} expected={100000 * SMP}",
        f"spinlock: lse total={100000 * SMP} expected={100000 * SMP}",
    ],
    "exceptions": [*(f"exceptions: {c} ok" for c in EXCEPTION_CHECKS), "exceptions: ok"],
    "wfi": [*(f"wfi: cpu {i} woke by timer" for i in range(SMP)), "wfi: ok"],
}
GICS = (3, 2)


def run_qemu(
    name: str, gic: int, smp: int = SMP, bootargs: str | None = None, cpu: str = "max"
) -> list[str]:
    """Console lines of guests/prebuilt/NAME.Image; QEMU must exit 0 (the guest's SYSTEM_OFF)."""
    assert QEMU is not None
    image: Path = PREBUILT / f"{name}.Image"
    cmd = [QEMU, "-M", f"virt,gic-version={gic}", "-cpu", cpu, "-m", "256M"]
    cmd += ["-smp", str(smp), "-accel", "tcg,thread=multi", "-nographic", "-no-reboot"]
    cmd += ["-monitor", "none", "-serial", "stdio", "-nic", "none", "-kernel", str(image)]
    if bootargs is not None:
        cmd += ["-append", bootargs]
    out = subprocess.run(cmd, capture_output=True, timeout=60, stdin=subprocess.DEVNULL)
    lines = out.stdout.decode(errors="replace").replace("\r", "").splitlines()
    assert out.returncode == 0, (out.returncode, lines, out.stderr.decode(errors="replace"))
    return lines


@pytest.mark.parametrize("gic", GICS)
@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_conformance_guest_output_under_qemu(name: str, gic: int) -> None:
    assert run_qemu(name, gic) == EXPECTED[name]


@pytest.mark.parametrize("gic", GICS)
def test_bootargs_set_the_counts(gic: int) -> None:
    assert run_qemu("timer", gic, bootargs="ticks=25")[0] == "timer: 25 ticks ok"
    assert run_qemu("ipi", gic, smp=2, bootargs="rounds=7") == ["ipi: 7 round trips ok"]
    assert run_qemu("spinlock", gic, smp=3, bootargs="iterations=1000 mmu") == [
        "spinlock: ldxr total=3000 expected=3000",
        "spinlock: lse total=3000 expected=3000",
    ]


def test_spinlock_without_lse_says_so() -> None:
    assert run_qemu("spinlock", 3, smp=2, bootargs="iterations=1000", cpu="cortex-a57") == [
        "spinlock: ldxr total=2000 expected=2000",
        "spinlock: lse absent",  # ARMv8.0: ID_AA64ISAR0_EL1.Atomic is 0
    ]
