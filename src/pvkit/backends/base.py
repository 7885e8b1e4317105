"""What the machine layer needs from a vCPU engine, whatever runs the instructions."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Protocol

from pvkit.hypercall.call import Call, Conduit
from pvkit.machine.power import StartRequest


class ExitKind(Enum):
    POWER_OFF = "power_off"  # the vCPU turned itself off (CPU_OFF)
    STOP_VM = "stop_vm"  # a system event was raised; the VM is stopping
    HALT = "halt"  # waiting for an interrupt (WFI / HLT)
    KICKED = "kicked"  # the host asked the engine to return
    SLICE_END = "slice_end"  # the instruction budget of the slice is spent
    FAULT = "fault"  # the guest did something it cannot recover from
    PAGE_ABSENT = "page_absent"  # the guest touched a page the host does not hold
    DEBUG = "debug"  # the control plane stopped it (machine/control.py): it runs on later


@dataclass(frozen=True, slots=True)
class VcpuExit:
    kind: ExitKind
    message: str = ""
    pc: int | None = None
    address: int | None = None
    user_mode: bool = False  # PAGE_ABSENT: the access came from EL0 / CPL 3
    interrupts_masked: bool = False  # PAGE_ABSENT: PSTATE.I / RFLAGS.IF=0 at the access


class VcpuEngine(Protocol):
    """One vCPU's instruction engine, created fresh at every power-on (= reset state)."""

    def start_at(self, start: StartRequest) -> None: ...

    def run(self) -> VcpuExit: ...

    def kick(self) -> None:
        """Thread-safe: make `run` return KICKED soon; harmless when not running."""

    def debug_stop(self) -> None:
        """Thread-safe: make `run` return DEBUG soon (the control plane's pause)."""

    def begin_slice(self, budget: int) -> None:
        """Make `run` return SLICE_END after `budget` more instructions (deterministic)."""

    def executed(self) -> int:
        """Instructions executed in the current slice (0 when nobody counts)."""

    def close(self) -> None: ...


EngineFactory = Callable[[int], VcpuEngine]


class SysregPort(Protocol):
    """The system registers a board emulates for one vCPU (timer, GIC CPU interface).

    `keys` are packed encodings (backends.sysreg_hook.pack); `access` returns the value of a
    read, and is ignored for a write.
    """

    keys: Sequence[int]

    def access(self, key: int, write: bool, value: int) -> int | None: ...


class HypercallPort(Protocol):
    """Where an engine sends a trapped hypercall.

    The engine reads the first `argument_count` general-purpose registers in one batch
    and writes `call.results` (at most `result_count` values) back in one batch.
    """

    argument_count: int
    result_count: int

    def on_hypercall(
        self, gprs: Sequence[int], conduit: Conduit, immediate: int, vcpu: int
    ) -> Call: ...
