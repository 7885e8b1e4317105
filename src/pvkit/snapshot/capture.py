"""Take a held board apart into a Snapshot: one section per component.

A board is held at the deterministic save point (save_point.py), or stopped by the
control plane (standing.py), which may leave vCPUs at the checkpoint after an engine
run: `checkpoints` gives their exits. Such a vCPU is saved as runnable at its PC; one
that has just executed WFI or HLT at that instruction again (it halts again at once
when it runs, or goes on if an interrupt is pending, as the run loop would decide); one
whose run turned it off as off.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pvkit.backends.arm64 import cpu_state as arm64_cpu
from pvkit.backends.base import ExitKind, VcpuExit
from pvkit.backends.x86 import cpu_state as x86_cpu
from pvkit.backends.x86.engine import X86Engine
from pvkit.machine import vm_state
from pvkit.platform import pc_state
from pvkit.platform.pc_x86 import PcX86
from pvkit.snapshot import config
from pvkit.snapshot import ram as ram_section
from pvkit.snapshot.errors import SnapshotError
from pvkit.snapshot.format import Section, Snapshot, json_section
from pvkit.snapshot.sections import SERVICE
from pvkit.snapshot.state import State

Board = config.Board


def _component(obj: Any) -> Section:
    return json_section(obj.STATE_VERSION, obj.save_state())


HALT_LENGTH = {"arm64": 4, "x86_64": 1}  # WFI; HLT (0xF4)
_RUNNABLE = (ExitKind.KICKED, ExitKind.SLICE_END, ExitKind.DEBUG, ExitKind.HALT)


class SaveLater(SnapshotError):
    """The VM stands at a moment that passes on its own: let it run a little, save then."""


def _engine_extras(engine: Any) -> State:
    """What a stopped engine holds besides registers: a kick not yet seen (it ends the
    next run at once), and on x86 an exception waiting for entry and the MSR skip."""
    extras: State = {"kicked": engine._kicked.is_set()}
    if isinstance(engine, X86Engine):
        if engine._raising is not None:
            raise SaveLater(f"vCPU {engine.vcpu} is in the middle of delivering a vector")
        budget = engine._budget
        raising = engine._to_raise
        extras["to_raise"] = [raising[0], raising[1], int(raising[2])] if raising else None
        extras["skip_at"] = budget.skip_at if budget is not None else None
    return extras


def _stood(checkpoints: Mapping[int, VcpuExit]) -> set[int]:
    """The vCPUs whose last engine run turned them off; SnapshotError for a VM that is
    stopping (a system event or a fault ends the run after this checkpoint)."""
    off = set()
    for i, exit_ in sorted(checkpoints.items()):
        if exit_.kind is ExitKind.POWER_OFF:
            off.add(i)
        elif exit_.kind is ExitKind.PAGE_ABSENT:
            raise SaveLater(f"vCPU {i} waits for a page from the host")
        elif exit_.kind not in _RUNNABLE:
            raise SnapshotError(f"the VM is stopping (vCPU {i}: {exit_.kind.value})")
    return off


def capture(
    board: Board,
    image: Path,
    compress: bool = True,
    checkpoints: Mapping[int, VcpuExit] | None = None,
    ram: bool = True,
) -> Snapshot:
    """`board` is held with every vCPU thread parked (save_point.py, standing.py);
    without `ram` for a migration that sent RAM as pages (migration/precopy.py)."""
    vm = board.vm
    x86 = isinstance(board, PcX86)
    arch = "x86_64" if x86 else "arm64"
    stood = checkpoints or {}
    off = _stood(stood)
    snap = Snapshot(arch)
    s = snap.sections
    s[config.STATE_SECTION] = config.machine_section(board, image)
    s[vm_state.STATE_SECTION] = json_section(vm_state.STATE_VERSION, vm_state.save_vm(vm, off))
    sched: Any = vm.scheduler
    s[sched.STATE_SECTION] = json_section(sched.STATE_VERSION, sched.save_state(off))
    cpu = x86_cpu if x86 else arm64_cpu
    pc_name = "rip" if x86 else "pc"
    for i in range(vm.vcpu_count):
        engine = vm_state.live_engine(vm, i)
        if engine is None or i in off:
            continue
        uc = engine._uc  # type: ignore[attr-defined]
        if x86 and (why := x86_cpu.holdable(uc)) is not None:
            # a vCPU still in its boot code gets to 64-bit mode on its own: a moment
            raise SaveLater(f"vCPU {i} cannot be saved now: {why}; save later")
        regs = cpu.save_cpu(uc)
        at = stood.get(i)
        if at is not None and at.kind is ExitKind.HALT and at.pc is not None:
            regs[pc_name] = at.pc - HALT_LENGTH[arch]  # it halts again when it runs
        s[f"cpu:{i}"] = json_section(cpu.STATE_VERSION, {**regs, **_engine_extras(engine)})
    if isinstance(board, PcX86):
        s["uart16550"] = _component(board.uart)
        s[pc_state.STATE_SECTION] = json_section(pc_state.STATE_VERSION, pc_state.save_pc(board))
        for i, apic in sorted(board.apics.items()):
            if vm_state.live_engine(vm, i) is not None:
                s[f"local-apic:{i}"] = _component(apic)
    else:
        devices = board.cpu_devices
        s["gic"] = _component(devices.gic)
        for i, timer in enumerate(devices.timers):
            s[f"timer:{i}"] = _component(timer)
        s["cpu-devices"] = _component(devices)
        s["pl011"] = _component(board.uart)
        s["pl031"] = _component(board.rtc)
        s[board.firmware.STATE_SECTION] = _component(board.firmware)
    hidden = set(config.hidden_services(board))  # the guest cannot have set anything up
    for service in board.services:
        if service.STATELESS or service.name in hidden:
            continue
        try:
            state = service.save_state()
        except NotImplementedError as exc:
            raise SnapshotError(f"{exc}: it cannot be saved (see docs/snapshot.md)") from None
        s[f"{SERVICE}:{service.name}"] = json_section(service.STATE_VERSION, state)
    if ram:
        s["ram"] = ram_section.save_ram(board.memory, compress)
    return snap
