"""What every board is to its services and its user, whatever the architecture.

The arm64 `virt` and x86 `pc` boards differ in devices, boot and ABI; the Platform view
below (power, system events, wake-ups, time, guest RAM) and the configuration steps
(service choice, scheduler) are the same, so they live here once.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable

from pvkit.backends.budget import BudgetUnavailable
from pvkit.hypercall.namespace import Abi
from pvkit.machine.memory import GuestMemory
from pvkit.machine.power import PowerOnResult, PowerState, StartRequest
from pvkit.machine.scheduling import Scheduler
from pvkit.machine.vm import StopKind, StopReason, VirtualMachine
from pvkit.platform.swap import SwapController
from pvkit.platform.timekeeping import make_scheduler
from pvkit.services.base import Service, SystemEvent
from pvkit.services.profiles import HostProfile
from pvkit.services.registry import services_for

# Real time at counter 0 when time is deterministic: the Unix epoch, the date the virt
# board's RTC and kvmclock's wall clock give then too (the same run, the same date).
DETERMINISTIC_EPOCH_NS = 0


def stdout_console(data: bytes) -> None:
    """The default UART sink: the host's stdout, flushed at each line end."""
    sys.stdout.buffer.write(data)
    if data == b"\n":
        sys.stdout.buffer.flush()


def stderr_notice(message: str) -> None:
    """The default sink for what the VM reports while it runs (not a stop reason)."""
    print(f"pvkit: {message}", file=sys.stderr, flush=True)


class ConfigError(ValueError):
    """A host-side configuration mistake, reported as one sentence."""


def select_services(
    profile: HostProfile, abi: Abi, extra: Iterable[Service], disabled: Iterable[str]
) -> list[Service]:
    """The profile's services that speak `abi`, minus `disabled`, plus `extra`.

    `disabled` names built-in services only (an unknown name is a mistake, not a no-op);
    an `extra` service is never dropped by it, even one that kept a built-in's name to
    replace it. Two services of one name, or an `extra` that cannot speak `abi`, are errors.
    """
    off = set(disabled)
    if off:  # the catalog builds every profile's services: only to check these names
        from pvkit.services.catalog import ARCH_OF, builtin_names

        known = builtin_names(abi)
        unknown = sorted(off.difference(known))
        if unknown:
            raise ConfigError(
                f"--disable {unknown[0]!r}: no built-in {ARCH_OF[abi]} service has that name; "
                f"choose from {', '.join(known)}"
            )
    chosen = [s for s in services_for(profile, abi) if s.name not in off]
    for s in extra:
        if abi not in s.abis:
            from pvkit.services.catalog import ARCH_OF

            speaks = ", ".join(sorted(a.value for a in s.abis)) or "no ABI"
            raise ConfigError(
                f"service {s.name!r} speaks {speaks}, not {abi.value}: it cannot serve an "
                f"{ARCH_OF[abi]} VM"
            )
        if any(c.name == s.name for c in chosen):
            raise ConfigError(
                f"two services are named {s.name!r}: give yours a name of its own, or "
                f"--disable {s.name} if it replaces the built-in one"
            )
        chosen.append(s)
    return chosen


def scheduler_for(
    vcpu_count: int, host_cpus: int | None, deterministic: bool, slice_ns: int, record: bool
) -> Scheduler:
    try:
        return make_scheduler(vcpu_count, host_cpus, deterministic, slice_ns, record)
    except (ValueError, BudgetUnavailable) as exc:
        raise ConfigError(str(exc)) from None


class BoardPlatform:
    """The part of the services' Platform view that is the same on every board."""

    vm: VirtualMachine
    scheduler: Scheduler
    memory: GuestMemory
    services: list[Service]
    swap: SwapController | None

    def reset_pv_state(self) -> None:
        """First boot and every reset: services forget what the guest set up, and the
        pages absent at boot are absent again."""
        for service in self.services:
            service.reset()
        if self.swap is not None:
            self.swap.boot()

    @property
    def vcpu_count(self) -> int:
        return self.vm.vcpu_count

    def power_state(self, vcpu: int) -> PowerState:
        return self.vm.power[vcpu].state

    def power_on(self, vcpu: int, start: StartRequest) -> PowerOnResult:
        return self.vm.power_on(vcpu, start)

    def system_event(self, event: SystemEvent, detail: str = "") -> None:
        kind = StopKind.SHUTDOWN if event is SystemEvent.SHUTDOWN else StopKind.RESET
        self.vm.request_stop(StopReason(kind, detail))

    def wake(self, vcpu: int) -> bool:
        return self.vm.wake(vcpu)

    def stolen_ns(self, vcpu: int) -> int:
        return self.scheduler.steal_ns(vcpu)

    def now_ns(self, vcpu: int) -> int:
        return self.scheduler.now_ns(vcpu)

    def wall_clock_ns(self, vcpu: int) -> tuple[int, int]:
        now_ns = self.scheduler.now_ns
        if self.scheduler.deterministic:
            counter = now_ns(vcpu)
            return DETERMINISTIC_EPOCH_NS + counter, counter
        before = now_ns(vcpu)
        wall = time.time_ns()
        after = now_ns(vcpu)
        return wall, (before + after) // 2  # the counter at the middle of the read

    def store_u64(self, address: int, value: int) -> bool:
        if address % 8 or not self.memory.contains(address, 8):
            return False
        self.memory.store_u64(address, value)
        return True

    def guest_view(self, address: int, size: int) -> memoryview | None:
        return self.memory.view(address, size) if self.memory.contains(address, size) else None

    def is_ram(self, address: int, size: int) -> bool:
        return self.memory.contains(address, size)

    def read_guest_u32(self, address: int) -> int | None:
        return self.memory.read_u32(address) if self.memory.contains(address, 4) else None

    def write_guest(self, address: int, data: bytes) -> bool:
        if not self.memory.contains(address, len(data)):
            return False
        self.memory.write(address, data)
        return True

    @property
    def deterministic(self) -> bool:
        return self.scheduler.deterministic
