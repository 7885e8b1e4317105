"""The run loop's own state in a snapshot, and the plan that continues it.

A VM is saved only while no vCPU executes. At the deterministic save point
(VirtualScheduler.hold_at) every vCPU thread is parked in one of three places: waiting
for a power-on (OFF), waiting for a host CPU (ON), or waiting in its halt for a wake-up
(ON, in WFI/HLT with nothing timed). The snapshot records which, with the pending
wake-ups and interrupt vectors; a restore puts each thread back in the same place before
the hold is lifted, so the schedule goes on exactly as it would have. A VM stopped by the
control plane (machine/control.py) may also have vCPUs at the checkpoint after an engine
run (saved as runnable, or off if that run turned them off) and vCPUs powered on but not
started yet (ON_PENDING: saved with where they start). This module reads the run loop's
private fields: it is the run loop's own snapshot code, kept out of vm.py.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from typing import Any

from pvkit.backends.base import VcpuEngine
from pvkit.machine.power import PowerState, StartRequest
from pvkit.machine.vm import VirtualMachine
from pvkit.snapshot.state import Fields, State

STATE_SECTION = "vm"
STATE_VERSION = 2  # 2: "starts" of vCPUs powered on but not started yet
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


def _start(start: StartRequest | None) -> State | None:
    if start is None:
        return None
    return {"entry": start.entry, "argument": start.argument, "magic": start.magic,
            "real_mode": start.real_mode}  # fmt: skip


def save_vm(vm: VirtualMachine, off: Collection[int] = ()) -> State:
    """Taken while every thread is parked; `off`: vCPUs stopped right after the engine
    run that turned them off (they are off for the snapshot)."""
    with vm._lock:
        return {
            "power": [
                PowerState.OFF.value if i in off else p.state.value for i, p in enumerate(vm.power)
            ],
            "starts": [_start(p.pending_start()) for p in vm.power],
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
    _starts: dict[int, StartRequest] = field(default_factory=dict)

    def check(self, vcpu_count: int) -> None:
        """Before anything runs: the saved map fits this VM (SnapshotError if not)."""
        s = self.state
        power = s.raw("power")
        if not isinstance(power, list) or len(power) != vcpu_count:
            raise s.bad("power", f"{vcpu_count} power states")
        if not set(power) <= {p.value for p in PowerState}:
            raise s.bad("power", "on, off or on_pending for each vCPU")
        on = {i for i, p in enumerate(power) if p == PowerState.ON.value}
        if on != set(self.engines):
            raise s.bad("power", "on exactly for the vCPUs whose registers it holds")
        starts = s.raw("starts") if s.has("starts") else [None] * vcpu_count
        if not isinstance(starts, list) or len(starts) != vcpu_count:
            raise s.bad("starts", f"{vcpu_count} start requests or nulls")
        self._starts = {}
        for i, (p, start) in enumerate(zip(power, starts, strict=True)):
            if (p == PowerState.ON_PENDING.value) != (start is not None):
                raise s.bad("starts", "a start request exactly for each on_pending vCPU")
            if start is not None:
                if not isinstance(start, dict):
                    raise s.bad("starts", "a list of start requests")
                f = Fields(f"{s.section}.starts[{i}]", start)
                self._starts[i] = StartRequest(
                    f.integer("entry"), f.integer("argument"), f.integer("magic"),
                    f.flag("real_mode"),
                )  # fmt: skip
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
        for i, start in self._starts.items():
            vm.power_on(i, start)  # powered on, not started yet: it starts afresh

    def release(self, vm: VirtualMachine) -> None:
        """Deterministic time: once every thread has taken its place, the schedule
        goes on (wall-clock time holds nothing: the threads just run)."""
        if vm.scheduler.deterministic and wait_parked(vm, vm._stop.is_set):
            self.lift_hold()
