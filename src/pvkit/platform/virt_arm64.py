"""The arm64 `virt` board: QEMU-compatible memory map, PL011, PSCI, SMCCC services.

This is the one place that knows every layer; each layer below knows only its own job.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

from pvkit.abi.arm64_smccc import NOT_SUPPORTED_ANSWER, SmcccAbi, describe
from pvkit.backends.arm64.engine import Arm64Engine
from pvkit.backends.host_heap import use_one_malloc_arena
from pvkit.backends.trap import CompiledTable, TrapUnavailable, compile_table, resolve_path
from pvkit.backends.uart_path import make_tx_path
from pvkit.devices.arm64.gicv2 import MAX_CPUS as GICV2_MAX_CPUS
from pvkit.devices.arm64.gicv2 import Gicv2
from pvkit.devices.arm64.gicv3 import Gicv3, redistributor_capacity
from pvkit.devices.cfi_flash import FLASH0_BASE, FLASH1_BASE, FLASH_BANK_SIZE, CfiFlash
from pvkit.devices.pl011 import UARTDR, UARTFR, Pl011
from pvkit.devices.pl031 import PL031_BASE, PL031_SIZE, Pl031
from pvkit.devices.pvpanic import (
    PVPANIC_CRASH_LOADED,
    PVPANIC_MMIO_BASE,
    PVPANIC_MMIO_SIZE,
    PVPANIC_PANICKED,
    PVPANIC_SHUTDOWN,
    PvpanicMmio,
    event_names,
)
from pvkit.discovery.dtb import DeviceTreeSpec, GicNode, build_dtb
from pvkit.discovery.dtb_patch import patch_user_dtb
from pvkit.hypercall.answer_table import VcpuStates, build_answer_table
from pvkit.hypercall.dispatcher import Dispatcher
from pvkit.hypercall.namespace import Abi, Claim, Namespace
from pvkit.hypercall.policy import Policy, Rule
from pvkit.loader.image import BootImage
from pvkit.machine.memory import GuestMemory, Region
from pvkit.machine.power import StartRequest
from pvkit.machine.residency import SwapSpec
from pvkit.machine.scheduling import DEFAULT_SLICE_NS
from pvkit.machine.vm import StopKind, StopReason, VirtualMachine
from pvkit.platform.board import (
    BoardPlatform,
    ConfigError,
    scheduler_for,
    select_services,
    stderr_notice,
    stdout_console,
)
from pvkit.platform.swap import swap_controller
from pvkit.platform.timekeeping import chain_hooks, entry_hooks, place_service_ram
from pvkit.platform.virt_boot import plan_boot, read_file
from pvkit.platform.virt_cpu import GIC_VERSIONS, ID_AA64PFR0_EL1, VirtCpuDevices
from pvkit.services.base import Service
from pvkit.services.firmware import Firmware
from pvkit.services.profiles import KVM, HostProfile
from pvkit.services.psci import VERSION_1_0, VERSION_1_1
from pvkit.services.smccc_arch import ARCH_RANGES
from pvkit.trace.events import TraceHub, VmEvent

RAM_BASE = 0x4000_0000
UART_BASE = 0x0900_0000
UART_SIZE = 0x1000
UART_SPI = 1  # INTID 33, as on QEMU's virt
RTC_SPI = 2  # INTID 34
SPI_BASE = 32  # SPI n is INTID 32 + n
MAX_VCPUS = 4096
MAX_RAM = 255 << 30  # QEMU virt's low RAM window ends at 256 GiB
CPUS_PER_CLUSTER = 16  # Aff0 range per Aff1 cluster, as QEMU virt with GICv3
# Flash banks exist only with --bios (QEMU's virt always has them; here they would cost
# 128 MiB of erased buffers in every VM for nothing a direct kernel boot uses).
FLASH_BANKS = (
    Region(FLASH0_BASE, FLASH_BANK_SIZE, "flash0"),
    Region(FLASH1_BASE, FLASH_BANK_SIZE, "flash1"),
)


def mpidr_for(index: int) -> int:
    return ((index // CPUS_PER_CLUSTER) << 8) | (index % CPUS_PER_CLUSTER)


@dataclass
class VirtConfig:
    smp: int = 1
    memory: int = 256 << 20
    conduit: str = "hvc"
    profile: HostProfile = KVM
    rules: Iterable[Rule] = ()
    console: Callable[[bytes], None] = stdout_console
    bootargs: str = ""
    extra_services: list[Service] = field(default_factory=list)
    trap: str = "auto"  # c, ctypes, or auto (C when built; $PVKIT_TRAP overrides auto)
    disabled: frozenset[str] = frozenset()  # service names left out of this VM
    host_cpus: int | None = None  # None: every vCPU has a host CPU of its own
    deterministic: bool = False  # time from guest instructions, reproducible schedules
    slice_ns: int = DEFAULT_SLICE_NS
    record_slices: bool = False  # keep every slice (for --timeline)
    gic: int = 3  # GIC version; 3 serves any --smp, 2 at most 8 vCPUs
    initrd: Path | None = None  # placed as QEMU's virt places it, named in /chosen
    dtb: Path | None = None  # the user's own DTB, loaded and patched (virt_boot.py)
    bios: Path | None = None  # firmware in flash bank 0, started at 0x0
    reboot: bool = True  # False: a guest reset ends the run (QEMU's -no-reboot)
    notice: Callable[[str], None] = stderr_notice  # what the VM reports while it runs
    swap: SwapSpec | None = None  # RAM pages the host does not hold at boot (swap.py)
    guard_ram: bool = False  # PROT_NONE guard pages around RAM (machine/memory.py)


def virt_device_tree(
    config: VirtConfig,
    services: list[Service] | None = None,
    ram: Region | None = None,
    reserved: list[Region] | None = None,
    initrd: Region | None = None,
    psci_version: int = VERSION_1_1,
) -> bytes:
    """The DTB a VM with `config` gets; its nodes follow from the services it serves (and
    the PSCI node's compatible from the `psci-version` firmware register)."""
    _check(config)
    if services is None:
        services = _services(config)
        memory = GuestMemory(RAM_BASE, config.memory)
        reserved = place_service_ram(services, Abi.SMCCC, config.smp, memory)
    serves_psci = any(s.name == "psci" for s in services)
    return build_dtb(
        DeviceTreeSpec(
            ram=ram or Region(RAM_BASE, config.memory, "ram"),
            mpidrs=[mpidr_for(i) for i in range(config.smp)],
            uart=Region(UART_BASE, UART_SIZE, "pl011"),
            psci_method=config.conduit if serves_psci else None,
            hypervisor_compatible=config.profile.hypervisor_compatible,
            bootargs=config.bootargs,
            reserved=tuple(reserved or ()),
            gic=gic_node(config),
            uart_spi=UART_SPI,
            rtc=Region(PL031_BASE, PL031_SIZE, "pl031"),
            rtc_spi=RTC_SPI,
            initrd=initrd,
            pvpanic=Region(PVPANIC_MMIO_BASE, PVPANIC_MMIO_SIZE, "pvpanic-mmio"),
            flash=FLASH_BANKS if config.bios is not None else (),
            psci_1_0=psci_version >= VERSION_1_0,
        )
    )


def gic_node(config: VirtConfig) -> GicNode:
    cls = Gicv3 if config.gic == 3 else Gicv2
    regions = cls.regions_for(config.smp)
    return GicNode(cls.dt_compatible, regions, len(regions) - 1 if config.gic == 3 else 0)


def _services(config: VirtConfig) -> list[Service]:
    return select_services(config.profile, Abi.SMCCC, config.extra_services, config.disabled)


def _check(config: VirtConfig) -> None:
    if not 1 <= config.smp <= MAX_VCPUS:
        raise ConfigError(f"--smp {config.smp} is out of range (1..{MAX_VCPUS})")
    if config.gic not in GIC_VERSIONS:
        raise ConfigError(f"--gic {config.gic} is not 2 or 3")
    if config.gic == 2 and config.smp > GICV2_MAX_CPUS:
        raise ConfigError(f"GICv2 serves at most {GICV2_MAX_CPUS} vCPUs; use --gic 3")
    if config.gic == 3 and config.smp > (capacity := redistributor_capacity()):
        raise ConfigError(
            f"--smp {config.smp} is more vCPUs than the GICv3's redistributor regions hold"
            f" ({capacity})"
        )
    if config.conduit not in ("hvc", "smc"):
        raise ConfigError(f"conduit {config.conduit!r} is not hvc or smc")
    if not (1 << 20) <= config.memory <= MAX_RAM or config.memory % 4096:
        raise ConfigError("memory must be a multiple of 4 KiB between 1 MiB and 255 GiB")
    try:
        resolve_path(config.trap)
    except (ValueError, TrapUnavailable) as exc:
        raise ConfigError(str(exc)) from None


class VirtArm64(BoardPlatform):
    """Builds a VM from a config and an image; implements the services' Platform view."""

    def __init__(
        self,
        config: VirtConfig,
        image: Path | BootImage | None,
        trace: TraceHub | None = None,
    ):
        _check(config)
        use_one_malloc_arena()  # before any vCPU thread exists (see host_heap.py)
        self.config = config
        self.trace = trace or TraceHub()
        self.memory = GuestMemory(RAM_BASE, config.memory, guarded=config.guard_ram)
        self.mpidrs = [mpidr_for(i) for i in range(config.smp)]
        self._by_mpidr = {m: i for i, m in enumerate(self.mpidrs)}

        self.services = _services(config)
        self.reserved = place_service_ram(self.services, Abi.SMCCC, config.smp, self.memory)
        self.scheduler = scheduler_for(
            config.smp, config.host_cpus, config.deterministic, config.slice_ns,
            config.record_slices,
        )  # fmt: skip
        self.cpu_devices = VirtCpuDevices(
            self.mpidrs, config.gic, self.scheduler, lambda vcpu: self.vm.wake(vcpu)
        )
        gic = self.cpu_devices.gic
        self.uart = Pl011(
            UART_BASE, config.console, irq=lambda level: gic.set_spi(SPI_BASE + UART_SPI, level)
        )
        tx = make_tx_path(config.console, UARTDR, UARTFR)  # the console's bytes, in C
        if tx is not None:
            self.uart.attach_fast_path(tx)
        self.rtc = Pl031(
            PL031_BASE,
            partial(self.scheduler.now_ns, 0),
            lambda level: gic.set_spi(SPI_BASE + RTC_SPI, level),
            epoch_s=0 if config.deterministic else None,  # the same run, the same date
        )
        self.rtc.on_reprogram = self._arm_rtc
        self.pvpanic = PvpanicMmio(self._on_pvpanic, on_unknown=self._on_pvpanic_unknown)
        self.swap = swap_controller(
            config.swap,
            self.memory.region,
            self.scheduler,
            self.services,
            self.trace,
            None if config.deterministic else self.cpu_devices.deadlines,
        )
        claims = [Claim(s.name, r) for s in self.services for r in s.claims()]
        functions = [(s.name, f) for s in self.services for f in s.functions()]
        self.namespace = Namespace(claims, functions)
        self.policy = Policy(config.rules, protected=ARCH_RANGES)
        self.dispatcher = Dispatcher(self.namespace, self.policy, self.trace, self.name_of)
        self._abi = SmcccAbi(self.dispatcher) if config.profile.has_hypervisor else None
        for s in self.services:
            s.bind(self)
        # Settable until a vCPU first runs (`firmware.set`), then frozen, as KVM's are.
        self.firmware = Firmware(self.services, on_change=self._firmware_changed)
        self._serving = threading.Lock()
        # The monitor holds the new VM before its first instruction (-S): the registers
        # stay settable until its `cont` (start_serving).
        self.firmware_open = False
        self._laid_out = False  # RAM holds the boot image and DTB
        self.trap_path = resolve_path(config.trap)
        self.answers: CompiledTable | None = None
        # Called with each new vCPU engine (at every power-on): benchmarks and debuggers.
        self.on_engine: Callable[[Arm64Engine], None] | None = None

        user_dtb = read_file(config.dtb, "device tree") if config.dtb is not None else None
        self.plan = plan_boot(
            self.memory.region,
            image,
            config.bios,
            config.initrd,
            partial(self._device_tree, user_dtb),
            self.reserved,
        )
        self.flash: list[CfiFlash] = []
        if self.plan.firmware is not None:
            # Bank 0 holds the firmware and is read-only (it must survive a reset), bank 1
            # starts erased for the firmware's own use (U-Boot's environment).
            self.flash = [
                CfiFlash(FLASH0_BASE, self.plan.firmware, writable=False, name="flash0"),
                CfiFlash(FLASH1_BASE, name="flash1"),
            ]
        self.vm = VirtualMachine(
            config.smp,
            self._engine,
            self._prepare,
            self.trace,
            self.scheduler,
            self._entry_hook(),
            can_wake=self._can_wake,
            next_deadline=self._next_deadline if config.deterministic else None,
            reboot=config.reboot,
            on_absent=self.swap.on_absent if self.swap is not None else None,
        )

    def _device_tree(
        self, user_dtb: bytes | None, initrd: Region | None
    ) -> tuple[bytes, list[str]]:
        """The board's own DTB, or the user's `--dtb` patched where the VM must have its
        say; with what was changed in it."""
        ram = self.memory.region
        if user_dtb is None:
            psci = self.firmware.get("psci-version") if self._serves("psci") else VERSION_1_1
            dtb = virt_device_tree(self.config, self.services, ram, self.reserved, initrd, psci)
            return dtb, []
        source = str(self.config.dtb)
        return patch_user_dtb(user_dtb, source, ram, self.config.bootargs, initrd, self.reserved)

    @property
    def image(self) -> BootImage | None:
        return self.plan.image

    @property
    def dtb(self) -> bytes:
        return self.plan.dtb

    @property
    def dtb_address(self) -> int:
        return self.plan.layout.dtb

    def _serves(self, name: str) -> bool:
        return any(s.name == name for s in self.services)

    def _freeze_firmware(self) -> None:
        """The VM runs for the first time: the firmware registers freeze and take effect
        (the calls they hide leave the namespace)."""
        self.firmware.freeze()
        self.namespace.hide(self.firmware.hidden_ids())

    def _firmware_changed(self, name: str) -> None:
        """The PSCI node's compatible names the version served, as QEMU's virt board's
        (in RAM too if the VM was laid out already: no vCPU has run, the guest has not
        read it)."""
        if name == "psci-version" and self.config.dtb is None:
            dtb, _ = self._device_tree(None, self.plan.layout.initrd)
            self.plan.layout.check_dtb(self.memory.region, len(dtb))
            self.plan = dataclasses.replace(self.plan, dtb=dtb)
            if self._laid_out:
                self.memory.write(self.plan.layout.dtb, dtb)

    # -- VM plumbing ---------------------------------------------------------------------
    def run(self, timeout: float | None = None) -> StopReason:
        if not self.firmware_open:
            self.start_serving()
        try:
            return self.vm.run(timeout)
        finally:
            self.uart.flush_output()
            self.cpu_devices.stop()

    def _can_wake(self, vcpu: int) -> bool:
        """A timer, a pending interrupt, console input or a page the host is fetching
        for an asynchronous page fault may still end `vcpu`'s WFI."""
        swap = self.swap
        return (
            self.cpu_devices.can_wake(vcpu)
            or self.uart.may_interrupt_on_input()
            or (swap is not None and swap.can_wake(vcpu))
        )

    def _next_deadline(self, vcpu: int) -> int | None:
        """Deterministic time: the vCPU's timer, or a page fetch it waits on."""
        at = self.cpu_devices.next_deadline(vcpu)
        swap = self.swap.next_deadline(vcpu) if self.swap is not None else None
        if at is None or swap is None:
            return swap if at is None else at
        return min(at, swap)

    def _arm_rtc(self) -> None:
        """The RTC's match interrupt comes from the wall-clock deadline thread (with
        deterministic time it is seen at the next RTC access instead)."""
        if not self.config.deterministic:
            self.cpu_devices.deadlines.arm("rtc", self.rtc.next_event_ns(), self.rtc.update)

    def _on_pvpanic(self, events: int) -> None:
        """What QEMU does with each event (docs/specs/pvpanic.rst): PANICKED stops the VM,
        CRASH_LOADED is reported while a crash kernel takes over, SHUTDOWN powers off."""
        if self.trace.active:
            fields: dict[str, object] = {"events": event_names(events)}
            self.trace.event(VmEvent("pvpanic", time.perf_counter_ns(), None, fields))
        if events & PVPANIC_PANICKED:
            self.vm.request_stop(StopReason(StopKind.PANIC, "guest panicked (pvpanic PANICKED)"))
        elif events & PVPANIC_CRASH_LOADED:
            self.config.notice("guest panicked; its crash kernel takes over (pvpanic CRASH_LOADED)")
        elif events & PVPANIC_SHUTDOWN:
            self.vm.request_stop(
                StopReason(StopKind.SHUTDOWN, "the guest announced its shutdown (pvpanic SHUTDOWN)")
            )

    def _on_pvpanic_unknown(self, bits: int) -> None:
        self.config.notice(f"pvpanic: the guest wrote unknown event bits {bits:#x}; ignored")

    def _entry_hook(self) -> Callable[[int], None] | None:
        """With deterministic time the timers' check, the page fetches that are done, then
        the services' per-entry updates."""
        return chain_hooks(
            self.cpu_devices.poll_timers if self.config.deterministic else None,
            self.swap.poll if self.swap is not None else None,
            entry_hooks(self.services),
        )

    def start_serving(self) -> None:
        """The guest's first instruction comes next: the firmware registers freeze and
        take effect, and the answer table is compiled from what is now fixed and given
        to every engine built so far (they answered through the dispatcher until then:
        the same answers, more slowly). At the start of `run`, or at the monitor's first
        `cont` of a VM it holds before its first instruction (`firmware_open`)."""
        with self._serving:
            if not self.firmware.frozen:
                self._freeze_firmware()
            if self._abi is None or self.answers is not None:
                return
            # Rules freeze now, so constant answers computed from them stay true.
            self.policy.freeze()
            failed = partial(self.dispatcher.direct_failed, NOT_SUPPORTED_ANSWER)
            vcpus = VcpuStates(self.mpidrs, self.vm.power_codes)  # AFFINITY_INFO, in C
            table = build_answer_table(
                self.namespace, self.policy, NOT_SUPPORTED_ANSWER, on_error=failed, vcpus=vcpus
            )
            answers = compile_table(table, self.trap_path)
            self.trace.watch(lambda tracing: setattr(answers, "enabled", not tracing))
            self.answers = answers
            for engine in self.vm.control.engines().values():
                if isinstance(engine, Arm64Engine):
                    engine.trap.set_table(answers)

    def _engine(self, index: int) -> Arm64Engine:
        engine = Arm64Engine(
            index,
            self.mpidrs[index],
            self.memory,
            [self.uart, self.rtc, self.pvpanic, *self.cpu_devices.mmio_for(index)],
            self._abi,
            self.trace,
            self.trap_path,
            self.answers,
            sysregs=self.cpu_devices.sysregs(index),
            counting=self.scheduler.deterministic,
            flash=self.flash,
            residency=self.swap.residency if self.swap is not None else None,
        )
        if index == 0:
            self.cpu_devices.set_cpu_id_registers(engine.read_sysreg(ID_AA64PFR0_EL1))
        engine.set_report_exceptions(self.trace.active)  # sinks attach before vCPUs start
        self.cpu_devices.attach(index, engine)
        if self.on_engine is not None:
            self.on_engine(engine)
        return engine

    def _prepare(self) -> StartRequest:
        """Lay out RAM exactly as at first boot (also used by SYSTEM_RESET)."""
        self.memory.clear()
        self.plan.load(self.memory)
        self._laid_out = True
        for bank in self.flash:
            bank.reset()
        self.reset_pv_state()
        self.cpu_devices.start()
        return StartRequest(self.plan.entry, self.plan.x0)

    def name_of(self, function_id: int) -> str:
        fn = self.namespace.defined(function_id)
        return fn.name if fn is not None else describe(function_id)

    # -- Platform (what services see) ----------------------------------------------------
    def mpidr(self, vcpu: int) -> int:
        return self.mpidrs[vcpu]

    def vcpu_for_mpidr(self, mpidr: int) -> int | None:
        return self._by_mpidr.get(mpidr)

    def is_valid_entry(self, address: int) -> bool:
        return address % 4 == 0 and self.memory.contains(address, 4)

    def vcpu_for_apic_id(self, apic_id: int) -> int | None:
        return None

    def post_interrupt(self, vcpu: int, vector: int) -> bool:
        return False  # x86 vectors: SGIs and SPIs come from the GIC's own registers

    def set_ppi(self, vcpu: int, intid: int, level: bool) -> bool:
        self.cpu_devices.gic.set_ppi(vcpu, intid, level)
        return True

    def inject_page_fault(self, vcpu: int, address: int) -> bool:
        return False  # x86's #PF; arm64 notifications ride a PPI

    def feature(self, function_id: int) -> int | None:
        if not self.dispatcher.serves(function_id):
            return None
        fn = self.namespace.lookup(function_id)
        return fn.feature if fn is not None else 0
