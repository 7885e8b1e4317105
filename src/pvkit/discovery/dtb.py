"""The flattened device tree handed to the guest in x0, written with libfdt.

Node layout follows QEMU's virt board so that kernels and firmware built for it find
what they expect; which nodes exist follows from the VM's services and profile.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import libfdt

from pvkit.machine.memory import Region

PSCI_COMPATIBLE = ("arm,psci-1.0", "arm,psci-0.2", "arm,psci")
# PSCI 0.1 binding properties; QEMU fills them with the standard 0.2+ IDs, as we do.
PSCI_0_1_IDS = {
    "cpu_suspend": 0xC400_0001,
    "cpu_off": 0x8400_0002,
    "cpu_on": 0xC400_0003,
    "migrate": 0xC400_0005,
}
CPU_COMPATIBLE = "arm,cortex-a72"
UART_CLOCK_HZ = 24_000_000
_CLOCK_PHANDLE = 0x8000
_GIC_PHANDLE = 0x8001
# Interrupt specifiers of the GIC binding (Documentation/devicetree/bindings/
# interrupt-controller/arm,gic*.yaml): <type number flags>.
IRQ_TYPE_SPI, IRQ_TYPE_PPI = 0, 1
IRQ_LEVEL_HIGH = 4
# The arm,armv8-timer binding lists secure, non-secure, virtual and hypervisor timer PPIs
# (INTIDs 29, 30, 27, 26 = PPIs 13, 14, 11, 10).
TIMER_PPIS = (13, 14, 11, 10)


@dataclass(frozen=True, slots=True)
class GicNode:
    compatible: str  # "arm,gic-v3" or "arm,cortex-a15-gic"
    regs: Sequence[Region]  # distributor, then redistributor regions or the CPU interface
    redistributor_regions: int = 0  # GICv3 only: how many of `regs` follow the distributor


@dataclass(frozen=True, slots=True)
class DeviceTreeSpec:
    ram: Region
    mpidrs: Sequence[int]
    uart: Region
    psci_method: str | None  # "hvc" / "smc", None when no PSCI is served
    hypervisor_compatible: Sequence[str] = ()
    bootargs: str = ""
    reserved: Sequence[Region] = field(default_factory=tuple)
    gic: GicNode | None = None  # with it come the timer node and device interrupts
    uart_spi: int | None = None
    rtc: Region | None = None
    rtc_spi: int | None = None
    initrd: Region | None = None  # announced in /chosen as linux,initrd-start/end
    pvpanic: Region | None = None  # a qemu,pvpanic-mmio device
    flash: Sequence[Region] = field(default_factory=tuple)  # CFI flash banks, one node
    flash_bank_width: int = 4
    psci_1_0: bool = True  # PSCI 1.0 or later served: "arm,psci-1.0" leads the compatible


def _strings(values: Sequence[str]) -> bytes:
    return b"".join(v.encode() + b"\0" for v in values)


def _cells(*values: int) -> bytes:
    return b"".join(v.to_bytes(4, "big") for v in values)


def _reg64(base: int, size: int) -> bytes:
    return _cells(base >> 32, base & 0xFFFF_FFFF, size >> 32, size & 0xFFFF_FFFF)


def build_dtb(spec: DeviceTreeSpec) -> bytes:
    sw = libfdt.FdtSw()
    sw.finish_reservemap()
    sw.begin_node("")
    sw.property_string("compatible", "linux,dummy-virt")
    sw.property_string("model", "pvkit virt")
    sw.property_u32("#address-cells", 2)
    sw.property_u32("#size-cells", 2)
    if spec.gic is not None:
        sw.property_u32("interrupt-parent", _GIC_PHANDLE)

    uart_name = f"pl011@{spec.uart.base:x}"
    sw.begin_node("chosen")
    sw.property_string("stdout-path", f"/{uart_name}")
    if spec.bootargs:
        sw.property_string("bootargs", spec.bootargs)
    if spec.initrd is not None:
        sw.property_u64("linux,initrd-start", spec.initrd.base)
        sw.property_u64("linux,initrd-end", spec.initrd.end)
    sw.end_node()

    if spec.flash:
        # One node for both banks, as QEMU's virt writes it (the cfi-flash binding).
        sw.begin_node(f"flash@{spec.flash[0].base:x}")
        sw.property_string("compatible", "cfi-flash")
        sw.property("reg", b"".join(_reg64(r.base, r.size) for r in spec.flash))
        sw.property_u32("bank-width", spec.flash_bank_width)
        sw.end_node()

    sw.begin_node(f"memory@{spec.ram.base:x}")
    sw.property_string("device_type", "memory")
    sw.property("reg", _reg64(spec.ram.base, spec.ram.size))
    sw.end_node()

    if spec.reserved:
        sw.begin_node("reserved-memory")
        sw.property_u32("#address-cells", 2)
        sw.property_u32("#size-cells", 2)
        sw.property("ranges", b"")
        for r in spec.reserved:
            sw.begin_node(f"{r.name}@{r.base:x}")
            sw.property("reg", _reg64(r.base, r.size))
            sw.property("no-map", b"")
            sw.end_node()
        sw.end_node()

    sw.begin_node("cpus")
    wide = any(m >> 32 for m in spec.mpidrs)
    sw.property_u32("#address-cells", 2 if wide else 1)
    sw.property_u32("#size-cells", 0)
    for mpidr in spec.mpidrs:
        sw.begin_node(f"cpu@{mpidr:x}")
        sw.property_string("device_type", "cpu")
        sw.property_string("compatible", CPU_COMPATIBLE)
        sw.property("reg", _cells(mpidr >> 32, mpidr & 0xFFFF_FFFF) if wide else _cells(mpidr))
        if spec.psci_method:
            sw.property_string("enable-method", "psci")
        sw.end_node()
    sw.end_node()

    if spec.psci_method:
        sw.begin_node("psci")
        # As QEMU's virt board names the version it serves (hw/arm/virt.c, fdt_add_psci_node).
        compatible = PSCI_COMPATIBLE if spec.psci_1_0 else PSCI_COMPATIBLE[1:]
        sw.property("compatible", _strings(compatible))
        sw.property_string("method", spec.psci_method)
        for name, fid in PSCI_0_1_IDS.items():
            sw.property_u32(name, fid)
        sw.end_node()

    if spec.hypervisor_compatible:
        sw.begin_node("hypervisor")
        sw.property("compatible", _strings(spec.hypervisor_compatible))
        if spec.psci_method:
            sw.property_string("method", spec.psci_method)
        sw.end_node()

    sw.begin_node("apb-pclk")
    sw.property_string("compatible", "fixed-clock")
    sw.property_u32("#clock-cells", 0)
    sw.property_u32("clock-frequency", UART_CLOCK_HZ)
    sw.property_string("clock-output-names", "clk24mhz")
    sw.property_u32("phandle", _CLOCK_PHANDLE)
    sw.end_node()

    sw.begin_node(uart_name)
    sw.property("compatible", _strings(("arm,pl011", "arm,primecell")))
    sw.property("reg", _reg64(spec.uart.base, spec.uart.size))
    if spec.gic is not None and spec.uart_spi is not None:
        sw.property("interrupts", _cells(IRQ_TYPE_SPI, spec.uart_spi, IRQ_LEVEL_HIGH))
    sw.property("clock-names", _strings(("uartclk", "apb_pclk")))
    sw.property("clocks", _cells(_CLOCK_PHANDLE, _CLOCK_PHANDLE))
    sw.end_node()

    if spec.rtc is not None:
        sw.begin_node(f"pl031@{spec.rtc.base:x}")
        sw.property("compatible", _strings(("arm,pl031", "arm,primecell")))
        sw.property("reg", _reg64(spec.rtc.base, spec.rtc.size))
        if spec.gic is not None and spec.rtc_spi is not None:
            sw.property("interrupts", _cells(IRQ_TYPE_SPI, spec.rtc_spi, IRQ_LEVEL_HIGH))
        sw.property_string("clock-names", "apb_pclk")
        sw.property("clocks", _cells(_CLOCK_PHANDLE))
        sw.end_node()

    if spec.pvpanic is not None:
        # Linux Documentation/devicetree/bindings/misc/qemu,pvpanic-mmio.yaml
        sw.begin_node(f"pvpanic-mmio@{spec.pvpanic.base:x}")
        sw.property_string("compatible", "qemu,pvpanic-mmio")
        sw.property("reg", _reg64(spec.pvpanic.base, spec.pvpanic.size))
        sw.end_node()

    if spec.gic is not None:
        _gic_and_timer(sw, spec.gic, len(spec.mpidrs))

    sw.end_node()
    fdt = sw.as_fdt()
    fdt.pack()
    return bytes(fdt.as_bytearray())


def _gic_and_timer(sw: libfdt.FdtSw, gic: GicNode, cpus: int) -> None:
    sw.begin_node(f"intc@{gic.regs[0].base:x}")
    sw.property_string("compatible", gic.compatible)
    sw.property_u32("#interrupt-cells", 3)
    sw.property("interrupt-controller", b"")
    sw.property("reg", b"".join(_reg64(r.base, r.size) for r in gic.regs))
    if gic.redistributor_regions > 1:
        sw.property_u32("#redistributor-regions", gic.redistributor_regions)
    sw.property_u32("phandle", _GIC_PHANDLE)
    sw.end_node()

    # GICv2 PPI specifiers carry a mask of the CPUs the PPI is wired to (bits 15:8).
    flags = IRQ_LEVEL_HIGH
    if not gic.redistributor_regions:
        flags |= ((1 << min(cpus, 8)) - 1) << 8
    sw.begin_node("timer")
    sw.property_string("compatible", "arm,armv8-timer")
    sw.property("interrupts", b"".join(_cells(IRQ_TYPE_PPI, p, flags) for p in TIMER_PPIS))
    sw.property("always-on", b"")
    sw.end_node()
