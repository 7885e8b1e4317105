"""`pvkit fw --list` / `pvkit fw NAME`: the arm64 firmware registers a VM has.

Plain lines, never wrapped (they grep): per register pvkit's name, KVM's name and ID, the
default a new VM gets, the values it accepts and what it changes for the guest. The list
follows the VM the options describe: `--disable trng` leaves TRNG's bit out of what
std-bmap accepts, `--profile none` has no PSCI and no bitmap bits.
"""

from __future__ import annotations

from typing import Annotated

import typer

from pvkit.cli.options import fail, parse_profile
from pvkit.hypercall.namespace import Abi
from pvkit.platform.board import ConfigError, select_services
from pvkit.services.firmware import Firmware, FirmwareError, Register, shown


def fw(
    name: Annotated[
        str | None, typer.Argument(help="one register, by pvkit's or KVM's name")
    ] = None,
    list_all: Annotated[bool, typer.Option("--list", help="list every register")] = False,
    profile: Annotated[str, typer.Option(help="kvm, pvkit or none")] = "kvm",
    disable: Annotated[
        list[str] | None, typer.Option(help="as pvkit run --disable: leave this service out")
    ] = None,
) -> None:
    """The arm64 firmware registers (KVM's pseudo-registers): names, defaults, values."""
    if (name is None) == (not list_all):
        raise fail("give --list, or one register's name (pvkit fw --list names them)")
    try:
        services = select_services(parse_profile(profile), Abi.SMCCC, [], disable or ())
    except ConfigError as exc:
        raise fail(str(exc)) from None
    firmware = Firmware(services)
    if name is not None:
        try:
            registers = [firmware.register(name)]
        except FirmwareError as exc:
            raise fail(str(exc)) from None
    else:
        registers = firmware.registers()
        typer.echo(
            f"arm64 firmware registers (profile {profile}); set with pvkit run --fw NAME=VALUE "
            "before the VM runs, frozen once it has"
        )
    for reg in registers:
        for line in register_lines(reg):
            typer.echo(line)


def register_lines(reg: Register) -> list[str]:
    own = "pvkit's own register (KVM has none)"
    kvm = f"{reg.kvm_name} ({reg.kvm_id:#018x})" if reg.kvm_name and reg.kvm_id else own
    return [
        f"{reg.name}  {kvm}  default {shown(reg, reg.default)}",
        f"  values: {reg.allowed}",
        f"  {reg.summary}",
    ]
