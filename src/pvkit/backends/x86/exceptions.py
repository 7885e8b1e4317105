"""Deliver an exception or interrupt through the guest's IDT, as the CPU would in 64-bit mode.

Unicorn reports x86 exceptions to the host instead of delivering them, so the backend
builds the interrupt frame itself: gate lookup, privilege and IST stack switch from the
TSS, the five- or six-word frame, and the new CS:RIP and RFLAGS. A guest without a usable
IDT gets what real hardware gives it, a shutdown (triple fault), reported as a VM fault.
"""

from __future__ import annotations

import struct

from unicorn import Uc  # type: ignore[attr-defined]  # re-exported name
from unicorn import x86_const as r

from pvkit.backends.x86 import regs as x
from pvkit.backends.x86.paging import TranslationFault, translate
from pvkit.machine.memory import GuestMemory

MASK64 = 0xFFFF_FFFF_FFFF_FFFF


class DeliveryFailed(Exception):
    """The guest cannot take the exception (no IDT, bad gate, unmapped stack)."""


class NeedsPrivilegeChange(DeliveryFailed):
    """The handler runs at another CPL: only the engine's own entry code can switch
    (the binding sets just the CS selector in 64-bit mode, never the CPL)."""


class Delivery:
    def __init__(self, uc: Uc, memory: GuestMemory):
        self._uc = uc
        self._memory = memory

    def deliver(
        self, vector: int, return_rip: int, error_code: int | None = None, software: bool = False
    ) -> None:
        uc = self._uc
        if not uc.reg_read(r.UC_X86_REG_MSR, x.MSR_EFER) & x.EFER_LMA:
            raise DeliveryFailed("exception outside 64-bit mode (pvkit injects in long mode only)")
        _sel, idt_base, idt_limit, _flags = uc.reg_read(r.UC_X86_REG_IDTR)
        if vector * 16 + 15 > idt_limit:
            raise DeliveryFailed(f"vector {vector} is beyond the IDT limit {idt_limit:#x}")
        low, high = struct.unpack("<QQ", self._read(idt_base + vector * 16, 16))
        attributes = (low >> 40) & 0xFF
        gate_type, dpl, present = attributes & 0xF, (attributes >> 5) & 3, attributes >> 7
        if not present or gate_type not in (x.GATE_INTERRUPT, x.GATE_TRAP):
            raise DeliveryFailed(f"IDT entry {vector} is not a present interrupt or trap gate")
        cs = uc.reg_read(r.UC_X86_REG_CS)
        cpl = cs & 3
        if software and dpl < cpl:
            # INT n through a gate the caller may not use: #GP(vector * 8 + 2), as the CPU does.
            self.deliver(x.VECTOR_GP, return_rip - 2, vector * 8 + 2)
            return
        selector = (low >> 16) & 0xFFFF
        target = (low & 0xFFFF) | ((low >> 32) & 0xFFFF_0000) | ((high & 0xFFFF_FFFF) << 32)
        new_cpl = self._descriptor_dpl(selector)
        if new_cpl != cpl:
            # The engine sets only the CS/SS selectors in 64-bit mode, never the CPL, so a
            # delivery that changes privilege cannot be made faithfully: refuse it loudly.
            raise NeedsPrivilegeChange(f"CPL {cpl} to a CPL {new_cpl} handler")
        ist = (low >> 32) & 7
        ss = uc.reg_read(r.UC_X86_REG_SS)
        rsp = uc.reg_read(r.UC_X86_REG_RSP)
        new_rsp = self._tss_u64(x.TSS_IST1 + (ist - 1) * 8) if ist else rsp
        rflags = uc.reg_read(r.UC_X86_REG_RFLAGS)
        frame = [ss, rsp, rflags, cs, return_rip]
        if error_code is not None:
            frame.append(error_code)
        new_rsp &= ~0xF
        for word in frame:
            new_rsp = (new_rsp - 8) & MASK64
            self._write_u64(new_rsp, word)
        rflags &= ~(x.RFLAGS_TF | x.RFLAGS_NT | x.RFLAGS_RF | x.RFLAGS_VM)
        if gate_type == x.GATE_INTERRUPT:
            rflags &= ~x.RFLAGS_IF
        uc.reg_write(r.UC_X86_REG_CS, selector)
        uc.reg_write(r.UC_X86_REG_RSP, new_rsp)
        uc.reg_write(r.UC_X86_REG_RFLAGS, rflags)
        uc.reg_write(r.UC_X86_REG_RIP, target)

    # -- guest memory through the guest's page tables -----------------------------------
    def physical(self, address: int) -> int:
        uc = self._uc
        paging = bool(uc.reg_read(r.UC_X86_REG_CR0) & x.CR0_PG)
        try:
            return translate(self._memory, paging, uc.reg_read(r.UC_X86_REG_CR3), address)
        except TranslationFault as exc:
            raise DeliveryFailed(str(exc)) from None

    def _read(self, address: int, size: int) -> bytes:
        out = b""
        for i in range(size):  # byte-wise: a structure may straddle a page boundary
            phys = self.physical(address + i)
            if not self._memory.contains(phys, 1):
                raise DeliveryFailed(f"guest address {address + i:#x} is outside RAM")
            out += self._memory.read(phys, 1)
        return out

    def _write_u64(self, address: int, value: int) -> None:
        phys = self.physical(address)
        if address & 7 or not self._memory.contains(phys, 8):
            raise DeliveryFailed(f"exception stack at {address:#x} is unusable")
        self._memory.write_u64(phys, value & MASK64)

    def _tss_u64(self, offset: int) -> int:
        _sel, base, limit, _flags = self._uc.reg_read(r.UC_X86_REG_TR)
        if offset + 8 > limit + 1:
            raise DeliveryFailed("the TSS is too small for the stack switch")
        value: int = struct.unpack("<Q", self._read(base + offset, 8))[0]
        return value

    def _descriptor_dpl(self, selector: int) -> int:
        _sel, base, limit, _flags = self._uc.reg_read(r.UC_X86_REG_GDTR)
        if selector & 4 or (selector | 7) > limit or selector < 8:
            raise DeliveryFailed(f"gate selector {selector:#x} is not a GDT code segment")
        descriptor = struct.unpack("<Q", self._read(base + (selector & ~7), 8))[0]
        return int((descriptor >> 45) & 3)
