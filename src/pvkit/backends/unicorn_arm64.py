"""AArch64 vCPUs on Unicorn: traps, guest faults, exception injection, MMIO.

Hypercalls arrive through the trap (trap.py) inside `emu_start`; the engine only returns
to the run loop when the vCPU must stop (power off, halt, fault, kick), never per call.
Everything that is not a hypercall (UNDEF, SVC, aborts) is rare and uses the binding.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence

from unicorn import (  # type: ignore[attr-defined]  # re-exported names
    UC_ARCH_ARM64,
    UC_HOOK_INSN,
    UC_HOOK_MEM_FETCH_UNMAPPED,
    UC_HOOK_MEM_READ_UNMAPPED,
    UC_HOOK_MEM_WRITE_UNMAPPED,
    UC_MODE_ARM,
    UC_PROT_ALL,
    Uc,
    UcError,
)
from unicorn import arm64_const as r

from pvkit.backends import arm64_regs as a
from pvkit.backends.base import ExitKind, HypercallPort, VcpuExit
from pvkit.backends.budget import InsnBudget, make_budget
from pvkit.backends.trap import NO_INTNO, CompiledTable, TrapLayout, TrapPath, make_trap
from pvkit.backends.unicorn_vcpu import UnicornVcpu
from pvkit.devices.base import MmioDevice
from pvkit.hypercall.call import Conduit, Outcome
from pvkit.machine.memory import GuestMemory
from pvkit.machine.power import StartRequest
from pvkit.machine.scheduling import COUNTER_HZ
from pvkit.trace.events import TraceHub, VmEvent

_X = tuple(getattr(r, f"UC_ARM64_REG_X{i}") for i in range(31))
_TCG_BUFFER = 32 << 20  # per-vCPU translation cache; the 1 GiB default does not scale


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
        clock: Callable[[], int] | None = None,
        counting: bool = False,
    ):
        """`clock()` is the hypervisor time in ns that CNTVCT_EL0 shows (None: the
        engine's own counter); `counting` installs the instruction budget."""
        self.vcpu = vcpu
        self._memory = memory
        self._port = port
        self._trace = trace
        self._kicked = threading.Event()
        self._exit: VcpuExit | None = None
        self._unmapped: tuple[int, int, int] | None = None
        uc = Uc(UC_ARCH_ARM64, UC_MODE_ARM)
        uc.ctl_set_tcg_buffer_size(_TCG_BUFFER)  # type: ignore[attr-defined]
        uc.mem_map_ptr(memory.base, memory.size, UC_PROT_ALL, memory.host_address)
        for dev in devices:
            uc.mmio_map(
                dev.region.base, dev.region.size, self._mmio_read, dev, self._mmio_write, dev
            )
        if port is not None:
            # HVC then traps as a real HVC exception with PC already advanced (cheapest path);
            # NS enables EL2 so that VMPIDR_EL2 is what the guest reads as MPIDR_EL1.
            scr = uc.reg_read(r.UC_ARM64_REG_CP_REG, a.SCR_EL3)
            uc.reg_write(r.UC_ARM64_REG_CP_REG, (*a.SCR_EL3, scr | a.SCR_HCE | a.SCR_NS))
            uc.reg_write(r.UC_ARM64_REG_CP_REG, (*a.VMPIDR_EL2, a.MPIDR_RES1 | mpidr))
        layout = TrapLayout(
            argument_regs=_X[: port.argument_count] if port else _X[:1],
            pc_reg=r.UC_ARM64_REG_PC,
            result_regs=_X[: port.result_count] if port else _X[:1],
            hvc_intno=a.EXCP_HVC if port else NO_INTNO,
            smc_intno=a.EXCP_SMC if port else NO_INTNO,
        )
        self.trap = make_trap(
            trap_path, uc, layout, memory, answers, self._on_call, self._on_exception
        )
        self.trap.install()
        uc.hook_add(
            UC_HOOK_MEM_READ_UNMAPPED | UC_HOOK_MEM_WRITE_UNMAPPED | UC_HOOK_MEM_FETCH_UNMAPPED,
            self._on_unmapped,
        )
        self._clock = clock
        if clock is not None:
            uc.hook_add(UC_HOOK_INSN, self._on_mrs, None, 1, 0, r.UC_ARM64_INS_MRS)
        self._budget: InsnBudget | None = make_budget(uc) if counting else None
        self._uc = uc

    # -- run loop interface -------------------------------------------------------------
    def start_at(self, start: StartRequest) -> None:
        self._uc.reg_write(r.UC_ARM64_REG_X0, start.argument)
        self._uc.reg_write(r.UC_ARM64_REG_PC, start.entry)

    def run(self) -> VcpuExit:
        uc = self._uc
        while True:
            if self._kicked.is_set():
                self._kicked.clear()
                return VcpuExit(ExitKind.KICKED)
            self._exit = None
            pc = uc.reg_read(r.UC_ARM64_REG_PC)
            try:
                uc.emu_start(pc, 0)
            except UcError as err:
                return self._fault_from(err)
            error = self.trap.take_error()
            if error is not None:
                pc = uc.reg_read(r.UC_ARM64_REG_PC)
                message = f"vCPU {self.vcpu}: internal error in the hypercall trap: {error!r}"
                return VcpuExit(ExitKind.FAULT, message, pc=pc)
            if self._exit is not None:
                return self._exit
            if self._kicked.is_set():
                continue
            budget = self._budget
            if budget is not None and budget.executed >= budget.budget:
                return VcpuExit(ExitKind.SLICE_END)
            pc = uc.reg_read(r.UC_ARM64_REG_PC)
            if self._word(pc - 4) == a.WFI:
                return VcpuExit(ExitKind.HALT, pc=pc)
            # Anything else (WFE, a yield) is a hint: resume where the engine stopped.

    def close(self) -> None:
        self.trap.remove()  # before the engine goes: the hook holds a pointer to the trap
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

    def _on_mrs(self, uc: Uc, reg: int, cp_reg: object, _user: object) -> bool:
        """CNTVCT_EL0/CNTPCT_EL0 read the hypervisor clock; CNTFRQ_EL0 says 1 GHz."""
        key = a.sysreg_key(cp_reg)
        if key in (a.CNTVCT_EL0, a.CNTPCT_EL0):
            assert self._clock is not None
            uc.reg_write(reg, self._clock())
            return True
        if key == a.CNTFRQ_EL0:
            uc.reg_write(reg, COUNTER_HZ)
            return True
        return False  # any other system register: the engine's own answer

    def _on_exception(self, intno: int) -> None:
        uc = self._uc
        try:
            if intno in (a.EXCP_HVC, a.EXCP_SMC):
                # No hypervisor: the instruction is undefined, as on bare metal without EL2/EL3.
                pc = uc.reg_read(r.UC_ARM64_REG_PC)
                self._inject(uc, a.EC_UNKNOWN << 26 | a.ESR_IL, pc - 4, "undefined instruction")
            elif intno == a.EXCP_UDEF:
                pc = uc.reg_read(r.UC_ARM64_REG_PC)
                self._inject(uc, a.EC_UNKNOWN << 26 | a.ESR_IL, pc, "undefined instruction")
            elif intno == a.EXCP_SWI:
                pc = uc.reg_read(r.UC_ARM64_REG_PC)
                iss = a.immediate16(self._word(pc - 4))
                self._inject(uc, a.EC_SVC64 << 26 | a.ESR_IL | iss, pc, "SVC")
            else:
                self._stop_with_fault(uc, self._describe_exception(uc, intno))
        except Exception as exc:
            self._stop_with_fault(uc, f"internal error while handling exception {intno}: {exc}")

    def _inject(self, uc: Uc, esr: int, return_pc: int, what: str) -> None:
        """Take a synchronous exception to the guest's EL1 vectors, or fault if it has none."""
        vbar = uc.reg_read(r.UC_ARM64_REG_VBAR_EL1)
        if vbar == 0 or not self._memory.contains(vbar, 0x800):
            word = self._word(return_pc)
            self._stop_with_fault(
                uc,
                f"{what} {word:#010x} at PC {return_pc:#x} and the guest has no exception vectors",
                pc=return_pc,
            )
            return
        pstate = uc.reg_read(r.UC_ARM64_REG_PSTATE)
        el = (pstate >> a.PSTATE_EL_SHIFT) & 3
        if el == 0:
            offset = a.VECTOR_LOWER_EL_A64
        elif pstate & a.PSTATE_SP_BIT:
            offset = a.VECTOR_CURRENT_EL_SPX
        else:
            offset = a.VECTOR_CURRENT_EL_SP0
        uc.reg_write(r.UC_ARM64_REG_ESR_EL1, esr)
        uc.reg_write(r.UC_ARM64_REG_ELR_EL1, return_pc)
        uc.reg_write(r.UC_ARM64_REG_CP_REG, (*a.SPSR_EL1, pstate))
        uc.reg_write(r.UC_ARM64_REG_PSTATE, a.PSTATE_EL1H_MASKED)
        uc.reg_write(r.UC_ARM64_REG_PC, vbar + offset)
        if self._trace.active:
            fields: dict[str, object] = {"what": what, "esr": f"{esr:#x}", "elr": f"{return_pc:#x}"}
            self._trace.event(VmEvent("inject", time.perf_counter_ns(), self.vcpu, fields))

    # -- faults ------------------------------------------------------------------------
    def _describe_exception(self, uc: Uc, intno: int) -> str:
        pc = uc.reg_read(r.UC_ARM64_REG_PC)
        names = {
            a.EXCP_PREFETCH_ABORT: "instruction abort (MMU translation or permission fault)",
            a.EXCP_DATA_ABORT: "data abort (MMU translation or permission fault)",
            a.EXCP_BKPT: "breakpoint (BRK)",
        }
        return f"{names.get(intno, f'unhandled exception {intno}')} at PC {pc:#x}"

    def _word(self, address: int) -> int:
        if not self._memory.contains(address, 4):
            return 0
        return self._memory.read_u32(address)
