"""The per-vCPU power state machine (OFF / ON_PENDING / ON), PSCI-shaped but ABI-free.

Transitions happen under the vCPU's own lock, so two vCPUs racing to power on the same
target see exactly one ACCEPTED. Each state is also written, as one byte (`POWER_CODES`),
into an array of all the VM's vCPUs that C code can read without the GIL (the hypercall
trap answers PSCI AFFINITY_INFO from it: hypercall/answer_table.py).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from enum import Enum


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


class VcpuPower:
    def __init__(self, codes: bytearray | None = None, index: int = 0) -> None:
        """`codes[index]` mirrors the state (see the module doc); None: no array."""
        self._cond = threading.Condition()
        self._codes = codes
        self._index = index
        self._state = PowerState.OFF
        self._set(PowerState.OFF)
        self._start: StartRequest | None = None
        self._closed = False

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
            self._start = start
            self._cond.notify_all()
            return PowerOnResult.ACCEPTED

    def wait_for_start(self) -> StartRequest | None:
        """Block the vCPU thread until it is asked to power on, or the VM closes."""
        with self._cond:
            while self._start is None and not self._closed:
                self._cond.wait()
            if self._closed:
                return None
            start, self._start = self._start, None
            return start

    def mark_on(self) -> None:
        with self._cond:
            self._set(PowerState.ON)

    def power_off(self) -> None:
        with self._cond:
            self._set(PowerState.OFF)
            self._start = None

    def close(self) -> None:
        """Wake a waiting thread so it can exit; used when the VM stops."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def reopen(self) -> None:
        with self._cond:
            self._closed = False
            self._set(PowerState.OFF)
            self._start = None
