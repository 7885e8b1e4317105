"""GICv2 model against Arm IHI 0048 (GICv2) without Security Extensions, as on QEMU's virt.

Register checks follow what Linux's irq-gic.c and kvm-unit-tests' arm/gic.c expect of the
hardware; the CPU interface is the memory-mapped GICC, one view per vCPU.
"""

from __future__ import annotations

import random

import pytest

from pvkit.devices.arm64.gicv2 import Gicv2
from pvkit.devices.base import MmioDevice

CTLR, TYPER, IIDR, IGROUPR, ISENABLER = 0x0, 0x4, 0x8, 0x80, 0x100
ISPENDR, ICPENDR, ISACTIVER, IPRIORITYR = 0x200, 0x280, 0x300, 0x400
ITARGETSR, ICFGR, SGIR, CPENDSGIR, SPENDSGIR = 0x800, 0xC00, 0xF00, 0xF10, 0xF20
GICC_CTLR, GICC_PMR, GICC_BPR, GICC_IAR, GICC_EOIR = 0x00, 0x04, 0x08, 0x0C, 0x10
GICC_RPR, GICC_HPPIR, GICC_AIAR, GICC_IIDR, GICC_DIR = 0x14, 0x18, 0x20, 0xFC, 0x1000
EOIMODE, ACKCTL, FIQEN = 1 << 9, 1 << 2, 1 << 3
SPI = 48


class Outputs:
    def __init__(self) -> None:
        self.calls: list[tuple[int, bool]] = []

    def __call__(self, vcpu: int, level: bool) -> None:
        self.calls.append((vcpu, level))


class View:
    """One vCPU's GICD and GICC."""

    def __init__(self, gic: Gicv2, vcpu: int) -> None:
        devices = gic.mmio_for(vcpu)
        self.d: MmioDevice = devices[0]
        self.c: MmioDevice = devices[1]

    def gicd(self, off: int, value: int | None = None, size: int = 4) -> int:
        if value is None:
            return self.d.read(off, size)
        self.d.write(off, size, value)
        return 0

    def gicc(self, off: int, value: int | None = None) -> int:
        if value is None:
            return self.c.read(off, 4)
        self.c.write(off, 4, value)
        return 0


def make(n: int = 2) -> tuple[Gicv2, list[View], Outputs, Outputs]:
    irq, fiq = Outputs(), Outputs()
    gic = Gicv2(list(range(n)), irq, signal_fiq=fiq)
    return gic, [View(gic, c) for c in range(n)], irq, fiq


def linux_init(views: list[View]) -> None:
    """What Linux's gic_dist_init()/gic_cpu_init()/gic_cpu_if_up() do, in short."""
    v0 = views[0]
    for n in range(32, 288, 4):
        v0.gicd(ITARGETSR + n, 0x01010101)
        v0.gicd(IPRIORITYR + n, 0xA0A0A0A0)
    v0.gicd(CTLR, 1)
    for v in views:
        v.gicd(ISENABLER, 0xFFFF)
        for n in range(0, 32, 4):
            v.gicd(IPRIORITYR + n, 0xA0A0A0A0)
        v.gicc(GICC_PMR, 0xF0)
        v.gicc(GICC_CTLR, 1)


def test_gicd_typer_reports_cpus_and_lines_and_is_read_only_like_icpidr2() -> None:
    _gic, (v0, _, _), _, _ = make(3)
    typer = v0.gicd(TYPER)
    assert typer & 0x1F == 8 and (typer >> 5) & 7 == 2 and not typer & 1 << 10
    for off in (TYPER, IIDR, 0xFE8):
        before = v0.gicd(off)
        v0.gicd(off, 0xA5A5_5A5A)
        assert v0.gicd(off) == before
    assert v0.gicd(0xFE8) & 0xF0 == 0x20 and v0.gicd(IIDR) != 0
    assert v0.gicc(GICC_IIDR) >> 16 & 0xF == 2


def test_more_than_8_cpus_is_refused() -> None:
    with pytest.raises(ValueError, match="at most 8"):
        Gicv2(list(range(9)), Outputs())


def test_itargetsr0_to_7_read_the_accessing_cpus_own_bit_for_linux_cpumask() -> None:
    _gic, views, _, _ = make(4)
    assert views[2].gicd(ITARGETSR) == 0x0404_0404
    assert views[3].gicd(ITARGETSR + 28) == 0x0808_0808
    views[2].gicd(ITARGETSR, 0)
    assert views[2].gicd(ITARGETSR) == 0x0404_0404


def test_itargetsr_masks_bits_of_missing_cpus_is_byte_accessible_and_raz_wi_beyond() -> None:
    _gic, (v0, _), _, _ = make(2)
    v0.gicd(ITARGETSR + 32, 0x0103_020F)
    assert v0.gicd(ITARGETSR + 32) == 0x0103_0203
    v0.gicd(ITARGETSR + 34, 0x1F, size=1)
    assert v0.gicd(ITARGETSR + 32) == 0x0103_0203
    v0.gicd(ITARGETSR + 33, 0x01, size=1)
    assert v0.gicd(ITARGETSR + 33, size=1) == 0x01
    v0.gicd(ITARGETSR + 288, 0xFFFF_FFFF)
    assert v0.gicd(ITARGETSR + 288) == 0


def test_ipriorityr_implements_5_bits_like_kvm_unit_tests_checks() -> None:
    _gic, (v0, _), _, _ = make()
    v0.gicd(IPRIORITYR + 32, 0xFFFF_FFFF)
    assert v0.gicd(IPRIORITYR + 32) == 0xF8F8_F8F8
    v0.gicd(IPRIORITYR + 32, 0xFF7F_BF3F)
    assert v0.gicd(IPRIORITYR + 32) == 0xF878_B838
    v0.gicd(IPRIORITYR + 288, 0xFFFF_FFFF)
    assert v0.gicd(IPRIORITYR + 288) == 0


def test_an_spi_targeting_two_cpus_goes_to_whichever_acknowledges_first() -> None:
    gic, (v0, v1), _, _ = make()
    linux_init([v0, v1])
    v0.gicd(ITARGETSR + SPI, 0x03, size=1)
    v0.gicd(ISENABLER + 4, 1 << (SPI - 32))
    gic.set_spi(SPI, True)
    assert gic.irq_pending(0) and gic.irq_pending(1)
    assert v1.gicc(GICC_IAR) == SPI
    assert not gic.irq_pending(0) and v0.gicc(GICC_IAR) == 1023
    gic.set_spi(SPI, False)
    v1.gicc(GICC_EOIR, SPI)
    assert v1.gicd(ISACTIVER + 4) == 0 and v1.gicc(GICC_RPR) == 0xFF


def test_gicd_sgir_target_list_filters_and_iar_reports_the_source_cpu() -> None:
    gic, views, _, _ = make(4)
    linux_init(views)
    views[1].gicd(SGIR, 0b1100 << 16 | 7)  # filter 0: the list, CPUs 2 and 3
    assert [gic.irq_pending(c) for c in range(4)] == [False, False, True, True]
    assert views[3].gicc(GICC_IAR) == 1 << 10 | 7
    views[3].gicc(GICC_EOIR, 1 << 10 | 7)
    views[2].gicd(SGIR, 1 << 24 | 4)  # filter 1: all but self
    assert views[0].gicc(GICC_IAR) == 2 << 10 | 4
    assert views[2].gicc(GICC_IAR) == 1 << 10 | 7  # the first SGI, still pending here
    views[0].gicd(SGIR, 2 << 24 | 1)  # filter 2: self only
    assert views[0].gicc(GICC_HPPIR) == 1  # source CPU 0
    views[0].gicd(SGIR, 3 << 24 | 5)  # filter 3 is reserved: nothing
    assert views[1].gicd(SPENDSGIR) == 0  # SGIs 0-3 of CPU 1: none
    assert views[1].gicd(SPENDSGIR + 4) == 0x04  # SGI 4, from CPU 2 only; no SGI 5


def test_sgi_pending_is_kept_per_source_and_set_or_cleared_by_s_cpendsgir() -> None:
    _gic, (v0, v1, v2), _, _ = make(3)
    linux_init([v0, v1, v2])
    v1.gicd(SGIR, 1 << 16 | 3)
    v2.gicd(SGIR, 1 << 16 | 3)
    assert v0.gicd(SPENDSGIR) == 0b110 << 24
    assert v0.gicc(GICC_IAR) == 1 << 10 | 3  # the lower source first
    assert v0.gicd(ISPENDR) & 1 << 3 and v0.gicd(ISACTIVER) & 1 << 3  # pending and active
    v0.gicc(GICC_EOIR, 1 << 10 | 3)
    assert v0.gicc(GICC_IAR) == 2 << 10 | 3
    v0.gicc(GICC_EOIR, 2 << 10 | 3)
    v0.gicd(SPENDSGIR + 3, 0b011, size=1)
    v0.gicd(CPENDSGIR + 3, 0b001, size=1)
    assert v0.gicd(SPENDSGIR) == 0b010 << 24 and v0.gicc(GICC_IAR) == 1 << 10 | 3


def test_ispendr0_and_icpendr0_sgi_bits_are_read_only() -> None:
    _gic, (v0, _), _, _ = make()
    v0.gicd(ISPENDR, 0xFFFF_FFFF)
    assert v0.gicd(ISPENDR) == 0xFFFF_0000  # PPIs latch, SGIs cannot be set this way
    v0.gicd(SPENDSGIR, 0x01)
    v0.gicd(ICPENDR, 0xFFFF_FFFF)
    assert v0.gicd(ISPENDR) == 0x1


def test_gicc_iar_returns_1022_for_group1_unless_ackctl_and_aiar_takes_group1() -> None:
    gic, (v0, v1), _, _ = make()
    linux_init([v0, v1])
    v0.gicd(IGROUPR + 4, 1 << (SPI - 32))
    v0.gicd(ISENABLER + 4, 1 << (SPI - 32))
    gic.set_spi(SPI, True)
    v0.gicc(GICC_CTLR, 0b11)
    assert not gic.irq_pending(0)  # GICD_CTLR enables only Group 0 so far
    v0.gicd(CTLR, 0b11)
    assert v0.gicc(GICC_HPPIR) == 1022 and v0.gicc(GICC_IAR) == 1022
    assert v0.gicc(GICC_AIAR) == SPI
    v0.gicc(0x24, SPI)  # GICC_AEOIR
    gic.set_spi(SPI, False)
    gic.set_spi(SPI, True)
    v0.gicc(GICC_CTLR, 0b11 | ACKCTL)
    assert v0.gicc(GICC_IAR) == SPI


def test_group0_goes_to_fiq_only_with_fiqen() -> None:
    gic, (v0, v1), _, fiq = make()
    linux_init([v0, v1])
    v0.gicd(ISENABLER + 4, 1 << (SPI - 32))
    gic.set_spi(SPI, True)
    assert gic.irq_pending(0) and not gic.fiq_pending(0)
    v0.gicc(GICC_CTLR, 1 | FIQEN)
    assert gic.fiq_pending(0) and not gic.irq_pending(0) and fiq.calls == [(0, True)]


def test_eoimode_splits_the_drop_and_gicc_dir_deactivates() -> None:
    gic, (v0, v1), _, _ = make()
    linux_init([v0, v1])
    v0.gicd(ISENABLER + 4, 1 << (SPI - 32))
    v0.gicc(GICC_CTLR, 1 | EOIMODE)
    gic.set_spi(SPI, True)
    assert v0.gicc(GICC_IAR) == SPI and v0.gicc(GICC_RPR) == 0xA0
    v0.gicc(GICC_EOIR, SPI)
    assert v0.gicc(GICC_RPR) == 0xFF and not gic.irq_pending(0)  # active: not re-signalled
    v0.gicc(GICC_DIR, SPI)
    assert gic.irq_pending(0)  # the line is still high


def test_gicc_bpr_and_abpr_minimums() -> None:
    _gic, (v0, _), _, _ = make()
    v0.gicc(GICC_BPR, 0)
    v0.gicc(0x1C, 0)
    assert v0.gicc(GICC_BPR) == 2 and v0.gicc(0x1C) == 3


def test_a_uniprocessor_gic_sends_every_spi_to_its_cpu_and_itargetsr_is_raz_wi() -> None:
    gic, (v0,), _, _ = make(1)
    linux_init([v0])
    assert v0.gicd(ITARGETSR + 32) == 0 and v0.gicd(ITARGETSR) == 0
    v0.gicd(ISENABLER + 4, 1 << (SPI - 32))
    gic.set_spi(SPI, True)
    assert v0.gicc(GICC_IAR) == SPI


def test_any_offset_size_and_value_is_answered_without_an_exception() -> None:
    gic, views, _, _ = make(3)
    linux_init(views)
    rng = random.Random(2)
    for _ in range(20000):
        dev = rng.choice((rng.choice(views).d, rng.choice(views).c))
        size = rng.choice((1, 2, 4, 8, 5))
        off = rng.choice((rng.randrange(0, 0x1000), rng.randrange(0, 0x1_0040)))
        dev.write(off, size, rng.getrandbits(64))
        assert 0 <= dev.read(off, size) < 1 << 64
        gic.set_spi(rng.randrange(32, 288), rng.random() < 0.5)
    assert gic.sysreg_read(0, (3, 0, 12, 12, 0)) is None
    assert gic.sysreg_write(0, (3, 0, 12, 12, 1), 0) is False


def test_reset_drops_outputs_and_clears_state() -> None:
    gic, (v0, v1), irq, _ = make()
    linux_init([v0, v1])
    v1.gicd(SGIR, 1 << 16 | 2)
    assert gic.irq_pending(0)
    gic.reset()
    assert not gic.irq_pending(0) and irq.calls[-1] == (0, False)
    assert v0.gicd(CTLR) == 0 and v0.gicd(SPENDSGIR) == 0 and v0.gicc(GICC_CTLR) == 0
    assert v0.gicd(ITARGETSR + 32) == 0 and v0.gicc(GICC_PMR) == 0
