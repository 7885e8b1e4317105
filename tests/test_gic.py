"""GICv3 model against Arm IHI 0069 (GICv3/v4), as QEMU's virt board lays it out.

Each test names the register or section it checks. Guests drive the GIC only through MMIO and
MRS/MSR, so the tests do too; the device side is set_spi/set_ppi and the IRQ/FIQ outputs.
"""

from __future__ import annotations

import random
import threading

import pytest

from pvkit.devices.arm64 import gicv3 as v3
from pvkit.devices.arm64.gicv3 import Gicv3
from pvkit.devices.base import MmioDevice
from pvkit.platform.board import ConfigError
from pvkit.platform.virt_arm64 import VirtConfig, virt_device_tree

ARE, DS, EN0, EN1 = 1 << 4, 1 << 6, 1 << 0, 1 << 1
GICD_CTLR, GICD_TYPER, GICD_IIDR = 0x0, 0x4, 0x8
GICD_IGROUPR, GICD_ISENABLER, GICD_ICENABLER = 0x80, 0x100, 0x180
GICD_ISPENDR, GICD_ICPENDR, GICD_ISACTIVER, GICD_ICACTIVER = 0x200, 0x280, 0x300, 0x380
GICD_IPRIORITYR, GICD_ICFGR, GICD_IROUTER, PIDR2 = 0x400, 0xC00, 0x6000, 0xFFE8
GICR_TYPER, GICR_WAKER, SGI_BASE = 0x8, 0x14, 0x1_0000
SPI = 40


class Outputs:
    """Records every signal(vcpu, level) call."""

    def __init__(self) -> None:
        self.calls: list[tuple[int, bool]] = []

    def __call__(self, vcpu: int, level: bool) -> None:
        self.calls.append((vcpu, level))


def mpidr(i: int) -> int:
    return ((i // 16) << 8) | (i % 16)


def make(n: int = 2) -> tuple[Gicv3, Outputs, Outputs]:
    irq, fiq = Outputs(), Outputs()
    return Gicv3([mpidr(i) for i in range(n)], irq, signal_fiq=fiq), irq, fiq


def gicd(gic: Gicv3, off: int, value: int | None = None, size: int = 4) -> int:
    dev = gic.mmio_for(0)[0]
    if value is None:
        return dev.read(off, size)
    dev.write(off, size, value)
    return 0


def frames(gic: Gicv3) -> dict[int, tuple[MmioDevice, int]]:
    """Find each vCPU's RD_base as Linux's gic_iterate_rdists() does: walk frames of 128 KiB
    until GICR_TYPER.Last, matching GICR_TYPER[63:32] with the packed affinity."""
    found: dict[int, tuple[MmioDevice, int]] = {}
    for dev in gic.mmio_for(0)[1:]:
        off = 0
        while True:
            assert dev.read(off + PIDR2, 4) & 0xF0 == 0x30
            typer = dev.read(off + GICR_TYPER, 8)
            found[(typer >> 8) & 0xFFFF] = (dev, off)
            assert typer >> 32 == gic.mpidrs[(typer >> 8) & 0xFFFF] & 0xFFFFFF
            if typer & 1 << 4:
                break
            off += 0x2_0000
    return found


def gicr(gic: Gicv3, vcpu: int, off: int, value: int | None = None, size: int = 4) -> int:
    dev, base = frames(gic)[vcpu]
    if value is None:
        return dev.read(base + off, size)
    dev.write(base + off, size, value)
    return 0


def mrs(gic: Gicv3, vcpu: int, key: tuple[int, int, int, int, int]) -> int:
    value = gic.sysreg_read(vcpu, key)
    assert value is not None
    return value


def msr(gic: Gicv3, vcpu: int, key: tuple[int, int, int, int, int], value: int) -> None:
    assert gic.sysreg_write(vcpu, key, value)


def linux_init(gic: Gicv3, n: int) -> None:
    """What Linux's gic_dist_init() and gic_cpu_init() do, in short: everything Group 1."""
    gicd(gic, GICD_CTLR, ARE | EN1 | EN0)
    for word in range(1, 9):
        gicd(gic, GICD_IGROUPR + 4 * word, 0xFFFF_FFFF)
    for c in range(n):
        gicr(gic, c, GICR_WAKER, 0)
        gicr(gic, c, SGI_BASE + GICD_IGROUPR, 0xFFFF_FFFF)
        gicr(gic, c, SGI_BASE + GICD_ISENABLER, 0xFFFF)
        msr(gic, c, v3.ICC_PMR_EL1, 0xF0)
        msr(gic, c, v3.ICC_IGRPEN1_EL1, 1)


def spi_setup(gic: Gicv3, intid: int, prio: int = 0xA0, edge: bool = False) -> None:
    gicd(gic, GICD_IPRIORITYR + intid, prio, size=1)
    if edge:
        word = GICD_ICFGR + intid // 16 * 4
        gicd(gic, word, gicd(gic, word) | 2 << (2 * (intid % 16)))
    gicd(gic, GICD_ISENABLER + intid // 32 * 4, 1 << (intid % 32))


# --- identification and discovery (IHI 0069 GICD_*, GICR_* registers) ---------------------


def test_gicd_typer_has_itlinesnumber_idbits_9_and_no_lpis_or_security_extension() -> None:
    gic, _, _ = make()
    typer = gicd(gic, GICD_TYPER)
    assert (typer & 0x1F) == 8  # 32 * (8 + 1) = 288 INTIDs: 256 SPIs
    assert (typer >> 19) & 0x1F == 9  # 10-bit INTIDs
    assert not typer & (1 << 17 | 1 << 16 | 1 << 10)  # LPIS, MBIS, SecurityExtn
    gicd(gic, GICD_TYPER, 0)
    assert gicd(gic, GICD_TYPER) == typer  # read-only


def test_gicd_ctlr_in_a_single_security_state_reads_ds_and_are_as_one_and_rwp_as_zero() -> None:
    gic, _, _ = make()
    gicd(gic, GICD_CTLR, 0)
    assert gicd(gic, GICD_CTLR) == DS | ARE
    gicd(gic, GICD_CTLR, 0xFFFF_FFFF)
    assert gicd(gic, GICD_CTLR) == DS | ARE | EN1 | EN0  # RWP (bit 31) never set


def test_pidr2_archrev_is_3_and_iidr_nonzero_in_gicd_and_gicr() -> None:
    gic, _, _ = make()
    assert gicd(gic, PIDR2) & 0xF0 == 0x30
    assert gicd(gic, GICD_IIDR) != 0
    assert gicr(gic, 1, PIDR2) & 0xF0 == 0x30
    assert gicr(gic, 1, 0x4) != 0


def test_gicr_typer_has_affinity_processor_number_and_last_in_each_of_qemus_two_regions() -> None:
    gic, _, _ = make(130)
    assert [(r.base, r.size) for r in gic.regions] == [
        (0x0800_0000, 0x1_0000),
        (0x080A_0000, 0x00F6_0000),  # 123 redistributors below 0x0900_0000
        (0x40_0000_0000, 0x400_0000),  # the rest at 256 GiB
    ]
    assert gic.regions == Gicv3.regions_for(130)
    found = frames(gic)
    assert sorted(found) == list(range(130))
    dev1, off1 = found[123]
    assert dev1.region.base == 0x40_0000_0000 and off1 == 0
    dev0, off0 = found[122]
    assert dev0.read(off0 + GICR_TYPER, 4) & 1 << 4
    assert found[129][0].read(found[129][1] + GICR_TYPER, 4) & 1 << 4
    hi = gicr(gic, 17, GICR_TYPER + 4)
    lo = gicr(gic, 17, GICR_TYPER)
    assert hi == 0x0000_0101 and (lo >> 8) & 0xFFFF == 17
    assert gicr(gic, 17, GICR_TYPER, size=8) == hi << 32 | lo


def test_only_one_redistributor_region_when_the_vcpus_fit_below_the_uart() -> None:
    assert len(Gicv3.regions_for(123)) == 2 and len(Gicv3.regions_for(124)) == 3


def test_too_many_vcpus_for_the_redistributor_regions_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="redistributors"):
        Gicv3(
            [mpidr(i) for i in range(4)], Outputs(), redistributor_regions=[(0x080A_0000, 0x6_0000)]
        )
    with pytest.raises(ValueError, match="same MPIDR"):
        Gicv3([0, 0], Outputs())


def test_gicr_waker_processor_sleep_children_asleep_handshake() -> None:
    gic, _, _ = make()
    assert gicr(gic, 0, GICR_WAKER) == 0b110  # asleep out of reset
    gicr(gic, 0, GICR_WAKER, 0)
    assert gicr(gic, 0, GICR_WAKER) == 0  # ChildrenAsleep follows at once
    gicr(gic, 0, GICR_WAKER, 0b10)
    assert gicr(gic, 0, GICR_WAKER) == 0b110
    assert gicr(gic, 1, GICR_WAKER) == 0b110  # each redistributor has its own


# --- CPU interface system registers (IHI 0069 ICC_*_EL1) ------------------------------------


def test_icc_sre_el1_has_sre_dfb_dib_fixed_at_one() -> None:
    gic, _, _ = make()
    msr(gic, 0, v3.ICC_SRE_EL1, 0)
    assert mrs(gic, 0, v3.ICC_SRE_EL1) == 0b111


def test_icc_ctlr_el1_reports_5_priority_bits_16_id_bits_a3v_and_keeps_eoimode_cbpr() -> None:
    gic, _, _ = make()
    ctlr = mrs(gic, 0, v3.ICC_CTLR_EL1)
    assert (ctlr >> 8) & 7 == 4 and (ctlr >> 11) & 7 == 0 and ctlr & 1 << 15
    msr(gic, 0, v3.ICC_CTLR_EL1, 0xFFFF_FFFF)
    assert mrs(gic, 0, v3.ICC_CTLR_EL1) == ctlr | 0b11
    assert mrs(gic, 1, v3.ICC_CTLR_EL1) == ctlr  # per CPU interface


def test_icc_pmr_el1_implements_the_top_5_bits_so_linux_sees_group0() -> None:
    gic, _, _ = make()
    msr(gic, 0, v3.ICC_PMR_EL1, 0xFF)
    assert mrs(gic, 0, v3.ICC_PMR_EL1) == 0xF8
    msr(gic, 0, v3.ICC_PMR_EL1, 1 << (8 - 5))  # Linux gic_has_group0() probe
    assert mrs(gic, 0, v3.ICC_PMR_EL1) == 0x08


def test_icc_bpr_minimums_are_2_and_3_and_cbpr_makes_bpr1_read_bpr0_plus_one() -> None:
    gic, _, _ = make()
    assert mrs(gic, 0, v3.ICC_BPR0_EL1) == 2 and mrs(gic, 0, v3.ICC_BPR1_EL1) == 3
    msr(gic, 0, v3.ICC_BPR1_EL1, 0)  # Linux writes 0 to restore the reset value
    assert mrs(gic, 0, v3.ICC_BPR1_EL1) == 3
    msr(gic, 0, v3.ICC_BPR0_EL1, 4)
    msr(gic, 0, v3.ICC_CTLR_EL1, 1)  # CBPR
    msr(gic, 0, v3.ICC_BPR1_EL1, 7)
    assert mrs(gic, 0, v3.ICC_BPR1_EL1) == 5
    msr(gic, 0, v3.ICC_CTLR_EL1, 0)
    assert mrs(gic, 0, v3.ICC_BPR1_EL1) == 3  # the write under CBPR was ignored


def test_unimplemented_or_wrong_direction_icc_accesses_are_undefined() -> None:
    gic, _, _ = make()
    assert gic.sysreg_read(0, (3, 0, 12, 9, 1)) is None  # ICC_AP1R1_EL1 needs 6 priority bits
    assert gic.sysreg_read(0, v3.ICC_EOIR1_EL1) is None  # write-only
    assert gic.sysreg_write(0, v3.ICC_IAR1_EL1, 0) is False  # read-only
    assert gic.sysreg_read(0, (3, 3, 14, 0, 1)) is None  # CNTPCT_EL0: not a GIC register
    assert v3.ICC_SGI1R_EL1 in gic.sysreg_keys and (3, 3, 14, 0, 1) not in gic.sysreg_keys


# --- interrupt lifecycle (IHI 0069 §4.1) ---------------------------------------------------


def test_level_spi_stays_pending_and_active_while_its_line_is_high() -> None:
    gic, irq, _ = make()
    linux_init(gic, 2)
    spi_setup(gic, SPI)
    gic.set_spi(SPI, True)
    assert gic.irq_pending(0) and not gic.irq_pending(1)  # IROUTER resets to vCPU 0
    assert mrs(gic, 0, v3.ICC_IAR1_EL1) == SPI
    assert not gic.irq_pending(0)
    assert gicd(gic, GICD_ISPENDR + 4) & 1 << (SPI - 32)  # still pending: pending and active
    assert gicd(gic, GICD_ISACTIVER + 4) & 1 << (SPI - 32)
    msr(gic, 0, v3.ICC_EOIR1_EL1, SPI)
    assert gic.irq_pending(0)  # deactivated while the line is high: signalled again
    assert mrs(gic, 0, v3.ICC_IAR1_EL1) == SPI
    gic.set_spi(SPI, False)
    msr(gic, 0, v3.ICC_EOIR1_EL1, SPI)
    assert not gic.irq_pending(0) and mrs(gic, 0, v3.ICC_IAR1_EL1) == 1023
    assert irq.calls == [(0, True), (0, False), (0, True), (0, False)]


def test_edge_spi_is_latched_by_a_rising_edge_only() -> None:
    gic, _, _ = make()
    linux_init(gic, 2)
    spi_setup(gic, SPI, edge=True)
    gic.set_spi(SPI, True)
    assert mrs(gic, 0, v3.ICC_IAR1_EL1) == SPI
    msr(gic, 0, v3.ICC_EOIR1_EL1, SPI)
    assert not gic.irq_pending(0)  # the line is still high, but no new edge
    gic.set_spi(SPI, True)
    assert not gic.irq_pending(0)
    gic.set_spi(SPI, False)
    gic.set_spi(SPI, True)
    assert gic.irq_pending(0)


def test_ispendr_latches_a_level_spi_and_icpendr_cannot_clear_a_high_line() -> None:
    gic, _, _ = make()
    linux_init(gic, 2)
    spi_setup(gic, SPI)
    gicd(gic, GICD_ISPENDR + 4, 1 << (SPI - 32))
    assert gic.irq_pending(0)
    gicd(gic, GICD_ICPENDR + 4, 1 << (SPI - 32))
    assert not gic.irq_pending(0)
    gic.set_spi(SPI, True)
    gicd(gic, GICD_ICPENDR + 4, 1 << (SPI - 32))
    assert gic.irq_pending(0)


def test_icactiver_deactivates_without_a_priority_drop() -> None:
    gic, _, _ = make()
    linux_init(gic, 2)
    spi_setup(gic, SPI)
    gic.set_spi(SPI, True)
    mrs(gic, 0, v3.ICC_IAR1_EL1)
    gicd(gic, GICD_ICACTIVER + 4, 1 << (SPI - 32))
    assert not gicd(gic, GICD_ISACTIVER + 4)
    assert mrs(gic, 0, v3.ICC_RPR_EL1) == 0xA0  # still running at its priority


def test_irq_needs_the_group_enabled_in_gicd_ctlr_and_icc_igrpen1() -> None:
    gic, _, _ = make()
    linux_init(gic, 2)
    spi_setup(gic, SPI)
    gic.set_spi(SPI, True)
    msr(gic, 0, v3.ICC_IGRPEN1_EL1, 0)
    assert not gic.irq_pending(0)
    msr(gic, 0, v3.ICC_IGRPEN1_EL1, 1)
    gicd(gic, GICD_CTLR, ARE | EN0)
    assert not gic.irq_pending(0)
    gicd(gic, GICD_CTLR, ARE | EN1)
    assert gic.irq_pending(0)
    gicd(gic, GICD_ICENABLER + 4, 1 << (SPI - 32))
    assert not gic.irq_pending(0)


def test_group0_is_signalled_as_fiq_and_taken_only_through_icc_iar0() -> None:
    gic, _, fiq = make()
    linux_init(gic, 2)
    gicd(gic, GICD_IGROUPR + 4, 0)  # SPIs 32-63 to Group 0
    msr(gic, 0, v3.ICC_IGRPEN0_EL1, 1)
    spi_setup(gic, SPI)
    gic.set_spi(SPI, True)
    assert gic.fiq_pending(0) and not gic.irq_pending(0) and fiq.calls == [(0, True)]
    assert mrs(gic, 0, v3.ICC_HPPIR1_EL1) == 1023 and mrs(gic, 0, v3.ICC_HPPIR0_EL1) == SPI
    assert mrs(gic, 0, v3.ICC_IAR1_EL1) == 1023
    assert mrs(gic, 0, v3.ICC_IAR0_EL1) == SPI
    msr(gic, 0, v3.ICC_EOIR1_EL1, SPI)  # wrong group: the Group 0 priority stays active
    assert mrs(gic, 0, v3.ICC_RPR_EL1) == 0xA0
    msr(gic, 0, v3.ICC_EOIR0_EL1, SPI)
    assert mrs(gic, 0, v3.ICC_RPR_EL1) == 0xFF


# --- prioritization (IHI 0069 §4.8) --------------------------------------------------------


def test_pmr_masks_interrupts_of_equal_or_lower_priority() -> None:
    gic, _, _ = make()
    linux_init(gic, 2)
    spi_setup(gic, SPI, prio=0xA0)
    gic.set_spi(SPI, True)
    msr(gic, 0, v3.ICC_PMR_EL1, 0xA0)
    assert not gic.irq_pending(0) and mrs(gic, 0, v3.ICC_IAR1_EL1) == 1023
    assert mrs(gic, 0, v3.ICC_HPPIR1_EL1) == SPI  # HPPIR ignores the mask
    msr(gic, 0, v3.ICC_PMR_EL1, 0xA8)
    assert gic.irq_pending(0)


def test_preemption_needs_a_higher_group_priority_than_the_running_priority() -> None:
    gic, _, _ = make()
    linux_init(gic, 2)
    spi_setup(gic, SPI, prio=0xB0)
    spi_setup(gic, SPI + 1, prio=0xA0)
    gic.set_spi(SPI, True)
    assert mrs(gic, 0, v3.ICC_IAR1_EL1) == SPI and mrs(gic, 0, v3.ICC_RPR_EL1) == 0xB0
    msr(gic, 0, v3.ICC_BPR1_EL1, 6)  # group priority = bits [7:6]: 0xA0 and 0xB0 are equal
    gic.set_spi(SPI + 1, True)
    assert not gic.irq_pending(0) and mrs(gic, 0, v3.ICC_IAR1_EL1) == 1023
    msr(gic, 0, v3.ICC_BPR1_EL1, 3)  # bits [7:3]: 0xA0 is higher, it preempts
    assert gic.irq_pending(0)
    assert mrs(gic, 0, v3.ICC_IAR1_EL1) == SPI + 1
    assert mrs(gic, 0, v3.ICC_RPR_EL1) == 0xA0
    assert mrs(gic, 0, v3.ICC_AP1R0_EL1) == 1 << (0xA0 >> 3) | 1 << (0xB0 >> 3)
    msr(gic, 0, v3.ICC_EOIR1_EL1, SPI + 1)  # priority drop of the highest active priority
    assert mrs(gic, 0, v3.ICC_RPR_EL1) == 0xB0


def test_highest_priority_wins_and_the_lower_intid_breaks_a_tie() -> None:
    gic, _, _ = make()
    linux_init(gic, 2)
    for intid, prio in ((SPI, 0x90), (SPI + 1, 0x80), (SPI + 2, 0x80)):
        spi_setup(gic, intid, prio)
        gic.set_spi(intid, True)
    gicr(gic, 0, SGI_BASE + GICD_IPRIORITYR + 27, 0x80, size=1)
    gicr(gic, 0, SGI_BASE + GICD_ISENABLER, 1 << 27)
    gic.set_ppi(0, 27, True)
    assert mrs(gic, 0, v3.ICC_HPPIR1_EL1) == 27
    gic.set_ppi(0, 27, False)
    assert mrs(gic, 0, v3.ICC_HPPIR1_EL1) == SPI + 1


def test_eoimode_1_splits_priority_drop_from_deactivation_by_icc_dir() -> None:
    gic, _, _ = make()
    linux_init(gic, 2)
    spi_setup(gic, SPI, edge=True)
    msr(gic, 0, v3.ICC_DIR_EL1, SPI)  # EOImode 0: DIR is ignored
    msr(gic, 0, v3.ICC_CTLR_EL1, 2)
    gic.set_spi(SPI, True)
    mrs(gic, 0, v3.ICC_IAR1_EL1)
    msr(gic, 0, v3.ICC_EOIR1_EL1, SPI)
    assert mrs(gic, 0, v3.ICC_RPR_EL1) == 0xFF
    assert gicd(gic, GICD_ISACTIVER + 4) == 1 << (SPI - 32)
    msr(gic, 0, v3.ICC_DIR_EL1, SPI)
    assert gicd(gic, GICD_ISACTIVER + 4) == 0


# --- SGIs, PPIs and routing (IHI 0069 §2.2, ICC_SGI1R_EL1, GICD_IROUTER) -------------------


def test_icc_sgi1r_targets_aff3_aff2_aff1_and_the_target_list() -> None:
    gic, _, _ = make(20)
    linux_init(gic, 20)
    value = 5 << 24 | 1 << 16 | 0b101  # SGI 5 to Aff1 = 1, Aff0 in {0, 2}: vCPUs 16 and 18
    msr(gic, 0, v3.ICC_SGI1R_EL1, value)
    assert [c for c in range(20) if gic.irq_pending(c)] == [16, 18]
    assert mrs(gic, 16, v3.ICC_IAR1_EL1) == 5
    assert gicr(gic, 18, SGI_BASE + GICD_ISPENDR) == 1 << 5


def test_icc_sgi1r_irm_1_targets_everyone_but_self() -> None:
    gic, _, _ = make(4)
    linux_init(gic, 4)
    msr(gic, 2, v3.ICC_SGI1R_EL1, 1 << 40 | 1 << 24)
    assert [gic.irq_pending(c) for c in range(4)] == [True, True, False, True]


def test_sgi_of_the_other_group_is_not_forwarded() -> None:
    gic, _, _ = make()
    linux_init(gic, 2)
    msr(gic, 0, v3.ICC_SGI0R_EL1, 3 << 24 | 0b10)  # SGI 3 is Group 1
    msr(gic, 0, v3.ICC_ASGI1R_EL1, 3 << 24 | 0b10)  # no other Security state
    assert not gicr(gic, 1, SGI_BASE + GICD_ISPENDR)
    msr(gic, 0, v3.ICC_SGI1R_EL1, 3 << 24 | 0b10)
    assert gicr(gic, 1, SGI_BASE + GICD_ISPENDR) == 1 << 3


def test_range_selector_reaches_aff0_above_15_when_rss_is_reported() -> None:
    gic = Gicv3([0x00, 0x11], Outputs())  # Aff0 = 17 needs RS = 1
    assert mrs(gic, 0, v3.ICC_CTLR_EL1) & 1 << 18 and gicd(gic, GICD_TYPER) & 1 << 26
    linux_init(gic, 2)
    msr(gic, 0, v3.ICC_SGI1R_EL1, 1 << 44 | 1 << 24 | 0b10)
    assert gic.irq_pending(1)


def test_ppis_and_sgis_are_banked_per_redistributor() -> None:
    gic, _, _ = make()
    linux_init(gic, 2)
    gicr(gic, 1, SGI_BASE + GICD_ISENABLER, 1 << 27)
    gic.set_ppi(1, 27, True)
    assert gic.irq_pending(1) and not gic.irq_pending(0)
    assert mrs(gic, 1, v3.ICC_IAR1_EL1) == 27
    assert gicr(gic, 0, SGI_BASE + GICD_ISACTIVER) == 0
    assert gicr(gic, 1, SGI_BASE + GICD_ISACTIVER) == 1 << 27


def test_gicr_icfgr0_sgis_are_edge_and_read_only_icfgr1_ppis_configurable() -> None:
    gic, _, _ = make()
    gicr(gic, 0, SGI_BASE + GICD_ICFGR, 0)
    assert gicr(gic, 0, SGI_BASE + GICD_ICFGR) == 0xAAAA_AAAA
    gicr(gic, 0, SGI_BASE + GICD_ICFGR + 4, 0xFFFF_FFFF)
    assert gicr(gic, 0, SGI_BASE + GICD_ICFGR + 4) == 0xAAAA_AAAA
    assert gicr(gic, 1, SGI_BASE + GICD_ICFGR + 4) == 0


def test_gicd_irouter_routes_an_spi_to_the_matching_affinity_or_nowhere() -> None:
    gic, _, _ = make(18)
    linux_init(gic, 18)
    spi_setup(gic, SPI)
    gicd(gic, GICD_IROUTER + 8 * SPI, 0x0101, size=8)  # Aff1 = 1, Aff0 = 1: vCPU 17
    gic.set_spi(SPI, True)
    assert [c for c in range(18) if gic.irq_pending(c)] == [17]
    assert gicd(gic, GICD_IROUTER + 8 * SPI + 4) == 0 and gicd(gic, GICD_IROUTER + 8 * SPI) == 0x101
    gicd(gic, GICD_IROUTER + 8 * SPI, 0x0F0F)  # no such PE: pending, delivered nowhere
    assert not any(gic.irq_pending(c) for c in range(18))


def test_irouter_1_of_n_picks_the_lowest_numbered_vcpu_with_the_group_enabled() -> None:
    gic, _, _ = make(3)
    linux_init(gic, 3)
    spi_setup(gic, SPI)
    gicd(gic, GICD_IROUTER + 8 * SPI, 1 << 31)
    msr(gic, 0, v3.ICC_IGRPEN1_EL1, 0)
    gic.set_spi(SPI, True)
    assert [gic.irq_pending(c) for c in range(3)] == [False, True, False]
    assert mrs(gic, 1, v3.ICC_IAR1_EL1) == SPI


def test_ipriorityr_is_byte_accessible_and_keeps_5_bits() -> None:
    gic, _, _ = make()
    gicd(gic, GICD_IPRIORITYR + 32, 0xFFFF_FFFF)
    assert gicd(gic, GICD_IPRIORITYR + 32) == 0xF8F8_F8F8
    gicd(gic, GICD_IPRIORITYR + 34, 0x1F, size=1)
    assert gicd(gic, GICD_IPRIORITYR + 32) == 0xF818_F8F8
    assert gicd(gic, GICD_IPRIORITYR + 33, size=1) == 0xF8
    assert gicd(gic, GICD_IPRIORITYR + 0) == 0  # SGI/PPI priorities live in the GICR (ARE)
    assert gicd(gic, GICD_IPRIORITYR + 288) == 0  # beyond the last SPI: RAZ/WI


# --- hostile guests, reset, threads ------------------------------------------------------


def test_misaligned_wide_or_narrow_accesses_to_word_registers_are_raz_wi() -> None:
    gic, _, _ = make()
    gicd(gic, GICD_CTLR, 3)
    assert gicd(gic, GICD_CTLR, size=8) == 0  # GICD_CTLR is 32-bit
    assert gicd(gic, GICD_CTLR, size=1) == 0  # and not byte-accessible
    assert gicd(gic, GICD_TYPER + 1) == 0  # misaligned
    gicd(gic, GICD_CTLR, 0, size=2)
    assert gicd(gic, GICD_CTLR) == DS | ARE | 3
    assert gicd(gic, 0x1_0000 - 4, size=8) == 0  # runs off the frame


def test_any_offset_size_and_value_is_answered_without_an_exception() -> None:
    gic, _, _ = make(3)
    linux_init(gic, 3)
    rng = random.Random(1)
    devices = gic.mmio_for(1)
    for _ in range(20000):
        dev = rng.choice(devices)
        size = rng.choice((1, 2, 4, 8, 3, 16))
        off = rng.choice((rng.randrange(0, 0x1_0000), rng.randrange(0, dev.region.size + 64)))
        dev.write(off, size, rng.getrandbits(64))
        assert 0 <= dev.read(off, size) < 1 << 64
        key = (3, rng.randrange(8), 12, rng.randrange(16), rng.randrange(8))
        gic.sysreg_write(rng.randrange(3), key, rng.getrandbits(64))
        gic.sysreg_read(rng.randrange(3), key)
        gic.set_spi(rng.randrange(32, 288), rng.random() < 0.5)


def test_reset_returns_to_the_power_on_state_and_drops_the_outputs() -> None:
    gic, irq, _ = make()
    linux_init(gic, 2)
    spi_setup(gic, SPI)
    gic.set_spi(SPI, True)
    mrs(gic, 0, v3.ICC_IAR1_EL1)
    msr(gic, 1, v3.ICC_SGI1R_EL1, 2 << 24 | 1)
    assert gic.irq_pending(0)
    gic.reset()
    assert not gic.irq_pending(0) and irq.calls[-1] == (0, False)
    assert gicd(gic, GICD_CTLR) == DS | ARE and gicd(gic, GICD_ISENABLER + 4) == 0
    assert gicr(gic, 0, GICR_WAKER) == 0b110 and mrs(gic, 0, v3.ICC_RPR_EL1) == 0xFF
    assert mrs(gic, 0, v3.ICC_PMR_EL1) == 0 and mrs(gic, 0, v3.ICC_BPR1_EL1) == 3
    linux_init(gic, 2)
    spi_setup(gic, SPI)
    assert gic.irq_pending(0)  # the device still holds its line high across the reset


def test_device_threads_and_vcpu_threads_can_race() -> None:
    gic, irq, _ = make(4)
    linux_init(gic, 4)
    for i in range(8):
        spi_setup(gic, SPI + i)
        gicd(gic, GICD_IROUTER + 8 * (SPI + i), 1 << 31)
    stop = threading.Event()
    handled = [0] * 4

    def device(i: int) -> None:
        for _ in range(300):
            gic.set_spi(SPI + i, True)
            gic.set_spi(SPI + i, False)

    def vcpu(c: int) -> None:
        while not stop.is_set():
            intid = mrs(gic, c, v3.ICC_IAR1_EL1)
            if intid != 1023:
                handled[c] += 1
                msr(gic, c, v3.ICC_EOIR1_EL1, intid)

    threads = [threading.Thread(target=vcpu, args=(c,)) for c in range(4)]
    threads += [threading.Thread(target=device, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads[4:]:
        t.join()
    stop.set()
    for t in threads[:4]:
        t.join()
    assert not any(gic.irq_pending(c) for c in range(4))
    assert all(mrs(gic, c, v3.ICC_RPR_EL1) == 0xFF for c in range(4))
    levels: dict[int, bool] = {}
    for c, level in irq.calls:
        assert levels.get(c, False) != level  # every call is a change
        levels[c] = level


@pytest.mark.parametrize("gic", [2, 3])
def test_the_board_refuses_more_vcpus_than_its_gic_serves(gic: int) -> None:
    """Checked by the board itself, so a library caller gets the sentence the CLI prints."""

    too_many = 9 if gic == 2 else v3.redistributor_capacity() + 1
    with pytest.raises(ConfigError, match=r"GICv2 serves at most 8|redistributor regions hold"):
        virt_device_tree(VirtConfig(smp=too_many, gic=gic))
    virt_device_tree(VirtConfig(smp=too_many - 1, gic=gic))  # one fewer fits
