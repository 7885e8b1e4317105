"""Instruction budgets for vCPU engines (the C extension `_budget`), for deterministic time."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from unicorn import Uc  # type: ignore[attr-defined]  # re-exported name

from pvkit.backends.trap import uc_function_addresses
from pvkit.machine.memory import GuestMemory

try:
    from pvkit.backends import _budget  # type: ignore[attr-defined]
except ImportError:  # built without a C compiler
    _budget = None


class BudgetUnavailable(RuntimeError):
    """The `_budget` extension was not built (pip install needs gcc and Python headers)."""


NOT_STOPPED = 2**64 - 1  # msr_at / skip_at when unset


class InsnBudget(Protocol):
    executed: int
    budget: int
    msr_at: int
    skip_at: int
    # A debugger's stops (pvkit.debug), exact in the count: hold before the next
    # instruction; step = 1 runs one instruction and then holds (step reads 2 once it
    # ran); bp_hit is the breakpoint address that held it (NOT_STOPPED when none).
    hold: int
    step: int
    bp_hit: int

    def install(self) -> None: ...

    def remove(self) -> None: ...

    def set_breakpoints(self, addresses: Sequence[int]) -> None: ...


def budget_available() -> bool:
    return _budget is not None


def make_budget(uc: Uc, watch_msr: GuestMemory | None = None) -> InsnBudget:
    """Count instructions; with `watch_msr` (guest RAM) also stop before RDMSR/WRMSR."""
    if _budget is None:
        raise BudgetUnavailable(
            "counting instructions (--deterministic, x86 PV MSRs) needs pvkit's C extension "
            "_budget, which was not built (reinstall with gcc and the Python headers present)"
        )
    if uc._uch is None:
        raise ValueError("the engine is already closed")

    emu_stop, hook_add, hook_del = uc_function_addresses(
        "uc_emu_stop", "uc_hook_add", "uc_hook_del"
    )
    budget: InsnBudget = _budget.InsnBudget(
        uc=uc._uch.value,
        emu_stop=emu_stop,
        hook_add=hook_add,
        hook_del=hook_del,
        watch_msr=watch_msr is not None,
        ram_base=watch_msr.base if watch_msr else 0,
        ram_size=watch_msr.size if watch_msr else 0,
        ram_host=watch_msr.host_address if watch_msr else 0,
    )
    budget.install()
    return budget
