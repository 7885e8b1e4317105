"""`pvkit restore FILE`: continue a saved VM, with the host's side chosen anew."""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from pvkit.cli.firmware import restored_revision_notice
from pvkit.cli.options import fail, parse_host_cpus, parse_slice_ms, parse_timeout
from pvkit.cli.run import EXIT_CODES, _print_stats, _print_vcpu_times
from pvkit.cli.save import arm_save_point
from pvkit.devices.console import BufferedConsole
from pvkit.platform import pc_x86
from pvkit.snapshot.config import HostChoices
from pvkit.snapshot.format import SnapshotError, read_snapshot
from pvkit.snapshot.resume import restore as restore_board
from pvkit.snapshot.sections import KNOWN
from pvkit.trace.jsonl import JsonLinesSink
from pvkit.trace.stats import CallStats
from pvkit.trace.timeline import TimelineSink


def restore(
    file: Annotated[Path, typer.Argument(help="a snapshot written by --save-at/--save")],
    host_cpus: Annotated[
        int | None, typer.Option(help="host CPUs the vCPUs share (default: as saved)")
    ] = None,
    slice_ms: Annotated[
        float | None, typer.Option(help="scheduler time slice in ms (default: as saved)")
    ] = None,
    disable: Annotated[
        list[str] | None, typer.Option(help="leave this service out (refused if the guest has it)")
    ] = None,
    trace: Annotated[Path | None, typer.Option(help="write JSON-lines trace here")] = None,
    stats: Annotated[bool, typer.Option(help="print per-function call statistics")] = False,
    timeout: Annotated[float | None, typer.Option(help="stop after this many seconds")] = None,
    timeline: Annotated[
        Path | None, typer.Option(help="write a Perfetto/Chrome trace-event JSON file here")
    ] = None,
    save_at: Annotated[
        float | None, typer.Option(help="save again when the clock reaches this many ms")
    ] = None,
    save: Annotated[Path | None, typer.Option(help="the snapshot file --save-at writes")] = None,
    pv_time_revision: Annotated[
        int | None,
        typer.Option(help="arm64: the revision a VM booted here gets; the guest keeps its own"),
    ] = None,
) -> None:
    """Continue the VM saved in FILE; refuses, before anything runs, one this host cannot serve."""
    timeout = parse_timeout(timeout)
    console = BufferedConsole()
    choices = HostChoices(
        host_cpus=parse_host_cpus(host_cpus),
        keep_host_cpus=host_cpus is None,
        slice_ns=parse_slice_ms(slice_ms) if slice_ms is not None else None,
        record_slices=timeline is not None,
        disabled=frozenset(disable or ()),
        console=console,
    )
    if timeline is not None and not timeline.parent.is_dir():
        raise fail(f"cannot write timeline {timeline}: no directory {timeline.parent}")
    try:
        snapshot = read_snapshot(file, KNOWN)
        board, image = restore_board(snapshot, choices)
    except SnapshotError as exc:
        raise fail(str(exc)) from None
    restored_revision_notice(board, pv_time_revision)
    save_point = arm_save_point(board, image, save_at, save)
    hub = board.trace
    call_stats = CallStats()
    if stats:
        hub.attach(call_stats)
    sched = board.vm.scheduler
    sink = TimelineSink(sched.now_ns) if timeline is not None else None
    if sink is not None:
        hub.attach(sink)
    with contextlib.ExitStack() as stack:
        if trace is not None:
            try:
                stream = stack.enter_context(trace.open("w", encoding="utf-8"))
            except OSError as exc:
                raise fail(f"cannot write trace file {trace}: {exc.strerror}") from None
            hub.attach(JsonLinesSink(stream, sched.now_ns))
        stack.callback(console.close)
        reason = board.run(timeout)
        if save_point is not None:
            save_point.cancel()
        hub.close()
    sys.stdout.flush()
    if timeline is not None and sink is not None:
        try:
            sink.write(timeline, sched)
        except OSError as exc:
            raise fail(f"cannot write timeline {timeline}: {exc.strerror}") from None
    if stats:
        heading = "nr" if isinstance(board, pc_x86.PcX86) else "function ID"
        _print_stats(Console(stderr=True), call_stats, heading)
        _print_vcpu_times(sched)
    typer.echo(f"pvkit: {reason.kind.value}: {reason.message}", err=True)
    raise typer.Exit(reason.status if reason.status is not None else EXIT_CODES[reason.kind])
