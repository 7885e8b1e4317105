"""The run loop's own state in a snapshot, and the plan that continues it.

A VM is saved only while it is held (VirtualScheduler.hold_at): no vCPU executes, and
every vCPU thread is parked in one of three places: waiting for a power-on (OFF), waiting
for a host CPU (ON), or waiting in its halt for a wake-up (ON, in WFI/HLT with nothing
timed). The snapshot records which, with the pending wake-ups and interrupt vectors; a
restore puts each thread back in the same place before the hold is lifted, so the
schedule goes on exactly as it would have. This module reads the run loop's private
fields: it is the run loop's own snapshot code, kept out of vm.py.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pvkit.backends.base import VcpuEngine
from pvkit.machine.power import PowerState, StartRequest
from pvkit.machine.vm import VirtualMachine
from pvkit.snapshot.state import Fields, State

STATE_SECTION = "vm"
STATE_VERSION = 1
_POLL_S = 0.001


def parked(vm: VirtualMachine, vcpu: int) -> bool:
    """Is `vcpu`'s thread at one of the three places a snapshot can hold it?"""
    power = vm.power[vcpu]
    waiting = getattr(vm.scheduler, "waiting", None)
    return (
        (power.parked and power.state is PowerState.OFF)
        or vm._in_halt[vcpu]  # this module is vm.py's snapshot code
        or (waiting is not None and waiting(vcpu))
    )


def wait_parked(vm: VirtualMachine, stopping: Callable[[], bool]) -> bool:
    """Wait (polling: only for the threads to get there, never for a result) until every
    vCPU thread is parked; False if the VM stopped first."""
    while not all(parked(vm, i) for i in range(vm.vcpu_count)):
        if stopping():
            return False
        time.sleep(_POLL_S)
    return True


def live_engine(vm: VirtualMachine, vcpu: int) -> VcpuEngine | None:
    with vm._lock:
        return vm._engines[vcpu]


def save_vm(vm: VirtualMachine) -> State:
    """Taken while every thread is parked."""
    with vm._lock:
        return {
            "power": [p.state.value for p in vm.power],
            "in_halt": list(vm._in_halt),
            "halted": list(vm._halted),
            "wakeups": [w.is_set() for w in vm._wakeups],
            "interrupts": [q.pending() for q in vm.interrupts],
            "resets": vm.resets,
        }


@dataclass
class VmResume:
    """The Resume plan of a restored VM: `engines[i]` loads vCPU i's saved state."""

    state: Fields
    engines: dict[int, Callable[[Any], None]]
    restore_scheduler: Callable[[], None]
    lift_hold: Callable[[], None]
    _power: list[str] = field(default_factory=list)

    def check(self, vcpu_count: int) -> None:
        """Before anything runs: the saved map fits this VM (SnapshotError if not)."""
        s = self.state
        power = s.raw("power")
        if not isinstance(power, list) or len(power) != vcpu_count:
            raise s.bad("power", f"{vcpu_count} power states")
        if not set(power) <= {PowerState.ON.value, PowerState.OFF.value}:
            raise s.bad("power", "on or off for each vCPU")
        on = {i for i, p in enumerate(power) if p == PowerState.ON.value}
        if on != set(self.engines):
            raise s.bad("power", "on exactly for the vCPUs whose registers it holds")
        for key in ("in_halt", "halted", "wakeups"):
            s.flags(key, vcpu_count)
        vectors = s.raw("interrupts")
        if not isinstance(vectors, list) or len(vectors) != vcpu_count:
            raise s.bad("interrupts", f"{vcpu_count} lists of vectors")
        for v in vectors:
            Fields(s.section, {"v": v}).integers("v", hi=0xFF)
        s.integer("resets")
        self._power = power

    def apply(self, vm: VirtualMachine) -> None:
        s = self.state
        self.restore_scheduler()
        in_halt = s.flags("in_halt", vm.vcpu_count)
        vm._halted = s.flags("halted", vm.vcpu_count)
        vm.resets = s.integer("resets")
        for i, pending in enumerate(s.flags("wakeups", vm.vcpu_count)):
            if pending:
                vm._wakeups[i].set()
        for queue, vectors in zip(vm.interrupts, s.raw("interrupts"), strict=True):  # type: ignore[call-overload]
            for vector in vectors:
                queue.post(vector)
        for i, restore in self.engines.items():
            vm.power[i].resume_on(StartRequest(0, 0, restore=restore, in_halt=in_halt[i]))

    def release(self, vm: VirtualMachine) -> None:
        if wait_parked(vm, vm._stop.is_set):
            self.lift_hold()
