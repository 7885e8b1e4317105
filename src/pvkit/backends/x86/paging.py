"""Guest-virtual to guest-physical translation by walking the guest's own page tables.

The engine's memory API takes physical addresses; RIP, the IDT, GDT and TSS bases and
the stack are virtual. Only the two modes pvkit guests use are walked: paging off, and
4-level long-mode paging (4 KiB, 2 MiB and 1 GiB pages).
"""

from __future__ import annotations

from pvkit.machine.memory import GuestMemory

_PRESENT = 1
_LARGE = 1 << 7
_ADDRESS = 0x000F_FFFF_FFFF_F000


class TranslationFault(Exception):
    """The guest address has no mapping (the guest would see #PF)."""


def translate(memory: GuestMemory, cr0_pg: bool, cr3: int, address: int) -> int:
    if not cr0_pg:
        return address & 0xFFFF_FFFF
    table = cr3 & _ADDRESS
    for level, shift in enumerate((39, 30, 21, 12)):
        slot = table + ((address >> shift) & 0x1FF) * 8
        if not memory.contains(slot, 8):
            raise TranslationFault(f"page-table entry at {slot:#x} is outside RAM")
        entry = memory.read_u64(slot)
        if not entry & _PRESENT:
            raise TranslationFault(f"{address:#x} is not mapped")
        if level in (1, 2) and entry & _LARGE:
            size = 1 << shift
            return (entry & _ADDRESS & ~(size - 1)) | (address & (size - 1))
        table = entry & _ADDRESS
    return table | (address & 0xFFF)
