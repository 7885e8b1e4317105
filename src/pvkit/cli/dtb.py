"""`pvkit dtb`: write the device tree a VM with these options would get."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from pvkit.cli.options import fail, parse_profile, parse_size, write_file
from pvkit.machine.memory import HostMemoryError
from pvkit.platform.board import ConfigError
from pvkit.platform.virt_arm64 import VirtConfig, virt_device_tree


def dtb(
    output: Annotated[Path, typer.Option("-o", "--output", help="where to write the DTB")],
    smp: Annotated[int, typer.Option(help="number of vCPUs")] = 1,
    mem: Annotated[str, typer.Option(help="guest RAM, e.g. 256M")] = "256M",
    conduit: Annotated[str, typer.Option(help="hvc or smc")] = "hvc",
    profile: Annotated[str, typer.Option(help="kvm, pvkit or none")] = "kvm",
) -> None:
    """Write the flattened device tree for a VM (decompile it with `dtc -I dtb`)."""
    try:
        config = VirtConfig(
            smp=smp, memory=parse_size(mem), conduit=conduit, profile=parse_profile(profile)
        )
        blob = virt_device_tree(config)
    except (ConfigError, HostMemoryError) as exc:
        raise fail(str(exc)) from None
    write_file(output, blob)
    typer.echo(f"wrote {len(blob)} bytes to {output}")
