"""What the x86 engine is given: firmware layout, hypercall port, MSR bus; and one hook helper."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from unicorn import UC_HOOK_INSN, Uc  # type: ignore[attr-defined]  # re-exported names
from unicorn.unicorn_py3.arch import intel
from unicorn.unicorn_py3.unicorn import uccallback

from pvkit.hypercall.call import Call, Conduit


@dataclass(frozen=True, slots=True)
class Firmware:
    """Where the platform put the boot GDT and the AP reset stub (see loader/x86_boot.py)."""

    gdt: int
    gdt_limit: int
    reset_stub: int
    sipi_slots: int
    stub_segment_base: int


class MsrBus(Protocol):
    """Model-specific registers the platform serves: None means "not one of ours" (the
    engine's own MSR); a write answered False is refused with #GP."""

    def read_msr(self, vcpu: int, index: int) -> int | None: ...

    def write_msr(self, vcpu: int, index: int, value: int) -> bool | None: ...


class X86HypercallPort(Protocol):
    def on_hypercall(
        self, gprs: Sequence[int], conduit: Conduit, cpl: int, long_mode: bool, vcpu: int
    ) -> Call: ...


def hook_insn(uc: Uc, insn: int, callback: Callable[[Uc, object], int]) -> None:
    """An instruction hook the Python binding does not offer (RDTSC), with the C
    signature of CPUID's: int cb(uc, user_data); 1 means "done, skip the instruction"."""

    @uccallback(uc, intel.HOOK_INSN_CPUID_CFUNC)  # type: ignore[arg-type, untyped-decorator]
    def trampoline(_uc: Uc, _key: int) -> int:
        return callback(uc, None)

    uc._Uc__do_hook_add(UC_HOOK_INSN, trampoline, 1, 0, insn)  # type: ignore[attr-defined]
