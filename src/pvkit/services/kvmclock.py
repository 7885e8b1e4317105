"""kvmclock: the pvclock records that let an x86 guest turn its TSC into nanoseconds.

MSR_KVM_SYSTEM_TIME_NEW (0x4B564D01, legacy 0x12) names a per-vCPU
`pvclock_vcpu_time_info` (bit 0 enables it); MSR_KVM_WALL_CLOCK_NEW (0x4B564D00, legacy
0x11) names a `pvclock_wall_clock` filled once, at the write (Linux
Documentation/virt/kvm/x86/msr.rst; layouts in arch/x86/include/asm/pvclock-abi.h). Both
records follow the version protocol: odd while the host writes them. pvkit's
TSC runs at 1 GHz on the hypervisor clock, so the scale is 1 (mul 2^31, shift 1) and the
record is refreshed before every entry. CPUID: CLOCKSOURCE2 (bit 3), CLOCKSOURCE (bit 0),
CLOCKSOURCE_STABLE_BIT (bit 24).
"""

from __future__ import annotations

import struct
import threading
import time

from pvkit.hypercall.namespace import Abi, Function, IdRange
from pvkit.services.base import Msr, Service
from pvkit.snapshot.state import Fields, int_keys

MSR_KVM_WALL_CLOCK = 0x11
MSR_KVM_SYSTEM_TIME = 0x12
MSR_KVM_WALL_CLOCK_NEW = 0x4B56_4D00
MSR_KVM_SYSTEM_TIME_NEW = 0x4B56_4D01
SYSTEM_TIME_ENABLE = 1
TSC_TO_SYSTEM_MUL = 1 << 31  # with shift 1: system ns = TSC ticks, a 1 GHz TSC
TSC_SHIFT = 1
PVCLOCK_TSC_STABLE = 1
_TIME_INFO = struct.Struct("<IIQQIbBH")  # pvclock_vcpu_time_info, 32 bytes


class KvmClockService(Service):
    name = "kvmclock"
    abis = frozenset({Abi.KVM_X86})
    cpuid_feature_bit = 3  # KVM_FEATURE_CLOCKSOURCE2
    cpuid_more_bits = (0, 24)  # CLOCKSOURCE (the legacy MSRs), CLOCKSOURCE_STABLE_BIT

    def __init__(self) -> None:
        super().__init__()
        self._lock = threading.Lock()
        self._system: dict[int, int] = {}  # vCPU -> MSR value as written
        self._versions: dict[int, int] = {}
        self._checked: dict[int, int] = {}  # vCPU -> record address known to be all RAM
        self._wall = 0

    def claims(self, abi: Abi = Abi.KVM_X86) -> list[IdRange]:
        return []

    def functions(self, abi: Abi = Abi.KVM_X86) -> list[Function]:
        return []

    def msrs(self, abi: Abi) -> dict[int, Msr]:
        if abi is not Abi.KVM_X86:
            return {}
        wall = Msr("MSR_KVM_WALL_CLOCK_NEW", lambda _v: self._wall, self._write_wall)
        system = Msr(
            "MSR_KVM_SYSTEM_TIME_NEW", lambda v: self._system.get(v, 0), self._write_system
        )
        return {
            MSR_KVM_WALL_CLOCK_NEW: wall,
            MSR_KVM_SYSTEM_TIME_NEW: system,
            MSR_KVM_WALL_CLOCK: Msr("MSR_KVM_WALL_CLOCK", wall.read, wall.write),
            MSR_KVM_SYSTEM_TIME: Msr("MSR_KVM_SYSTEM_TIME", system.read, system.write),
        }

    def _write_wall(self, vcpu: int, value: int) -> bool:
        address = value & 0xFFFF_FFFF_FFFF_FFFC  # KVM ignores the low two bits
        self._wall = value
        p = self.platform
        boot_ns = 0 if p.deterministic else time.time_ns() - p.now_ns(vcpu)
        seconds, nanoseconds = divmod(boot_ns, 1_000_000_000)
        # One write of the whole record, version odd: all of it is RAM, or none is written.
        if p.write_guest(address, struct.pack("<III", 1, seconds & 0xFFFF_FFFF, nanoseconds)):
            p.write_guest(address, struct.pack("<I", 2))
        return True

    def _write_system(self, vcpu: int, value: int) -> bool:
        with self._lock:
            self._system[vcpu] = value
        self._update(vcpu)
        return True

    def _update(self, vcpu: int) -> None:
        value = self._system.get(vcpu, 0)
        if not value & SYSTEM_TIME_ENABLE:
            return
        address = value & ~SYSTEM_TIME_ENABLE
        p = self.platform
        version = self._versions.get(vcpu, 0)
        now = p.now_ns(vcpu)
        odd = (version + 1) & 0xFFFF_FFFF
        record = _TIME_INFO.pack(
            odd, 0, now, now, TSC_TO_SYSTEM_MUL, TSC_SHIFT, PVCLOCK_TSC_STABLE, 0
        )
        if self._checked.get(vcpu) != address:
            # A new address: the first write is the whole record (version odd), so a record
            # that is not all RAM gets nothing written, not even its version word.
            if not p.write_guest(address, record):
                return
            self._checked[vcpu] = address
        elif not p.write_guest(address, record[:4]):
            return
        p.write_guest(address + 4, record[4:])
        p.write_guest(address, struct.pack("<I", (version + 2) & 0xFFFF_FFFF))
        self._versions[vcpu] = (version + 2) & 0xFFFF_FFFF

    def save_state(self) -> dict[str, object]:
        """MSR_KVM_SYSTEM_TIME(_NEW) per vCPU with its record version, and the wall-clock
        MSR (the records are guest RAM)."""
        with self._lock:
            return {"system": int_keys(self._system), "versions": int_keys(self._versions),
                    "checked": int_keys(self._checked), "wall": self._wall}  # fmt: skip

    def restore_state(self, state: Fields) -> None:
        system, versions = state.int_map("system"), state.int_map("versions", 0xFFFF_FFFF)
        checked, wall = state.int_map("checked"), state.integer("wall")
        with self._lock:
            self._system, self._versions, self._checked = system, versions, checked
            self._wall = wall

    def on_vcpu_entry(self, vcpu: int) -> None:
        if vcpu in self._system:
            self._update(vcpu)
