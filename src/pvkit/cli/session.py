"""What `pvkit run` and `pvkit restore` share once the VM is built: its front ends (gdb
stub, monitor, --save-at), its sinks (--trace, --stats, --timeline), the run with the
host's console, and the report and exit status.

The gdb stub and the monitor are imported only when asked for, so a run without them
does not pay for loading them.
"""

from __future__ import annotations

import contextlib
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn, TypeAlias

from pvkit.cli.gdb_stub import start_gdb_stub
from pvkit.cli.options import VerbExit, fail, say
from pvkit.cli.policy import RuleCounter
from pvkit.cli.swap import print_swap_stats
from pvkit.devices.console import BufferedConsole, HostInput
from pvkit.loader.symbols import SymbolTable
from pvkit.machine.scheduling import Scheduler
from pvkit.machine.vm import StopKind, StopReason
from pvkit.platform import virt_arm64
from pvkit.trace.stats import CallStats

if TYPE_CHECKING:
    from rich.console import Console

    from pvkit.monitor.server import MonitorServer
    from pvkit.platform import pc_x86
    from pvkit.snapshot.migration.point import MigratePoint
    from pvkit.snapshot.save_point import SavePoint
    from pvkit.trace.timeline import TimelineSink

Board: TypeAlias = "virt_arm64.VirtArm64 | pc_x86.PcX86"  # pc_x86 only when it runs

EXIT_CODES = {
    StopKind.SHUTDOWN: 0,
    StopKind.RESET: 0,
    StopKind.FAULT: 1,
    StopKind.PANIC: 5,
    StopKind.IDLE: 3,
    StopKind.TIMEOUT: 4,
    StopKind.INTERRUPTED: 130,
    StopKind.SAVED: 0,
    StopKind.QUIT: 0,
    StopKind.MIGRATED: 0,
}


@dataclass(frozen=True)
class Session:
    """The run's host-side choices: where its reports go and which front ends it has."""

    trace: Path | None = None
    stats: bool = False
    timeline: Path | None = None
    timeout: float | None = None
    gdb: str | None = None
    gdb_default: bool = False
    freeze: bool = False
    monitor: str | None = None
    save_at: float | None = None
    save: Path | None = None
    migrate_at: float | None = None
    migrate_to: str | None = None

    def check(self) -> None:
        """Before the VM is built: the mistakes that need no VM to be seen."""
        if self.timeline is not None and not self.timeline.parent.is_dir():
            raise fail(
                f"cannot write timeline {self.timeline}: no directory {self.timeline.parent}"
            )
        if (self.migrate_at is None) != (self.migrate_to is None):
            raise fail("--migrate-at and --migrate-to go together: give the time and the address")
        if self.migrate_at is not None and self.save_at is not None:
            raise fail("give --save-at or --migrate-at, not both: the VM leaves at the first")
        _check_ms(self.migrate_at, "--migrate-at")
        if self.save_at is None and self.save is None:
            return
        if self.save_at is None or self.save is None:
            raise fail("--save-at and --save go together: give the time and the file")
        _check_ms(self.save_at, "--save-at")


def _check_ms(ms: float | None, option: str) -> None:
    if ms is not None and (not math.isfinite(ms) or ms < 0):
        raise fail(f"{option} {ms:g}: give a time in ms, 0 or more")


def run_and_report(
    machine: Board,
    arch: str,
    image: Path | None,
    session: Session,
    console: BufferedConsole,
    rules: RuleCounter | None = None,
    symbols: SymbolTable | None = None,
) -> NoReturn:
    """Run the VM to its end with the session's front ends and sinks, print what was
    asked for, and exit with the status the stop reason gives."""
    hub = machine.trace
    call_stats = CallStats()
    if session.stats:
        hub.attach(call_stats)
        if rules is not None:
            hub.attach(rules)
    save_point = _save_point(machine, image, session)
    migrate_point = _migrate_point(machine, image, session)
    # -S holds the VM for gdb when there is one, else for the monitor's `cont`.
    gdb = session.gdb is not None or session.gdb_default
    if session.freeze and not gdb and session.monitor is None:
        raise fail(
            "-S/--freeze waits for a debugger or the monitor: give --gdb tcp::PORT (or -s) "
            "or --monitor unix:PATH too"
        )
    freeze = session.freeze and gdb
    stub = start_gdb_stub(machine.vm, arch, session.gdb, session.gdb_default, freeze)
    monitor = _start_monitor(machine, image, session.monitor, session.freeze and not gdb)
    sched = machine.vm.scheduler
    sink = None
    if session.timeline is not None:
        from pvkit.trace.timeline import TimelineSink

        sink = TimelineSink(sched.now_ns)
    if sink is not None:
        hub.attach(sink)
    with contextlib.ExitStack() as stack:
        if session.trace is not None:
            try:
                stream = stack.enter_context(session.trace.open("w", encoding="utf-8"))
            except OSError as exc:
                raise fail(f"cannot write trace file {session.trace}: {exc.strerror}") from None
            from pvkit.trace.jsonl import JsonLinesSink

            hub.attach(JsonLinesSink(stream, sched.now_ns))  # the timeline's clock
        stack.callback(console.close)
        if isinstance(machine, virt_arm64.VirtArm64):
            # The guest's console reads the host's stdin (raw mode on a terminal, restored
            # on every way out); input arrives as PL011 receive interrupts.
            host_input = HostInput(machine.uart.feed, on_end=machine.vm.check_idle)
            machine.uart.more_input = lambda: not host_input.wait(0)
            stack.enter_context(host_input.start())
        reason = machine.run(session.timeout)
        status = reason.status if reason.status is not None else EXIT_CODES[reason.kind]
        if stub is not None:  # a client waiting for the VM hears how it ended
            stub.finish(status)
        if monitor is not None:
            monitor.finish()
        machine.vm.control.end()
        if save_point is not None:
            save_point.cancel()
        if migrate_point is not None:
            migrate_point.cancel()
        hub.close()
    sys.stdout.flush()
    _report(machine, arch, session, reason, call_stats, rules, sink, symbols)
    raise VerbExit(status)


def _save_point(machine: Board, image: Path | None, session: Session) -> SavePoint | None:
    """The save point --save-at asks for (installed), or None; a VM it cannot save exits 2."""
    if session.save_at is None or session.save is None:
        return None
    from pvkit.platform.board import ConfigError
    from pvkit.snapshot.save_point import SavePoint

    try:
        point = SavePoint(machine, image, round(session.save_at * 1_000_000), session.save)  # type: ignore[arg-type]
    except ConfigError as exc:
        raise fail(str(exc)) from None
    point.install()
    return point


def _migrate_point(machine: Board, image: Path | None, session: Session) -> MigratePoint | None:
    """The migration --migrate-at asks for (installed), or None."""
    if session.migrate_at is None or session.migrate_to is None:
        return None
    from pvkit.platform.board import ConfigError
    from pvkit.snapshot.migration.address import AddressError, parse
    from pvkit.snapshot.migration.point import MigratePoint

    def failed(why: str) -> None:
        say(f"pvkit: migrate: {why}; the VM runs on here")

    try:
        to = parse(session.migrate_to, "--migrate-to")
        at_ns = round(session.migrate_at * 1_000_000)
        point = MigratePoint(machine, image, at_ns, to, failed)
    except (AddressError, ConfigError) as exc:
        raise fail(str(exc)) from None
    point.install()
    return point


def _start_monitor(
    machine: Board, image: Path | None, spec: str | None, freeze: bool
) -> MonitorServer | None:
    """The monitor --monitor asks for, listening and served (None without one)."""
    if spec is None:
        return None
    from pvkit.monitor.commands import Monitor
    from pvkit.monitor.server import AddressError, MonitorServer, parse_address

    try:
        path = parse_address(spec)
        server = MonitorServer(Monitor(machine, image, freeze), path)
    except AddressError as exc:
        raise fail(str(exc)) from None
    waits = "; the VM waits for cont" if freeze else ""
    say(f"pvkit: monitor listening on {path}{waits}")
    server.start()
    return server


def _report(
    machine: Board,
    arch: str,
    session: Session,
    reason: StopReason,
    call_stats: CallStats,
    rules: RuleCounter | None,
    sink: TimelineSink | None,
    symbols: SymbolTable | None,
) -> None:
    sched = machine.vm.scheduler
    if session.timeline is not None and sink is not None:
        try:
            sink.write(session.timeline, sched)
        except OSError as exc:
            raise fail(f"cannot write timeline {session.timeline}: {exc.strerror}") from None
    if session.stats:
        from rich.console import Console

        heading = "function ID" if isinstance(machine, virt_arm64.VirtArm64) else "nr"
        print_call_stats(Console(stderr=True), call_stats, heading)
        print_vcpu_times(sched)
        print_swap_stats(getattr(machine, "swap", None))
        if rules is not None:
            rules.print(arch)
    if machine.dispatcher.internal_errors:  # pvkit's own lines: never wrapped
        errors = machine.dispatcher.internal_errors
        say(f"pvkit: {errors} hypercall handler error(s)")
    resets = f" after {machine.vm.resets} reset(s)" if machine.vm.resets else ""
    message = reason.message
    if symbols is not None and reason.pc is not None and (where := symbols.describe(reason.pc)):
        message += f" ({where})"
    say(f"pvkit: {reason.kind.value}{resets}: {message}")


def print_vcpu_times(sched: Scheduler) -> None:
    """One line per vCPU, exact (ns) for scripts and readable (steal share) for people."""
    clock = "deterministic" if sched.deterministic else "wall clock"
    say(f"pvkit: vCPU time ({clock}, {sched.host_cpus} host CPU(s))")
    for v, t in enumerate(sched.times):
        busy = t.run_ns + t.steal_ns
        share = f"{100 * t.steal_ns / busy:.1f}%" if busy else "-"
        say(
            f"pvkit: vcpu {v} run_ns={t.run_ns} steal_ns={t.steal_ns} idle_ns={t.idle_ns} "
            f"steal={share}"
        )


def print_call_stats(console: Console, stats: CallStats, id_heading: str) -> None:
    """`id_heading`: "function ID" (SMCCC, W0) or "nr" (KVM x86, RAX); both shown in hex."""
    from rich.table import Table

    table = Table(title="hypercalls")
    for col in (id_heading, "name", "count", "mean µs"):
        table.add_column(col, justify="right" if col in ("count", "mean µs") else "left")
    for row in stats.rows():
        table.add_row(f"{row.function_id:#010x}", row.name, str(row.count), f"{row.mean_us:.1f}")
    console.print(table)
