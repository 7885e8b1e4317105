"""The per-vCPU power state machine (OFF / ON_PENDING / ON), PSCI-shaped but ABI-free.

Transitions happen under the vCPU's own lock, so two vCPUs racing to power on the same
target see exactly one ACCEPTED. Each state is also written, as one byte (`POWER_CODES`),
into an array of all the VM's vCPUs that C code can read without the GIL (the hypercall
trap answers PSCI AFFINITY_INFO from it: hypercall/answer_table.py).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from typing import Any


class PowerState(Enum):
    OFF = "off"
    ON_PENDING = "on_pending"
    ON = "on"


# A state's byte in the VM's array; `POWER_ORDER[code]` is the state of a code.
POWER_ORDER = (PowerState.OFF, PowerState.ON_PENDING, PowerState.ON)
POWER_CODES = {state: code for code, state in enumerate(POWER_ORDER)}


class PowerOnResult(Enum):
    ACCEPTED = "accepted"
    ALREADY_ON = "already_on"
    PENDING = "pending"


@dataclass(frozen=True, slots=True)
class StartRequest:
    """Where a vCPU starts and the register values it is handed.

    arm64: PC = entry, x0 = argument. x86: EIP = entry, EBX = argument, EAX = magic, in
    32-bit protected mode; with `real_mode`, a SIPI start in real mode at the page `entry`.
    """

    entry: int
    argument: int
    magic: int = 0
    real_mode: bool = False
    # A vCPU restored from a snapshot: `restore(engine)` loads its saved state instead of
    # a reset; `in_halt` if it was saved waiting in WFI/HLT.
    restore: Callable[[Any], None] | None = None
    in_halt: bool = False


class VcpuPower:
    def __init__(self, codes: bytearray | None = None, index: int = 0) -> None:
        """`codes[index]` mirrors the state (see the module doc); None: no array."""
        self._cond = threading.Condition()
        self._codes = codes
        self._index = index
        self._state = PowerState.OFF
        self._set(PowerState.OFF)
        self._start: StartRequest | None = None
        self._pending: StartRequest | None = None  # ON_PENDING's request, until it is on
        self._closed = False
        self.parked = False  # the thread waits for a power-on (snapshots)

    def _set(self, state: PowerState) -> None:
        self._state = state
        if self._codes is not None:
            self._codes[self._index] = POWER_CODES[state]

    @property
    def state(self) -> PowerState:
        return self._state

    def request_on(self, start: StartRequest) -> PowerOnResult:
        with self._cond:
            if self._state is PowerState.ON:
                return PowerOnResult.ALREADY_ON
            if self._state is PowerState.ON_PENDING:
                return PowerOnResult.PENDING
            self._set(PowerState.ON_PENDING)
            self._start = self._pending = start
            self._cond.notify_all()
            return PowerOnResult.ACCEPTED

    def wait_for_start(self) -> StartRequest | None:
        """Block the vCPU thread until it is asked to power on, or the VM closes."""
        with self._cond:
            self.parked = True
            while self._start is None and not self._closed:
                self._cond.wait()
            self.parked = False
            if self._closed:
                return None
            start, self._start = self._start, None
            return start

    def restore_pending(self) -> bool:
        """A restored vCPU's start waits for its thread (which builds its engine at once,
        before any pause can hold it)."""
        with self._cond:
            return self._start is not None and self._start.restore is not None

    def pending_start(self) -> StartRequest | None:
        """While ON_PENDING: where the vCPU will start (snapshots keep it)."""
        with self._cond:
            return self._pending if self._state is PowerState.ON_PENDING else None

    def mark_on(self) -> None:
        with self._cond:
            self._set(PowerState.ON)
            self._pending = None

    def power_off(self) -> None:
        with self._cond:
            self._set(PowerState.OFF)
            self._start = self._pending = None

    def resume_on(self, start: StartRequest) -> None:
        """A restored vCPU is ON at once (its thread loads `start.restore`), as it was."""
        with self._cond:
            self._set(PowerState.ON)
            self._start = start
            self._cond.notify_all()

    def close(self) -> None:
        """Wake a waiting thread so it can exit; used when the VM stops."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def reopen(self) -> None:
        with self._cond:
            self._closed = False
            self._set(PowerState.OFF)
            self._start = self._pending = None
