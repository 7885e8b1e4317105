"""KVM's x86 hypercall ABI (Linux Documentation/virt/kvm/x86/hypercalls.rst; numbers and
KVM_E* values in include/uapi/linux/kvm_para.h): registers to a Call and back.

nr in RAX, a0..a3 in RBX, RCX, RDX, RSI, the result in RAX. A caller outside 64-bit
mode sees every value truncated to 32 bits; a caller above CPL 0 gets -KVM_EPERM and the
call is not executed; a call whose CPUID feature bit the guest was not shown answers
-KVM_ENOSYS even when the service exists (KVM_CAP_ENFORCE_PV_FEATURE_CPUID).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from enum import IntEnum

from pvkit.hypercall.answer_table import AnswerTable, EntryKind
from pvkit.hypercall.call import Call, Conduit
from pvkit.hypercall.dispatcher import Dispatcher
from pvkit.hypercall.namespace import DirectHandler

MASK32 = 0xFFFF_FFFF
MASK64 = 0xFFFF_FFFF_FFFF_FFFF


class KvmError(IntEnum):
    """Positive KVM_E* values; RAX carries their negation."""

    EPERM = 1
    E2BIG = 7
    EFAULT = 14
    EINVAL = 22
    EOPNOTSUPP = 95
    ENOSYS = 1000


class KvmHypercall(IntEnum):
    VAPIC_POLL_IRQ = 1
    MMU_OP = 2
    FEATURES = 3
    PPC_MAP_MAGIC_PAGE = 4
    KICK_CPU = 5
    MIPS_GET_CLOCK_FREQ = 6
    MIPS_EXIT_VM = 7
    MIPS_CONSOLE_OUTPUT = 8
    CLOCK_PAIRING = 9
    SEND_IPI = 10
    SCHED_YIELD = 11
    MAP_GPA_RANGE = 12


# What each number means on x86 (Documentation/virt/kvm/x86/hypercalls.rst), for `pvkit decode`.
SUMMARIES: dict[int, str] = {
    KvmHypercall.VAPIC_POLL_IRQ: "no arguments; answers 0 after letting the host look at IRQs",
    KvmHypercall.MMU_OP: "removed from KVM; answers -KVM_ENOSYS",
    KvmHypercall.FEATURES: "PowerPC only; -KVM_ENOSYS on x86",
    KvmHypercall.PPC_MAP_MAGIC_PAGE: "PowerPC only; -KVM_ENOSYS on x86",
    KvmHypercall.KICK_CPU: "a0 flags (reserved), a1 APIC ID: wake that vCPU from HLT; answers 0",
    KvmHypercall.MIPS_GET_CLOCK_FREQ: "MIPS only",
    KvmHypercall.MIPS_EXIT_VM: "MIPS only",
    KvmHypercall.MIPS_CONSOLE_OUTPUT: "MIPS only",
    KvmHypercall.CLOCK_PAIRING: "a0 GPA of kvm_clock_pairing, a1 clock type (0 wall clock)",
    KvmHypercall.SEND_IPI: "a0/a1 APIC-ID bitmap from a2, a3 ICR: answers CPUs reached",
    KvmHypercall.SCHED_YIELD: "a0 APIC ID of a preempted vCPU: yield to it; answers 0",
    KvmHypercall.MAP_GPA_RANGE: "a0 GPA, a1 4 KiB pages, a2 attributes: the VMM decides",
}
# KVM_CPUID_FEATURES EAX bit names (Documentation/virt/kvm/x86/cpuid.rst); services own bits.
FEATURE_NAMES: dict[int, str] = {
    0: "CLOCKSOURCE",
    1: "NOP_IO_DELAY",
    2: "MMU_OP",
    3: "CLOCKSOURCE2",
    4: "ASYNC_PF",
    5: "STEAL_TIME",
    6: "PV_EOI",
    7: "PV_UNHALT",
    9: "PV_TLB_FLUSH",
    10: "ASYNC_PF_VMEXIT",
    11: "PV_SEND_IPI",
    12: "POLL_CONTROL",
    13: "PV_SCHED_YIELD",
    14: "ASYNC_PF_INT",
    15: "MSI_EXT_DEST_ID",
    16: "HC_MAP_GPA_RANGE",
    17: "MIGRATION_CONTROL",
    24: "CLOCKSOURCE_STABLE_BIT",
}


def kvm_error(error: KvmError) -> int:
    """The RAX value of a failed call: -error as a 64-bit register."""
    return -error & MASK64


NOT_SUPPORTED_ANSWER = (kvm_error(KvmError.ENOSYS),)


class KvmHypercallAbi:
    """Decodes a trapped VMCALL/VMMCALL, applies the CPL and CPUID rules, dispatches."""

    argument_count = 5  # RAX, RBX, RCX, RDX, RSI
    result_count = 1

    def __init__(self, dispatcher: Dispatcher, gates: Mapping[int, int], cpuid_features: int):
        """`gates`: hypercall nr -> KVM_CPUID_FEATURES bit that must be shown for it."""
        self._dispatcher = dispatcher
        self._hidden = {nr: bit for nr, bit in gates.items() if not cpuid_features >> bit & 1}

    def constant_answers(self, table: AnswerTable) -> dict[int, int]:
        """RAX by nr for a CPL-0 64-bit caller, from the answer table's constants: the
        x86 trap answers those without the dispatcher (gated-off numbers stay out)."""
        return {
            e.function_id: e.results[0]
            for e in table.entries
            if e.kind is EntryKind.ANY and e.function_id not in self._hidden
        }

    def direct_handlers(self, table: AnswerTable) -> dict[int, DirectHandler]:
        """The answer table's direct route for a CPL-0 64-bit caller: handler(vcpu, RBX,
        RCX, RDX), RAX its first result (gated-off numbers stay out, as they do of the
        constants)."""
        return {nr: h for nr, h in table.direct.items() if nr not in self._hidden}

    def on_hypercall(
        self, gprs: Sequence[int], conduit: Conduit, cpl: int, long_mode: bool, vcpu: int
    ) -> Call:
        call = self.decode(gprs, conduit, cpl, long_mode, vcpu)
        bit = self._hidden.get(call.function_id)
        if bit is not None and call.rejected is None:
            call.rejected = f"CPUID feature bit {bit} is not shown to the guest"
        self._dispatcher.dispatch(call, NOT_SUPPORTED_ANSWER)
        if not long_mode:
            call.results[0] &= MASK32
        return call

    @staticmethod
    def decode(gprs: Sequence[int], conduit: Conduit, cpl: int, long_mode: bool, vcpu: int) -> Call:
        mask = MASK64 if long_mode else MASK32
        nr = gprs[0] & mask
        args = tuple(v & mask for v in gprs[1:5])
        call = Call(conduit, nr, args, vcpu, list(NOT_SUPPORTED_ANSWER), 0, cpl, long_mode)
        if cpl != 0:
            call.results[0] = kvm_error(KvmError.EPERM)
            call.rejected = f"hypercall from CPL {cpl}: only CPL 0 may call"
        return call


def describe(nr: int) -> str:
    """Name of a KVM hypercall number, for traces and `pvkit decode --arch x86_64`."""
    try:
        return f"KVM_HC_{KvmHypercall(nr).name}"
    except ValueError:
        return f"unknown KVM hypercall {nr:#x}"
