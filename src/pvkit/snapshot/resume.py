"""Put a board back together from a Snapshot, refusing before anything runs.

Order: the machine section builds the VM (with the host's choices); every service the
guest can see must be here; the firmware registers take the guest's values (refused as
KVM refuses a register it cannot honour); the services must then serve the guest at the
revisions it uses, and nothing it could not see may appear; then every
component takes its section back, RAM last; the run loop gets a Resume plan whose vCPU
threads load their registers and take the places they were saved in.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

from pvkit.backends.arm64 import cpu_state as arm64_cpu
from pvkit.backends.x86 import cpu_state as x86_cpu
from pvkit.backends.x86.engine import X86Engine
from pvkit.machine import vm_state
from pvkit.platform import pc_state
from pvkit.platform.board import ConfigError
from pvkit.platform.pc_x86 import PcX86
from pvkit.platform.virt_arm64 import VirtArm64
from pvkit.services.firmware import Firmware, FirmwareError
from pvkit.snapshot import config, ram
from pvkit.snapshot.errors import SnapshotError
from pvkit.snapshot.format import Snapshot
from pvkit.snapshot.sections import SERVICE
from pvkit.snapshot.state import Fields

Board = config.Board


def fields(snapshot: Snapshot, name: str) -> Fields:
    return Fields(name, snapshot.section(name).json(name))


def _load(snapshot: Snapshot, name: str, component: Any) -> None:
    component.restore_state(fields(snapshot, name))


def compatibility(snapshot: Snapshot, host: config.HostChoices) -> tuple[Board, Path]:
    """Build the VM the snapshot needs; SnapshotError (one sentence) if this host cannot
    serve its guest."""
    machine = fields(snapshot, config.STATE_SECTION)
    if machine.text("arch") != snapshot.arch:
        raise SnapshotError("the snapshot is damaged: its header and machine disagree on the arch")
    board, image = config.build_board(machine, host)
    check(snapshot, board)
    return board, image


def check(snapshot: Snapshot, board: Board) -> None:
    """Can `board` (built from the snapshot's machine section, not run yet) serve its
    guest? Its firmware registers take the guest's values; SnapshotError if not."""
    machine = fields(snapshot, config.STATE_SECTION)
    saved = config.saved_services(machine)
    here = {s.name for s in board.services}
    for name, revision in sorted(saved.items()):
        if name not in here:
            rev = f" revision {revision}" if revision else ""
            raise SnapshotError(
                f"cannot restore here: service {name!r}{rev}: the guest may use it, but this "
                "host leaves it out"
            )
    _load_firmware(snapshot, board)
    why = config.service_mismatch(saved, board)
    if why is not None:
        raise SnapshotError(f"cannot restore here: {why}")
    for name in snapshot.sections:
        kind, _, owner = name.partition(":")
        if kind == SERVICE and not any(s.name == owner for s in board.services):
            raise SnapshotError(f"cannot restore here: no service {owner!r} for its saved state")


def _load_firmware(snapshot: Snapshot, board: Board) -> None:
    """The guest's firmware registers onto this VM (which has not run): a register this
    VM lacks or a value it cannot serve refuses the restore."""
    name = Firmware.STATE_SECTION
    if not isinstance(board, VirtArm64):
        if name in snapshot.sections:
            raise SnapshotError(f"the snapshot is damaged: an {snapshot.arch} VM has no {name!r}")
        return
    values: dict[str, int] = {}
    if name in snapshot.sections:  # a file from before firmware registers: the defaults
        state = fields(snapshot, name)
        registers = state.raw("registers")
        if not isinstance(registers, dict) or not all(
            isinstance(k, str) and type(v) is int for k, v in registers.items()
        ):
            raise state.bad("registers", "a map of register names to integers")
        values = registers
    try:
        board.firmware.load_values(values)
    except FirmwareError as exc:
        raise SnapshotError(f"cannot restore here: {exc}") from None


def restore(
    snapshot: Snapshot,
    host: config.HostChoices,
    built: tuple[Board, Path] | None = None,
    ram_arrived: bool = False,
) -> tuple[Board, Path]:
    """A board whose next `run` continues the saved VM. `built`: the board (and image)
    `compatibility` already made of the same machine (a migration's handshake), which
    is checked again against the whole snapshot; `ram_arrived`: its RAM holds the
    guest's already (pages a migration sent), and the snapshot has none."""
    if built is None:
        board, image = compatibility(snapshot, host)
    else:
        board, image = built
        check(snapshot, board)
    vm = board.vm
    x86 = isinstance(board, PcX86)
    hidden = set(config.hidden_services(board))
    for service in board.services:
        name = f"{SERVICE}:{service.name}"
        if service.STATELESS or (service.name in hidden and name not in snapshot.sections):
            continue  # a service the guest cannot see keeps its reset state
        if name not in snapshot.sections:
            raise SnapshotError(f"the snapshot lacks the state of service {service.name!r}")
        if snapshot.sections[name].version > service.STATE_VERSION:
            raise SnapshotError(
                f"section {name!r} is version {snapshot.sections[name].version}; this "
                f"pvkit's {service.name} reads up to version {service.STATE_VERSION}"
            )
        _load(snapshot, name, service)
    engines: dict[int, Callable[[Any], None]] = {}
    for i in range(vm.vcpu_count):
        name = f"cpu:{i}"
        if name in snapshot.sections:
            state = fields(snapshot, name)
            cpu = x86_cpu if x86 else arm64_cpu
            engines[i] = partial(_restore_engine, board, state, cpu.parse_cpu(state), i)
    if isinstance(board, PcX86):
        _load(snapshot, "uart16550", board.uart)
        pc_state.restore_pc(board, fields(snapshot, pc_state.STATE_SECTION))
        if host.host_vendor is not None:
            try:  # the guest keeps its CPU model; its hypercall sites follow the host
                board.move_to_host(host.host_vendor)
            except ConfigError as exc:
                raise SnapshotError(str(exc)) from None
    else:
        if host.host_vendor is not None:
            raise SnapshotError("--cpu-vendor applies to an x86_64 VM; this one is arm64")
        devices = board.cpu_devices
        _load(snapshot, "gic", devices.gic)
        for i, timer in enumerate(devices.timers):
            _load(snapshot, f"timer:{i}", timer)
        _load(snapshot, "cpu-devices", devices)
        _load(snapshot, "pl011", board.uart)
        _load(snapshot, "pl031", board.rtc)
    sched = vm.scheduler
    clock = sched.STATE_SECTION  # type: ignore[attr-defined]  # each clock its own section
    plan = vm_state.VmResume(
        fields(snapshot, vm_state.STATE_SECTION),
        engines,
        partial(_load, snapshot, clock, sched),
        sched.lift_hold,
    )
    plan.check(vm.vcpu_count)
    _load(snapshot, clock, sched)  # now too: a damaged one is refused before the run
    if not ram_arrived or "ram" in snapshot.sections:
        ram.restore_ram(board.memory, snapshot.section("ram"))
    if x86:
        board.resume()  # type: ignore[union-attr]
        board.resume_apics = {  # type: ignore[union-attr]
            i: fields(snapshot, f"local-apic:{i}") for i in engines
        }
    else:
        board.cpu_devices.resume()  # type: ignore[union-attr]
    vm.resume = plan
    return board, image


def _restore_engine(
    board: Board, state: Fields, regs: dict[str, Any], vcpu: int, engine: Any
) -> None:
    """In the vCPU's own thread, on its freshly built engine."""
    uc = engine._uc
    if isinstance(engine, X86Engine):
        x86_cpu.load_cpu(uc, regs)
        raise_ = state.raw("to_raise")
        if raise_ is not None:
            vec, code, soft = Fields(state.section, {"r": raise_}).integers("r", 3)
            engine._to_raise = (vec, code, bool(soft))
        skip = state.opt_int("skip_at")
        if skip is not None and engine._budget is not None:
            engine._budget.skip_at = skip
        apics = getattr(board, "resume_apics", {})
        if vcpu in apics:
            board.apics[vcpu].restore_state(apics[vcpu])  # type: ignore[union-attr]
    else:
        arm64_cpu.load_cpu(uc, regs)
    if state.flag("kicked"):
        engine.kick()
