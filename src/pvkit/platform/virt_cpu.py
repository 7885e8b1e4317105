"""What the virt board adds around each arm64 vCPU: the GIC, the generic timers, IRQ lines.

The engine knows nothing of these; it sees a system-register port per vCPU (the counter,
the timer and, with GICv3, the GIC CPU interface) and an IRQ input the board drives. The
GIC and the timers know nothing of the engine. This module is where they meet.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from functools import partial
from typing import Protocol

from pvkit.backends.arm64.sysreg_hook import SysregKey, pack, unpack
from pvkit.devices.arm64.generic_timer import GenericTimer
from pvkit.devices.arm64.gicv2 import Gicv2
from pvkit.devices.arm64.gicv3 import Gicv3
from pvkit.devices.base import MmioDevice
from pvkit.machine.deadlines import DeadlineThread
from pvkit.machine.scheduling import Scheduler
from pvkit.snapshot.state import Fields, State

GIC_VERSIONS = (2, 3)
ID_AA64PFR0_EL1: SysregKey = (3, 0, 0, 4, 0)
PFR0_GIC_SYSREGS = 1 << 24  # ID_AA64PFR0_EL1.GIC = 1: GICv3 CPU interface system registers


class IrqLine(Protocol):
    def set_irq(self, level: bool) -> None: ...


class VcpuSysregs:
    """The system registers the board serves for one vCPU (a backends.base.SysregPort)."""

    def __init__(self, devices: VirtCpuDevices, vcpu: int):
        self._devices = devices
        self._vcpu = vcpu
        self._timer = devices.timers[vcpu]
        self._timer_keys = {pack(k) for k in GenericTimer.KEYS}
        keys = set(self._timer_keys)
        if devices.gic_version == 3:
            keys |= {pack(k) for k in devices.gic.sysreg_keys} | {pack(ID_AA64PFR0_EL1)}
        self.keys: Sequence[int] = sorted(keys)

    def access(self, key: int, write: bool, value: int) -> int | None:
        reg = unpack(key)
        if key in self._timer_keys:
            if write:
                self._timer.write(reg, value)
                return None
            return self._timer.read(reg)
        if reg == ID_AA64PFR0_EL1:
            return None if write else self._devices.pfr0()
        gic = self._devices.gic
        if write:
            gic.sysreg_write(self._vcpu, reg, value)
            return None
        return gic.sysreg_read(self._vcpu, reg)


class VirtCpuDevices:
    """GIC, one generic timer per vCPU, and the IRQ line of each vCPU's current engine."""

    def __init__(
        self,
        mpidrs: Sequence[int],
        gic_version: int,
        scheduler: Scheduler,
        wake: Callable[[int], object],
        redistributor_regions: Sequence[tuple[int, int]] | None = None,
    ):
        """`wake(vcpu)` ends a WFI of that vCPU (VirtualMachine.wake); `gic_version` is one
        of GIC_VERSIONS (the board checks its configuration)."""
        self.gic_version = gic_version
        self.gic: Gicv2 | Gicv3 = (
            Gicv3(mpidrs, self._signal, redistributor_regions=redistributor_regions)
            if gic_version == 3
            else Gicv2(mpidrs, self._signal)
        )
        self._wake = wake
        self._scheduler = scheduler
        count = len(mpidrs)
        self._lock = threading.Lock()
        self._levels = [False] * count
        self._lines: list[IrqLine | None] = [None] * count
        self.timers = [
            GenericTimer(partial(scheduler.now_ns, i), partial(self.gic.set_ppi, i))
            for i in range(count)
        ]
        self.deadlines = DeadlineThread(partial(scheduler.now_ns, 0))
        for i, timer in enumerate(self.timers):
            timer.on_reprogram = partial(self._arm_timer, i)
        self._pfr0: int | None = None

    # -- per vCPU -----------------------------------------------------------------------
    def sysregs(self, vcpu: int) -> VcpuSysregs:
        return VcpuSysregs(self, vcpu)

    def mmio_for(self, vcpu: int) -> list[MmioDevice]:
        return self.gic.mmio_for(vcpu)

    def attach(self, vcpu: int, line: IrqLine) -> None:
        """A new engine for `vcpu` takes over its IRQ line at the line's current level."""
        with self._lock:
            self._lines[vcpu] = line
            line.set_irq(self._levels[vcpu])

    def can_wake(self, vcpu: int) -> bool:
        """Something other than a vCPU may still interrupt `vcpu` (for the idle check)."""
        return self.gic.irq_pending(vcpu) or self.timers[vcpu].armed()

    def pfr0(self) -> int:
        """ID_AA64PFR0_EL1 as the CPU model has it, with the GIC field set (GICv3 only)."""
        assert self._pfr0 is not None, "set_cpu_id_registers runs before any vCPU"
        return self._pfr0 | PFR0_GIC_SYSREGS

    def set_cpu_id_registers(self, pfr0: int) -> None:
        self._pfr0 = pfr0

    # -- snapshots ----------------------------------------------------------------------
    STATE_SECTION = "cpu-devices"
    STATE_VERSION = 1

    def save_state(self) -> State:
        """The IRQ line levels and the CPU ID the GIC field is added to (the GIC and the
        timers save themselves)."""
        with self._lock:
            return {"levels": list(self._levels), "pfr0": self._pfr0}

    def restore_state(self, state: Fields) -> None:
        levels = state.flags("levels", len(self._levels))
        pfr0 = state.opt_int("pfr0")
        with self._lock:
            self._levels, self._pfr0 = levels, pfr0

    def resume(self) -> None:
        """After a restore: the timers' clock runs again, from the state they were given."""
        self.deadlines.stop()
        for i in range(len(self.timers)):
            self._arm_timer(i)
        if not self._scheduler.deterministic:
            self.deadlines.start()

    # -- the run ------------------------------------------------------------------------
    def start(self) -> None:
        """Power-on state (first boot and every reset), then the timers' clock runs."""
        self.deadlines.stop()
        self.gic.reset()
        for i, timer in enumerate(self.timers):
            timer.reset()
            self._arm_timer(i)
        if not self._scheduler.deterministic:
            self.deadlines.start()

    def stop(self) -> None:
        self.deadlines.stop()

    def poll_timers(self, vcpu: int) -> None:
        """Deterministic mode: let `vcpu`'s timer see the time its own instructions made."""
        self.timers[vcpu].update()

    def next_deadline(self, vcpu: int) -> int | None:
        return self.timers[vcpu].next_deadline()

    # -- wiring -------------------------------------------------------------------------
    def _arm_timer(self, vcpu: int) -> None:
        if self._scheduler.deterministic:
            return  # slices end at deadlines instead (machine/vm.py)
        timer = self.timers[vcpu]
        self.deadlines.arm(("timer", vcpu), timer.next_deadline(), partial(self._fire, vcpu))

    def _fire(self, vcpu: int) -> None:
        self.timers[vcpu].update()
        self._arm_timer(vcpu)

    def _signal(self, vcpu: int, level: bool) -> None:
        """The GIC's IRQ output to `vcpu` changed."""
        with self._lock:
            self._levels[vcpu] = level
            line = self._lines[vcpu]
            if line is not None:
                line.set_irq(level)
        if level:
            self._wake(vcpu)
