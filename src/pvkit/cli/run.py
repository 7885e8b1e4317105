"""`pvkit run IMAGE`: boot a guest, stream its console, exit with what stopped it."""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from pvkit.cli.options import fail, parse_profile, parse_size, write_file
from pvkit.hypercall.namespace import NamespaceClash
from pvkit.loader.image import ImageError
from pvkit.machine.vm import StopKind
from pvkit.platform.virt_arm64 import ConfigError, VirtArm64, VirtConfig
from pvkit.trace.events import TraceHub
from pvkit.trace.jsonl import JsonLinesSink
from pvkit.trace.stats import CallStats

EXIT_CODES = {
    StopKind.SHUTDOWN: 0,
    StopKind.RESET: 0,
    StopKind.FAULT: 1,
    StopKind.IDLE: 3,
    StopKind.TIMEOUT: 4,
    StopKind.INTERRUPTED: 130,
}


def run(
    image: Annotated[Path, typer.Argument(help="arm64 Linux Image or ELF file")],
    smp: Annotated[int, typer.Option(help="number of vCPUs")] = 1,
    mem: Annotated[str, typer.Option(help="guest RAM, e.g. 256M or 1G")] = "256M",
    conduit: Annotated[str, typer.Option(help="hvc or smc, advertised in the DT")] = "hvc",
    profile: Annotated[str, typer.Option(help="kvm, pvkit or none")] = "kvm",
    trace: Annotated[Path | None, typer.Option(help="write JSON-lines trace here")] = None,
    stats: Annotated[bool, typer.Option(help="print per-function call statistics")] = False,
    dtb: Annotated[Path | None, typer.Option(help="also write the generated DTB here")] = None,
    timeout: Annotated[float | None, typer.Option(help="stop after this many seconds")] = None,
    append: Annotated[str, typer.Option(help="kernel command line (/chosen/bootargs)")] = "",
    trap: Annotated[str, typer.Option(help="hypercall trap: auto, c or ctypes")] = "auto",
) -> None:
    """Run IMAGE on the arm64 virt board until it powers off, faults or idles."""
    hub = TraceHub()
    call_stats = CallStats()
    if stats:
        hub.attach(call_stats)
    try:
        config = VirtConfig(
            smp=smp,
            memory=parse_size(mem),
            conduit=conduit,
            profile=parse_profile(profile),
            bootargs=append,
            trap=trap,
        )
        machine = VirtArm64(config, image, hub)
    except (ImageError, ConfigError, NamespaceClash) as exc:
        raise fail(str(exc)) from None
    if dtb is not None:
        write_file(dtb, machine.dtb)
    with contextlib.ExitStack() as stack:
        if trace is not None:
            try:
                stream = stack.enter_context(trace.open("w", encoding="utf-8"))
            except OSError as exc:
                raise fail(f"cannot write trace file {trace}: {exc.strerror}") from None
            hub.attach(JsonLinesSink(stream))
        reason = machine.run(timeout)
        hub.close()
    sys.stdout.flush()
    err = Console(stderr=True)
    if stats:
        _print_stats(err, call_stats)
    if machine.dispatcher.internal_errors:
        err.print(f"pvkit: {machine.dispatcher.internal_errors} hypercall handler error(s)")
    resets = f" after {machine.vm.resets} reset(s)" if machine.vm.resets else ""
    err.print(f"pvkit: {reason.kind.value}{resets}: {reason.message}", markup=False)
    raise typer.Exit(EXIT_CODES[reason.kind])


def _print_stats(console: Console, stats: CallStats) -> None:
    table = Table(title="hypercalls")
    for col in ("function ID", "name", "count", "mean µs"):
        table.add_column(col, justify="right" if col in ("count", "mean µs") else "left")
    for row in stats.rows():
        table.add_row(f"{row.function_id:#010x}", row.name, str(row.count), f"{row.mean_us:.1f}")
    console.print(table)
