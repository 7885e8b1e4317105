"""GICv2 laid out as QEMU's `virt` board: GICD at 0x0800_0000, GICC at 0x0801_0000.

Arm IHI 0048 (GICv2). No Security Extensions (QEMU under TCG without EL3), so every access is
treated as Secure and both interrupt groups are visible (IHI 0048 §4.3.1 GICD_CTLR and §4.4.1
GICC_CTLR, the layouts without the Security Extensions). Group 0 is signalled as FIQ only when
GICC_CTLR.FIQEn is set, otherwise everything is IRQ. At most 8 CPU interfaces. Each vCPU maps
its own view of GICD (the banked registers of INTIDs 0-31) and of GICC.
"""

from __future__ import annotations

from collections.abc import Sequence

from pvkit.devices.arm64 import gic_state
from pvkit.devices.arm64.gic_core import (
    M32,
    MIN_BPR0,
    PRI_MASK,
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

GICD_BASE = 0x0800_0000
GICD_SIZE = 0x1_0000
GICC_BASE = 0x0801_0000  # QEMU hw/arm/virt.c VIRT_GIC_CPU, 64 KiB; GICC_DIR is at 0x1000
GICC_SIZE = 0x1_0000
MAX_CPUS = 8
NOT_GROUP0 = 1022  # GICC_IAR: the HPPI is Group 1 but AckCtl forbids acknowledging it
GICD_IIDR = 0x43B  # implementer Arm, product 0, r0p0
GICC_IIDR = 0x2_043B  # ArchVersion 2 in [19:16], implementer Arm
# PIDR4-7, PIDR0-3, CIDR0-3 at 0xFD0-0xFFC: the GIC-400's values (PIDR2.ArchRev = 2), as QEMU.
_IDS = (0x04, 0, 0, 0, 0x90, 0xB4, 0x2B, 0, 0x0D, 0xF0, 0x05, 0xB1)

# GICC_CTLR without Security Extensions: EnableGrp0, EnableGrp1, AckCtl, FIQEn, CBPR,
# the four bypass-disable bits (kept, no effect: there is no bypass), EOImodeS, EOImodeNS.
C_ENABLE0, C_ENABLE1, C_ACKCTL, C_FIQEN, C_CBPR = 1, 2, 4, 8, 16
C_EOIMODE_S, C_EOIMODE_NS = 1 << 9, 1 << 10
C_WRITABLE = 0x7FF


class _Distributor(RegisterFrame):
    """GICD as CPU interface `cpu` sees it (IHI 0048 §4.3)."""

    def __init__(self, gic: Gicv2, cpu: int) -> None:
        super().__init__(Region(GICD_BASE, GICD_SIZE, "gicv2-gicd"), gic._core)
        self._gic = gic
        self._cpu = cpu

    def _is_bytewise(self, offset: int) -> bool:
        # GICD_IPRIORITYR, GICD_ITARGETSR, GICD_CPENDSGIR, GICD_SPENDSGIR
        return 0x400 <= offset < 0xC00 or 0xF10 <= offset < 0xF30

    def _rd(self, off: int) -> int:
        core, c = self._core, self._cpu
        if off == 0x000:
            return core.dist_groups
        if off == 0x004:  # GICD_TYPER: ITLinesNumber, CPUNumber; SecurityExtn 0, LSPI 0
            return (-(-core.nirqs // 32) - 1) | (core.ncpus - 1) << 5
        if off == 0x008:
            return GICD_IIDR
        if 0x080 <= off < 0x400:
            return core.bitmap_read(c, off)
        if 0x400 <= off < 0x800:
            return core.prio_read(c, off - 0x400)
        if 0x800 <= off < 0xC00:
            return sum(self._target(off - 0x800 + i) << (8 * i) for i in range(4))
        if 0xC00 <= off < 0xD00:
            return core.cfg_read(c, (off - 0xC00) // 4)
        if 0xF10 <= off < 0xF30:  # one byte per SGI, one bit per source CPU
            first = (off - 0xF10) % 0x10
            return sum(core.sgi_src[c][first + i] << (8 * i) for i in range(4))
        if 0xFD0 <= off < 0x1000:
            return _IDS[(off - 0xFD0) // 4]
        return 0  # GICD_NSACR (no Security Extensions), GICD_SGIR (write-only), reserved

    def _target(self, intid: int) -> int:
        """ITARGETSR byte: the reader's own bit for INTIDs 0-31; RAZ/WI on a uniprocessor."""
        if intid >= self._core.nirqs or self._core.ncpus == 1:
            return 0
        return 1 << self._cpu if intid < 32 else self._gic.targets[intid]

    def _wr(self, off: int, value: int, mask: int) -> None:
        core, c = self._core, self._cpu
        cpus = (1 << core.ncpus) - 1
        if off == 0x000:
            core.dist_groups = value & 3
        elif 0x080 <= off < 0x400:  # SGI bits of IS/ICPENDR0 are RO: GICD_S/CPENDSGIR do it
            core.bitmap_write(c, off, value, mask, sgi_pend=False)
        elif 0x400 <= off < 0x800:
            core.prio_write(c, off - 0x400, value, mask)
        elif 0x800 <= off < 0xC00:
            for i in range(4):
                intid = off - 0x800 + i
                if mask >> (8 * i) & 0xFF and 32 <= intid < core.nirqs and core.ncpus > 1:
                    self._gic.targets[intid] = core.route[intid] = value >> (8 * i) & cpus
        elif 0xC00 <= off < 0xD00:
            core.cfg_write(c, (off - 0xC00) // 4, value, mask)
        elif off == 0xF00:
            self._sgir(value, cpus)
        elif 0xF10 <= off < 0xF30:
            first = (off - 0xF10) % 0x10
            for i in range(4):
                sources = value >> (8 * i) & mask >> (8 * i) & cpus
                if off < 0xF20:
                    core.unpend_sgi(c, first + i, sources)
                else:
                    core.pend_sgi(c, first + i, sources)

    def _sgir(self, value: int, cpus: int) -> None:
        """GICD_SGIR: SGIINTID [3:0], CPUTargetList [23:16], TargetListFilter [25:24]."""
        c, sgi = self._cpu, value & 0xF
        targets = [value >> 16 & cpus, cpus & ~(1 << c), 1 << c, 0][value >> 24 & 3]
        for t in bits_of(targets):
            self._core.pend_sgi(t, sgi, 1 << c)


class _CpuInterface(RegisterFrame):
    """GICC of CPU interface `cpu` (IHI 0048 §4.4). Word accesses only."""

    def __init__(self, gic: Gicv2, cpu: int) -> None:
        super().__init__(Region(GICC_BASE, GICC_SIZE, "gicv2-gicc"), gic._core)
        self._gic = gic
        self._cpu = cpu

    def _with_source(self, intid: int) -> int:
        """An INTID as IAR/HPPIR report it: the source CPU in [12:10] for an SGI."""
        if intid >= 16:
            return intid
        pending = self._core.sgi_src[self._cpu][intid]
        return intid | ((pending & -pending).bit_length() - 1 if pending else 0) << 10

    def _rd(self, off: int) -> int:
        core, c = self._core, self._cpu
        cpu, ctlr = core.cpus[c], self._gic.ctlr[c]
        hppi = cpu.hppi
        if off == 0x00:
            return ctlr
        if off == 0x04:
            return cpu.pmr
        if off == 0x08:
            return cpu.bpr0
        if off in (0x0C, 0x20):  # GICC_IAR, GICC_AIAR (the Group 1 alias)
            groups = (1,) if off == 0x20 else (0, 1) if ctlr & C_ACKCTL else (0,)
            if hppi is not None and hppi[2] in groups and core.can_preempt(cpu, hppi):
                intid = self._with_source(hppi[1])
                core.acknowledge(c, groups)
                return intid
            if off == 0x0C and hppi is not None and core.can_preempt(cpu, hppi):
                return NOT_GROUP0
            return SPURIOUS
        if off == 0x14:
            return core.running_priority(cpu)
        if off in (0x18, 0x28):  # GICC_HPPIR, GICC_AHPPIR
            if hppi is None or (off == 0x28 and hppi[2] == 0):
                return SPURIOUS
            if off == 0x18 and hppi[2] == 1 and not ctlr & C_ACKCTL:
                return NOT_GROUP0
            return self._with_source(hppi[1])
        if off == 0x1C:
            return cpu.read_bpr1()
        if off in (0xD0, 0xE0):  # GICC_APR0, GICC_NSAPR0 (32 levels: one register each)
            return cpu.apr[0 if off == 0xD0 else 1]
        if off == 0xFC:
            return GICC_IIDR
        return 0  # write-only GICC_EOIR/AEOIR/DIR, APR1-3, NSAPR1-3, reserved

    def _wr(self, off: int, value: int, mask: int) -> None:
        core, c = self._core, self._cpu
        cpu, ctlr = core.cpus[c], self._gic.ctlr[c]
        if off == 0x00:
            self._gic.set_ctlr(c, value)
        elif off == 0x04:
            cpu.pmr = value & PRI_MASK
        elif off == 0x08:
            cpu.bpr0 = max(value & 7, MIN_BPR0)
        elif off == 0x10:  # GICC_EOIR: priority drop, and deactivation unless EOImodeS
            core.end_of_interrupt(c, value & 0x3FF, None, not ctlr & C_EOIMODE_S)
        elif off == 0x1C:
            cpu.write_bpr1(value)
        elif off == 0x24:  # GICC_AEOIR: the Group 1 alias, under EOImodeNS
            core.end_of_interrupt(c, value & 0x3FF, 1, not ctlr & C_EOIMODE_NS)
        elif off in (0xD0, 0xE0):
            cpu.apr[0 if off == 0xD0 else 1] = value & M32
        elif off == 0x1000 and ctlr & C_EOIMODE_S:  # GICC_DIR, only with split EOI
            core.deactivate(c, value & 0x3FF)


class Gicv2(GicLines):
    """A GICv2 for len(mpidrs) <= 8 vCPUs (only the count matters) and `spis` SPIs."""

    dt_compatible = "arm,cortex-a15-gic"
    sysreg_keys: frozenset[SysregKey] = frozenset()  # the CPU interface is memory-mapped

    def __init__(
        self,
        mpidrs: Sequence[int],
        signal: Signal,
        spis: int = 256,
        *,
        signal_fiq: Signal | None = None,
    ) -> None:
        if len(mpidrs) > MAX_CPUS:
            raise ValueError(f"a GICv2 serves at most {MAX_CPUS} CPUs, not {len(mpidrs)}")
        self._core = core = GicCore(len(mpidrs), spis, signal, signal_fiq, group0_fiq=False)
        self.targets = [0] * core.nirqs  # GICD_ITARGETSR of each SPI
        self.ctlr = [0] * core.ncpus  # GICC_CTLR as written
        self._views = [(_Distributor(self, c), _CpuInterface(self, c)) for c in range(core.ncpus)]
        self.regions = self.regions_for(core.ncpus)
        self.reset()

    @staticmethod
    def regions_for(ncpus: int) -> list[Region]:
        """The DT `reg` property: GICD, then GICC."""
        return [
            Region(GICD_BASE, GICD_SIZE, "gicv2-gicd"),
            Region(GICC_BASE, GICC_SIZE, "gicv2-gicc"),
        ]

    def mmio_for(self, vcpu: int) -> list[MmioDevice]:
        """This vCPU's banked view of GICD and its own GICC."""
        if not 0 <= vcpu < self._core.ncpus:
            raise ValueError(f"no vCPU {vcpu}: this GIC has {self._core.ncpus}")
        return list(self._views[vcpu])

    def sysreg_read(self, vcpu: int, key: SysregKey) -> int | None:
        return None

    def sysreg_write(self, vcpu: int, key: SysregKey, value: int) -> bool:
        return False

    STATE_SECTION = gic_state.STATE_SECTION
    STATE_VERSION = gic_state.STATE_VERSION

    def save_state(self) -> State:
        return {"version": 2, "core": gic_state.save_core(self._core),
                "targets": list(self.targets), "ctlr": list(self.ctlr)}  # fmt: skip

    def restore_state(self, state: Fields) -> None:
        n, core = self._core.ncpus, self._core
        if state.integer("version") != 2:
            raise state.bad("version", "2, the GIC version of this VM")
        targets = state.integers("targets", core.nirqs, 0xFF)
        ctlr = state.integers("ctlr", n, 0xFFFF_FFFF)
        gic_state.restore_core(core, state.sub("core"))
        with core.lock:
            self.targets, self.ctlr = targets, ctlr

    def reset(self) -> None:
        core = self._core
        with core.lock:
            core.reset()
            self.targets = [0] * core.nirqs
            self.ctlr = [0] * core.ncpus
            # A uniprocessor GIC routes every SPI to its one CPU (ITARGETSR RAZ/WI).
            core.route = [1 if core.ncpus == 1 else 0] * core.nirqs
            core.update()

    def set_ctlr(self, c: int, value: int) -> None:
        """GICC_CTLR: mirror the bits the shared CPU interface logic uses."""
        cpu = self._core.cpus[c]
        self.ctlr[c] = value = value & C_WRITABLE
        cpu.grpen = [bool(value & C_ENABLE0), bool(value & C_ENABLE1)]
        cpu.group0_fiq, cpu.cbpr = bool(value & C_FIQEN), bool(value & C_CBPR)
        cpu.eoimode = bool(value & C_EOIMODE_S)
