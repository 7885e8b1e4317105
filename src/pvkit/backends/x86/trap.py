"""The x86 vCPU's hypercall and MSR traps: the C extension `_x86trap`, or the same in ctypes.

Both install an invalid-instruction hook that serves native VMCALL/VMMCALL with one
Python call, and (with `watch_msr`) find RDMSR/WRMSR as code is translated and hook each
site alone; `_x86trap.c` says how. The ctypes trap is the fallback where the extension
cannot be built, and the reference the tests compare the C trap with.
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable
from typing import Any, Protocol

from unicorn import (  # type: ignore[attr-defined]  # re-exported names
    UC_HOOK_BLOCK,
    UC_HOOK_CODE,
    UC_HOOK_EDGE_GENERATED,
    UC_HOOK_INSN_INVALID,
    Uc,
)
from unicorn import x86_const as r
from unicorn.unicorn_const import UC_CTL_IO_WRITE, UC_CTL_TB_REMOVE_CACHE
from unicorn.unicorn_py3.unicorn import uclib

from pvkit.backends.trap import TrapPath, uc_function_addresses
from pvkit.backends.uc_controls import reg_pointers
from pvkit.backends.x86 import regs as x
from pvkit.backends.x86.paging import TranslationFault, translate
from pvkit.hypercall.answer_table import DirectError
from pvkit.hypercall.namespace import DirectHandler
from pvkit.machine.memory import GuestMemory

try:
    from pvkit.backends.x86 import _x86trap  # type: ignore[attr-defined]
except ImportError:  # the optional extension was not built on this machine
    _x86trap = None

# on_call(gprs, vmmcall, cpl, long_mode) -> RAX, or None when a fault was reported
OnCall = Callable[[tuple[int, int, int, int, int], bool, int, bool], int | None]
OnInvalid = Callable[[], None]
# on_msr(write, index, value) -> None (not ours: the engine runs it), False (a fault was
# delivered or reported), or the value read (True for a write that was served)
OnMsr = Callable[[bool, int, int], int | bool | None]
REGS = (
    r.UC_X86_REG_RAX,
    r.UC_X86_REG_RBX,
    r.UC_X86_REG_RCX,
    r.UC_X86_REG_RDX,
    r.UC_X86_REG_RSI,
    r.UC_X86_REG_RIP,
    r.UC_X86_REG_CS,
    r.UC_X86_REG_CR0,
    r.UC_X86_REG_CR3,
    r.UC_X86_REG_MSR,
    r.UC_X86_REG_GDTR,
)
REMOVE_CACHE = UC_CTL_TB_REMOVE_CACHE | 2 << 26 | UC_CTL_IO_WRITE << 30  # UC_CTL_WRITE(.., 2)
_PAGE = 4096
MASK64 = (1 << 64) - 1


class X86Trap(Protocol):
    python_calls: int  # the dispatcher's calls and the direct handlers'
    direct_calls: int
    table_hits: int
    msr_calls: int
    answers_enabled: bool  # False while tracing: no constant answers, no direct handlers

    def install(self) -> None: ...

    def remove(self) -> None: ...

    def set_answers(self, answers: dict[int, int]) -> None: ...

    def set_direct(
        self, direct: dict[int, DirectHandler], on_error: DirectError, vcpu: int
    ) -> None: ...

    def take_error(self) -> BaseException | None: ...

    def take_restart(self) -> bool: ...

    def sites(self) -> list[int]: ...


def make_x86_trap(
    path: TrapPath,
    uc: Uc,
    memory: GuestMemory,
    native: bytes | bytearray,
    *,
    hypercalls: bool,
    watch_msr: bool,
    on_call: OnCall,
    on_invalid: OnInvalid,
    on_msr: OnMsr,
) -> X86Trap:
    """`native`: the hypercall instruction served here (empty: both), read at every call:
    the patcher's live buffer (HypercallPatcher.live_native), which a move rewrites."""
    if uc._uch is None:
        raise ValueError("the engine is already closed")
    if path is TrapPath.C and _x86trap is not None:
        functions = uc_function_addresses(
            "uc_reg_read_batch",
            "uc_reg_write_batch",
            "uc_emu_stop",
            "uc_hook_add",
            "uc_hook_del",
            "uc_ctl",
            "uc_reg_write",
        )
        trap: X86Trap = _x86trap.X86Trap(
            uc=uc._uch.value,
            functions=functions,
            remove_cache=REMOVE_CACHE,
            regs=REGS,
            ram_base=memory.base,
            ram_size=memory.size,
            ram_host=memory.host_address,
            native=native,
            hypercalls=hypercalls,
            watch_msr=watch_msr,
            on_call=on_call,
            on_invalid=on_invalid,
            on_msr=on_msr,
            # RAX..RSI and RIP (REGS' first six), loaded and stored where the engine keeps them
            pointers=reg_pointers(uc, REGS[: REGS.index(r.UC_X86_REG_RIP) + 1]),
        )
        return trap
    return CtypesX86Trap(uc, memory, native, hypercalls, watch_msr, on_call, on_invalid, on_msr)


def c_available() -> bool:
    return _x86trap is not None


class _Mmr(ctypes.Structure):
    _fields_ = (
        ("selector", ctypes.c_uint16),
        ("base", ctypes.c_uint64),
        ("limit", ctypes.c_uint32),
        ("flags", ctypes.c_uint32),
    )


class _Msr(ctypes.Structure):
    _fields_ = (("rid", ctypes.c_uint32), ("value", ctypes.c_uint64))


class _Tb(ctypes.Structure):
    _fields_ = (("pc", ctypes.c_uint64), ("icount", ctypes.c_uint16), ("size", ctypes.c_uint16))


_INVALID_HOOK = ctypes.CFUNCTYPE(ctypes.c_bool, ctypes.c_void_p, ctypes.c_void_p)
_CODE_HOOK = ctypes.CFUNCTYPE(
    None, ctypes.c_void_p, ctypes.c_uint64, ctypes.c_uint32, ctypes.c_void_p
)
_EDGE_HOOK = ctypes.CFUNCTYPE(
    None, ctypes.c_void_p, ctypes.POINTER(_Tb), ctypes.POINTER(_Tb), ctypes.c_void_p
)


class CtypesX86Trap:
    """The C trap's behaviour in Python over raw libunicorn calls (never the binding's
    per-register API)."""

    def __init__(
        self,
        uc: Uc,
        memory: GuestMemory,
        native: bytes | bytearray,
        hypercalls: bool,
        watch_msr: bool,
        on_call: OnCall,
        on_invalid: OnInvalid,
        on_msr: OnMsr,
    ):
        self._uch = uc._uch
        self._memory = memory
        self._native = native  # the patcher's live buffer: never copied
        self._hypercalls = hypercalls
        self._watch_msr = watch_msr
        self._on_call = on_call
        self._on_invalid = on_invalid
        self._on_msr = on_msr
        self.python_calls = 0
        self.direct_calls = 0
        self._direct: dict[int, DirectHandler] = {}
        self._direct_error: DirectError | None = None
        self._vcpu = 0
        self.table_hits = 0
        self.msr_calls = 0
        self.scans = 0
        self.answers_enabled = False
        self._answers: dict[int, int] = {}
        self._error: BaseException | None = None
        self._restart = False
        self._installed = False
        self._block_live = False
        self._sites: dict[int, ctypes.c_size_t] = {}
        self._vals = (ctypes.c_uint64 * len(REGS))()
        self._efer = _Msr(x.MSR_EFER, 0)
        self._gdtr = _Mmr()
        size = ctypes.sizeof(ctypes.c_uint64)
        base = ctypes.addressof(self._vals)
        pointers = [base + i * size for i in range(len(REGS))]
        pointers[9] = ctypes.addressof(self._efer)
        pointers[10] = ctypes.addressof(self._gdtr)
        self._regs = (ctypes.c_int * len(REGS))(*REGS)
        self._ptrs = (ctypes.c_void_p * len(REGS))(*pointers)
        self._rip = ctypes.c_uint64()
        self._batches: dict[tuple[int, int], tuple[Any, Any]] = {}
        self._callbacks: list[Any] = []
        self._hooks: list[ctypes.c_size_t] = []
        self._block_hook = ctypes.c_size_t()

    # -- plumbing ------------------------------------------------------------------
    def _read(self, first: int, count: int) -> list[int]:
        """REGS[first:first + count] in one batch (MSR and GDTR land in their structs)."""
        batch = self._batches.get((first, count))
        if batch is None:
            regs = (ctypes.c_int * count)(*self._regs[first : first + count])
            ptrs = (ctypes.c_void_p * count)(*self._ptrs[first : first + count])
            batch = self._batches[(first, count)] = (regs, ptrs)
        uclib.uc_reg_read_batch(self._uch, batch[0], batch[1], count)
        return list(self._vals[first : first + count])

    def _write(self, pairs: list[tuple[int, int]]) -> None:
        """One batch, but RIP (index 5) on its own: only uc_reg_write keeps the engine
        from restoring RIP when it leaves the block."""
        rip = [v for i, v in pairs if i == 5]
        pairs = [(i, v) for i, v in pairs if i != 5]
        if pairs:
            self._write_batch(pairs)
        if rip:
            self._rip.value = rip[0] & (1 << 64) - 1
            uclib.uc_reg_write(self._uch, r.UC_X86_REG_RIP, ctypes.byref(self._rip))

    def _write_batch(self, pairs: list[tuple[int, int]]) -> None:
        n = len(pairs)
        regs = (ctypes.c_int * n)(*(REGS[i] for i, _ in pairs))
        vals = (ctypes.c_uint64 * n)(*(v & (1 << 64) - 1 for _, v in pairs))
        size = ctypes.sizeof(ctypes.c_uint64)
        ptrs = (ctypes.c_void_p * n)(*(ctypes.addressof(vals) + i * size for i in range(n)))
        uclib.uc_reg_write_batch(self._uch, regs, ptrs, n)

    def _hook(self, kind: int, proto: Any, fn: Any, begin: int, end: int) -> ctypes.c_size_t:
        callback = proto(fn)
        self._callbacks.append(callback)  # the engine keeps only a raw pointer
        handle = ctypes.c_size_t()
        err = uclib.uc_hook_add(
            self._uch,
            ctypes.byref(handle),
            kind,
            ctypes.cast(callback, ctypes.c_void_p),
            None,
            ctypes.c_uint64(begin),
            ctypes.c_uint64(end),
        )
        if err:
            raise RuntimeError(f"uc_hook_add failed with error {err}")
        return handle

    def _fail(self, exc: BaseException) -> None:
        if self._error is None:
            self._error = exc
        uclib.uc_emu_stop(self._uch)

    def _remove_cache(self, pc: int, size: int) -> None:
        uclib.uc_ctl(
            self._uch, REMOVE_CACHE, ctypes.c_uint64(pc), ctypes.c_uint64(pc + max(size, 1))
        )

    def _fetch(self, cr0: int, cr3: int, address: int, n: int) -> bytes:
        """As the engine's _fetch: stops at the first unmapped byte or one outside RAM."""
        out = bytearray()
        for i in range(n):
            try:
                pa = translate(self._memory, bool(cr0 & x.CR0_PG), cr3, address + i)
            except TranslationFault:
                break
            if not self._memory.contains(pa, 1):
                break
            out += self._memory.read(pa, 1)
        return bytes(out)

    # -- Trap ----------------------------------------------------------------------
    def install(self) -> None:
        if self._installed:
            return
        self._hooks.append(self._hook(UC_HOOK_INSN_INVALID, _INVALID_HOOK, self._invalid, 1, 0))
        if self._watch_msr:
            self._hooks.append(self._hook(UC_HOOK_EDGE_GENERATED, _EDGE_HOOK, self._edge, 1, 0))
            self._block_hook = self._hook(UC_HOOK_BLOCK, _CODE_HOOK, self._first_block, 1, 0)
            self._block_live = True
        self._installed = True

    def remove(self) -> None:
        if not self._installed:
            return
        handles = [*self._hooks, *self._sites.values()]
        if self._block_live:
            handles.append(self._block_hook)
            self._block_live = False
        for handle in handles:
            uclib.uc_hook_del(self._uch, handle)
        self._hooks.clear()
        self._installed = False

    def set_answers(self, answers: dict[int, int]) -> None:
        self._answers = dict(answers)
        self.answers_enabled = True

    def set_direct(
        self, direct: dict[int, DirectHandler], on_error: DirectError, vcpu: int
    ) -> None:
        self._direct = dict(direct)
        self._direct_error = on_error
        self._vcpu = vcpu

    def take_error(self) -> BaseException | None:
        error, self._error = self._error, None
        return error

    def take_restart(self) -> bool:
        restart, self._restart = self._restart, False
        return restart

    def sites(self) -> list[int]:
        return sorted(self._sites)

    # -- hooks ---------------------------------------------------------------------
    def _invalid(self, _uc: int, _user: int) -> bool:
        try:
            rip, cs, cr0, cr3 = self._read(5, 4)
            code = self._fetch(cr0, cr3, rip, 3)
            if (
                not self._hypercalls
                or code not in (x.VMCALL, x.VMMCALL)
                or (self._native and code != self._native)
            ):
                self._on_invalid()
                return True
            gprs = self._read(0, 5)
            self._read(9, 2)
            long_mode = self._long_mode(cs, cr0, cr3)
            if long_mode is None:
                self._on_invalid()
                return True
            cpl = cs & 3
            fast = cpl == 0 and long_mode and self.answers_enabled
            rax = self._answers.get(gprs[0]) if fast else None
            direct = self._direct.get(gprs[0]) if fast and rax is None else None
            if rax is not None:
                self.table_hits += 1
            elif direct is not None:
                rax = self._call_direct(direct, gprs)
            else:
                self.python_calls += 1
                a, b, c, d, e = gprs
                rax = self._on_call((a, b, c, d, e), code == x.VMMCALL, cpl, long_mode)
                if rax is None:
                    return True
            self._write([(0, rax), (5, rip + 3)])
        except BaseException as exc:  # nothing may unwind through the engine's C frames
            self._fail(exc)
        return True

    def _call_direct(self, direct: DirectHandler, gprs: list[int]) -> int:
        """As the C trap: RAX is the first result (0 if none); a handler that raises is
        answered by on_error, as the dispatcher answers a failed handler."""
        self.python_calls += 1
        self.direct_calls += 1
        try:
            results = tuple(direct(self._vcpu, gprs[1], gprs[2], gprs[3]))
        except Exception as exc:
            if self._direct_error is None:
                raise
            results = tuple(self._direct_error(self._vcpu, gprs[0], exc))
        return results[0] & MASK64 if results else 0

    def _long_mode(self, cs: int, cr0: int, cr3: int) -> bool | None:
        """The C trap's long_mode(); None where the descriptor cannot be read."""
        if not self._efer.value & x.EFER_LMA:
            return False
        slot = cs & ~7
        if cs & 4 or slot + 7 > self._gdtr.limit:
            return False
        try:
            pa = translate(self._memory, bool(cr0 & x.CR0_PG), cr3, self._gdtr.base + slot)
        except TranslationFault:
            return None
        if not self._memory.contains(pa, 8):
            return None
        return bool(self._memory.read_u64(pa) & x.DESCRIPTOR_LONG)

    def _scan(self, pc: int, size: int) -> bool:
        self.scans += 1
        cr0, cr3 = self._read(7, 2)
        found = False
        prev = -1
        va, end = pc, pc + size
        while va < end:
            chunk = min(_PAGE - (va & (_PAGE - 1)), end - va)
            try:
                pa = translate(self._memory, bool(cr0 & x.CR0_PG), cr3, va)
            except TranslationFault:
                pa = -1
            if pa < 0 or not self._memory.contains(pa, chunk):
                prev = -1
                va += chunk
                continue
            data = self._memory.read(pa, chunk)
            for i, byte in enumerate(data):
                if prev == 0x0F and byte in (0x30, 0x32) and va + i - 1 not in self._sites:
                    site = va + i - 1
                    self._sites[site] = self._hook(UC_HOOK_CODE, _CODE_HOOK, self._site, site, site)
                    found = True
                prev = byte
            va += chunk
        return found

    def _edge(self, _uc: int, cur: Any, _prev: Any, _user: int) -> None:
        try:
            tb = cur.contents
            if self._scan(tb.pc, tb.size):
                self._remove_cache(tb.pc, tb.size)
                (rip,) = self._read(5, 1)
                self._write([(5, rip)])  # look the block up again, with its hooks
        except BaseException as exc:
            self._fail(exc)

    def _first_block(self, _uc: int, address: int, size: int, _user: int) -> None:
        if not self._block_live:
            return
        self._block_live = False
        try:
            uclib.uc_hook_del(self._uch, self._block_hook)
            self._scan(address, size)
            self._remove_cache(address, size)
            self._restart = True
            uclib.uc_emu_stop(self._uch)
        except BaseException as exc:
            self._fail(exc)

    def _site(self, _uc: int, address: int, size: int, _user: int) -> None:
        if size != 2:
            return
        try:
            cr0, cr3 = self._read(7, 2)
            code = self._fetch(cr0, cr3, address, 2)
            if len(code) != 2 or code[0] != 0x0F or code[1] not in (0x30, 0x32):
                return
            rax, _rbx, rcx, rdx = self._read(0, 4)
            write = code[1] == 0x30
            value = (rdx & 0xFFFF_FFFF) << 32 | (rax & 0xFFFF_FFFF) if write else 0
            self.msr_calls += 1
            out = self._on_msr(write, rcx & 0xFFFF_FFFF, value)
            if out is None or out is False:
                return
            if write:
                self._write([(5, address + 2)])
            else:
                self._write(
                    [(0, out & 0xFFFF_FFFF), (3, out >> 32 & 0xFFFF_FFFF), (5, address + 2)]
                )
        except BaseException as exc:
            self._fail(exc)
