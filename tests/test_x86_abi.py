"""KVM's x86 hypercall ABI (Linux Documentation/virt/kvm/x86/hypercalls.rst) and the CPUID
table (Documentation/virt/kvm/x86/cpuid.rst)."""

from __future__ import annotations

import struct

import pytest

from pvkit.abi.x86_kvm import MASK64, KvmError, KvmHypercallAbi, kvm_error
from pvkit.discovery.cpuid import AMD, INTEL, CpuidTable
from pvkit.hypercall.call import Call, Conduit
from pvkit.hypercall.dispatcher import Dispatcher
from pvkit.hypercall.namespace import Claim, Function, IdRange, Namespace
from pvkit.hypercall.policy import Policy
from pvkit.trace.events import TraceHub

ENOSYS = kvm_error(KvmError.ENOSYS)
EPERM = kvm_error(KvmError.EPERM)
NR = 11


def abi_with_echo(features: int = 1 << 13) -> tuple[KvmHypercallAbi, list[Call]]:
    seen: list[Call] = []

    def echo(call: Call) -> None:
        seen.append(call)
        call.answer(call.arg(1) + call.arg(4))

    ns = Namespace([Claim("t", IdRange(NR, NR))], [("t", Function(NR, "ECHO", echo))])
    dispatcher = Dispatcher(ns, Policy([]), TraceHub(), str)
    return KvmHypercallAbi(dispatcher, {NR: 13}, features), seen


def test_registers_in_and_result_out_in_64_bit_mode() -> None:
    abi, seen = abi_with_echo()
    call = abi.on_hypercall([NR, 1 << 40, 2, 3, 5], Conduit.VMCALL, 0, True, 0)
    assert call.results == [(1 << 40) + 5]
    assert seen[0].args == (1 << 40, 2, 3, 5) and seen[0].wide


def test_a_32_bit_caller_sees_32_bit_values() -> None:
    abi, seen = abi_with_echo()
    call = abi.on_hypercall(
        [(1 << 32) | NR, (7 << 32) | 0xFFFF_FFFF, 0, 0, 1], Conduit.VMCALL, 0, False, 0
    )
    assert seen[0].args[0] == 0xFFFF_FFFF and not seen[0].wide
    assert call.results == [0]  # 0xFFFFFFFF + 1 truncated to 32 bits
    unknown = abi.on_hypercall([99, 0, 0, 0, 0], Conduit.VMMCALL, 0, False, 0)
    assert unknown.results == [ENOSYS & 0xFFFF_FFFF]


@pytest.mark.parametrize("cpl", [1, 2, 3])
def test_cpl_above_zero_gets_eperm_and_nothing_runs(cpl: int) -> None:
    abi, seen = abi_with_echo()
    call = abi.on_hypercall([NR, 1, 0, 0, 0], Conduit.VMCALL, cpl, True, 0)
    assert call.results == [EPERM] and seen == []


def test_unknown_nr_and_hidden_feature_answer_enosys() -> None:
    abi, seen = abi_with_echo(features=0)
    assert abi.on_hypercall([NR, 0, 0, 0, 0], Conduit.VMCALL, 0, True, 0).results == [ENOSYS]
    assert abi.on_hypercall([12345, 0, 0, 0, 0], Conduit.VMCALL, 0, True, 0).results == [ENOSYS]
    assert seen == []


def test_errors_are_negated_64_bit_values() -> None:
    assert kvm_error(KvmError.ENOSYS) == MASK64 - 999
    assert [e.value for e in KvmError] == [1, 7, 14, 22, 95, 1000]


def _signature(regs: tuple[int, int, int, int]) -> bytes:
    return struct.pack("<III", regs[1], regs[2], regs[3])


def test_cpuid_hypervisor_leaves_follow_the_kvm_layout() -> None:
    t = CpuidTable(INTEL, 2, b"KVMKVMKVM\0\0\0", 0x4000_0000, features=0x2880)
    leaf = t.leaf(0, 0x4000_0000)
    assert leaf[0] == 0x4000_0001 and _signature(leaf) == b"KVMKVMKVM\0\0\0"
    assert t.leaf(0, 0x4000_0000)[1:] == (0x4B4D564B, 0x564B4D56, 0x0000004D)
    assert t.leaf(0, 0x4000_0001) == (0x2880, 0, 0, 0)
    assert t.leaf(1, 1)[2] >> 31 == 1  # "running under a hypervisor"
    assert t.leaf(1, 1)[1] >> 24 == 1  # initial APIC ID
    assert t.leaf(0, 0x4000_0100) == (0, 0, 0, 0)


def test_cpuid_vendor_strings_and_an_absent_hypervisor() -> None:
    intel = CpuidTable(INTEL, 1, None)
    amd = CpuidTable(AMD, 1, None)
    assert struct.pack("<III", *(intel.leaf(0, 0)[i] for i in (1, 3, 2))) == b"GenuineIntel"
    assert struct.pack("<III", *(amd.leaf(0, 0)[i] for i in (1, 3, 2))) == b"AuthenticAMD"
    assert intel.leaf(0, 1)[2] >> 31 == 0
    assert intel.leaf(0, 0x4000_0000) == (0, 0, 0, 0)


@pytest.mark.parametrize("base", [0x3FFF_FF00, 0x4000_0080, 0x4001_0000])
def test_cpuid_base_must_be_a_0x100_step_in_the_hypervisor_range(base: int) -> None:
    with pytest.raises(ValueError, match="multiple of 0x100"):
        CpuidTable(INTEL, 1, b"KVMKVMKVM\0\0\0", base)
