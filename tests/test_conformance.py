"""The conformance guests on pvkit: the same lines as under QEMU, on both GICs and both clocks.

Each guest checks the architecture itself (exception syndromes, timer conditions, GIC
acknowledge/EOI, atomicity) and prints only timing-free lines, so pvkit's output must equal
the expected lines that tests/test_conformance_qemu.py holds QEMU to, line for line.
"""

from __future__ import annotations

import pytest

from pvkit.machine.vm import StopKind

from .conftest import PREBUILT, boot
from .test_conformance_qemu import EXPECTED, QEMU, SMP, run_qemu

CLOCKS = {"wall": {}, "deterministic": {"deterministic": True}}


def run_pvkit(name: str, gic: int = 3, smp: int = SMP, **config: object) -> list[str]:
    b = boot(PREBUILT / f"{name}.Image", smp=smp, gic=gic, traced=False, **config)
    assert b.reason.kind is StopKind.SHUTDOWN, (b.reason, b.console)
    return b.lines


@pytest.mark.parametrize("clock", sorted(CLOCKS))
@pytest.mark.parametrize("gic", (3, 2))
@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_conformance_guest_gives_the_expected_lines(name: str, gic: int, clock: str) -> None:
    assert run_pvkit(name, gic, **CLOCKS[clock]) == EXPECTED[name]


@pytest.mark.qemu
@pytest.mark.skipif(QEMU is None, reason="qemu-system-aarch64 is not installed")
@pytest.mark.parametrize("name", ["timer", "ipi"])
def test_bootargs_change_the_output_as_under_qemu(name: str) -> None:
    args = {"timer": "ticks=7", "ipi": "rounds=5"}[name]
    assert run_pvkit(name, smp=2, bootargs=args) == run_qemu(name, 3, smp=2, bootargs=args)


@pytest.mark.slow
@pytest.mark.parametrize("clock", sorted(CLOCKS))
def test_spinlock_totals_are_exact_twenty_runs_in_a_row(clock: str) -> None:
    """LDXR/STXR and LSE atomics are host atomics across the vCPU threads (parallel
    translation): no increment is ever lost."""
    for _ in range(20):
        assert run_pvkit("spinlock", **CLOCKS[clock]) == EXPECTED["spinlock"]


WFI_SLEEP_NS = 5_000_000  # wfi.c's AHEAD_MS: each CPU sleeps until its timer, 5 ms ahead


def test_wfi_sleepers_are_idle_not_running() -> None:
    """A vCPU in WFI gives its host CPU back: its sleep until the timer is idle time, on
    the host's clock (however loaded the host) and on the deterministic one (where it
    is nearly all of the secondary's life)."""
    b = boot(PREBUILT / "wfi.Image", smp=SMP, traced=False)
    assert b.lines == EXPECTED["wfi"]
    for t in b.machine.scheduler.times[1:]:
        assert t.idle_ns >= 0.8 * WFI_SLEEP_NS, t
    b = boot(PREBUILT / "wfi.Image", smp=SMP, traced=False, deterministic=True)
    assert b.lines == EXPECTED["wfi"]
    for t in b.machine.scheduler.times[1:]:
        assert t.idle_ns >= WFI_SLEEP_NS and t.idle_ns > 100 * t.run_ns, t


def test_deterministic_runs_repeat_to_the_nanosecond() -> None:
    """Timer deadlines and IPIs are scheduled from guest instructions alone."""
    runs = [boot(PREBUILT / "ipi.Image", smp=3, deterministic=True, traced=False) for _ in "ab"]
    times = [[(t.run_ns, t.idle_ns, t.steal_ns) for t in b.machine.scheduler.times] for b in runs]
    assert runs[0].lines == ["ipi: 200 round trips ok"]
    assert times[0] == times[1]
