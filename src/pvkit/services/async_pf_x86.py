"""x86 asynchronous page faults with KVM's ABI (Linux Documentation/virt/kvm/x86/msr.rst,
MSR_KVM_ASYNC_PF_EN / _INT / _ACK; cpuid.rst, KVM_FEATURE_ASYNC_PF bit 4 and
KVM_FEATURE_ASYNC_PF_INT bit 14).

The guest names a 64-byte area (`flags` u32 at 0, `token` u32 at 4). "Page not present" is
a #PF with CR2 = token and flags = 1, given only while flags is 0 (the guest clears it in
its handler). "Page ready" is the ASYNC_PF_INT vector with the token at offset 4, given
only while that word is 0; the guest clears it and writes ACK, and the next one may come.
As in KVM, async page faults are on only with both ENABLED and DELIVERY_AS_INT set.
"""

from __future__ import annotations

from pvkit.hypercall.namespace import Abi, Function, IdRange
from pvkit.services.async_pf import REASON_NOT_PRESENT, AsyncPfCore, VcpuApf
from pvkit.services.base import Msr
from pvkit.snapshot.state import Fields, int_keys

MSR_KVM_ASYNC_PF_EN = 0x4B56_4D02
MSR_KVM_ASYNC_PF_INT = 0x4B56_4D06
MSR_KVM_ASYNC_PF_ACK = 0x4B56_4D07
EN_ENABLED = 1 << 0
EN_SEND_ALWAYS = 1 << 1  # also at CPL 0 (deprecated in KVM's docs, still honoured)
EN_DELIVERY_AS_PF_VMEXIT = 1 << 2  # needs KVM_FEATURE_ASYNC_PF_VMEXIT, not offered here
EN_DELIVERY_AS_INT = 1 << 3
EN_RESERVED = 0x30  # bits 5:4
EN_ADDRESS = ~0x3F & 0xFFFF_FFFF_FFFF_FFFF
AREA_SIZE = 64
_FLAGS, _TOKEN = 0, 4


class KvmAsyncPfService(AsyncPfCore):
    abis = frozenset({Abi.KVM_X86})
    cpuid_feature_bit = 4  # KVM_FEATURE_ASYNC_PF
    cpuid_more_bits = (14,)  # KVM_FEATURE_ASYNC_PF_INT: "page ready" as an interrupt

    def __init__(self) -> None:
        super().__init__()
        self._en: dict[int, int] = {}  # vCPU -> ASYNC_PF_EN as written
        self._vector: dict[int, int] = {}  # vCPU -> ASYNC_PF_INT

    def reset(self) -> None:
        super().reset()
        with self._lock:
            self._en.clear()
            self._vector.clear()

    def save_state(self) -> dict[str, object]:
        with self._lock:
            return {**super().save_state(), "en": int_keys(self._en),
                    "vector": int_keys(self._vector)}  # fmt: skip

    def restore_state(self, state: Fields) -> None:
        en, vector = state.int_map("en"), state.int_map("vector", 0xFF)
        super().restore_state(state)
        with self._lock:
            self._en, self._vector = en, vector

    def claims(self, abi: Abi = Abi.KVM_X86) -> list[IdRange]:
        return []

    def functions(self, abi: Abi = Abi.KVM_X86) -> list[Function]:
        return []

    def msrs(self, abi: Abi) -> dict[int, Msr]:
        return {
            MSR_KVM_ASYNC_PF_EN: Msr("MSR_KVM_ASYNC_PF_EN", self._read_en, self._write_en),
            MSR_KVM_ASYNC_PF_INT: Msr(
                "MSR_KVM_ASYNC_PF_INT", lambda v: self._vector.get(v, 0), self._write_int
            ),
            MSR_KVM_ASYNC_PF_ACK: Msr("MSR_KVM_ASYNC_PF_ACK", lambda v: 0, self._write_ack),
        }

    # -- MSRs (False: #GP) ----------------------------------------------------------------
    def _read_en(self, vcpu: int) -> int:
        return self._en.get(vcpu, 0)

    def _write_en(self, vcpu: int, value: int) -> bool:
        if value & (EN_RESERVED | EN_DELIVERY_AS_PF_VMEXIT):
            return False
        on = value & EN_ENABLED and value & EN_DELIVERY_AS_INT
        area = value & EN_ADDRESS
        if on and not self.platform.is_ram(area, AREA_SIZE):
            return False
        with self._lock:
            before = self._en.get(vcpu, 0)
            self._en[vcpu] = value
            if value == before:
                return True
            if self.state(vcpu).enabled:
                self._disable(vcpu)
            if on:
                self._enable(vcpu, area, bool(value & EN_SEND_ALWAYS))
        return True

    def _write_int(self, vcpu: int, value: int) -> bool:
        if value & ~0xFF:
            return False  # bits 63:8 are reserved
        self._vector[vcpu] = value
        return True

    def _write_ack(self, vcpu: int, value: int) -> bool:
        if value & 1:
            self._acknowledge(vcpu)
        return True

    # -- delivery -----------------------------------------------------------------------
    def _may_notify(self, vcpu: int, st: VcpuApf, reason: int) -> bool:
        word = _FLAGS if reason == REASON_NOT_PRESENT else _TOKEN
        return self.platform.read_guest_u32(st.block + word) == 0

    def _send(self, vcpu: int, st: VcpuApf, reason: int, token: int) -> bool:
        p = self.platform
        if reason == REASON_NOT_PRESENT:
            # A fault, not an interrupt: nothing to acknowledge; the guest clears flags.
            return p.write_guest(st.block + _FLAGS, (1).to_bytes(4, "little")) and (
                p.inject_page_fault(vcpu, token)
            )
        if not p.write_guest(st.block + _TOKEN, token.to_bytes(4, "little")):
            return False
        st.in_flight = True  # until ASYNC_PF_ACK
        p.post_interrupt(vcpu, self._vector.get(vcpu, 0))
        return True
