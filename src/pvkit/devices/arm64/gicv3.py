"""GICv3 laid out as QEMU's `virt` board: GICD, GICR frames and the ICC_* system registers.

Arm IHI 0069 (GICv3/v4). One security state (GICD_CTLR.DS == 1, as QEMU under TCG without
EL3), affinity routing always on (GICD_CTLR.ARE RAO/WI), no LPIs or ITS. Group 0 interrupts
are signalled as FIQ and Group 1 as IRQ (IHI 0069 chapter 4, single Security state).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from pvkit.devices.arm64 import gic_state
from pvkit.devices.arm64.gic_core import (
    GROUP,
    M32,
    MIN_BPR0,
    PRI_MASK,
    PRIBITS,
    ROUTE_ANY,
    SPURIOUS,
    GicCore,
    GicLines,
    RegisterFrame,
    Signal,
    SysregKey,
    bits_of,
)
from pvkit.devices.base import MmioDevice
from pvkit.machine.memory import Region
from pvkit.snapshot.state import Fields, State

__all__ = ["VIRT_REDIST_REGIONS", "Gicv3", "SysregKey", "redistributor_capacity"]

GICD_BASE = 0x0800_0000
GICD_SIZE = 0x1_0000
REDIST_STRIDE = 0x2_0000  # RD_base + SGI_base, 64 KiB each (no VLPI frames: GICv3, not v4)
# QEMU hw/arm/virt.c: base_memmap[VIRT_GIC_REDIST] = {0x080A0000, 0x00F60000}, room for 123
# redistributors below the UART at 0x0900_0000; extended_memmap[VIRT_HIGH_GIC_REDIST2] is
# 64 MiB (512 more), the first entry of the high IO region, which virt_set_memmap() places at
# 256 GiB = 0x40_0000_0000 as long as RAM plus hotpluggable memory ends below that.
VIRT_REDIST_REGIONS = ((0x080A_0000, 0x00F6_0000), (0x40_0000_0000, 0x0400_0000))

AFF_MASK = 0xFF_00FF_FFFF  # MPIDR_EL1 / GICD_IROUTER: Aff3 [39:32], Aff2..Aff0 [23:0]
IROUTER_MASK = AFF_MASK | 1 << 31  # ...plus Interrupt_Routing_Mode [31]
CTLR_ARE, CTLR_DS = 1 << 4, 1 << 6
WAKER_SLEEP, WAKER_ASLEEP = 1 << 1, 1 << 2
# GICD_IIDR/GICR_IIDR: implementer Arm (JEP106 0x43B), product 0, r0p0 - what QEMU's and KVM's
# GICv3 models report. ID registers at 0xFFD0-0xFFFC (PIDR4-7, PIDR0-3, CIDR0-3), QEMU's values:
# PIDR2.ArchRev = 3.
IIDR = 0x43B
_GICD_IDS = (0x44, 0, 0, 0, 0x92, 0xB4, 0x3B, 0, 0x0D, 0xF0, 0x05, 0xB1)
_GICR_IDS = (0x44, 0, 0, 0, 0x93, 0xB4, 0x3B, 0, 0x0D, 0xF0, 0x05, 0xB1)

# ICC_* encodings: IHI 0069's register descriptions and Linux arch/arm64/include/asm/sysreg.h
# agree.
ICC_PMR_EL1 = (3, 0, 4, 6, 0)
ICC_IAR0_EL1 = (3, 0, 12, 8, 0)
ICC_EOIR0_EL1 = (3, 0, 12, 8, 1)
ICC_HPPIR0_EL1 = (3, 0, 12, 8, 2)
ICC_BPR0_EL1 = (3, 0, 12, 8, 3)
ICC_AP0R0_EL1 = (3, 0, 12, 8, 4)  # AP0R1-3 (op2 5-7) exist only with 6+ priority bits
ICC_AP1R0_EL1 = (3, 0, 12, 9, 0)  # AP1R1-3 likewise: their accesses are UNDEFINED here
ICC_DIR_EL1 = (3, 0, 12, 11, 1)
ICC_RPR_EL1 = (3, 0, 12, 11, 3)
ICC_SGI1R_EL1 = (3, 0, 12, 11, 5)
ICC_ASGI1R_EL1 = (3, 0, 12, 11, 6)
ICC_SGI0R_EL1 = (3, 0, 12, 11, 7)
ICC_IAR1_EL1 = (3, 0, 12, 12, 0)
ICC_EOIR1_EL1 = (3, 0, 12, 12, 1)
ICC_HPPIR1_EL1 = (3, 0, 12, 12, 2)
ICC_BPR1_EL1 = (3, 0, 12, 12, 3)
ICC_CTLR_EL1 = (3, 0, 12, 12, 4)
ICC_SRE_EL1 = (3, 0, 12, 12, 5)
ICC_IGRPEN0_EL1 = (3, 0, 12, 12, 6)
ICC_IGRPEN1_EL1 = (3, 0, 12, 12, 7)


def redistributor_capacity(regions: Sequence[tuple[int, int]] = VIRT_REDIST_REGIONS) -> int:
    """How many vCPUs the redistributor regions hold (635 on QEMU's virt layout)."""
    return sum(size // REDIST_STRIDE for _base, size in regions)


def _layout(ncpus: int, regions: Sequence[tuple[int, int]]) -> list[tuple[Region, list[int]]]:
    """Fill the redistributor regions in order; a region with no vCPU is left out."""
    out: list[tuple[Region, list[int]]] = []
    cpu = 0
    for i, (base, size) in enumerate(regions):
        if size <= 0 or size % REDIST_STRIDE or base % 0x1_0000:
            raise ValueError(
                f"redistributor region {base:#x}+{size:#x} must be 64 KiB aligned "
                f"and a multiple of {REDIST_STRIDE:#x} long"
            )
        take = min(size // REDIST_STRIDE, ncpus - cpu)
        if take:
            out.append((Region(base, size, f"gicv3-gicr{i}"), list(range(cpu, cpu + take))))
            cpu += take
    if cpu < ncpus:
        raise ValueError(f"{ncpus} vCPUs need {ncpus} redistributors; the regions hold {cpu}")
    return out


class _Distributor(RegisterFrame):
    """GICD (IHI 0069 GICD_* registers) with ARE == 1: SGI/PPI registers are RAZ/WI here."""

    def __init__(self, gic: Gicv3) -> None:
        super().__init__(Region(GICD_BASE, GICD_SIZE, "gicv3-gicd"), gic._core)
        self._gic = gic

    def _is_wide(self, offset: int) -> bool:
        return 0x6000 <= offset < 0x8000  # GICD_IROUTER<n>

    def _is_bytewise(self, offset: int) -> bool:
        return 0x400 <= offset < 0x800  # GICD_IPRIORITYR<n>

    def _rd(self, off: int) -> int:
        core = self._core
        if off == 0x0000:  # GICD_CTLR: RWP (31) always 0, ARE and DS fixed at 1
            return CTLR_DS | CTLR_ARE | core.dist_groups
        if off == 0x0004:
            return self._gic.typer
        if off == 0x0008:
            return IIDR
        if 0x080 <= off < 0x400 and off % 0x80 >= 4:
            return core.bitmap_read(0, off)
        if 0x420 <= off < 0x800:
            return core.prio_read(0, off - 0x400)
        if 0xC08 <= off < 0xD00:
            return core.cfg_read(0, (off - 0xC00) // 4)
        if 0x6100 <= off < 0x8000:
            n = (off - 0x6000) // 8
            if n < core.nirqs:
                return self._gic.irouter[n] >> (32 if off & 4 else 0) & M32
        if off >= 0xFFD0:
            return _GICD_IDS[(off - 0xFFD0) // 4]
        return 0  # GICD_TYPER2, STATUSR, IGRPMODR/NSACR (DS == 1), SGIR... RAZ/WI

    def _wr(self, off: int, value: int, mask: int) -> None:
        core = self._core
        if off == 0x0000:
            core.dist_groups = value & 3  # EnableGrp0, EnableGrp1 (DS == 1 layout)
        elif 0x080 <= off < 0x400 and off % 0x80 >= 4:
            core.bitmap_write(0, off, value, mask, sgi_pend=True)
        elif 0x420 <= off < 0x800:
            core.prio_write(0, off - 0x400, value, mask)
        elif 0xC08 <= off < 0xD00:
            core.cfg_write(0, (off - 0xC00) // 4, value, mask)
        elif 0x6100 <= off < 0x8000:
            n, shift = (off - 0x6000) // 8, 32 if off & 4 else 0
            if n < core.nirqs:
                old = self._gic.irouter[n]
                self._gic.irouter[n] = (old & ~(M32 << shift) | value << shift) & IROUTER_MASK
                core.route[n] = self._gic.route_of(self._gic.irouter[n])


class _Redistributors(RegisterFrame):
    """One region of GICR frames (IHI 0069 GICR_* registers): RD_base then SGI_base per vCPU."""

    def __init__(self, gic: Gicv3, region: Region, cpus: list[int]) -> None:
        super().__init__(region, gic._core)
        self._gic = gic
        self.cpus = cpus

    def _is_wide(self, offset: int) -> bool:
        return offset % REDIST_STRIDE == 0x08  # GICR_TYPER

    def _is_bytewise(self, offset: int) -> bool:
        return 0x1_0400 <= offset % REDIST_STRIDE < 0x1_0420  # GICR_IPRIORITYR<n>

    def _rd(self, off: int) -> int:
        frame, off = divmod(off, REDIST_STRIDE)
        if frame >= len(self.cpus):
            return 0
        c, core = self.cpus[frame], self._core
        if off < 0x1_0000:
            if off == 0x0004:
                return IIDR
            if off == 0x0008:  # GICR_TYPER[31:0]: Processor_Number, Last (no LPIs: PLPIS 0)
                return c << 8 | (1 << 4 if frame == len(self.cpus) - 1 else 0)
            if off == 0x000C:  # GICR_TYPER[63:32]: Aff3.Aff2.Aff1.Aff0
                mpidr = self._gic.mpidrs[c]
                return (mpidr >> 8) & 0xFF00_0000 | mpidr & 0xFF_FFFF
            if off == 0x0014:  # GICR_WAKER: ChildrenAsleep follows ProcessorSleep at once
                return self._gic.waker[c]
            if off >= 0xFFD0:
                return _GICR_IDS[(off - 0xFFD0) // 4]
            return 0  # GICR_CTLR (RWP 0, no LPIs), STATUSR, PROPBASER, PENDBASER...
        off -= 0x1_0000
        if 0x080 <= off < 0x400 and off % 0x80 < 4:
            return core.bitmap_read(c, off)
        if 0x400 <= off < 0x420:
            return core.prio_read(c, off - 0x400)
        if off in (0xC00, 0xC04):
            return core.cfg_read(c, (off - 0xC00) // 4)
        return 0  # IGRPMODR0 and NSACR are RAZ/WI with DS == 1

    def _wr(self, off: int, value: int, mask: int) -> None:
        frame, off = divmod(off, REDIST_STRIDE)
        if frame >= len(self.cpus):
            return
        c, core = self.cpus[frame], self._core
        if off < 0x1_0000:
            if off == 0x0014:  # only ProcessorSleep is writable; the handshake is immediate
                self._gic.waker[c] = WAKER_SLEEP | WAKER_ASLEEP if value & WAKER_SLEEP else 0
            return
        off -= 0x1_0000
        if 0x080 <= off < 0x400 and off % 0x80 < 4:
            core.bitmap_write(c, off, value, mask, sgi_pend=True)
        elif 0x400 <= off < 0x420:
            core.prio_write(c, off - 0x400, value, mask)
        elif off == 0xC04:  # GICR_ICFGR1 (PPIs); ICFGR0 (SGIs) is read-only
            core.cfg_write(c, 1, value, mask)


class Gicv3(GicLines):
    """A GICv3 for len(mpidrs) vCPUs and `spis` SPIs (INTID 32..32+spis-1)."""

    dt_compatible = "arm,gic-v3"

    def __init__(
        self,
        mpidrs: Sequence[int],
        signal: Signal,
        spis: int = 256,
        redistributor_regions: Sequence[tuple[int, int]] | None = None,
        *,
        signal_fiq: Signal | None = None,
    ) -> None:
        self.mpidrs = [m & AFF_MASK for m in mpidrs]
        self._by_aff = {a: i for i, a in enumerate(self.mpidrs)}
        if len(self._by_aff) != len(self.mpidrs):
            raise ValueError("two vCPUs have the same MPIDR affinity")
        self._core = core = GicCore(len(self.mpidrs), spis, signal, signal_fiq, group0_fiq=True)
        # Range selector support (ICC_SGI1R_EL1.RS) is needed only if some Aff0 is above 15.
        self._rss = any(m & 0xFF > 15 for m in self.mpidrs)
        # GICD_TYPER: ITLinesNumber, CPUNumber, IDbits = 9 (10-bit INTIDs), A3V, RSS.
        self.typer = (-(-core.nirqs // 32) - 1) | (min(core.ncpus, 8) - 1) << 5
        self.typer |= 9 << 19 | 1 << 24 | self._rss << 26
        self.irouter = [0] * core.nirqs
        self.waker = [WAKER_SLEEP | WAKER_ASLEEP] * core.ncpus
        self._dist = _Distributor(self)
        layout = _layout(core.ncpus, redistributor_regions or VIRT_REDIST_REGIONS)
        self._redists = [_Redistributors(self, region, cpus) for region, cpus in layout]
        self.regions: list[Region] = [self._dist.region] + [r.region for r in self._redists]
        self._reads: dict[SysregKey, Callable[[int], int]] = {
            ICC_PMR_EL1: lambda c: core.cpus[c].pmr,
            ICC_IAR0_EL1: lambda c: self._acknowledge(c, 0),
            ICC_IAR1_EL1: lambda c: self._acknowledge(c, 1),
            ICC_HPPIR0_EL1: lambda c: self._hppir(c, 0),
            ICC_HPPIR1_EL1: lambda c: self._hppir(c, 1),
            ICC_BPR0_EL1: lambda c: core.cpus[c].bpr0,
            ICC_BPR1_EL1: lambda c: core.cpus[c].read_bpr1(),
            ICC_AP0R0_EL1: lambda c: core.cpus[c].apr[0],
            ICC_AP1R0_EL1: lambda c: core.cpus[c].apr[1],
            ICC_RPR_EL1: lambda c: core.running_priority(core.cpus[c]),
            ICC_CTLR_EL1: self._read_ctlr,
            ICC_SRE_EL1: lambda c: 0x7,  # SRE, DFB, DIB: RAO/WI (no memory-mapped GICC)
            ICC_IGRPEN0_EL1: lambda c: int(core.cpus[c].grpen[0]),
            ICC_IGRPEN1_EL1: lambda c: int(core.cpus[c].grpen[1]),
        }
        self._writes: dict[SysregKey, Callable[[int, int], None]] = {
            ICC_PMR_EL1: lambda c, v: setattr(core.cpus[c], "pmr", v & PRI_MASK),
            ICC_EOIR0_EL1: lambda c, v: self._eoi(c, v, 0),
            ICC_EOIR1_EL1: lambda c, v: self._eoi(c, v, 1),
            ICC_DIR_EL1: self._dir,
            ICC_BPR0_EL1: lambda c, v: setattr(core.cpus[c], "bpr0", max(v & 7, MIN_BPR0)),
            ICC_BPR1_EL1: lambda c, v: core.cpus[c].write_bpr1(v),
            ICC_AP0R0_EL1: lambda c, v: core.cpus[c].apr.__setitem__(0, v & M32),
            ICC_AP1R0_EL1: lambda c, v: core.cpus[c].apr.__setitem__(1, v & M32),
            ICC_SGI0R_EL1: lambda c, v: self._sgi(c, v, 0),
            ICC_SGI1R_EL1: lambda c, v: self._sgi(c, v, 1),
            # 'Forwarding an SGI to a target PE': ASGI1R asks for the other Security state's
            # Group 1, which a single-security GIC does not have: nothing is forwarded.
            ICC_ASGI1R_EL1: lambda c, v: None,
            ICC_CTLR_EL1: self._write_ctlr,
            ICC_SRE_EL1: lambda c, v: None,
            ICC_IGRPEN0_EL1: lambda c, v: core.cpus[c].grpen.__setitem__(0, bool(v & 1)),
            ICC_IGRPEN1_EL1: lambda c, v: core.cpus[c].grpen.__setitem__(1, bool(v & 1)),
        }
        self.sysreg_keys = frozenset(self._reads) | frozenset(self._writes)
        self.reset()

    # --- public interface ---------------------------------------------------------------

    @staticmethod
    def regions_for(
        ncpus: int, redistributor_regions: Sequence[tuple[int, int]] | None = None
    ) -> list[Region]:
        """The DT `reg` property: GICD, then each redistributor region that holds a vCPU
        (#redistributor-regions is len() - 1), each the whole window, as QEMU describes it."""
        layout = _layout(ncpus, redistributor_regions or VIRT_REDIST_REGIONS)
        return [Region(GICD_BASE, GICD_SIZE, "gicv3-gicd")] + [region for region, _ in layout]

    def mmio_for(self, vcpu: int) -> list[MmioDevice]:
        """GICD and every redistributor region: the same objects for every vCPU."""
        if not 0 <= vcpu < self._core.ncpus:
            raise ValueError(f"no vCPU {vcpu}: this GIC has {self._core.ncpus}")
        return [self._dist, *self._redists]

    def sysreg_read(self, vcpu: int, key: SysregKey) -> int | None:
        """MRS of an ICC_* register; None if `key` is not a readable GIC register."""
        read = self._reads.get(key)
        if read is None:
            return None
        with self._core.lock:
            return read(vcpu)

    def sysreg_write(self, vcpu: int, key: SysregKey, value: int) -> bool:
        """MSR of an ICC_* register; False if `key` is not a writable GIC register."""
        write = self._writes.get(key)
        if write is None:
            return False
        with self._core.lock:
            write(vcpu, value & (1 << 64) - 1)
            self._core.update()
        return True

    STATE_SECTION = gic_state.STATE_SECTION
    STATE_VERSION = gic_state.STATE_VERSION

    def save_state(self) -> State:
        return {"version": 3, "core": gic_state.save_core(self._core),
                "irouter": list(self.irouter), "waker": list(self.waker)}  # fmt: skip

    def restore_state(self, state: Fields) -> None:
        n, core = self._core.ncpus, self._core
        if state.integer("version") != 3:
            raise state.bad("version", "3, the GIC version of this VM")
        irouter = state.integers("irouter", core.nirqs)
        waker = state.integers("waker", n, 0xFFFF_FFFF)
        gic_state.restore_core(core, state.sub("core"))
        with core.lock:
            self.irouter, self.waker = irouter, waker

    def reset(self) -> None:
        core = self._core
        with core.lock:
            core.reset()
            self.irouter = [0] * core.nirqs  # Aff 0.0.0.0, Interrupt_Routing_Mode 0
            core.route = [self.route_of(0)] * core.nirqs
            self.waker = [WAKER_SLEEP | WAKER_ASLEEP] * core.ncpus
            core.update()

    # --- helpers ------------------------------------------------------------------------

    def route_of(self, irouter: int) -> int:
        """GICD_IROUTER to a target mask: one vCPU, none (no such affinity), or 1-of-N."""
        if irouter >> 31 & 1:
            return ROUTE_ANY
        cpu = self._by_aff.get(irouter & AFF_MASK)
        return 0 if cpu is None else 1 << cpu

    def _acknowledge(self, c: int, group: int) -> int:
        taken = self._core.acknowledge(c, (group,))
        return SPURIOUS if taken is None else taken[0]

    def _hppir(self, c: int, group: int) -> int:
        hppi = self._core.cpus[c].hppi
        return hppi[1] if hppi is not None and hppi[2] == group else SPURIOUS

    def _eoi(self, c: int, value: int, group: int) -> None:
        deactivate = not self._core.cpus[c].eoimode
        self._core.end_of_interrupt(c, value & 0xFF_FFFF, group, deactivate)

    def _dir(self, c: int, value: int) -> None:
        if self._core.cpus[c].eoimode:  # with EOImode == 0 a DIR write is ignored
            self._core.deactivate(c, value & 0xFF_FFFF)

    def _read_ctlr(self, c: int) -> int:
        """ICC_CTLR_EL1: CBPR, EOImode, PRIbits, IDbits = 0 (16 bits), A3V = 1, RSS."""
        cpu = self._core.cpus[c]
        return cpu.cbpr | cpu.eoimode << 1 | (PRIBITS - 1) << 8 | 1 << 15 | self._rss << 18

    def _write_ctlr(self, c: int, value: int) -> None:
        cpu = self._core.cpus[c]
        cpu.cbpr, cpu.eoimode = bool(value & 1), bool(value & 2)

    def _sgi(self, c: int, value: int, group: int) -> None:
        """ICC_SGI0R/SGI1R_EL1: TargetList [15:0], Aff1 [23:16], INTID [27:24], Aff2
        [39:32], IRM [40], RS [47:44], Aff3 [55:48]. An SGI configured in the other group is
        not forwarded (IHI 0069 'Forwarding an SGI to a target PE', DS == 1)."""
        core, sgi = self._core, value >> 24 & 0xF
        if value >> 40 & 1:
            targets = [t for t in range(core.ncpus) if t != c]
        else:
            cluster = (value >> 48 & 0xFF) << 32 | (value >> 32 & 0xFF) << 16
            cluster |= (value >> 16 & 0xFF) << 8 | ((value >> 44 & 0xF) * 16 if self._rss else 0)
            found = (self._by_aff.get(cluster + n) for n in bits_of(value & 0xFFFF))
            targets = [t for t in found if t is not None]
        for t in targets:
            if core.private[t].bits[GROUP] >> sgi & 1 == group:
                core.pend_sgi(t, sgi, 1)
