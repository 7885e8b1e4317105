"""Stolen time on arm64 (DEN0057): records, discovery, the switch, and the ground truth.

The `steal` guest prints, per CPU, the stolen time it read from its own record; the host
keeps the scheduler's ground truth. With --deterministic they agree to the nanosecond and
the run repeats exactly; on the wall clock they agree within 1% of elapsed time.
"""

from __future__ import annotations

import re
import struct

import libfdt
import pytest

from pvkit.machine.vm import StopKind
from pvkit.services.stolen_time import PV_TIME_FEATURES, PV_TIME_ST, RECORD_SIZE

from .conftest import PREBUILT, Boot, boot

STEAL = PREBUILT / "steal.Image"
LINE = re.compile(
    r"steal: cpu (\d+) stolen (\d+) ns of (\d+) ns elapsed: (\d+)\.(\d)% \(record (\d+)\)"
)


def steal_run(**kwargs: object) -> tuple[Boot, dict[int, tuple[int, int, float, int]]]:
    b = boot(STEAL, timeout=120, **kwargs)
    assert b.reason.kind is StopKind.SHUTDOWN, b.console
    rows = {}
    for line in b.lines:
        m = LINE.fullmatch(line)
        if m:
            cpu, stolen, elapsed, whole, tenth, record = (int(g) for g in m.groups())
            rows[cpu] = (stolen, elapsed, whole + tenth / 10, record)
    return b, rows


def test_deterministic_runs_agree_with_the_host_to_the_nanosecond() -> None:
    kwargs = {"smp": 4, "host_cpus": 1, "deterministic": True, "bootargs": "work_ms=20",
              "slice_ns": 1_000_000}  # fmt: skip
    first, rows = steal_run(**kwargs)
    truth = first.machine.scheduler.times
    assert sorted(rows) == [0, 1, 2, 3]
    for cpu, (_stolen, _elapsed, percent, record) in rows.items():
        assert record == truth[cpu].steal_ns  # the guest's own reading, exactly
        assert 70 <= percent <= 80  # four vCPUs on one host CPU: about 3/4 stolen
    again, rows_again = steal_run(**kwargs)
    assert rows_again == rows
    assert again.machine.scheduler.times == truth


def test_wall_clock_reading_is_within_one_percent_of_elapsed() -> None:
    b, rows = steal_run(smp=4, host_cpus=1, bootargs="work_ms=100")
    truth = b.machine.scheduler.times
    for cpu, (_stolen, elapsed, percent, record) in rows.items():
        assert abs(record - truth[cpu].steal_ns) <= elapsed / 100
        assert 60 <= percent <= 90


def test_with_a_host_cpu_each_steal_is_near_zero() -> None:
    _b, rows = steal_run(smp=4, host_cpus=4, bootargs="work_ms=50")
    for stolen, elapsed, _percent, _record in rows.values():
        assert stolen <= elapsed / 50


def test_records_sit_in_a_reserved_no_map_region_one_aligned_record_per_vcpu() -> None:
    b, rows = steal_run(smp=3, host_cpus=1, deterministic=True, bootargs="work_ms=5")
    fdt = libfdt.Fdt(b.machine.dtb)
    node = fdt.path_offset("/reserved-memory")
    child = fdt.first_subnode(node)
    assert fdt.get_name(child).startswith("stolen-time@")
    assert fdt.getprop(child, "no-map") is not None
    base, size = struct.unpack(">QQ", fdt.getprop(child, "reg"))
    assert base % (64 << 10) == 0 and size >= 3 * RECORD_SIZE
    service = next(s for s in b.machine.services if s.name == "stolen-time")
    memory = b.machine.memory
    for vcpu in range(3):
        address = service.record_address(vcpu)  # type: ignore[attr-defined]
        assert address == base + RECORD_SIZE * vcpu and address % 64 == 0
        revision, attributes, stolen = struct.unpack("<IIQ", memory.read(address, 16))
        assert (revision, attributes) == (0, 0)
        assert memory.read(address + 16, 48) == bytes(48)
        assert stolen == rows[vcpu][3]


def test_discovery_calls_and_answers() -> None:
    b, _rows = steal_run(smp=1, bootargs="work_ms=1")
    calls = {(c.name, c.args[0] & 0xFFFF_FFFF): c.results[0] for c in b.trace.calls}
    assert calls[("SMCCC_ARCH_FEATURES", PV_TIME_FEATURES)] == 0
    assert calls[("PV_TIME_FEATURES", PV_TIME_ST)] == 0
    [st] = [c for c in b.trace.calls if c.name == "PV_TIME_ST"]
    assert st.results[0] % 64 == 0 and b.machine.memory.contains(st.results[0], RECORD_SIZE)


def test_with_the_service_off_it_is_absent_everywhere() -> None:
    b = boot(STEAL, smp=2, bootargs="work_ms=1 force", disabled=frozenset({"stolen-time"}))
    assert b.reason.kind is StopKind.SHUTDOWN, b.console
    assert "PV time not offered" in b.lines[0]
    assert "steal: PV_TIME_ST -> -1: falling back without steal" in b.lines
    assert "cpu 1 ran" in b.console and "stolen time unknown" in b.console
    answers = {c.name: c.results[0] for c in b.trace.calls}
    assert answers["SMCCC_ARCH_FEATURES"] & (2**64 - 1) == 2**64 - 1  # NOT_SUPPORTED
    assert [c.action for c in b.trace.calls if c.function_id == PV_TIME_ST] == ["unknown"]
    with pytest.raises(libfdt.FdtException):
        libfdt.Fdt(b.machine.dtb).path_offset("/reserved-memory")
