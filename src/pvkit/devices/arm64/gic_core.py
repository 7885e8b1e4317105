"""What GICv2 and GICv3 share: interrupt state, the CPU interface's priority logic, signalling.

Arm IHI 0069 (GICv3/v4) and IHI 0048 (GICv2); one Security state (GICv3 GICD_CTLR.DS == 1,
GICv2 without Security Extensions), as QEMU's `virt` under TCG without EL3; no LPIs.
State lives in bitmaps (bit n = INTID n): a `Bank` per vCPU for the banked INTIDs 0-31, one
shared `Bank` for the SPIs. Each entry point (MMIO write, MSR, acknowledge, line change) ends
in one `update()`, which recomputes each vCPU's highest-priority pending interrupt (HPPI) and
its IRQ/FIQ outputs. Everything here runs under
`GicCore.lock`, taken by the register frames and the public methods, never in here.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from pvkit.machine.memory import Region

Signal = Callable[[int, bool], None]  # (vcpu, level) of an IRQ or FIQ output
SysregKey = tuple[int, int, int, int, int]  # (op0, op1, CRn, CRm, op2) of an MRS/MSR

M32 = 0xFFFF_FFFF
# Implemented priority bits: 5 (32 levels), what QEMU's GICv3 CPU interface reports for its
# Cortex-A57 and `max` CPUs (ICC_CTLR_EL1.PRIbits = 4) and what Arm's GIC-400 implements.
PRIBITS = 5
PRI_MASK = (0xFF << (8 - PRIBITS)) & 0xFF  # 0xF8: unimplemented low bits are RAZ/WI
MIN_BPR0 = 7 - PRIBITS  # IHI 0069 ICC_BPR0_EL1: the smallest binary point, 2 for 5 bits
MIN_BPR1 = MIN_BPR0 + 1  # ICC_BPR1_EL1 (Non-secure): one more, 3
IDLE_PRIORITY = 0xFF  # running priority when nothing is active (IHI 0069 ICC_RPR_EL1)
SPURIOUS = 1023  # IHI 0069 §2.2 special INTIDs: nothing (of this group) to acknowledge
SPECIAL_FIRST = 1020  # 1020-1023 are special INTIDs, never real interrupts
MAX_SPIS = SPECIAL_FIRST - 32
ROUTE_ANY = -1  # an SPI routed 1-of-N (GICD_IROUTER.Interrupt_Routing_Mode == 1)

# Indices into Bank.bits.
ENABLED, LATCH, LEVEL, EDGE, ACTIVE, GROUP = range(6)
# The set/clear registers at 0x080-0x3FF, laid out alike in GICD (v2 and v3) and GICR SGI_base
# (IHI 0069 GICD/GICR maps, IHI 0048 §4.1): IGROUPR, IS/ICENABLER, IS/ICPENDR, IS/ICACTIVER.
_BLOCKS = {1: GROUP, 2: ENABLED, 3: ENABLED, 4: LATCH, 5: LATCH, 6: ACTIVE, 7: ACTIVE}
SGI_EDGE = 0xFFFF  # SGIs are always edge-triggered (IHI 0069 GICR_ICFGR0 is read-only)


def bits_of(mask: int) -> list[int]:
    """The indices of the set bits of a non-negative int, lowest first."""
    out = []
    while mask:
        low = mask & -mask
        out.append(low.bit_length() - 1)
        mask ^= low
    return out


class Bank:
    """Enable/pending/active/group/config bitmaps and priorities for a range of INTIDs."""

    __slots__ = ("bits", "prio")

    def __init__(self, count: int, edge: int) -> None:
        self.bits = [0] * 6
        self.prio = bytearray(count)
        self.reset(edge)

    def reset(self, edge: int) -> None:
        level = self.bits[LEVEL]  # input lines belong to the devices driving them
        self.bits = [0, 0, level, edge, 0, 0]
        self.prio[:] = bytes(len(self.prio))

    def pending(self) -> int:
        """Pending state: the latch (edges, ISPENDR) or, if level-sensitive, a high line."""
        b = self.bits
        return b[LATCH] | (b[LEVEL] & ~b[EDGE])


@dataclass
class CpuInterface:
    """The CPU interface state both versions have (IHI 0069 §4.8; IHI 0048 §3.3)."""

    group0_fiq: bool = True
    pmr: int = 0
    bpr0: int = MIN_BPR0
    bpr1: int = MIN_BPR1
    cbpr: bool = False
    eoimode: bool = False  # EOImode == 1: EOI drops priority only, DIR deactivates
    grpen: list[bool] = field(default_factory=lambda: [False, False])
    apr: list[int] = field(default_factory=lambda: [0, 0])  # active priorities per group
    hppi: tuple[int, int, int] | None = None  # (priority, INTID, group), from update()
    irq: bool = False
    fiq: bool = False

    def read_bpr1(self) -> int:
        """ICC_BPR1_EL1 / GICC_ABPR: with CBPR set it reads as BPR0 + 1 and ignores writes."""
        return min(self.bpr0 + 1, 7) if self.cbpr else self.bpr1

    def write_bpr1(self, value: int) -> None:
        if not self.cbpr:
            self.bpr1 = max(value & 7, MIN_BPR1)


class GicCore:
    """Interrupt state for `ncpus` CPU interfaces and 32 + `spis` INTIDs."""

    def __init__(
        self, ncpus: int, spis: int, signal_irq: Signal, signal_fiq: Signal | None, group0_fiq: bool
    ) -> None:
        if ncpus < 1:
            raise ValueError("a GIC needs at least one CPU interface")
        if not 0 <= spis <= MAX_SPIS:
            raise ValueError(f"{spis} SPIs: a GIC has between 0 and {MAX_SPIS}")
        self.lock = threading.Lock()
        self.ncpus = ncpus
        self.nirqs = 32 + spis
        self.spi_valid = ((1 << self.nirqs) - 1) & ~M32
        self._signal_irq = signal_irq
        self._signal_fiq = signal_fiq
        self._group0_fiq = group0_fiq
        self.private = [Bank(32, SGI_EDGE) for _ in range(ncpus)]
        self.shared = Bank(self.nirqs, 0)
        self.cpus = [CpuInterface(group0_fiq) for _ in range(ncpus)]
        self.reset()

    def reset(self) -> None:
        """Power-on state; the caller then sets its routes and calls update()."""
        for bank in self.private:
            bank.reset(SGI_EDGE)
        self.shared.reset(0)
        self.sgi_src = [[0] * 16 for _ in range(self.ncpus)]  # per target and SGI: sources
        fresh = [CpuInterface(self._group0_fiq) for _ in self.cpus]
        for new, old in zip(fresh, self.cpus, strict=True):
            new.irq, new.fiq = old.irq, old.fiq  # so that update() signals the drop
        self.cpus = fresh
        self.dist_groups = 0  # bit g set: group g enabled at the distributor
        self.route = [0] * self.nirqs  # per SPI: bitmask of target CPUs, or ROUTE_ANY

    def bank(self, cpu: int, intid: int) -> Bank:
        return self.private[cpu] if intid < 32 else self.shared

    def set_line(self, cpu: int, intid: int, level: bool) -> None:
        """An input line (PPI of `cpu`, or SPI): a rising edge latches an edge interrupt."""
        bank, bit = self.bank(cpu, intid), 1 << intid
        b = bank.bits
        if level and not b[LEVEL] & bit and b[EDGE] & bit:
            b[LATCH] |= bit
        b[LEVEL] = b[LEVEL] | bit if level else b[LEVEL] & ~bit
        self.update()

    def pend_sgi(self, target: int, sgi: int, sources: int) -> None:
        self.sgi_src[target][sgi] |= sources
        self._sync_sgi(target, sgi)

    def unpend_sgi(self, target: int, sgi: int, sources: int) -> None:
        self.sgi_src[target][sgi] &= ~sources
        self._sync_sgi(target, sgi)

    def _sync_sgi(self, cpu: int, sgi: int) -> None:
        b = self.private[cpu].bits
        b[LATCH] = b[LATCH] | 1 << sgi if self.sgi_src[cpu][sgi] else b[LATCH] & ~(1 << sgi)

    def _word(self, cpu: int, n: int) -> tuple[Bank, int, int]:
        """Bank, bit shift and implemented-INTID mask of register word n (INTIDs 32n..)."""
        if n == 0:
            return self.private[cpu], 0, M32
        return self.shared, 32 * n, (self.spi_valid >> (32 * n)) & M32

    def bitmap_read(self, cpu: int, off: int) -> int:
        """IGROUPR..ICACTIVER at `off` (0x080-0x3FF) as seen by `cpu`."""
        block, n = off // 0x80, (off % 0x80) // 4
        bank, shift, valid = self._word(cpu, n)
        value = bank.pending() if block in (4, 5) else bank.bits[_BLOCKS[block]]
        return (value >> shift) & valid

    def bitmap_write(self, cpu: int, off: int, value: int, mask: int, sgi_pend: bool) -> None:
        """Write IGROUPR..ICACTIVER; `sgi_pend` False makes the SGI bits of IS/ICPENDR0 WI."""
        block, n = off // 0x80, (off % 0x80) // 4
        bank, shift, valid = self._word(cpu, n)
        kind = _BLOCKS[block]
        mask &= valid
        bits = (value & mask) << shift
        b = bank.bits
        if block == 1:
            b[GROUP] = (b[GROUP] & ~(mask << shift)) | bits
        elif kind == LATCH and n == 0:
            for sgi in bits_of(bits & SGI_EDGE):
                if sgi_pend and block == 4:
                    self.pend_sgi(cpu, sgi, 1)
                elif sgi_pend:
                    self.unpend_sgi(cpu, sgi, ~0)
            ppis = bits & ~SGI_EDGE
            b[LATCH] = b[LATCH] | ppis if block == 4 else b[LATCH] & ~ppis
        elif block % 2 == 0:  # the set-enable/pending/active registers
            b[kind] |= bits
        else:
            b[kind] &= ~bits

    def prio_read(self, cpu: int, first: int) -> int:
        """Four IPRIORITYR bytes for INTIDs first..first+3 (RAZ beyond the last INTID)."""
        last = min(first + 4, self.nirqs)
        return sum(self.bank(cpu, i).prio[i] << 8 * (i - first) for i in range(first, last))

    def prio_write(self, cpu: int, first: int, value: int, mask: int) -> None:
        for i in range(4):
            if mask >> (8 * i) & 0xFF and first + i < self.nirqs:
                self.bank(cpu, first + i).prio[first + i] = (value >> (8 * i)) & PRI_MASK

    def cfg_read(self, cpu: int, m: int) -> int:
        """ICFGR word m: Int_config[1] of each of INTIDs 16m..16m+15 is 1 for edge."""
        ids = range(16 * m, min(16 * m + 16, self.nirqs))
        return sum(2 << 2 * (i % 16) for i in ids if self.bank(cpu, i).bits[EDGE] >> i & 1)

    def cfg_write(self, cpu: int, m: int, value: int, mask: int) -> None:
        for k in range(16):
            intid = 16 * m + k
            if 16 <= intid < self.nirqs and mask >> (2 * k + 1) & 1:
                b, bit = self.bank(cpu, intid).bits, 1 << intid
                b[EDGE] = b[EDGE] | bit if value >> (2 * k + 1) & 1 else b[EDGE] & ~bit

    @staticmethod
    def group_mask(cpu: CpuInterface, group: int) -> int:
        """The group-priority (preemption) bits of a priority, by the binary point."""
        # IHI 0069 ICC_BPR1_EL1: Group 1 (Non-secure) has one more bit of subpriority.
        point = cpu.bpr0 if group == 0 or cpu.cbpr else cpu.bpr1 - 1
        return (0xFF << (point + 1)) & 0xFF

    @staticmethod
    def running_priority(cpu: CpuInterface) -> int:
        active = cpu.apr[0] | cpu.apr[1]
        return ((active & -active).bit_length() - 1) << (8 - PRIBITS) if active else IDLE_PRIORITY

    @staticmethod
    def highest_active_group(cpu: CpuInterface) -> int | None:
        a0, a1 = cpu.apr
        if not a0 | a1:
            return None
        return 0 if not a1 or (a0 and (a0 & -a0) <= (a1 & -a1)) else 1

    def can_preempt(self, cpu: CpuInterface, hppi: tuple[int, int, int]) -> bool:
        """Priority beats the mask and, by group priority, the running priority (IHI 0069
        §4.8 interrupt prioritization, IHI 0048 §3.3)."""
        prio, _, group = hppi
        if prio >= cpu.pmr:
            return False
        running = self.running_priority(cpu)
        mask = self.group_mask(cpu, group)
        return running == IDLE_PRIORITY or (prio & mask) < (running & mask)

    def acknowledge(self, c: int, groups: tuple[int, ...]) -> tuple[int, int] | None:
        """Take the HPPI if it is of one of `groups` and may preempt: (INTID, SGI source)."""
        cpu = self.cpus[c]
        hppi = cpu.hppi
        if hppi is None or hppi[2] not in groups or not self.can_preempt(cpu, hppi):
            return None
        prio, intid, group = hppi
        bank, bit = self.bank(c, intid), 1 << intid
        source = 0
        if intid < 16:
            pending = self.sgi_src[c][intid]
            source = (pending & -pending).bit_length() - 1
            self.unpend_sgi(c, intid, 1 << source)
        else:
            bank.bits[LATCH] &= ~bit  # a high level line keeps it pending: pending+active
        bank.bits[ACTIVE] |= bit
        cpu.apr[group] |= 1 << ((prio & self.group_mask(cpu, group)) >> (8 - PRIBITS))
        self.update()
        return intid, source

    def end_of_interrupt(self, c: int, intid: int, group: int | None, deactivate: bool) -> None:
        """Drop the highest active priority (if of `group`), then maybe deactivate `intid`
        (IHI 0069 §4.1 interrupt lifecycle, ICC_EOIR1_EL1; IHI 0048 GICC_EOIR)."""
        cpu = self.cpus[c]
        active_group = self.highest_active_group(cpu)
        if intid >= self.nirqs or active_group is None or group not in (None, active_group):
            return
        apr = cpu.apr[active_group]
        cpu.apr[active_group] = apr & (apr - 1)
        if deactivate:
            self.deactivate(c, intid)

    def deactivate(self, c: int, intid: int) -> None:
        if intid < self.nirqs:
            self.bank(c, intid).bits[ACTIVE] &= ~(1 << intid)

    @staticmethod
    def _of_groups(group_bits: int, groups: int) -> int:
        """Mask selecting the INTIDs whose group is in the `groups` bitmask."""
        return (group_bits if groups & 2 else 0) | (~group_bits if groups & 1 else 0)

    def update(self) -> None:
        """Recompute every CPU's HPPI and IRQ/FIQ outputs, signalling the changes."""
        cpus, dist = self.cpus, self.dist_groups
        best: list[tuple[int, int, int] | None] = [None] * self.ncpus
        sh = self.shared
        spis = sh.pending() & sh.bits[ENABLED] & ~sh.bits[ACTIVE] & self.spi_valid
        spis &= self._of_groups(sh.bits[GROUP], dist)
        first = [-1, -1]
        if spis:
            # 1-of-N: the lowest-numbered CPU whose interface has the group enabled.
            first = [next((i for i, u in enumerate(cpus) if u.grpen[g]), -1) for g in (0, 1)]
        for intid in bits_of(spis):
            group = sh.bits[GROUP] >> intid & 1
            key = (sh.prio[intid], intid, group)
            targets = self.route[intid]
            if targets == ROUTE_ANY:
                targets = 1 << first[group] if first[group] >= 0 else 0
            for c in bits_of(targets):
                if c < self.ncpus and cpus[c].grpen[group]:
                    old = best[c]
                    best[c] = min(old, key) if old else key
        for c, cpu in enumerate(cpus):
            bank = self.private[c]
            groups = dist & (cpu.grpen[0] | cpu.grpen[1] << 1)
            mine = bank.pending() & bank.bits[ENABLED] & ~bank.bits[ACTIVE] & M32
            mine &= self._of_groups(bank.bits[GROUP], groups)
            if mine:
                key = min((bank.prio[i], i, bank.bits[GROUP] >> i & 1) for i in bits_of(mine))
                old = best[c]
                best[c] = min(old, key) if old else key
            hppi = cpu.hppi = best[c]
            take = hppi is not None and self.can_preempt(cpu, hppi)
            as_fiq = hppi is not None and hppi[2] == 0 and cpu.group0_fiq
            irq, fiq = take and not as_fiq, take and as_fiq
            if irq != cpu.irq:
                cpu.irq = irq
                self._signal_irq(c, irq)
            if fiq != cpu.fiq:
                cpu.fiq = fiq
                if self._signal_fiq is not None:
                    self._signal_fiq(c, fiq)


class GicLines:
    """The device side both GIC classes share: input lines in, IRQ/FIQ levels out."""

    _core: GicCore

    def set_spi(self, intid: int, level: bool) -> None:
        """A device's SPI line, 32 <= intid < 32 + spis (ValueError otherwise)."""
        if not 32 <= intid < self._core.nirqs:
            raise ValueError(f"INTID {intid} is no SPI of this GIC (32..{self._core.nirqs - 1})")
        with self._core.lock:
            self._core.set_line(0, intid, level)

    def set_ppi(self, vcpu: int, intid: int, level: bool) -> None:
        """A PPI line of one vCPU, 16 <= intid < 32 (the timers: 27, 30, 26, 29...)."""
        if not 16 <= intid < 32 or not 0 <= vcpu < self._core.ncpus:
            raise ValueError(f"vCPU {vcpu} INTID {intid}: no such PPI line (INTID 16..31)")
        with self._core.lock:
            self._core.set_line(vcpu, intid, level)

    def irq_pending(self, vcpu: int) -> bool:
        """The IRQ output to `vcpu` is asserted right now."""
        return self._core.cpus[vcpu].irq

    def fiq_pending(self, vcpu: int) -> bool:
        """The FIQ output (Group 0 interrupts; in GICv2 only with GICC_CTLR.FIQEn)."""
        return self._core.cpus[vcpu].fiq


class RegisterFrame:
    """MMIO frame of 32-bit registers, for any offset, size and value: words reach every
    register, 64-bit accesses only 64-bit registers (two words, low first), bytes and
    halfwords only byte-accessible ones (IHI 0069 chapter 12, IHI 0048 §4.1); all else,
    misaligned or outside the frame is RAZ/WI. Subclasses give `_rd(off)`, `_wr(off, value, mask)`.
    """

    def __init__(self, region: Region, core: GicCore) -> None:
        self.region = region
        self._core = core

    def _is_wide(self, offset: int) -> bool:
        return False

    def _is_bytewise(self, offset: int) -> bool:
        return False

    def _rd(self, offset: int) -> int:
        raise NotImplementedError

    def _wr(self, offset: int, value: int, mask: int) -> None:
        raise NotImplementedError

    def _valid(self, offset: int, size: int) -> bool:
        return size in (1, 2, 4, 8) and 0 <= offset <= self.region.size - size and not offset % size

    def read(self, offset: int, size: int) -> int:
        if not self._valid(offset, size):
            return 0
        with self._core.lock:
            if size == 4:
                return self._rd(offset) & M32
            if size == 8:
                wide = self._is_wide(offset)
                return (self._rd(offset) & M32) | (self._rd(offset + 4) & M32) << 32 if wide else 0
            if not self._is_bytewise(offset):
                return 0
            shift = (offset & 3) * 8
            return (self._rd(offset & ~3) >> shift) & ((1 << (8 * size)) - 1)

    def write(self, offset: int, size: int, value: int) -> None:
        if not self._valid(offset, size):
            return
        value &= (1 << (8 * size)) - 1
        with self._core.lock:
            if size == 4:
                self._wr(offset, value, M32)
            elif size == 8 and self._is_wide(offset):
                self._wr(offset, value & M32, M32)
                self._wr(offset + 4, value >> 32, M32)
            elif size < 4 and self._is_bytewise(offset):
                shift = (offset & 3) * 8
                self._wr(offset & ~3, value << shift, ((1 << (8 * size)) - 1) << shift)
            self._core.update()
