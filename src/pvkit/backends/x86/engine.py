"""x86-64 vCPUs on Unicorn: boot state, hypercall and exception traps, port I/O, MMIO, HLT.

VMCALL, VMMCALL and UD2 reach the host only as invalid instructions (RIP at the
instruction), RDMSR/WRMSR of pvkit's MSRs through per-site hooks: both through the trap
(backends/x86/trap.py, in C where built), which calls into Python once per call with
integers. CPU exceptions and INT n arrive as interrupts and are delivered to the guest's
IDT by backends.x86.exceptions (see docs/hot-path.md).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence

from unicorn import (  # type: ignore[attr-defined]  # re-exported names
    UC_ARCH_X86,
    UC_HOOK_INSN,
    UC_HOOK_INTR,
    UC_HOOK_MEM_FETCH_UNMAPPED,
    UC_HOOK_MEM_READ_UNMAPPED,
    UC_HOOK_MEM_WRITE_UNMAPPED,
    UC_MODE_64,
    UC_PROT_ALL,
    Uc,
    UcError,
)
from unicorn import x86_const as r

from pvkit.backends import uc_controls
from pvkit.backends.base import ExitKind, VcpuExit
from pvkit.backends.budget import NOT_STOPPED, InsnBudget, make_budget
from pvkit.backends.trap import TrapPath
from pvkit.backends.unicorn_vcpu import UnicornVcpu
from pvkit.backends.x86 import regs as x
from pvkit.backends.x86.exceptions import Delivery, DeliveryFailed, NeedsPrivilegeChange
from pvkit.backends.x86.interfaces import Firmware, MsrBus, X86HypercallPort, hook_insn
from pvkit.backends.x86.patch import HypercallPatcher
from pvkit.backends.x86.trap import make_x86_trap
from pvkit.devices.base import MmioDevice, PortDevice
from pvkit.discovery.cpuid import CpuidTable
from pvkit.hypercall.call import Conduit, Outcome
from pvkit.machine.interrupts import InterruptQueue
from pvkit.machine.memory import GuestMemory
from pvkit.machine.power import StartRequest
from pvkit.machine.quiesce import ExecutionGate
from pvkit.machine.residency import HostResidency
from pvkit.trace.events import TraceHub, VmEvent

_GPRS = (r.UC_X86_REG_RAX, r.UC_X86_REG_RBX, r.UC_X86_REG_RCX, r.UC_X86_REG_RDX, r.UC_X86_REG_RSI)
_DATA_SEGMENTS = (
    r.UC_X86_REG_DS,
    r.UC_X86_REG_ES,
    r.UC_X86_REG_SS,
    r.UC_X86_REG_FS,
    r.UC_X86_REG_GS,
)
_TCG_BUFFER = 32 << 20
INTERRUPT_WINDOW = 1000  # instructions between looks at IF while a vector waits
BOOT_CODE_SELECTOR = 0x10  # in the boot GDT the platform writes (PVH and multiboot)
BOOT_DATA_SELECTOR = 0x18


class X86Engine(UnicornVcpu):
    PC_REG = r.UC_X86_REG_RIP
    PC_NAME = "RIP"

    def __init__(
        self,
        vcpu: int,
        memory: GuestMemory,
        firmware: Firmware,
        devices: Sequence[MmioDevice],
        ports: Sequence[PortDevice],
        cpuid: CpuidTable,
        port: X86HypercallPort | None,
        patcher: HypercallPatcher | None,
        gate: ExecutionGate,
        interrupts: InterruptQueue,
        trace: TraceHub,
        clock: Callable[[], int] | None = None,
        msrs: MsrBus | None = None,
        counting: bool = False,
        residency: HostResidency | None = None,
        trap_path: TrapPath = TrapPath.C,
    ):
        """`clock()` is the hypervisor time in ns the TSC shows (1 GHz); `msrs` serves
        the MSRs it knows (kvmclock, steal time); `counting` installs the budget (which
        then also stops before RDMSR/WRMSR: it visits every instruction anyway);
        `residency` says which RAM pages the host does not hold (a PAGE_ABSENT exit);
        `trap_path` picks the C trap or its ctypes twin."""
        self.vcpu = vcpu
        self._memory = memory
        self._firmware = firmware
        self._cpuid = cpuid
        self._port = port
        self._patcher = patcher
        self._gate = gate
        self._interrupts = interrupts
        self._trace = trace
        self._generation = gate.generation
        self._kicked = threading.Event()
        self._exit: VcpuExit | None = None
        self._resume = False  # a hook stopped the engine only to let the loop act
        self._unmapped: tuple[int, int, int] | None = None
        self._ports = {p: dev for dev in ports for p in dev.ports}
        # (vector, error code, software) the engine's own entry code delivers next, and
        # the vector whose INTR hook call that delivery makes (not ours to deliver)
        self._to_raise: tuple[int, int, bool] | None = None
        self._raising: int | None = None
        uc = Uc(UC_ARCH_X86, UC_MODE_64)
        uc.ctl_set_tcg_buffer_size(_TCG_BUFFER)  # type: ignore[attr-defined]
        uc.mem_map_ptr(memory.base, memory.size, UC_PROT_ALL, memory.host_address)
        self._follow_dirty_log(uc, memory)
        uc_controls.set_stop_at_block(uc, True)  # kicks never replay an MMIO access
        # LOCK-prefixed instructions and XCHG become host atomics: without this the engine
        # translates them as plain load/op/store, and vCPU threads sharing RAM lose updates
        # (a shared bounded loop ran more times than its bound).
        uc_controls.set_parallel(uc, True)
        for dev in devices:
            uc.mmio_map(
                dev.region.base, dev.region.size, self._mmio_read, dev, self._mmio_write, dev
            )
        uc.hook_add(UC_HOOK_INTR, self._on_interrupt)
        uc.hook_add(UC_HOOK_INSN, self._on_cpuid, None, 1, 0, r.UC_X86_INS_CPUID)
        uc.hook_add(UC_HOOK_INSN, self._on_in, None, 1, 0, r.UC_X86_INS_IN)
        uc.hook_add(UC_HOOK_INSN, self._on_out, None, 1, 0, r.UC_X86_INS_OUT)
        uc.hook_add(
            UC_HOOK_MEM_READ_UNMAPPED | UC_HOOK_MEM_WRITE_UNMAPPED | UC_HOOK_MEM_FETCH_UNMAPPED,
            self._on_unmapped,
        )
        self._clock = clock
        if clock is not None:
            hook_insn(uc, r.UC_X86_INS_RDTSC, self._on_rdtsc)
            hook_insn(uc, r.UC_X86_INS_RDTSCP, self._on_rdtsc)
        self._msrs = msrs
        self._budget: InsnBudget | None = None
        if counting:
            self._budget = make_budget(uc, memory if msrs is not None else None)
        self._native = b"" if patcher is None else patcher.native
        self.trap = make_x86_trap(
            trap_path,
            uc,
            memory,
            b"" if patcher is None else patcher.live_native,
            hypercalls=port is not None,
            watch_msr=msrs is not None and not counting,
            on_call=self._on_call,
            on_invalid=self._on_invalid,
            on_msr=self._on_msr,
        )
        self.trap.install()
        if residency is not None:
            self._watch_residency(uc, memory, residency)
        self._uc = uc
        self._delivery = Delivery(uc, memory)

    # -- run loop interface -------------------------------------------------------------
    def start_at(self, start: StartRequest) -> None:
        """Reset state for PVH/multiboot (32-bit protected mode) or a SIPI (real mode)."""
        uc = self._uc
        fw = self._firmware
        # The engine comes up in long mode; dropping CR0.PG is what clears EFER.LMA. In
        # 64-bit mode the engine sets only selectors, so the hidden state stays flat.
        uc.reg_write(r.UC_X86_REG_CR0, x.CR0_PG | x.CR0_PE | x.CR0_ET)
        uc.reg_write(r.UC_X86_REG_CR0, x.CR0_PE | x.CR0_ET)
        uc.reg_write(r.UC_X86_REG_MSR, (x.MSR_EFER, 0))
        uc.reg_write(r.UC_X86_REG_CR4, 0)
        uc.reg_write(r.UC_X86_REG_RFLAGS, x.RFLAGS_RESERVED1)
        uc.reg_write(r.UC_X86_REG_GDTR, (0, fw.gdt, fw.gdt_limit, 0))
        uc.reg_write(r.UC_X86_REG_CS, BOOT_CODE_SELECTOR)
        for seg in _DATA_SEGMENTS:
            uc.reg_write(seg, BOOT_DATA_SELECTOR)
        if start.real_mode:
            # The reset stub drops to real mode and jumps to segment entry >> 4, offset 0.
            slot = fw.sipi_slots + 4 * self.vcpu
            self._memory.write_u32(slot, (start.entry >> 4) << 16)
            uc.reg_write(r.UC_X86_REG_RSI, slot - fw.stub_segment_base)
            uc.reg_write(r.UC_X86_REG_RSP, 0)
            uc.reg_write(r.UC_X86_REG_RIP, fw.reset_stub)
            return
        uc.reg_write(r.UC_X86_REG_RAX, start.magic)
        uc.reg_write(r.UC_X86_REG_RBX, start.argument)
        uc.reg_write(r.UC_X86_REG_RIP, start.entry)

    def run(self) -> VcpuExit:
        uc = self._uc
        while True:
            if self._kicked.is_set():
                self._kicked.clear()
                return VcpuExit(ExitKind.KICKED)
            if self._debug_pending():
                self._debug_stop = False
                return VcpuExit(ExitKind.DEBUG)
            self._exit = None
            self._resume = False
            generation = self._gate.enter(self.vcpu)
            try:
                if generation != self._generation:
                    uc.ctl_flush_tb()  # type: ignore[attr-defined]  # guest code was patched
                    self._generation = generation
                if self._interrupts and self._to_raise is None:
                    self._deliver_pending()  # after an exception waiting to be taken
                if self._to_raise is not None:
                    vector, code, software = self._to_raise
                    self._to_raise = None
                    uc_controls.raise_exception(uc, vector, code, software)
                    self._raising = vector
                if self._exit is None:
                    window = self._open_interrupt_window()
                    try:
                        uc.emu_start(uc.reg_read(r.UC_X86_REG_RIP), 0)
                    finally:
                        if window is not None and self._close_interrupt_window(window):
                            self._resume = True
                    error = self.trap.take_error()
                    if error is not None:
                        self._stop_with_fault(uc, f"internal error in the trap: {error!r}")
                    if self.trap.take_restart():
                        self._resume = True
            except UcError as err:
                if self._absent is not None:
                    return self._page_absent()
                return self._fault_from(err)
            finally:
                self._gate.leave(self.vcpu)
            if self._exit is not None:
                return self._exit
            if self._resume or self._kicked.is_set() or self._debug_pending():
                continue
            budget = self._budget
            if budget is not None:
                if budget.msr_at != NOT_STOPPED:
                    self._msr_instruction(uc, budget)
                    continue
                if budget.executed >= budget.budget:
                    return VcpuExit(ExitKind.SLICE_END)
            rip = uc.reg_read(r.UC_X86_REG_RIP)
            if self._byte(rip - 1) == x.INSN_HLT:
                if self._interrupts and uc.reg_read(r.UC_X86_REG_RFLAGS) & x.RFLAGS_IF:
                    continue  # an interrupt is already waiting: HLT ends at once
                return VcpuExit(ExitKind.HALT, pc=rip)

    def close(self) -> None:
        self._leave_dirty_log()
        self.trap.remove()
        if self._budget is not None:
            self._budget.remove()
        self._uc = None  # type: ignore[assignment]

    # -- traps -------------------------------------------------------------------------
    def _on_call(
        self, gprs: tuple[int, int, int, int, int], vmmcall: bool, cpl: int, long_mode: bool
    ) -> int | None:
        """A native hypercall the trap decoded: RAX for the guest (the trap writes it and
        moves RIP past the instruction), or None after reporting a fault."""
        assert self._port is not None
        if self._native_moved() and (x.VMMCALL if vmmcall else x.VMCALL) != self._native:
            self._on_invalid()  # now the other vendor's instruction
            return None
        try:
            conduit = Conduit.VMMCALL if vmmcall else Conduit.VMCALL
            call = self._port.on_hypercall(gprs, conduit, cpl, long_mode, self.vcpu)
            if call.outcome is not Outcome.RESUME:
                kind = ExitKind.POWER_OFF if call.outcome is Outcome.POWER_OFF else ExitKind.STOP_VM
                self._exit = VcpuExit(kind)
                self._uc.emu_stop()
            return call.results[0]
        except Exception as exc:
            self._stop_with_fault(self._uc, f"internal error in the hypercall trap: {exc!r}")
            return None

    def _native_moved(self) -> bool:
        """Did the VM move to the other vendor's host (HypercallPatcher.retarget) since this
        vCPU last looked? (The trap reads the patcher's live buffer itself.)"""
        patcher = self._patcher
        if patcher is None:
            return False
        native = patcher.native
        if native == self._native:
            return False
        self._native = native
        return True

    def _on_invalid(self) -> None:
        """Everything but a native hypercall: #UD, or the other vendor's instruction
        (patched, or #UD without the fix-hypercall quirk)."""
        self._native_moved()
        uc = self._uc
        rip = uc.reg_read(r.UC_X86_REG_RIP)
        try:
            physical, code = self._fetch(rip, 3)  # short near the end of RAM or a mapping
            if self._port is None or code not in (x.VMCALL, x.VMMCALL):
                self._deliver(x.VECTOR_UD, rip)
            elif self._patcher is None or code == self._patcher.native:
                self._hypercall(uc, rip, code)  # the trap saw another native instruction
            elif self._patcher.fix:
                self._patcher.patch(self.vcpu, rip, physical)
                self._resume = True  # re-execute once this vCPU's translations are dropped
                uc.emu_stop()
            else:
                self._deliver(x.VECTOR_UD, rip)
        except Exception as exc:
            self._stop_with_fault(uc, f"internal error in the hypercall trap: {exc!r}")

    def _hypercall(self, uc: Uc, rip: int, code: bytes) -> None:
        assert self._port is not None
        gprs = uc.reg_read_batch(_GPRS)  # type: ignore[attr-defined]
        cs = uc.reg_read(r.UC_X86_REG_CS)
        conduit = Conduit.VMCALL if code == x.VMCALL else Conduit.VMMCALL
        call = self._port.on_hypercall(gprs, conduit, cs & 3, self._long_mode(cs), self.vcpu)
        uc.reg_write(r.UC_X86_REG_RAX, call.results[0])
        uc.reg_write(r.UC_X86_REG_RIP, rip + 3)
        if call.outcome is not Outcome.RESUME:
            kind = ExitKind.POWER_OFF if call.outcome is Outcome.POWER_OFF else ExitKind.STOP_VM
            self._exit = VcpuExit(kind)
            uc.emu_stop()

    def _open_interrupt_window(self) -> int | None:
        """Vectors still wait (IF is 0, or an exception goes first): run a bounded number
        of instructions and look again, as a VMM asks for an interrupt-window exit. Counted
        in instructions, so deterministic runs stay deterministic. Returns the slice's own
        budget to restore, or None without a wait or a budget."""
        budget = self._budget
        if budget is None or not self._interrupts:
            return None
        window = budget.budget
        budget.budget = min(window, budget.executed + INTERRUPT_WINDOW)
        return window

    def _close_interrupt_window(self, window: int) -> bool:
        """True if the run ended at the window rather than at the slice's own budget."""
        budget = self._budget
        assert budget is not None
        ended = budget.executed >= budget.budget and budget.budget < window
        budget.budget = window
        return ended

    def raise_page_fault(self, address: int, error_code: int = 0) -> None:
        """Deliver #PF with CR2 = `address` before the next instruction (an asynchronous
        "page not present": the instruction runs again once the handler returns)."""
        self._uc.reg_write(r.UC_X86_REG_CR2, address)
        self._deliver(x.VECTOR_PF, self._uc.reg_read(r.UC_X86_REG_RIP), error_code)

    def _page_absent(self) -> VcpuExit:
        uc = self._uc
        address, self._absent = self._absent, None
        return VcpuExit(
            ExitKind.PAGE_ABSENT,
            pc=uc.reg_read(r.UC_X86_REG_RIP),
            address=address,
            user_mode=uc.reg_read(r.UC_X86_REG_CS) & 3 == 3,
            interrupts_masked=not uc.reg_read(r.UC_X86_REG_RFLAGS) & x.RFLAGS_IF,
        )

    def _on_interrupt(self, uc: Uc, intno: int, _user: object) -> None:
        if intno == self._raising:
            self._raising = None  # raised through the engine, which delivers it now
            return
        rip = uc.reg_read(r.UC_X86_REG_RIP)
        try:
            if self._byte(rip - 2) == x.INSN_INT and self._byte(rip - 1) == intno:
                self._deliver(intno, rip, software=True)  # INT n: RIP is already past it
            elif intno == 3 and self._byte(rip - 1) == 0xCC:
                self._deliver(intno, rip, software=True)  # INT3
            elif intno < 32:
                code = 0 if intno in x.EXCEPTIONS_WITH_ERROR_CODE else None
                self._deliver(intno, rip, code)  # the engine does not report the error code
            else:
                self._stop_with_fault(uc, f"unexpected interrupt {intno} at RIP {rip:#x}")
        except Exception as exc:
            self._stop_with_fault(uc, f"internal error delivering vector {intno}: {exc!r}")

    def _deliver(
        self, vector: int, rip: int, error_code: int | None = None, software: bool = False
    ) -> None:
        if self._trace.active:
            fields: dict[str, object] = {"vector": vector, "rip": f"{rip:#x}", "soft": software}
            self._trace.event(VmEvent("inject", time.perf_counter_ns(), self.vcpu, fields))
        try:
            self._delivery.deliver(vector, rip, error_code, software)
        except NeedsPrivilegeChange:
            # The engine's own entry code switches privilege and stack (TSS.RSP0): it
            # delivers when emulation next starts, so stop here if it is running.
            self._to_raise = (vector, error_code or 0, software)
            self._resume = True
            self._uc.emu_stop()
        except DeliveryFailed as exc:
            self._stop_with_fault(
                self._uc,
                f"triple fault: vector {vector} at RIP {rip:#x} cannot be delivered: {exc}",
            )

    def _deliver_pending(self) -> None:
        uc = self._uc
        if not uc.reg_read(r.UC_X86_REG_RFLAGS) & x.RFLAGS_IF:
            return
        vector = self._interrupts.take()
        if vector is not None:
            self._deliver(vector, uc.reg_read(r.UC_X86_REG_RIP))

    def _on_cpuid(self, uc: Uc, _user: object) -> int:
        leaf = uc.reg_read(r.UC_X86_REG_EAX) & 0xFFFF_FFFF
        sub = uc.reg_read(r.UC_X86_REG_ECX) & 0xFFFF_FFFF
        answer = self._cpuid.leaf(self.vcpu, leaf, sub)
        for reg, value in zip(
            (r.UC_X86_REG_RAX, r.UC_X86_REG_RBX, r.UC_X86_REG_RCX, r.UC_X86_REG_RDX),
            answer,
            strict=True,
        ):
            uc.reg_write(reg, value)
        return 1  # the instruction is done: skip the engine's own CPUID

    def _on_rdtsc(self, uc: Uc, _user: object) -> int:
        """RDTSC/RDTSCP read the hypervisor clock: the TSC runs at 1 GHz."""
        assert self._clock is not None
        tsc = self._clock()
        rip = uc.reg_read(r.UC_X86_REG_RIP)
        rdtscp = self._byte(rip + 2) == 0xF9
        uc.reg_write(r.UC_X86_REG_RAX, tsc & 0xFFFF_FFFF)
        uc.reg_write(r.UC_X86_REG_RDX, tsc >> 32 & 0xFFFF_FFFF)
        if rdtscp:
            uc.reg_write(r.UC_X86_REG_RCX, self.vcpu)  # TSC_AUX: the CPU number
        return 1

    def _on_msr(self, write: bool, index: int, value: int) -> int | bool | None:
        """RDMSR/WRMSR of `index` (a write of `value`), before the instruction runs: the
        value read or True when served, None when the MSR is not one of ours (the engine
        runs the instruction), False after delivering #GP for a refused write (or
        reporting a fault)."""
        assert self._msrs is not None
        try:
            if not write:
                return self._msrs.read_msr(self.vcpu, index)
            accepted = self._msrs.write_msr(self.vcpu, index, value)
            if accepted is False:
                self._deliver(x.VECTOR_GP, self._uc.reg_read(r.UC_X86_REG_RIP), 0)
                return False
            return None if accepted is None else True
        except Exception as exc:
            self._stop_with_fault(self._uc, f"internal error in MSR {index:#x}: {exc!r}")
            return False

    def _msr_instruction(self, uc: Uc, budget: InsnBudget) -> None:
        """The budget stopped the engine before RDMSR/WRMSR (counting runs): serve pvkit's
        MSRs, let the engine run the others."""
        rip = budget.msr_at
        budget.msr_at = NOT_STOPPED
        index = uc.reg_read(r.UC_X86_REG_RCX) & 0xFFFF_FFFF
        write = self._byte(rip + 1) == 0x30
        value = 0
        if write:
            value = (uc.reg_read(r.UC_X86_REG_RDX) & 0xFFFF_FFFF) << 32 | (
                uc.reg_read(r.UC_X86_REG_RAX) & 0xFFFF_FFFF
            )
        out = self._on_msr(write, index, value)
        if out is False:
            return
        if out is None:
            budget.skip_at = rip  # not ours: let the engine execute it
            return
        if not write:
            uc.reg_write(r.UC_X86_REG_RAX, out & 0xFFFF_FFFF)
            uc.reg_write(r.UC_X86_REG_RDX, out >> 32 & 0xFFFF_FFFF)
        uc.reg_write(r.UC_X86_REG_RIP, rip + 2)
        budget.executed += 1

    def _on_in(self, uc: Uc, port: int, size: int, _user: object) -> int:
        dev = self._ports.get(port)
        if dev is None:
            return 0xFFFF_FFFF >> (32 - 8 * size)  # nothing decodes the port: reads float high
        try:
            return dev.read_port(port, size)
        except Exception as exc:
            self._stop_with_fault(uc, f"device error reading port {port:#x}: {exc}")
            return 0

    def _on_out(self, uc: Uc, port: int, size: int, value: int, _user: object) -> None:
        dev = self._ports.get(port)
        if dev is None:
            return
        try:
            dev.write_port(port, size, value)
        except Exception as exc:
            self._stop_with_fault(uc, f"device error writing port {port:#x}: {exc}")

    # -- helpers -----------------------------------------------------------------------
    def _long_mode(self, cs: int) -> bool:
        """Is the caller in 64-bit mode (EFER.LMA and CS.L), not compatibility mode?"""
        uc = self._uc
        if not uc.reg_read(r.UC_X86_REG_MSR, x.MSR_EFER) & x.EFER_LMA:
            return False
        _sel, base, limit, _flags = uc.reg_read(r.UC_X86_REG_GDTR)
        slot = cs & ~7
        if cs & 4 or slot + 7 > limit:
            return False
        descriptor = self._memory.read_u64(self._delivery.physical(base + slot))
        return bool(descriptor & x.DESCRIPTOR_LONG)

    def _byte(self, address: int) -> int:
        try:
            return self._byte_at(self._delivery.physical(address))
        except DeliveryFailed:
            return -1

    def _fetch(self, address: int, size: int) -> tuple[list[int], bytes]:
        """Up to `size` instruction bytes at `address` and the physical address of each;
        they end early at the first byte that is unmapped or outside RAM."""
        physical: list[int] = []
        for i in range(size):
            try:
                at = self._delivery.physical(address + i)
            except DeliveryFailed:
                break
            if not self._memory.contains(at, 1):
                break
            physical.append(at)
        return physical, bytes(self._memory.read(a, 1)[0] for a in physical)

    def _byte_at(self, physical: int) -> int:
        if not self._memory.contains(physical, 1):
            return -1
        return self._memory.read(physical, 1)[0]
