"""Stolen time: how long each vCPU was runnable but not running, published to the guest.

One service, two ABIs (seed 002: the API need not be per architecture):
- arm64, Arm DEN0057 as KVM implements it (Linux Documentation/virt/kvm/arm/pvtime.rst,
  arch/arm64/kvm/pvtime.c): PV_TIME_FEATURES and
  PV_TIME_ST (SMC64 only); one 64-byte record per vCPU in a reserved region (revision 0,
  attributes 0, stolen ns at +8), updated with one aligned 64-bit store before the vCPU
  runs, and only once the vCPU asked for its record. The record is written through a view
  of guest RAM checked once, PV_TIME_ST is a direct handler and PV_TIME_FEATURES an
  answer-table entry per queried ID (docs/hot-path.md): both sit on hot paths.
- x86, MSR_KVM_STEAL_TIME (Linux Documentation/virt/kvm/x86/msr.rst; the layout in
  arch/x86/include/uapi/asm/kvm_para.h): the guest names a 64-byte-aligned `kvm_steal_time`
  with the enable bit; the host updates it under the version protocol (odd while
  updating) before every entry. Gated by KVM_FEATURE_STEAL_TIME (bit 5).

arm64 records come in two revisions, the `pv-time-revision` firmware register choosing one
for the VM's life (seed 003: the revision is VM state that must survive migration):
- revision 0 (default): DEN0057's record, byte for byte what KVM writes and Linux reads;
- revision 1, pvkit's own extension (not KVM's, not in DEN0057): the same fields, the
  revision word 1, and at +16 `updated_ns`, the vCPU's counter in ns (CNTVCT_EL0 at
  1 GHz) when the host last wrote the record. The stolen time and its time stamp come
  from one instant, so a guest reading its own record gets a steal rate over any stretch
  (and sees how old the value is) without pairing its own counter read with the host's
  update. Both are written before the vCPU runs, one aligned 64-bit store each.
A snapshot holds the revision; a restore serves the guest the one it was using, whatever
this host would give a new VM.

The value is the vCPU's stolen time since it was powered on, the scheduler's ground
truth. (KVM restarts its count at PV_TIME_ST; counting from power-on makes the guest's
reading equal the host's, and a guest only ever looks at differences.)
"""

from __future__ import annotations

import threading

from pvkit.abi.smccc import SmcccReturn
from pvkit.hypercall.call import Call
from pvkit.hypercall.namespace import Abi, Function, IdRange, Memo
from pvkit.services.base import Msr, Service
from pvkit.services.firmware import Register
from pvkit.snapshot.state import Fields, int_keys

PV_TIME_FEATURES = 0xC500_0020
PV_TIME_ST = 0xC500_0021
RECORD_SIZE = 64
RECORD_REVISION = 0  # DEN0057 revision 0 (the record's first word): a new VM's default
_UPDATED_NS = 16  # revision 1's time stamp of the last update
MSR_KVM_STEAL_TIME = 0x4B56_4D03
STEAL_ENABLE = 1
STEAL_RESERVED = 0x3E  # bits 5:1
STEAL_ADDRESS = ~0x3F & 0xFFFF_FFFF_FFFF_FFFF
_VERSION = 8  # kvm_steal_time offsets
_PREEMPTED = 16
_STOLEN_WORD = 1  # the stolen-ns field, at +8
_ZERO_RECORD = memoryview(bytes(RECORD_SIZE)).cast("Q")


class StolenTimeService(Service):
    name = "stolen-time"
    abis = frozenset({Abi.SMCCC, Abi.KVM_X86})
    cpuid_feature_bit = 5  # KVM_FEATURE_STEAL_TIME
    revision = "0 (the record's revision field)"
    firmware_gate = ("std-hyp-bmap", 0)  # KVM_REG_ARM_STD_HYP_BIT_PV_TIME
    REVISIONS: tuple[int, ...] = (0, 1)  # the arm64 record revisions pvkit can serve

    def __init__(self) -> None:
        super().__init__()
        self.record_revision = Register(
            "pv-time-revision", None, None, RECORD_REVISION,
            "0 (DEN0057, as KVM and Linux have it), 1 (pvkit's own: adds updated_ns at +16)",
            "the revision of the arm64 stolen-time record PV_TIME_ST hands out",
            self._refuse_revision, decimal=True,
        )  # fmt: skip
        self._base: int | None = None
        self._lock = threading.Lock()
        self._arm_records: dict[int, int] = {}  # vCPU -> record address, after PV_TIME_ST
        self._arm_words: dict[int, memoryview] = {}  # the same records, as 8 u64 words
        self._x86_msr: dict[int, int] = {}  # vCPU -> MSR value as written
        self._x86_versions: dict[int, int] = {}

    def _refuse_revision(self, value: int) -> str | None:
        if value in self.REVISIONS:
            return None
        served = ", ".join(str(r) for r in self.REVISIONS)
        return f"stolen-time serves record revisions {served}, not {value}"

    def firmware_registers(self) -> list[Register]:
        return [self.record_revision]

    def revisions(self, abi: Abi) -> tuple[str, ...]:
        return tuple(str(r) for r in self.REVISIONS) if abi is Abi.SMCCC else ("0",)

    def revision_in_use(self) -> str | None:
        return str(self.record_revision.value)

    # -- arm64 ---------------------------------------------------------------------------
    def reserved_bytes(self, abi: Abi, vcpu_count: int) -> int:
        return RECORD_SIZE * vcpu_count if abi is Abi.SMCCC else 0

    def place(self, base: int) -> None:
        self._base = base

    def claims(self, abi: Abi = Abi.SMCCC) -> list[IdRange]:
        return [IdRange(PV_TIME_FEATURES, PV_TIME_ST)] if abi is Abi.SMCCC else []

    def functions(self, abi: Abi = Abi.SMCCC) -> list[Function]:
        if abi is not Abi.SMCCC:
            return []
        return [
            Function(PV_TIME_FEATURES, "PV_TIME_FEATURES", self._features, memo=Memo.BY_QUERIED_ID),
            Function.served_directly(PV_TIME_ST, "PV_TIME_ST", self._stolen_time_record),
        ]

    def record_address(self, vcpu: int) -> int:
        if self._base is None:
            raise RuntimeError("the stolen-time region was never placed")
        return self._base + RECORD_SIZE * vcpu

    def _features(self, call: Call) -> None:
        ok = call.arg(1) & 0xFFFF_FFFF in (PV_TIME_FEATURES, PV_TIME_ST)
        call.answer(SmcccReturn.SUCCESS if ok else SmcccReturn.NOT_SUPPORTED)

    def _stolen_time_record(self, vcpu: int, _x1: int, _x2: int, _x3: int) -> tuple[int, ...]:
        address = self.record_address(vcpu)
        record = self._words(vcpu, address)
        revision = self.record_revision.value
        record[:] = _ZERO_RECORD  # attributes 0, padding 0
        record[0] = revision  # the u32 revision, then attributes 0
        self._write_stolen(vcpu, record, revision)
        if vcpu not in self._arm_records:
            with self._lock:
                self._arm_records[vcpu] = address  # from now on updated at every entry
        return (address,)

    def _words(self, vcpu: int, address: int) -> memoryview:
        """`vcpu`'s record as 64-bit words, a view of guest RAM checked once."""
        words = self._arm_words.get(vcpu)
        if words is None:
            view = self.platform.guest_view(address, RECORD_SIZE)
            if view is None:  # the platform placed the region outside RAM: a host bug
                raise RuntimeError(f"stolen-time record {address:#x} is not guest RAM")
            words = self._arm_words[vcpu] = view.cast("Q")
        return words

    def _write_stolen(self, vcpu: int, record: memoryview, revision: int) -> None:
        p = self.platform
        record[_STOLEN_WORD] = p.stolen_ns(vcpu)
        if revision == 1:
            record[_UPDATED_NS // 8] = p.now_ns(vcpu)

    # -- x86 -----------------------------------------------------------------------------
    def msrs(self, abi: Abi) -> dict[int, Msr]:
        if abi is not Abi.KVM_X86:
            return {}
        return {MSR_KVM_STEAL_TIME: Msr("MSR_KVM_STEAL_TIME", self._msr_read, self._msr_write)}

    def _msr_read(self, vcpu: int) -> int:
        return self._x86_msr.get(vcpu, 0)

    def _msr_write(self, vcpu: int, value: int) -> bool:
        if value & STEAL_RESERVED:
            return False  # #GP, as KVM
        with self._lock:
            self._x86_msr[vcpu] = value
        if value & STEAL_ENABLE:
            self._update_x86(vcpu)
        return True

    def _update_x86(self, vcpu: int) -> None:
        value = self._x86_msr.get(vcpu, 0)
        if not value & STEAL_ENABLE:
            return
        record = value & STEAL_ADDRESS
        p = self.platform
        version = self._x86_versions.get(vcpu, 0)
        # The guest may have put anything in the record: the version goes odd from ours.
        if not p.store_u64(record + _VERSION, (version + 1) & 0xFFFF_FFFF):
            return  # not RAM: nothing to update (KVM's cache would fail the same way)
        p.store_u64(record, p.stolen_ns(vcpu))
        p.store_u64(record + _PREEMPTED, 0)
        p.store_u64(record + _VERSION, (version + 2) & 0xFFFF_FFFF)  # flags (+12) stay 0
        self._x86_versions[vcpu] = (version + 2) & 0xFFFF_FFFF

    # -- snapshots -----------------------------------------------------------------------
    def save_state(self) -> dict[str, object]:
        """Which vCPUs asked for their record (arm64), each MSR_KVM_STEAL_TIME and its
        version counter (x86); the records themselves are guest RAM."""
        with self._lock:
            return {
                "revision": self.record_revision.value,
                "base": self._base,
                "arm_records": int_keys(self._arm_records),
                "x86_msr": int_keys(self._x86_msr),
                "x86_versions": int_keys(self._x86_versions),
            }

    def restore_state(self, state: Fields) -> None:
        revision = self.record_revision.value  # the firmware section set it first
        if state.integer("revision") != revision:
            raise state.bad("revision", f"record revision {revision}, as its register says")
        if state.opt_int("base") != self._base:
            raise state.bad("base", "where this VM placed the stolen-time records")
        records = state.int_map("arm_records")
        if any(a != self.record_address(v) for v, a in records.items()):
            raise state.bad("arm_records", "records inside the stolen-time region")
        msr, versions = state.int_map("x86_msr"), state.int_map("x86_versions", 0xFFFF_FFFF)
        with self._lock:
            self._arm_records, self._x86_msr, self._x86_versions = records, msr, versions

    # -- both ----------------------------------------------------------------------------
    def on_vcpu_entry(self, vcpu: int) -> None:
        address = self._arm_records.get(vcpu)
        if address is not None:
            self._write_stolen(vcpu, self._words(vcpu, address), self.record_revision.value)
        if vcpu in self._x86_msr:
            self._update_x86(vcpu)
