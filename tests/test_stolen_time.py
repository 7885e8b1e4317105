"""Stolen time (DEN0057 on arm64, MSR_KVM_STEAL_TIME on x86): records, the ground truth.

The `steal` guest prints, per CPU, the stolen time it read from its own record; the host
keeps the scheduler's ground truth. With --deterministic they agree to the nanosecond and
the run repeats exactly; on the wall clock they agree within 1% of elapsed time.
"""

from __future__ import annotations

import re
import struct

import libfdt
import pytest

from pvkit.hypercall.namespace import Abi
from pvkit.machine.vm import StopKind
from pvkit.services.kvmclock import (
    MSR_KVM_SYSTEM_TIME_NEW,
    MSR_KVM_WALL_CLOCK_NEW,
    KvmClockService,
)
from pvkit.services.stolen_time import (
    MSR_KVM_STEAL_TIME,
    PV_TIME_FEATURES,
    PV_TIME_ST,
    RECORD_SIZE,
    StolenTimeService,
)

from .conftest import PREBUILT, Boot, boot, boot_x86

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
    calls = {(c.name, c.args[0] & 0xFFFF_FFFF): c.results[0] for c in b.trace.calls if c.results}
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
    answers = {c.name: c.results[0] for c in b.trace.calls if c.results}  # CPU_OFF has none
    assert answers["SMCCC_ARCH_FEATURES"] & (2**64 - 1) == 2**64 - 1  # NOT_SUPPORTED
    assert [c.action for c in b.trace.calls if c.function_id == PV_TIME_ST] == ["unknown"]
    with pytest.raises(libfdt.FdtException):
        libfdt.Fdt(b.machine.dtb).path_offset("/reserved-memory")


X86_STEAL = PREBUILT / "steal-x86.elf"


def test_x86_steal_time_matches_the_host_in_deterministic_mode() -> None:
    b = boot_x86(
        X86_STEAL, smp=4, host_cpus=1, deterministic=True, slice_ns=1_000_000,
        bootargs="work_ms=10",
    )  # fmt: skip
    assert b.reason.status == 1, b.console
    rows = {
        int(m[1]): (float(f"{m[4]}.{m[5]}"), int(m[6])) for m in map(LINE.fullmatch, b.lines) if m
    }
    assert sorted(rows) == [0, 1, 2, 3]
    truth = b.machine.scheduler.times
    for cpu, (percent, record) in rows.items():
        assert record == truth[cpu].steal_ns
        assert 65 <= percent <= 80


class Recording:
    """A platform whose guest writes are logged, to check the order of a record update."""

    deterministic = True

    def __init__(self) -> None:
        self.memory = bytearray(4096)
        self.log: list[tuple[int, bytes]] = []
        self.now = 1000
        self.steal = 0

    def stolen_ns(self, vcpu: int) -> int:
        return self.steal

    def now_ns(self, vcpu: int) -> int:
        return self.now

    def store_u64(self, address: int, value: int) -> bool:
        return self.write_guest(address, value.to_bytes(8, "little"))

    def write_guest(self, address: int, data: bytes) -> bool:
        self.memory[address : address + len(data)] = data
        self.log.append((address, bytes(data)))
        return True


def _versions_during(platform: Recording, record: int) -> list[int]:
    """The version word after every logged write that touched the record."""
    out = []
    shadow = bytearray(4096)
    for address, data in platform.log:
        shadow[address : address + len(data)] = data
        out.append(int.from_bytes(shadow[record : record + 4], "little"))
    return out


def test_x86_steal_record_follows_the_version_protocol() -> None:
    platform = Recording()
    service = StolenTimeService()
    service.bind(platform)  # type: ignore[arg-type]
    msr = service.msrs(Abi.KVM_X86)[MSR_KVM_STEAL_TIME]
    assert msr.write(0, 0x200 | 0b10) is False  # reserved bits 5:1: #GP
    assert msr.write(0, 0x200 | 1) is True
    for steal in (5, 9, 30):
        platform.steal = steal
        platform.log.clear()
        service.on_vcpu_entry(0)
        versions = _versions_during(platform, 0x208)
        # odd while the value changes, even once it is complete, 2 more each time
        assert versions[0] % 2 == 1 and versions[-1] == versions[0] + 1
        steal_write = [i for i, (a, _d) in enumerate(platform.log) if a == 0x200]
        assert steal_write and all(versions[i] % 2 == 1 for i in steal_write)
        assert int.from_bytes(platform.memory[0x200:0x208], "little") == steal
    assert msr.read(0) == 0x201


def test_kvmclock_record_follows_the_version_protocol_and_scales_1_to_1() -> None:
    platform = Recording()
    service = KvmClockService()
    service.bind(platform)  # type: ignore[arg-type]
    msr = service.msrs(Abi.KVM_X86)[MSR_KVM_SYSTEM_TIME_NEW]
    assert msr.write(1, 0x300 | 1)
    platform.log.clear()
    platform.now = 123_456
    service.on_vcpu_entry(1)
    versions = _versions_during(platform, 0x300)
    assert versions[0] % 2 == 1 and versions[-1] == versions[0] + 1
    version, _pad, tsc, system, mul, shift, flags = struct.unpack_from(
        "<IIQQIbB", platform.memory, 0x300
    )
    assert version % 2 == 0 and tsc == system == 123_456 and flags & 1
    assert ((5000 << shift) * mul) >> 32 == 5000  # 5000 TSC ticks are 5000 ns


class BoundedRecording(Recording):
    """RAM is the 4 KiB `memory`: a write that is not all inside it is refused, untouched."""

    def write_guest(self, address: int, data: bytes) -> bool:
        if not 0 <= address <= len(self.memory) - len(data):
            return False
        return super().write_guest(address, data)


@pytest.mark.parametrize(
    ("msr", "in_ram"),  # bytes of the record below the end of RAM: the version word and more
    [(MSR_KVM_SYSTEM_TIME_NEW, 4), (MSR_KVM_SYSTEM_TIME_NEW, 16), (MSR_KVM_SYSTEM_TIME_NEW, 30),
     (MSR_KVM_WALL_CLOCK_NEW, 4), (MSR_KVM_WALL_CLOCK_NEW, 8)],
)  # fmt: skip
def test_a_kvmclock_record_straddling_the_end_of_ram_is_not_written_at_all(
    msr: int, in_ram: int
) -> None:
    platform = BoundedRecording()
    service = KvmClockService()
    service.bind(platform)  # type: ignore[arg-type]
    address = len(platform.memory) - in_ram
    enable = 1 if msr == MSR_KVM_SYSTEM_TIME_NEW else 0
    assert service.msrs(Abi.KVM_X86)[msr].write(0, address | enable)  # accepted, as KVM
    service.on_vcpu_entry(0)
    assert platform.log == [] and platform.memory == bytearray(4096)


def test_a_kvmclock_record_ending_at_the_end_of_ram_is_written() -> None:
    platform = BoundedRecording()
    service = KvmClockService()
    service.bind(platform)  # type: ignore[arg-type]
    address = len(platform.memory) - 32
    assert service.msrs(Abi.KVM_X86)[MSR_KVM_SYSTEM_TIME_NEW].write(0, address | 1)
    platform.log.clear()
    service.on_vcpu_entry(0)
    versions = _versions_during(platform, address)
    assert versions[0] % 2 == 1 and versions[-1] == versions[0] + 1 == 4
