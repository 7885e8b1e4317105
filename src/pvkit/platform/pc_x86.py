"""The x86-64 `pc` board: RAM from 0, COM1, isa-debug-exit, ACPI power-off, local APICs.

Boots an ELF kernel by PVH or multiboot v1 in 32-bit protected mode; application
processors start by INIT-SIPI through the local APIC, in real mode, as on a real PC.
This is the one place that knows every layer, like virt_arm64.py for arm64.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

from pvkit.abi.x86_kvm import NOT_SUPPORTED_ANSWER, KvmHypercallAbi, describe
from pvkit.backends.host_heap import use_one_malloc_arena
from pvkit.backends.trap import TrapUnavailable, resolve_path
from pvkit.backends.x86 import regs as x
from pvkit.backends.x86.engine import X86Engine
from pvkit.backends.x86.interfaces import Firmware
from pvkit.backends.x86.patch import HypercallPatcher
from pvkit.devices.acpi_pm import AcpiPowerOff
from pvkit.devices.base import PortDevice
from pvkit.devices.isa_debug_exit import IsaDebugExit
from pvkit.devices.local_apic import DeliveryMode, Ipi, LocalApic, Shorthand
from pvkit.devices.uart16550 import Uart16550
from pvkit.discovery.cpuid import DEFAULT_BASE, VENDORS, CpuidTable, CpuVendor
from pvkit.hypercall.answer_table import build_answer_table
from pvkit.hypercall.call import Conduit
from pvkit.hypercall.dispatcher import Dispatcher
from pvkit.hypercall.namespace import Abi, Claim, DirectHandler, Namespace
from pvkit.hypercall.policy import Policy, Rule
from pvkit.loader.image import ImageError
from pvkit.loader.x86_boot import (
    BOOT_GDT,
    BOOT_GDT_LIMIT,
    HIGH_RAM_START,
    LOW_RAM_END,
    RESET_STUB,
    SIPI_SLOTS,
    STUB_SEGMENT_BASE,
    BootProtocol,
    X86Image,
    boot_data,
    parse_x86_elf,
)
from pvkit.machine.deadlines import DeadlineThread
from pvkit.machine.memory import GuestMemory
from pvkit.machine.power import PowerState, StartRequest
from pvkit.machine.quiesce import ExecutionGate
from pvkit.machine.residency import SwapSpec
from pvkit.machine.scheduling import DEFAULT_SLICE_NS
from pvkit.machine.vm import StopKind, StopReason, VirtualMachine
from pvkit.platform.board import (
    BoardPlatform,
    ConfigError,
    scheduler_for,
    select_services,
    stdout_console,
)
from pvkit.platform.swap import swap_controller
from pvkit.platform.timekeeping import chain_hooks, entry_hooks
from pvkit.services.base import Service, SystemEvent
from pvkit.services.catalog import cpuid_features
from pvkit.services.profiles import KVM, HostProfile
from pvkit.trace.events import TraceHub

FIRMWARE = Firmware(BOOT_GDT, BOOT_GDT_LIMIT, RESET_STUB, SIPI_SLOTS, STUB_SEGMENT_BASE)
MAX_VCPUS = 255  # xAPIC IDs are 8 bits; 0xFF is broadcast
MIN_RAM = 2 << 20
MAX_RAM = 3 << 30  # RAM stays below the 32-bit MMIO hole (local APIC at 0xFEE00000)


@dataclass
class PcConfig:
    smp: int = 1
    memory: int = 256 << 20
    vendor: str = "intel"  # intel (VMCALL native) or amd (VMMCALL native)
    profile: HostProfile = KVM
    cpuid_base: int = DEFAULT_BASE
    fix_hypercall: bool = True  # KVM_X86_QUIRK_FIX_HYPERCALL_INSN
    boot: str = "auto"  # pvh, multiboot, or auto (PVH when the image has the note)
    rules: Iterable[Rule] = ()
    console: Callable[[bytes], None] = stdout_console
    bootargs: str = ""
    extra_services: list[Service] = field(default_factory=list)
    disabled: frozenset[str] = frozenset()  # service names left out of this VM
    hidden_features: int = 0  # KVM_CPUID_FEATURES bits hidden although the service exists
    host_cpus: int | None = None  # None: every vCPU has a host CPU of its own
    deterministic: bool = False  # time from guest instructions, reproducible schedules
    slice_ns: int = DEFAULT_SLICE_NS
    record_slices: bool = False  # keep every slice (for --timeline)
    reboot: bool = True  # False: a guest reset ends the run (QEMU's -no-reboot)
    swap: SwapSpec | None = None  # RAM pages the host does not hold at boot (swap.py)
    guard_ram: bool = False  # PROT_NONE guard pages around RAM (machine/memory.py)
    trap: str = "auto"  # c, ctypes, or auto (C when built; $PVKIT_TRAP overrides auto)


def _check(config: PcConfig) -> None:
    if not 1 <= config.smp <= MAX_VCPUS:
        raise ConfigError(f"--smp {config.smp} is out of range (1..{MAX_VCPUS}) on x86_64")
    if config.vendor not in VENDORS:
        raise ConfigError(f"--cpu-vendor {config.vendor!r} is not intel or amd")
    if not MIN_RAM <= config.memory <= MAX_RAM or config.memory % 4096:
        raise ConfigError("memory must be a multiple of 4 KiB between 2 MiB and 3 GiB on x86_64")
    if config.boot not in ("auto", "pvh", "multiboot"):
        raise ConfigError(f"boot protocol {config.boot!r} is not pvh, multiboot or auto")


def load_x86_image(path: Path, memory: GuestMemory) -> X86Image:
    try:
        blob = path.read_bytes()
    except OSError as exc:
        raise ImageError(f"cannot read guest image {path}: {exc.strerror}") from exc
    if blob[:4] != b"\x7fELF":
        raise ImageError(f"{path} is not an ELF file (x86_64 guests boot as PVH or multiboot ELF)")
    image = parse_x86_elf(blob, path)
    for seg in image.image.segments:
        if not memory.contains(seg.address, seg.memsize) or (
            seg.address < HIGH_RAM_START and seg.address + seg.memsize > LOW_RAM_END
        ):
            raise ImageError(
                f"{path} needs {seg.address:#x}..{seg.address + seg.memsize:#x}, which is not "
                f"free RAM (low memory above {LOW_RAM_END:#x} is the platform's); try --mem"
            )
    return image


def _instructions(vendor: CpuVendor) -> tuple[bytes, bytes]:
    """(native, foreign) hypercall instruction bytes on a host of `vendor`."""
    if vendor.native is Conduit.VMMCALL:
        return x.VMMCALL, x.VMCALL
    return x.VMCALL, x.VMMCALL


class PcX86(BoardPlatform):
    """Builds an x86-64 VM from a config and an ELF image; the services' Platform view."""

    def __init__(self, config: PcConfig, image: Path | X86Image, trace: TraceHub | None = None):
        _check(config)
        use_one_malloc_arena()
        self.config = config
        self.trace = trace or TraceHub()
        self.memory = GuestMemory(0, config.memory, guarded=config.guard_ram)
        self.image = image if isinstance(image, X86Image) else load_x86_image(image, self.memory)
        self.protocol = self._protocol(config.boot)
        self.boot = boot_data(self.protocol, config.memory, config.bootargs)
        self.vendor = VENDORS[config.vendor]
        try:
            self.trap_path = resolve_path(config.trap)
        except (ValueError, TrapUnavailable) as exc:
            raise ConfigError(str(exc)) from None

        self.services = select_services(
            config.profile, Abi.KVM_X86, config.extra_services, config.disabled
        )
        claims = [Claim(s.name, r) for s in self.services for r in s.claims(Abi.KVM_X86)]
        functions = [(s.name, f) for s in self.services for f in s.functions(Abi.KVM_X86)]
        self.namespace = Namespace(claims, functions)
        self.policy = Policy(config.rules, protected=())
        self.dispatcher = Dispatcher(self.namespace, self.policy, self.trace, self.name_of)
        gates = {
            f.function_id: s.cpuid_feature_bit
            for s in self.services
            if s.cpuid_feature_bit is not None
            for f in s.functions(Abi.KVM_X86)
        }
        features = cpuid_features(self.services) & ~config.hidden_features
        self._msrs = {
            index: msr
            for s in self.services
            if s.cpuid_feature_bit is None or features >> s.cpuid_feature_bit & 1
            for index, msr in s.msrs(Abi.KVM_X86).items()
        }
        self.scheduler = scheduler_for(
            config.smp, config.host_cpus, config.deterministic, config.slice_ns,
            config.record_slices,
        )  # fmt: skip
        try:
            self.cpuid = CpuidTable(
                self.vendor, config.smp, config.profile.cpuid_signature, config.cpuid_base, features
            )
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        has_hv = config.profile.has_hypervisor
        self._abi = KvmHypercallAbi(self.dispatcher, gates, features) if has_hv else None
        for s in self.services:
            s.bind(self)

        self.uart = Uart16550(config.console)
        self.ports: list[PortDevice] = [
            self.uart,
            IsaDebugExit(self._debug_exit),
            AcpiPowerOff(lambda: self.system_event(SystemEvent.SHUTDOWN, "ACPI S5 (port 0x604)")),
        ]
        # Only page fetches have wall-clock deadlines on this board (the thread starts
        # with a swap controller, at boot).
        self._deadlines = (
            None if config.deterministic else DeadlineThread(lambda: self.scheduler.now_ns(0))
        )
        self.swap = swap_controller(
            config.swap,
            self.memory.region,
            self.scheduler,
            self.services,
            self.trace,
            self._deadlines,
        )
        self._engines: dict[int, X86Engine] = {}  # the live engine of each vCPU
        self.apics: dict[int, LocalApic] = {}  # the local APIC of each vCPU's engine
        self._answers: dict[int, int] | None = None  # constant hypercall answers by nr
        # handlers a trap may call with plain integers, by nr, and what a failed one answers
        self._direct: dict[int, DirectHandler] = {}
        self._direct_failed = partial(self.dispatcher.direct_failed, NOT_SUPPORTED_ANSWER)
        swap = self.swap
        self.vm = VirtualMachine(
            config.smp,
            self._engine,
            self._prepare,
            self.trace,
            self.scheduler,
            self._entry_hook(),
            can_wake=swap.can_wake if swap is not None else None,
            next_deadline=swap.next_deadline if swap is not None and config.deterministic else None,
            reboot=config.reboot,
            on_absent=swap.on_absent if swap is not None else None,
        )
        self.gate = ExecutionGate(config.smp, self.vm.kick)
        native, foreign = _instructions(self.vendor)
        self.patcher = (
            HypercallPatcher(
                self.memory, self.gate, self.trace, native, foreign, config.fix_hypercall
            )
            if has_hv
            else None
        )
        self._init_seen = [False] * config.smp
        self._ipi_lock = threading.Lock()

    def move_to_host(self, vendor: str) -> None:
        """Continue on a host of `vendor`, as after a restore or migration there: the native
        hypercall instruction changes, the guest's CPUID (its CPU model) does not."""
        if vendor not in VENDORS:
            raise ConfigError(f"CPU vendor {vendor!r} is not intel or amd")
        if self.patcher is not None:
            self.patcher.retarget(*_instructions(VENDORS[vendor]))

    def _protocol(self, choice: str) -> BootProtocol:
        available = self.image.protocols
        if choice == "auto":
            return available[0]
        wanted = BootProtocol(choice)
        if wanted not in available:
            raise ImageError(f"the image does not support {choice} boot")
        return wanted

    # -- VM plumbing ---------------------------------------------------------------------
    def run(self, timeout: float | None = None) -> StopReason:
        self.policy.freeze()
        if self._abi is not None and self._answers is None:
            # Rules are frozen now, so constant answers computed from them stay true.
            table = build_answer_table(
                self.namespace, self.policy, NOT_SUPPORTED_ANSWER, on_error=self._direct_failed
            )
            self._answers = self._abi.constant_answers(table)
            self._direct = self._abi.direct_handlers(table)
        try:
            return self.vm.run(timeout)
        finally:
            if self._deadlines is not None:
                self._deadlines.stop()

    def _entry_hook(self) -> Callable[[int], None] | None:
        """The page fetches that are done, then the services' per-entry updates."""
        return chain_hooks(
            self.swap.poll if self.swap is not None else None, entry_hooks(self.services)
        )

    def _engine(self, index: int) -> X86Engine:
        apic = self.apics[index] = LocalApic(index, self._on_ipi)
        engine = X86Engine(
            index,
            self.memory,
            FIRMWARE,
            [apic],
            self.ports,
            self.cpuid,
            self._abi,
            self.patcher,
            self.gate,
            self.vm.interrupts[index],
            self.trace,
            clock=lambda: self.scheduler.now_ns(index),
            msrs=self if self._msrs else None,
            counting=self.scheduler.deterministic,
            residency=self.swap.residency if self.swap is not None else None,
            trap_path=self.trap_path,
        )
        if self._answers or self._direct:
            trap = engine.trap
            trap.set_answers(self._answers or {})
            if self._direct:
                trap.set_direct(self._direct, self._direct_failed, index)
            self.trace.watch(lambda tracing: setattr(trap, "answers_enabled", not tracing))
        self._engines[index] = engine
        return engine

    def _prepare(self) -> StartRequest:
        self.memory.clear()
        for seg in self.image.image.segments:
            self.memory.write(seg.address, seg.data)
        for address, blob in self.boot.blobs:
            self.memory.write(address, blob)
        self._init_seen = [False] * self.config.smp
        self.reset_pv_state()
        if self.swap is not None and self._deadlines is not None:
            self._deadlines.stop()
            self._deadlines.start()
        entry = self.image.pvh_entry if self.protocol is BootProtocol.PVH else None
        if entry is None:
            entry = self.image.image.entry
        return StartRequest(entry, self.boot.info_address, self.boot.magic)

    def resume(self) -> None:
        """After a restore: what `_prepare` starts besides loading RAM."""
        if self.swap is not None and self._deadlines is not None:
            self._deadlines.stop()
            self._deadlines.start()

    def _debug_exit(self, value: int, status: int) -> None:
        message = f"isa-debug-exit: the guest wrote {value:#x} (exit status {status})"
        self.vm.request_stop(StopReason(StopKind.SHUTDOWN, message, status=status))

    def _on_ipi(self, ipi: Ipi) -> None:
        n = self.config.smp
        if ipi.shorthand is Shorthand.NONE:
            targets = [ipi.destination] if ipi.destination < n else []
        elif ipi.shorthand is Shorthand.SELF:
            targets = [ipi.source]
        else:
            targets = [
                i
                for i in range(n)
                if i != ipi.source or ipi.shorthand is Shorthand.ALL_INCLUDING_SELF
            ]
        for target in targets:
            if ipi.mode == DeliveryMode.INIT:
                with self._ipi_lock:
                    self._init_seen[target] = True
            elif ipi.mode == DeliveryMode.STARTUP:
                with self._ipi_lock:
                    ready, self._init_seen[target] = self._init_seen[target], False
                if ready:  # a SIPI without INIT first (or the second SIPI) is ignored
                    start = StartRequest(ipi.vector << 12, 0, real_mode=True)
                    self.vm.power_on(target, start)
            elif ipi.mode == DeliveryMode.FIXED:
                self.vm.post_interrupt(target, ipi.vector)

    def name_of(self, function_id: int) -> str:
        fn = self.namespace.lookup(function_id)
        return fn.name if fn is not None else describe(function_id)

    # -- Platform (what services see) ----------------------------------------------------
    def mpidr(self, vcpu: int) -> int:
        return vcpu  # the APIC ID plays MPIDR's part

    def vcpu_for_mpidr(self, mpidr: int) -> int | None:
        return self.vcpu_for_apic_id(mpidr)

    def vcpu_for_apic_id(self, apic_id: int) -> int | None:
        return apic_id if 0 <= apic_id < self.config.smp else None

    def is_valid_entry(self, address: int) -> bool:
        return self.memory.contains(address, 1)

    def post_interrupt(self, vcpu: int, vector: int) -> bool:
        if self.vm.power[vcpu].state is not PowerState.ON:
            return False
        self.vm.post_interrupt(vcpu, vector)
        return True

    def set_ppi(self, vcpu: int, intid: int, level: bool) -> bool:
        return False  # Arm's private interrupts; x86 vectors go through post_interrupt

    def inject_page_fault(self, vcpu: int, address: int) -> bool:
        engine = self._engines.get(vcpu)
        if engine is None:
            return False
        engine.raise_page_fault(address)
        return True

    def feature(self, function_id: int) -> int | None:
        return 0 if self.dispatcher.serves(function_id) else None

    def read_msr(self, vcpu: int, index: int) -> int | None:
        msr = self._msrs.get(index)
        return None if msr is None else msr.read(vcpu)

    def write_msr(self, vcpu: int, index: int, value: int) -> bool | None:
        msr = self._msrs.get(index)
        return None if msr is None else msr.write(vcpu, value)
