"""Hypercall traps on Unicorn: the C extension, or a raw-ctypes fallback that behaves the same.

Both install one UC_HOOK_INTR callback per engine that reads the argument registers and
PC in one batch, answers answer-table hits without entering the dispatcher, hands a
function with a direct handler its integers (no Call, no dispatcher), calls the
dispatcher once for anything else and writes the results back in one batch. Neither uses
the binding's per-register API, which costs ~1.8 us per register (docs/hot-path.md).

`PVKIT_TRAP=c|ctypes` overrides the `auto` choice (tests and benchmarks run both).
"""

from __future__ import annotations

import ctypes
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Any, Protocol

from unicorn import UC_HOOK_INTR, Uc  # type: ignore[attr-defined]  # re-exported names
from unicorn.unicorn_py3.unicorn import uclib

from pvkit.backends.arm64.regs import EXCP_SWI, VECTORS_SIZE
from pvkit.backends.uc_controls import reg_pointers
from pvkit.hypercall.answer_table import MASK32, SMC64_BIT, AnswerTable, DirectError, table_key
from pvkit.hypercall.namespace import DirectHandler
from pvkit.machine.memory import GuestMemory

try:
    from pvkit.backends import _trap  # type: ignore[attr-defined]
except ImportError:  # the optional extension was not built on this machine
    _trap = None

OnCall = Callable[[tuple[int, ...], bool, int], Sequence[int] | None]
OnOther = Callable[[int], None]
NO_INTNO = 0xFFFF_FFFF  # never raised: routes HVC/SMC to on_other (no hypervisor)


class TrapPath(Enum):
    C = "c"
    CTYPES = "ctypes"


class TrapUnavailable(RuntimeError):
    """The C trap was asked for but the extension is not built."""


def c_available() -> bool:
    return _trap is not None


def resolve_path(requested: str = "auto") -> TrapPath:
    """`auto` (or $PVKIT_TRAP when set) picks C when the extension is built."""
    if requested == "auto":
        requested = os.environ.get("PVKIT_TRAP", "auto")
    if requested == "auto":
        return TrapPath.C if _trap is not None else TrapPath.CTYPES
    try:
        path = TrapPath(requested)
    except ValueError:
        raise ValueError(f"trap path {requested!r} is not auto, c or ctypes") from None
    if path is TrapPath.C and _trap is None:
        raise TrapUnavailable(
            "the C trap extension is not built; reinstall pvkit with gcc and the Python "
            "headers available, or use the ctypes trap"
        )
    return path


@dataclass(frozen=True, slots=True)
class TrapLayout:
    """Which engine registers a trap reads and writes, and which exceptions are calls."""

    argument_regs: tuple[int, ...]  # function ID register first
    pc_reg: int
    result_regs: tuple[int, ...]
    hvc_intno: int
    smc_intno: int
    delivered: int = 0  # exceptions the engine takes itself (bit n = exception n)
    vbar_reg: int = 0  # read with PC to tell whether a delivered exception has vectors


class CompiledTable(Protocol):
    enabled: bool

    def lookup(self, function_id: int, key: int) -> tuple[int, ...] | None: ...

    def lookup_direct(self, function_id: int) -> DirectHandler | None: ...

    def lookup_state(self, function_id: int, x1: int, x2: int) -> tuple[int, ...] | None: ...


class Trap(Protocol):
    table_hits: int
    python_calls: int  # the dispatcher's calls and the direct handlers'
    direct_calls: int
    floor: bool | int
    report: bool | int  # tracing: delivered exceptions reach on_other too

    def install(self) -> None: ...

    def remove(self) -> None: ...

    def take_error(self) -> BaseException | None: ...

    def set_table(self, table: CompiledTable | None) -> None:
        """Only while the engine is stopped."""
        ...


def compile_table(table: AnswerTable, path: TrapPath) -> CompiledTable:
    if path is TrapPath.C:
        assert _trap is not None  # resolve_path guarantees it
        compiled: CompiledTable = _trap.AnswerTable(
            [e.as_tuple() for e in table.entries],
            table.nresults,
            direct=list(table.direct.items()),
            on_error=table.on_error,
            state_queries=[
                (q.function_id, q.answers, tuple(q.targets.items()))
                for q in table.state_queries.values()
            ],
            states=table.states,
        )
        return compiled
    return table


def uc_function_addresses(*names: str) -> tuple[int, ...]:
    """Addresses of libunicorn functions, for C hooks that call the library the binding loaded."""
    addresses = []
    for name in names:
        address = ctypes.cast(getattr(uclib, name), ctypes.c_void_p).value
        if address is None:
            raise RuntimeError(f"libunicorn has no {name}")
        addresses.append(address)
    return tuple(addresses)


def make_trap(
    path: TrapPath,
    uc: Uc,
    layout: TrapLayout,
    memory: GuestMemory,
    table: CompiledTable | None,
    on_call: OnCall,
    on_other: OnOther,
    vcpu: int = 0,
) -> Trap:
    """`vcpu` is what direct handlers are told the calling vCPU is."""
    if uc._uch is None:
        raise ValueError("the engine is already closed")
    if path is TrapPath.C:
        assert _trap is not None
        functions = uc_function_addresses(
            "uc_reg_read_batch", "uc_reg_write_batch", "uc_emu_stop", "uc_hook_add", "uc_hook_del"
        )
        trap: Trap = _trap.Arm64Trap(
            uc=uc._uch.value,
            functions=functions,
            argument_regs=layout.argument_regs,
            pc_reg=layout.pc_reg,
            result_regs=layout.result_regs,
            hvc_intno=layout.hvc_intno,
            smc_intno=layout.smc_intno,
            ram_base=memory.base,
            ram_size=memory.size,
            ram_host=memory.host_address,
            table=table,
            on_call=on_call,
            on_other=on_other,
            delivered=layout.delivered,
            vbar_reg=layout.vbar_reg,
            vcpu=vcpu,
            # where the engine keeps them, so the trap loads and stores them itself
            pointers=reg_pointers(uc, [*layout.argument_regs, layout.pc_reg, *layout.result_regs]),
        )
        return trap
    return CtypesTrap(uc, layout, memory, table, on_call, on_other, vcpu)


MASK64 = (1 << 64) - 1


def _reraise(vcpu: int, function_id: int, exc: Exception) -> tuple[int, ...]:
    raise exc


_INTR_HOOK = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_uint32, ctypes.c_void_p)


def _pointers(values: ctypes.Array[Any]) -> ctypes.Array[ctypes.c_void_p]:
    base = ctypes.addressof(values)
    size = ctypes.sizeof(ctypes.c_uint64)
    return (ctypes.c_void_p * len(values))(*(base + i * size for i in range(len(values))))


class CtypesTrap:
    """The C trap's behaviour in Python, for machines where the extension cannot be built."""

    def __init__(
        self,
        uc: Uc,
        layout: TrapLayout,
        memory: GuestMemory,
        table: CompiledTable | None,
        on_call: OnCall,
        on_other: OnOther,
        vcpu: int = 0,
    ):
        self._uch = uc._uch
        self._vcpu = vcpu
        self._layout = layout
        self._memory = memory
        self._table = table
        self._on_call = on_call
        self._on_other = on_other
        regs = (*layout.argument_regs, layout.pc_reg)
        self._nregs = len(regs)
        self._regs = (ctypes.c_int * len(regs))(*regs)
        self._vals = (ctypes.c_uint64 * len(regs))()
        self._val_ptrs = _pointers(self._vals)
        self._nres = len(layout.result_regs)
        self._res_regs = (ctypes.c_int * self._nres)(*layout.result_regs)
        self._res = (ctypes.c_uint64 * self._nres)()
        self._res_ptrs = _pointers(self._res)
        self._callback = _INTR_HOOK(self._on_intr)
        self._hook = ctypes.c_size_t()
        self._installed = False
        self._error: BaseException | None = None
        self.table_hits = 0
        self.python_calls = 0
        self.direct_calls = 0
        self.floor: bool | int = False
        self.report: bool | int = False
        self._vector_regs = (ctypes.c_int * 2)(layout.pc_reg, layout.vbar_reg)
        self._vector_vals = (ctypes.c_uint64 * 2)()
        self._vector_ptrs = _pointers(self._vector_vals)

    def install(self) -> None:
        if self._installed:
            return
        err = uclib.uc_hook_add(
            self._uch,
            ctypes.byref(self._hook),
            UC_HOOK_INTR,
            ctypes.cast(self._callback, ctypes.c_void_p),
            None,
            1,
            0,
        )
        if err:
            raise RuntimeError(f"uc_hook_add failed with error {err}")
        self._installed = True

    def remove(self) -> None:
        if self._installed:
            uclib.uc_hook_del(self._uch, self._hook)
            self._installed = False

    def take_error(self) -> BaseException | None:
        error, self._error = self._error, None
        return error

    def set_table(self, table: CompiledTable | None) -> None:
        self._table = table

    def _on_intr(self, _uc: int, intno: int, _user: int) -> None:
        try:
            layout = self._layout
            if intno != layout.hvc_intno and intno != layout.smc_intno:
                if intno < 64 and layout.delivered >> intno & 1 and not self._needs_python(intno):
                    return
                self._on_other(intno)
                return
            if self.floor:
                self._write([0])
                return
            uclib.uc_reg_read_batch(self._uch, self._regs, self._val_ptrs, self._nregs)
            vals = self._vals[: self._nregs]
            pc = vals[-1]
            word = self._memory.read_u32(pc - 4) if self._memory.contains(pc - 4, 4) else 0
            imm = (word >> 5) & 0xFFFF
            table = self._table
            if imm == 0 and table is not None and table.enabled:
                fid = vals[0] & MASK32
                found = table.lookup(fid, table_key(fid, vals[1]))
                if found is not None:
                    self._write(found)
                    self.table_hits += 1
                    return
                mask = MASK64 if fid & SMC64_BIT else MASK32
                found = table.lookup_state(fid, vals[1] & mask, vals[2] & mask)
                if found is not None:
                    self._write(found)
                    self.table_hits += 1
                    return
                direct = table.lookup_direct(fid)
                if direct is not None:
                    self._call_direct(direct, fid, vals)
                    return
            self.python_calls += 1
            results = self._on_call(tuple(vals[:-1]), intno == layout.smc_intno, imm)
            if results is not None:
                self._write(results)
        except BaseException as exc:  # nothing may unwind through the engine's C frames
            if self._error is None:
                self._error = exc
            uclib.uc_emu_stop(self._uch)

    def _call_direct(self, direct: DirectHandler, fid: int, vals: list[int]) -> None:
        """As the C trap: w1..w3 for a 32-bit convention, zero-filled results."""
        self.python_calls += 1
        self.direct_calls += 1
        mask = MASK64 if fid & SMC64_BIT else MASK32
        x1, x2, x3 = (vals[i] & mask if i < len(vals) - 1 else 0 for i in (1, 2, 3))
        try:
            results = tuple(direct(self._vcpu, x1, x2, x3))
        except Exception as exc:
            on_error: DirectError = getattr(self._table, "on_error", _reraise)
            results = on_error(self._vcpu, fid, exc)
        n = self._nres
        self._write((tuple(results) + (0,) * n)[:n])

    def _needs_python(self, intno: int) -> bool:
        """As the C trap: tracing, no vectors yet, or a fault inside the vector table."""
        if self.report:
            return True
        uclib.uc_reg_read_batch(self._uch, self._vector_regs, self._vector_ptrs, 2)
        pc, vbar = self._vector_vals
        if intno == EXCP_SWI:
            pc -= 4  # reported past the SVC
        return vbar == 0 or 0 <= pc - vbar < VECTORS_SIZE

    def _write(self, results: Sequence[int]) -> None:
        n = min(len(results), self._nres)
        mask = (1 << 64) - 1
        for i in range(n):
            self._res[i] = results[i] & mask
        uclib.uc_reg_write_batch(self._uch, self._res_regs, self._res_ptrs, n)
