"""AArch64 vCPUs on pvkit's patched Unicorn: traps, exceptions, interrupt lines, MMIO.

Hypercalls arrive through the trap (trap.py) inside `emu_start`; the engine only returns
to the run loop when the vCPU must stop (power off, halt, fault, kick), never per call.
Every other synchronous exception (UNDEF, SVC, aborts, BRK) is taken by the engine itself
through QEMU's architectural entry (uc_controls.py), and so are IRQs once the board raises
the line. Emulated system registers (timer, GIC CPU interface, counter) reach the board
through the MRS/MSR hook (sysreg_hook.py).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from functools import partial

from unicorn import (  # type: ignore[attr-defined]  # re-exported names
    UC_ARCH_ARM64,
    UC_ERR_FETCH_PROT,
    UC_HOOK_MEM_FETCH_UNMAPPED,
    UC_HOOK_MEM_READ_UNMAPPED,
    UC_HOOK_MEM_WRITE_UNMAPPED,
    UC_MODE_ARM,
    UC_PROT_ALL,
    Uc,
    UcError,
)
from unicorn import arm64_const as r

from pvkit.backends import uc_controls
from pvkit.backends.arm64 import regs as a
from pvkit.backends.arm64.sysreg_hook import SysregHook, make_sysreg_hook
from pvkit.backends.base import ExitKind, HypercallPort, SysregPort, VcpuExit
from pvkit.backends.budget import InsnBudget, make_budget
from pvkit.backends.faults import unmapped_fault
from pvkit.backends.flash_windows import FlashBank, FlashWindows
from pvkit.backends.trap import NO_INTNO, CompiledTable, TrapLayout, TrapPath, make_trap
from pvkit.backends.uart_path import TxPath, map_tapped
from pvkit.backends.unicorn_vcpu import UnicornVcpu
from pvkit.devices.base import MmioDevice
from pvkit.hypercall.call import Conduit, Outcome
from pvkit.machine.memory import GuestMemory
from pvkit.machine.power import StartRequest
from pvkit.machine.residency import HostResidency
from pvkit.trace.events import TraceHub, VmEvent

_X = tuple(getattr(r, f"UC_ARM64_REG_X{i}") for i in range(31))
_TCG_BUFFER = 32 << 20  # per-vCPU translation cache; the 1 GiB default does not scale
_DELIVERED = sum(1 << n for n in a.DELIVERED_EXCEPTIONS)
_EXCEPTION_NAMES = {
    a.EXCP_UDEF: "undefined instruction",
    a.EXCP_SWI: "SVC",
    a.EXCP_PREFETCH_ABORT: "instruction abort",
    a.EXCP_DATA_ABORT: "data abort",
    a.EXCP_BKPT: "breakpoint (BRK)",
}


# emu_start's `until`: an address no A64 instruction has (they are 4-byte aligned), so the
# engine never stops at it; 0, the usual choice, is the reset vector of firmware in flash.
_NO_EXIT = 1


class Arm64Engine(UnicornVcpu):
    PC_REG = r.UC_ARM64_REG_PC
    PC_NAME = "PC"

    def __init__(
        self,
        vcpu: int,
        mpidr: int,
        memory: GuestMemory,
        devices: Sequence[MmioDevice],
        port: HypercallPort | None,
        trace: TraceHub,
        trap_path: TrapPath,
        answers: CompiledTable | None = None,
        sysregs: SysregPort | None = None,
        counting: bool = False,
        flash: Sequence[FlashBank] = (),
        residency: HostResidency | None = None,
    ):
        """`sysregs` are the system registers the board emulates for this vCPU (None:
        the engine's own); `counting` installs the instruction budget; `flash` banks are
        memory or a device as their mode says (flash_windows.py); `residency` says which
        RAM pages the host does not hold (a touch is a PAGE_ABSENT exit)."""
        self.vcpu = vcpu
        self._memory = memory
        self._port = port
        self._trace = trace
        self._kicked = threading.Event()
        self._exit: VcpuExit | None = None
        self._recursive: str | None = None  # a fault inside the vectors, being taken
        self._unmapped: tuple[int, int, int] | None = None
        uc_controls.require_patched_engine()
        uc = Uc(UC_ARCH_ARM64, UC_MODE_ARM)
        uc.ctl_set_cpu_model(r.UC_CPU_ARM64_MAX)  # v8.x features, LSE atomics among them
        uc.ctl_set_tcg_buffer_size(_TCG_BUFFER)  # type: ignore[attr-defined]
        uc.mem_map_ptr(memory.base, memory.size, UC_PROT_ALL, memory.host_address)
        self._follow_dirty_log(uc, memory)
        self._tx_paths: list[TxPath] = []
        self._taps: list[object] = []  # the engine calls into these: they live as long
        for dev in devices:
            path: TxPath | None = getattr(dev, "fast_path", None)
            if path is not None:  # a console's data path in C (backends/uart_path.py)
                self._tx_paths.append(path)
                self._taps.append(
                    map_tapped(
                        uc,
                        dev.region,
                        path,
                        partial(self._device_read, uc, dev),
                        partial(self._device_write, uc, dev),
                    )
                )
                continue
            uc.mmio_map(
                dev.region.base, dev.region.size, self._mmio_read, dev, self._mmio_write, dev
            )
        self._flash = FlashWindows(uc, flash, self._mmio_read, self._mmio_write) if flash else None
        self._configure_els(uc, mpidr, hypervisor=port is not None)
        uc_controls.set_parallel(uc, True)  # LDXR/STXR and LSE atomics across vCPU threads
        uc_controls.set_stop_at_block(uc, True)  # MMIO accesses happen exactly once
        uc_controls.set_cpu_exceptions(uc, _DELIVERED)
        layout = TrapLayout(
            argument_regs=_X[: port.argument_count] if port else _X[:1],
            pc_reg=r.UC_ARM64_REG_PC,
            result_regs=_X[: port.result_count] if port else _X[:1],
            hvc_intno=a.EXCP_HVC if port else NO_INTNO,
            smc_intno=a.EXCP_SMC if port else NO_INTNO,
            delivered=_DELIVERED,
            vbar_reg=r.UC_ARM64_REG_VBAR_EL1,
        )
        self.trap = make_trap(
            trap_path, uc, layout, memory, answers, self._on_call, self._on_exception, vcpu
        )
        self.trap.install()
        uc.hook_add(
            UC_HOOK_MEM_READ_UNMAPPED | UC_HOOK_MEM_WRITE_UNMAPPED | UC_HOOK_MEM_FETCH_UNMAPPED,
            self._on_unmapped,
        )
        self._sysreg_hook: SysregHook | None = None
        if sysregs is not None:
            self._sysreg_hook = make_sysreg_hook(trap_path, uc, sysregs.keys, sysregs.access)
            self._sysreg_hook.install()
        self._budget: InsnBudget | None = make_budget(uc) if counting else None
        if residency is not None:
            self._watch_residency(uc, memory, residency)
        self._uc = uc

    @staticmethod
    def _configure_els(uc: Uc, mpidr: int, hypervisor: bool) -> None:
        """EL1 in AArch64 below an AArch64 EL2 (RW bits; without them an MMU turned on walks
        AArch32 tables), non-secure so VMPIDR_EL2 is the MPIDR_EL1 the guest reads, with SVE
        and pointer authentication open to EL1 as firmware leaves them for a kernel (QEMU
        does the same for a direct kernel boot); nothing runs at EL2 or EL3 to take traps.

        With a hypervisor, HCE makes HVC trap as itself with PC already advanced (the
        cheapest path); without one, HVC (HCE clear) and SMC (SMD set) are undefined
        instructions, as on a machine with neither EL2 nor EL3 firmware."""
        scr = uc.reg_read(r.UC_ARM64_REG_CP_REG, a.SCR_EL3)
        scr |= a.SCR_NS | a.SCR_RW | a.SCR_API | a.SCR_APK
        scr = scr | a.SCR_HCE if hypervisor else (scr & ~a.SCR_HCE) | a.SCR_SMD
        uc.reg_write(r.UC_ARM64_REG_CP_REG, (*a.SCR_EL3, scr))
        hcr = uc.reg_read(r.UC_ARM64_REG_CP_REG, a.HCR_EL2)
        hcr |= a.HCR_RW | a.HCR_API | a.HCR_APK
        uc.reg_write(r.UC_ARM64_REG_CP_REG, (*a.HCR_EL2, hcr))
        cptr = uc.reg_read(r.UC_ARM64_REG_CP_REG, a.CPTR_EL3)
        uc.reg_write(r.UC_ARM64_REG_CP_REG, (*a.CPTR_EL3, cptr | a.CPTR_EZ))
        for zcr in (a.ZCR_EL3, a.ZCR_EL2):
            uc.reg_write(r.UC_ARM64_REG_CP_REG, (*zcr, a.ZCR_LEN_MAX))
        uc.reg_write(r.UC_ARM64_REG_CP_REG, (*a.VMPIDR_EL2, a.MPIDR_RES1 | mpidr))

    def read_sysreg(self, key: tuple[int, int, int, int, int]) -> int:
        """The engine's own value of a system register, by (op0, op1, CRn, CRm, op2)."""
        op0, op1, crn, crm, op2 = key
        value: int = self._uc.reg_read(r.UC_ARM64_REG_CP_REG, (crn, crm, op0, op1, op2))
        return value

    def set_irq(self, level: bool) -> None:
        """Thread-safe: the vCPU's IRQ input (level-triggered), as the GIC drives it."""
        uc = self._uc
        if uc is not None:
            uc_controls.set_irq_line(uc, uc_controls.LINE_IRQ, level)

    def set_report_exceptions(self, report: bool) -> None:
        """Tracing: every delivered exception also becomes an `exception` trace event."""
        self.trap.report = report

    # -- run loop interface -------------------------------------------------------------
    def start_at(self, start: StartRequest) -> None:
        self._uc.reg_write(r.UC_ARM64_REG_X0, start.argument)
        self._uc.reg_write(r.UC_ARM64_REG_PC, start.entry)

    def run(self) -> VcpuExit:
        """Run until the vCPU must stop; what a console path buffered goes out then (the
        vCPU idles, its slice ends, the VM stops: nothing it printed waits behind it)."""
        try:
            return self._run()
        finally:
            for path in self._tx_paths:
                path.flush()

    def _device_read(self, uc: Uc, dev: MmioDevice, offset: int, size: int) -> int:
        return self._mmio_read(uc, offset, size, dev)

    def _device_write(self, uc: Uc, dev: MmioDevice, offset: int, size: int, value: int) -> None:
        self._mmio_write(uc, offset, size, value, dev)

    def _run(self) -> VcpuExit:
        uc = self._uc
        while True:
            if self._kicked.is_set():
                self._kicked.clear()
                return VcpuExit(ExitKind.KICKED)
            if self._debug_pending():
                self._debug_stop = False
                return VcpuExit(ExitKind.DEBUG)
            self._exit = None
            self._unmapped = None  # set by the hook of an access that becomes a bus error
            if self._flash is not None:
                self._flash.refresh()
            pc = uc.reg_read(r.UC_ARM64_REG_PC)
            try:
                uc.emu_start(pc, _NO_EXIT)
            except UcError as err:
                if self._absent is not None:
                    return self._page_absent()
                # A fetch from a flash window mapped as a device: the failed fetch is at
                # the PC now (not where this run began); resume there once it is memory.
                flash = self._flash
                at = uc.reg_read(r.UC_ARM64_REG_PC)
                if err.errno == UC_ERR_FETCH_PROT and flash and flash.fetch_back(at):
                    continue
                return self._above_el1() or self._fault_from(err)
            error = self.trap.take_error()
            if error is None and self._sysreg_hook is not None:
                error = self._sysreg_hook.take_error()
            if error is not None:
                pc = uc.reg_read(r.UC_ARM64_REG_PC)
                message = f"vCPU {self.vcpu}: internal error in the hypercall trap: {error!r}"
                return VcpuExit(ExitKind.FAULT, message, pc=pc)
            if self._recursive is not None:
                return self._recursive_fault()
            if self._exit is not None:
                return self._exit
            if self._kicked.is_set() or self._debug_pending():
                continue
            budget = self._budget
            if budget is not None and budget.executed >= budget.budget:
                return VcpuExit(ExitKind.SLICE_END)
            pc = uc.reg_read(r.UC_ARM64_REG_PC)
            if self._word(pc - 4) == a.WFI:
                return VcpuExit(ExitKind.HALT, pc=pc)
            # Anything else (WFE, a yield) is a hint: resume where the engine stopped.

    def close(self) -> None:
        self._leave_dirty_log()
        self.trap.remove()  # before the engine goes: the hook holds a pointer to the trap
        if self._sysreg_hook is not None:
            self._sysreg_hook.remove()
        if self._budget is not None:
            self._budget.remove()
        self._uc = None  # type: ignore[assignment]  # releases the engine

    # -- hooks -------------------------------------------------------------------------
    def _on_call(self, gprs: tuple[int, ...], smc: bool, immediate: int) -> list[int]:
        """A hypercall the answer table could not serve: one trip through the dispatcher."""
        assert self._port is not None  # without a port the trap never reports calls
        call = self._port.on_hypercall(
            gprs, Conduit.SMC if smc else Conduit.HVC, immediate, self.vcpu
        )
        outcome = call.outcome
        if outcome is not Outcome.RESUME:
            kind = ExitKind.POWER_OFF if outcome is Outcome.POWER_OFF else ExitKind.STOP_VM
            self._exit = VcpuExit(kind)
            self._uc.emu_stop()
        return call.results

    def _page_absent(self) -> VcpuExit:
        uc = self._uc
        address, self._absent = self._absent, None
        pstate = uc.reg_read(r.UC_ARM64_REG_PSTATE)
        return VcpuExit(
            ExitKind.PAGE_ABSENT,
            pc=uc.reg_read(r.UC_ARM64_REG_PC),
            address=address,
            user_mode=(pstate >> a.PSTATE_EL_SHIFT) & 3 == 0,
            interrupts_masked=bool(pstate & a.PSTATE_I),
        )

    def _on_exception(self, intno: int) -> None:
        """An exception the engine is about to take (only when tracing or something is
        wrong: see trap.py), or one it does not take at all."""
        uc = self._uc
        try:
            pc = uc.reg_read(r.UC_ARM64_REG_PC)
            what = _EXCEPTION_NAMES.get(intno)
            if what is None:
                self._stop_with_fault(uc, f"unhandled exception {intno} at PC {pc:#x}")
                return
            at = pc - 4 if intno == a.EXCP_SWI else pc  # SVC is reported past itself
            vbar = uc.reg_read(r.UC_ARM64_REG_VBAR_EL1)
            unmapped, self._unmapped = self._unmapped, None
            if vbar == 0 and unmapped is not None:
                # A bus error (an access to unmapped memory) with nowhere to take it: name
                # the access, as a stop on an unmapped address does.
                self._exit = unmapped_fault(
                    self.vcpu, unmapped, RuntimeError(what), at, self.PC_NAME
                )
                uc.emu_stop()
                return
            if vbar == 0:
                word = self._word(at)
                self._stop_with_fault(
                    uc,
                    f"{what} {word:#010x} at PC {at:#x} and the guest has no exception vectors",
                    pc=at,
                )
                return
            if 0 <= at - vbar < a.VECTORS_SIZE:
                # Recursive: the vector itself faults. The engine still takes this one, so
                # the run loop reports the syndrome it wrote (ESR/FAR/ELR_EL1).
                self._recursive = what
                uc.emu_stop()
                return
            if self._trace.active:
                fields: dict[str, object] = {"what": what, "pc": f"{at:#x}"}
                self._trace.event(VmEvent("exception", time.perf_counter_ns(), self.vcpu, fields))
        except Exception as exc:
            self._stop_with_fault(uc, f"internal error while handling exception {intno}: {exc}")

    def _above_el1(self) -> VcpuExit | None:
        """An exception the CPU took to EL2 or EL3 (a trap of theirs): nothing runs there,
        so its vector fetch failed; report the exception rather than the fetch."""
        uc = self._uc
        el = (uc.reg_read(r.UC_ARM64_REG_PSTATE) >> a.PSTATE_EL_SHIFT) & 3
        if el < 2:
            return None
        esr_reg, elr_reg = (
            (r.UC_ARM64_REG_ESR_EL2, r.UC_ARM64_REG_ELR_EL2)
            if el == 2
            else (r.UC_ARM64_REG_ESR_EL3, r.UC_ARM64_REG_ELR_EL3)
        )
        esr, elr = uc.reg_read(esr_reg), uc.reg_read(elr_reg)
        message = (
            f"vCPU {self.vcpu}: the guest trapped to EL{el}, where nothing runs: "
            f"ESR_EL{el} {esr:#x} (EC {esr >> 26:#x}) at PC {elr:#x}"
        )
        return VcpuExit(ExitKind.FAULT, message, pc=elr)

    def _recursive_fault(self) -> VcpuExit:
        uc = self._uc
        what, self._recursive = self._recursive, None
        esr = uc.reg_read(r.UC_ARM64_REG_ESR_EL1)
        far = uc.reg_read(r.UC_ARM64_REG_FAR_EL1)
        elr = uc.reg_read(r.UC_ARM64_REG_ELR_EL1)
        vbar = uc.reg_read(r.UC_ARM64_REG_VBAR_EL1)
        message = (
            f"vCPU {self.vcpu}: {what} inside the exception vectors (VBAR_EL1 {vbar:#x}), "
            f"which would repeat forever: ESR_EL1 {esr:#x} FAR_EL1 {far:#x} at PC {elr:#x}"
        )
        return VcpuExit(ExitKind.FAULT, message, pc=elr, address=far)

    def _word(self, address: int) -> int:
        if not self._memory.contains(address, 4):
            return 0
        return self._memory.read_u32(address)
