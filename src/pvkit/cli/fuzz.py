"""`pvkit fuzz`: random hypercalls from a guest, host-side invariant checks (docs/fuzzing.md)."""

from __future__ import annotations

from typing import Annotated

import typer

from pvkit.cli.options import fail
from pvkit.fuzz import ARCHES, DEFAULT_SMP, FuzzConfig, FuzzError
from pvkit.fuzz import fuzz as run_fuzz


def fuzz(
    arch: Annotated[str, typer.Option(help=f"guest architecture: {', '.join(ARCHES)}")] = "arm64",
    calls: Annotated[int, typer.Option(help="random calls the boot CPU makes")] = 10_000,
    seed: Annotated[int, typer.Option(help="the guest's PRNG seed (0..2^64-1)")] = 1,
    smp: Annotated[
        int, typer.Option(help="vCPUs (arm64: CPU_ON storms need 2 or more)")
    ] = DEFAULT_SMP,
    cpu_vendor: Annotated[
        str, typer.Option(help="x86_64: intel (VMCALL native) or amd (VMMCALL native)")
    ] = "intel",
) -> None:
    """Run the fuzz guest twice with one seed (--deterministic, guard pages around RAM) and
    check: no host exception, unserved calls refused, preserved registers unchanged, the same
    results both times. Prints one summary line; exits 1 when an invariant fails."""
    if cpu_vendor not in ("intel", "amd"):
        raise fail(f"--cpu-vendor {cpu_vendor!r} is not intel or amd")
    config = FuzzConfig(arch=arch, calls=calls, seed=seed, smp=smp, vendor=cpu_vendor)
    try:
        report = run_fuzz(config)
    except FuzzError as exc:
        raise fail(str(exc)) from None
    typer.echo(report.line())
    for line in report.details():
        typer.echo(line, err=True)
    if not report.ok:
        raise typer.Exit(1)
