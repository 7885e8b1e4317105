"""`pvkit snapshot info FILE`: what a snapshot holds and whether this host can restore it."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from pvkit.cli.options import fail
from pvkit.services.firmware import Firmware
from pvkit.snapshot.config import HostChoices, saved_services
from pvkit.snapshot.errors import SnapshotError
from pvkit.snapshot.format import ENCODING_BYTES, Snapshot, read_snapshot
from pvkit.snapshot.ram import ram_pages
from pvkit.snapshot.resume import compatibility, fields
from pvkit.snapshot.sections import KNOWN

app = typer.Typer(help="Inspect snapshot files.", no_args_is_help=True)


@app.command()
def info(file: Annotated[Path, typer.Argument(help="a snapshot file")]) -> None:
    """Sections, versions and sizes, the guest's PV revisions, and whether it restores here."""
    try:
        snap = read_snapshot(file, KNOWN)
        machine = fields(snap, "machine")
        services = saved_services(machine)
        base, size, pages = ram_pages(snap.section("ram"))
        registers = _registers(snap)
    except SnapshotError as exc:
        raise fail(str(exc)) from None
    major, minor = snap.format_version
    typer.echo(f"{file}: pvkit snapshot format {major}.{minor}, {snap.arch}, "
               f"{file.stat().st_size} bytes")  # fmt: skip
    typer.echo(
        f"guest: {machine.integer('smp')} vCPU(s), RAM {size >> 20} MiB at {base:#x}, "
        f"{pages} non-zero page(s) stored ({100 * pages * 4096 / size:.2f}% of RAM)"
    )
    typer.echo("sections:")
    for name, sec in snap.sections.items():
        kind = "bytes" if sec.encoding == ENCODING_BYTES else "json"
        typer.echo(f"  {name:<24} version {sec.version}  {kind:<5} {len(sec.payload):>10} bytes")
    typer.echo("services the guest can see (the PV revision it uses):")
    for name, revision in sorted(services.items()):
        typer.echo(f"  {name:<16} {revision or '-'}")
    if registers:
        typer.echo("firmware registers (KVM's pseudo-registers and pvkit's own):")
        for name, value in registers.items():
            typer.echo(f"  {name:<24} {value:#x}" if isinstance(value, int) else f"  {name}")
    try:
        compatibility(snap, HostChoices())
    except SnapshotError as exc:
        typer.echo(f"restorable here: no: {exc}")
        raise typer.Exit(1) from None
    typer.echo("restorable here: yes")


def _registers(snap: Snapshot) -> dict[str, object]:
    if Firmware.STATE_SECTION not in snap.sections:
        return {}
    value = fields(snap, Firmware.STATE_SECTION).raw("registers")
    return value if isinstance(value, dict) else {}
