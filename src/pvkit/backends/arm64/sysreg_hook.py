"""MRS/MSR hooks that hand only the emulated system registers to Python.

Unicorn calls an arm64 instruction hook for every MRS and MSR; the board emulates a few
registers (generic timer, GIC CPU interface, counter) and the engine keeps the rest. The
C extension `_sysreg` tests a bitmap of emulated encodings before touching Python; the
fallback does the same test in Python (slow for a kernel, fine for small guests).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Protocol

from unicorn import UC_HOOK_INSN, Uc  # type: ignore[attr-defined]  # re-exported names
from unicorn import arm64_const as r

from pvkit.backends.trap import TrapPath, uc_function_addresses

try:
    from pvkit.backends.arm64 import _sysreg  # type: ignore[attr-defined]
except ImportError:  # the optional extension was not built on this machine
    _sysreg = None

SysregKey = tuple[int, int, int, int, int]  # (op0, op1, CRn, CRm, op2)
# on_access(packed key, is_write, value written) -> value read, or None for "not mine"
OnAccess = Callable[[int, bool, int], int | None]


def pack(key: SysregKey) -> int:
    """The 16-bit form the hook compares: op0[15:14] op1[13:11] CRn[10:7] CRm[6:3] op2[2:0]."""
    op0, op1, crn, crm, op2 = key
    return (op0 & 3) << 14 | (op1 & 7) << 11 | (crn & 15) << 7 | (crm & 15) << 3 | (op2 & 7)


def unpack(packed: int) -> SysregKey:
    return (packed >> 14 & 3, packed >> 11 & 7, packed >> 7 & 15, packed >> 3 & 15, packed & 7)


class SysregHook(Protocol):
    python_calls: int

    def install(self) -> None: ...

    def remove(self) -> None: ...

    def take_error(self) -> BaseException | None: ...


def make_sysreg_hook(
    path: TrapPath, uc: Uc, keys: Iterable[int], on_access: OnAccess
) -> SysregHook:
    """`keys` are packed encodings; the same trap path choice as the hypercall trap."""
    if uc._uch is None:
        raise ValueError("the engine is already closed")
    if path is TrapPath.C and _sysreg is not None:
        functions = uc_function_addresses(
            "uc_reg_write", "uc_emu_stop", "uc_hook_add", "uc_hook_del"
        )
        hook: SysregHook = _sysreg.SysregHook(
            uc=uc._uch.value, functions=functions, keys=list(keys), on_access=on_access
        )
        return hook
    return PythonSysregHook(uc, keys, on_access)


class PythonSysregHook:
    """The C hook's behaviour through the binding's own instruction hooks."""

    def __init__(self, uc: Uc, keys: Iterable[int], on_access: OnAccess):
        self._uc = uc
        self._keys = frozenset(keys)
        self._on_access = on_access
        self._handles: list[int] = []
        self._error: BaseException | None = None
        self.python_calls = 0

    def install(self) -> None:
        if self._handles:
            return
        for insn, write in ((r.UC_ARM64_INS_MRS, False), (r.UC_ARM64_INS_MSR, True)):
            self._handles.append(self._uc.hook_add(UC_HOOK_INSN, self._hook, write, 1, 0, insn))

    def remove(self) -> None:
        for handle in self._handles:
            self._uc.hook_del(handle)
        self._handles = []

    def take_error(self) -> BaseException | None:
        error, self._error = self._error, None
        return error

    def _hook(self, uc: Uc, reg: int, cp_reg: object, write: bool) -> bool:
        key = pack(
            (
                getattr(cp_reg, "op0"),  # noqa: B009  # a ctypes structure without type hints
                getattr(cp_reg, "op1"),  # noqa: B009
                getattr(cp_reg, "crn"),  # noqa: B009
                getattr(cp_reg, "crm"),  # noqa: B009
                getattr(cp_reg, "op2"),  # noqa: B009
            )
        )
        if key not in self._keys:
            return False
        try:
            self.python_calls += 1
            value = self._on_access(key, write, getattr(cp_reg, "val"))  # noqa: B009
            if write:
                return True
            if value is None:
                return False
            uc.reg_write(reg, value)
            return True
        except BaseException as exc:  # nothing may unwind through the engine's C frames
            if self._error is None:
                self._error = exc
            uc.emu_stop()
            return True
