"""`pvkit restore FILE`: continue a saved VM, with the host's side chosen anew."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from pvkit.cli.firmware import restored_revision_notice
from pvkit.cli.options import fail, parse_host_cpus, parse_slice_ms, parse_timeout
from pvkit.cli.session import (
    FreezeOption,
    GdbDefaultOption,
    GdbOption,
    MigrateAtOption,
    MigrateToOption,
    MonitorOption,
    SaveAtOption,
    SaveOption,
    Session,
    StatsOption,
    TimelineOption,
    TimeoutOption,
    TraceOption,
    run_and_report,
)
from pvkit.devices.console import BufferedConsole
from pvkit.platform import pc_x86
from pvkit.snapshot.config import HostChoices
from pvkit.snapshot.format import SnapshotError, read_snapshot
from pvkit.snapshot.resume import restore as restore_board
from pvkit.snapshot.sections import KNOWN


def restore(
    file: Annotated[Path, typer.Argument(help="a snapshot written by --save-at/--save or savevm")],
    host_cpus: Annotated[
        int | None, typer.Option(help="host CPUs the vCPUs share (default: as saved)")
    ] = None,
    slice_ms: Annotated[
        float | None, typer.Option(help="scheduler time slice in ms (default: as saved)")
    ] = None,
    disable: Annotated[
        list[str] | None, typer.Option(help="leave this service out (refused if the guest has it)")
    ] = None,
    trace: TraceOption = None,
    stats: StatsOption = False,
    timeout: TimeoutOption = None,
    timeline: TimelineOption = None,
    gdb: GdbOption = None,
    gdb_default: GdbDefaultOption = False,
    freeze: FreezeOption = False,
    monitor: MonitorOption = None,
    save_at: SaveAtOption = None,
    save: SaveOption = None,
    pv_time_revision: Annotated[
        int | None,
        typer.Option(help="arm64: the revision a VM booted here gets; the guest keeps its own"),
    ] = None,
    migrate_at: MigrateAtOption = None,
    migrate_to: MigrateToOption = None,
) -> None:
    """Continue the VM saved in FILE; refuses, before anything runs, one this host cannot serve."""
    session = Session(
        trace, stats, timeline, parse_timeout(timeout), gdb, gdb_default, freeze, monitor,
        save_at, save, migrate_at, migrate_to,
    )  # fmt: skip
    session.check()
    console = BufferedConsole()
    choices = HostChoices(
        host_cpus=parse_host_cpus(host_cpus),
        keep_host_cpus=host_cpus is None,
        slice_ns=parse_slice_ms(slice_ms) if slice_ms is not None else None,
        record_slices=timeline is not None,
        disabled=frozenset(disable or ()),
        console=console,
    )
    try:
        snapshot = read_snapshot(file, KNOWN)
        board, image = restore_board(snapshot, choices)
    except SnapshotError as exc:
        raise fail(str(exc)) from None
    restored_revision_notice(board, pv_time_revision)
    arch = "x86_64" if isinstance(board, pc_x86.PcX86) else "arm64"
    run_and_report(board, arch, image, session, console)
