"""What the gdb stub knows of each architecture: the target description gdb reads, and
guest-virtual addresses translated through the guest's own page tables."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import pytest
from unicorn import arm64_const as a
from unicorn import x86_const as x

from pvkit.backends.arm64.debug import Arm64Registers, walk
from pvkit.backends.x86.debug import X86Registers
from pvkit.debug.target_xml import target_xml
from pvkit.machine.memory import GuestMemory

RAM = 0x4000_0000
SCTLR = (1, 0, 3, 0, 0)
TCR = (2, 0, 3, 0, 2)


class FakeUc:
    """reg_read as the engine answers it, from a table (CP_REG keyed by its tuple)."""

    def __init__(self, regs: dict[object, int]):
        self.regs = regs

    def reg_read(self, reg: int, aux: object = None) -> int:
        return self.regs.get(aux if reg == a.UC_ARM64_REG_CP_REG else reg, 0)


def _tables_4k(memory: GuestMemory) -> int:
    """39-bit VAs, 4 KiB granule: L1 at RAM+0x1000 -> L2 at +0x2000 -> L3 at +0x3000.
    VA 0x0 maps page RAM+0x100000; VA 0x200000 is a 2 MiB block at RAM+0x400000;
    VA 0x40000000 is a 1 GiB block at 0x80000000 (not RAM, but mapped)."""
    l1, l2, l3 = RAM + 0x1000, RAM + 0x2000, RAM + 0x3000
    memory.write_u64(l1 + 0 * 8, l2 | 3)
    memory.write_u64(l1 + 1 * 8, 0x8000_0000 | 1)
    memory.write_u64(l2 + 0 * 8, l3 | 3)
    memory.write_u64(l2 + 1 * 8, (RAM + 0x40_0000) | 1)
    memory.write_u64(l3 + 0 * 8, (RAM + 0x10_0000) | 3)
    memory.write_u64(l3 + 5 * 8, (RAM + 0x20_0000) | 3 | (1 << 54))  # attribute bits kept off
    return l1


def test_arm64_walk_4k_pages_and_blocks() -> None:
    memory = GuestMemory(RAM, 16 << 20)
    l1 = _tables_4k(memory)
    assert walk(memory, l1, 0x123, 39, 12) == RAM + 0x10_0123
    assert walk(memory, l1, 0x5ABC, 39, 12) == RAM + 0x20_0ABC
    assert walk(memory, l1, 0x20_1234, 39, 12) == RAM + 0x40_1234
    assert walk(memory, l1, 0x4012_3456, 39, 12) == 0x8012_3456
    assert walk(memory, l1, 0x1000, 39, 12) is None  # invalid L3 entry
    assert walk(memory, l1, 0x8000_0000, 39, 12) is None  # invalid L1 entry
    assert walk(memory, RAM + (16 << 20), 0, 39, 12) is None  # tables outside RAM


def test_arm64_walk_64k_granule() -> None:
    """42-bit VAs with 64 KiB pages: two levels (L2 with 13 index bits, L3)."""
    memory = GuestMemory(RAM, 16 << 20)
    l2, l3 = RAM + 0x1_0000, RAM + 0x2_0000
    memory.write_u64(l2 + 3 * 8, l3 | 3)  # VA 3 << 29
    memory.write_u64(l3 + 2 * 8, (RAM + 0x50_0000) | 3)  # page 2 of it
    memory.write_u64(l2 + 4 * 8, (RAM + 0x6000_0000) | 1)  # a 512 MiB block
    va = (3 << 29) | (2 << 16) | 0x1234
    assert walk(memory, l2, va, 42, 16) == RAM + 0x50_1234
    assert walk(memory, l2, (4 << 29) | 0x77, 42, 16) == RAM + 0x6000_0077


def test_arm64_translate_picks_the_range_and_honours_mmu_off_and_tbi() -> None:
    memory = GuestMemory(RAM, 16 << 20)
    l1 = _tables_4k(memory)
    regs = Arm64Registers()
    t0sz = t1sz = 25  # 39-bit ranges
    tcr = t0sz | (t1sz << 16) | (2 << 30) | (1 << 37)  # TG1 = 4 KiB, TBI0 on
    uc = FakeUc({SCTLR: 0, TCR: tcr, a.UC_ARM64_REG_TTBR0_EL1: l1, a.UC_ARM64_REG_TTBR1_EL1: l1})
    assert regs.translate(uc, memory, 0x1234) == 0x1234  # MMU off: flat
    uc.regs[SCTLR] = 1
    assert regs.translate(uc, memory, 0x123) == RAM + 0x10_0123
    assert regs.translate(uc, memory, 0x5A00_0000_0000_0123) == RAM + 0x10_0123  # TBI0
    upper = 0xFFFF_FF80_0000_0000  # the bottom of TTBR1's 39-bit range
    assert regs.translate(uc, memory, upper | 0x20_0010) == RAM + 0x40_0010
    assert regs.translate(uc, memory, 0x0000_0080_0000_0000) is None  # in neither range
    assert regs.translate(uc, memory, 0x5AFF_FF80_0000_0000) is None  # no TBI1
    uc.regs[TCR] = tcr | (1 << 7)  # EPD0: no walks from TTBR0
    assert regs.translate(uc, memory, 0x123) is None


def test_x86_translate_long_mode_and_flat() -> None:
    memory = GuestMemory(0, 16 << 20)
    pml4, pdpt, pd = 0x1000, 0x2000, 0x3000
    memory.write_u64(pml4, pdpt | 3)
    memory.write_u64(pdpt, pd | 3)
    memory.write_u64(pd + 8, 0x40_0000 | 0x83)  # VA 2 MiB -> a 2 MiB page at 4 MiB
    regs = X86Registers()
    uc = FakeUc({x.UC_X86_REG_CR0: 0x11, x.UC_X86_REG_CR3: pml4})
    assert regs.translate(uc, memory, 0x1234) == 0x1234
    assert regs.translate(uc, memory, 1 << 40) is None  # not a 32-bit address
    uc.regs.update({x.UC_X86_REG_CR0: 0x8000_0011, x.UC_X86_REG_CR4: 0x20})
    uc.regs[x.UC_X86_REG_MSR] = 0  # EFER.LMA clear: 32-bit PAE paging, not walked
    assert regs.translate(uc, memory, 0x20_0010) is None


@pytest.mark.parametrize(
    ("registers", "required"),
    [
        (Arm64Registers(), {"x0", "x30", "sp", "pc", "cpsr", "v0", "v31", "fpsr", "fpcr"}),
        (X86Registers(), {"rax", "r15", "rip", "eflags", "cs", "gs", "st0", "fop", "xmm15"}),
    ],
    ids=["aarch64", "x86-64"],
)
def test_target_description(registers: Arm64Registers | X86Registers, required: set[str]) -> None:
    root = ET.fromstring(target_xml(registers.arch, registers.registers))
    assert root.findtext("architecture") == registers.arch
    regs = root.findall("feature/reg")
    assert [int(r.get("regnum", "-1")) for r in regs] == list(range(len(regs)))
    names = {r.get("name") for r in regs}
    assert required <= names
    defined = {t.get("id") for t in root.iter() if t.tag in ("vector", "union", "flags")}
    builtin = {"int", "code_ptr", "data_ptr", "i387_ext", "uint128", "int128"}
    assert {r.get("type") for r in regs} <= defined | builtin
    for feature in root.findall("feature"):
        for field in feature.iter("field"):
            assert field.get("type") is None or field.get("type") in defined | builtin | {
                "ieee_double", "ieee_single", "ieee_half", "uint64", "int64", "uint32",
                "int32", "uint16", "int16", "uint8", "int8",
            }  # fmt: skip
    if registers.arch == "aarch64":
        system = {r.get("name") for r in root.findall("feature/reg") if r.get("group") == "system"}
        assert {"SCTLR_EL1", "TCR_EL1", "TTBR0_EL1", "TTBR1_EL1", "VBAR_EL1", "ESR_EL1",
                "FAR_EL1", "ELR_EL1", "SPSR_EL1", "CurrentEL", "MPIDR_EL1"} <= system  # fmt: skip
