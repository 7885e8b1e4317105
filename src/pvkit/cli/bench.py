"""`pvkit bench`: the benchmark suite, printed as a table and optionally saved as JSON."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from pvkit.bench.probes import BenchError
from pvkit.bench.suite import QUICK, Report, Sizes, run_suite, target_status
from pvkit.cli.options import fail, write_file

MAX_REPS = 1000


def bench(
    json_file: Annotated[
        Path | None, typer.Option("--json", help="also write the results here as JSON")
    ] = None,
    quick: Annotated[bool, typer.Option(help="tiny loops: checks the suite, not speed")] = False,
    reps: Annotated[int | None, typer.Option(help="interleaved repetitions")] = None,
) -> None:
    """Measure hypercall round trips, guest speed, boot time and vCPU scaling in one run."""
    sizes = QUICK if quick else Sizes()
    if reps is not None:
        if reps < 1:
            raise fail("--reps must be at least 1")
        if reps > MAX_REPS:
            raise fail(f"--reps {reps} is more than {MAX_REPS}; the median settles long before")
        sizes = dataclasses.replace(sizes, reps=reps)
    console = Console(stderr=True)
    try:
        with console.status("benchmarking") as status:
            report = run_suite(sizes, lambda message: status.update(message))
    except BenchError as exc:
        raise fail(str(exc), code=1) from None
    _print(Console(), report, judged=not quick)
    if json_file is not None:
        write_file(json_file, (json.dumps(report, indent=2) + "\n").encode())


def _print(console: Console, report: Report, judged: bool = True) -> None:
    """`judged=False` (--quick): tiny loops say nothing about speed, so no verdicts."""
    table = Table(title="pvkit bench (one run; medians of interleaved repetitions)")
    for col in ("metric", "median", "min", "max"):
        table.add_column(col, justify="left" if col == "metric" else "right")
    for key, value in report.items():
        if isinstance(value, dict):
            table.add_row(key, *(f"{value[k]:.4g}" for k in ("median", "min", "max")))
        elif value is None:
            table.add_row(key, "n/a", "", "")
        else:
            table.add_row(key, f"{value:.4g}", "", "")
    console.print(table)
    title = "targets" if judged else "targets (not judged: --quick checks the suite, not speed)"
    targets = Table(title=title)
    for col in ("ratio", "target", "measured", "met"):
        targets.add_column(col)
    for key, op, bound, value, met in target_status(report):
        shown = "n/a" if value is None else f"{value:.4g}"
        targets.add_row(key, f"{op} {bound:g}", shown, _verdict(met, judged))
    console.print(targets)


def _verdict(met: bool | None, judged: bool) -> str:
    if not judged:
        return "-"
    if met is None:
        return "n/a"
    return "yes" if met else "NO"
