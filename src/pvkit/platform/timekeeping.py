"""What both boards share about time: the scheduler choice and service-owned guest RAM."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from pvkit.backends.budget import BudgetUnavailable, budget_available
from pvkit.hypercall.namespace import Abi
from pvkit.machine.memory import GuestMemory, Region
from pvkit.machine.scheduling import Scheduler
from pvkit.machine.virtual_scheduler import VirtualScheduler
from pvkit.machine.wall_scheduler import WallScheduler
from pvkit.services.base import Service

SERVICE_RAM_ALIGN = 64 << 10  # DEN0057 advises whole 64 KiB pages for the records


def make_scheduler(
    vcpu_count: int, host_cpus: int | None, deterministic: bool, slice_ns: int, record: bool
) -> Scheduler:
    """`host_cpus` None: every vCPU has a host CPU of its own."""
    cpus = vcpu_count if host_cpus is None else host_cpus
    if cpus < 1:
        raise ValueError(f"--host-cpus {cpus} must be at least 1")
    if slice_ns < 1000:
        raise ValueError("a time slice must be at least 1 µs")
    if deterministic:
        if not budget_available():
            raise BudgetUnavailable(
                "--deterministic needs pvkit's C extension _budget, which was not built"
            )
        return VirtualScheduler(vcpu_count, cpus, slice_ns, record)
    return WallScheduler(vcpu_count, cpus, slice_ns, record)


def place_service_ram(
    services: Sequence[Service], abi: Abi, vcpu_count: int, memory: GuestMemory
) -> list[Region]:
    """Carve the RAM services asked for from the top of RAM, 64 KiB aligned each."""
    top = memory.region.end
    regions = []
    for s in services:
        size = s.reserved_bytes(abi, vcpu_count)
        if not size:
            continue
        size = -(-size // SERVICE_RAM_ALIGN) * SERVICE_RAM_ALIGN
        top -= size
        region = Region(top, size, s.name)
        memory.reserve(region)
        s.place(top)
        regions.append(region)
    return regions


EntryHook = Callable[[int], None]


def entry_hooks(services: Sequence[Service]) -> EntryHook | None:
    """One callable running every service's per-entry update, or None if none has one."""
    return chain_hooks(
        *(s.on_vcpu_entry for s in services if type(s).on_vcpu_entry is not Service.on_vcpu_entry)
    )


def chain_hooks(*hooks: EntryHook | None) -> EntryHook | None:
    """One callable running the given per-entry hooks in order, or None if there are none."""
    present = [h for h in hooks if h is not None]
    if len(present) <= 1:
        return present[0] if present else None

    def on_entry(vcpu: int) -> None:
        for hook in present:
            hook(vcpu)

    return on_entry
