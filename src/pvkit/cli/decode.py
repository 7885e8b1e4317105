"""`pvkit decode ID`: explain an SMCCC function ID."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from pvkit.abi.known_ids import KNOWN_IDS
from pvkit.abi.smccc import FunctionId, owner_name
from pvkit.cli.options import fail
from pvkit.services.profiles import PROFILES
from pvkit.services.registry import services_for


def served_by(function_id: int) -> dict[str, str]:
    """Profile name -> function name for each profile whose services serve the ID."""
    out = {}
    for name, profile in PROFILES.items():
        for service in services_for(profile):
            for fn in service.functions():
                if fn.function_id == function_id:
                    out[name] = fn.name
    return out


def decode(
    function_id: Annotated[str, typer.Argument(help="function ID, e.g. 0xC5000021")],
) -> None:
    """Explain a function ID: call type, convention, owner, number, name, who serves it."""
    try:
        value = int(function_id, 0)
    except ValueError:
        raise fail(f"{function_id!r} is not a number (use 0x... for hex)") from None
    if not 0 <= value <= 0xFFFF_FFFF:
        raise fail(f"{function_id} does not fit in the 32-bit W0 register")
    f = FunctionId.decode(value)
    served = served_by(value)
    name = next(iter(served.values()), None) or KNOWN_IDS.get(value, "(no known name)")
    table = Table(show_header=False, title=f"SMCCC function ID {value:#010x}")
    table.add_column("field", style="bold")
    table.add_column("value")
    table.add_row("call type", f.call_type)
    table.add_row("convention", f.convention)
    table.add_row("owner", f"{f.owner} ({owner_name(f.owner)})")
    table.add_row("function number", f"{f.number:#06x}")
    table.add_row("name", name)
    if f.sve_hint:
        table.add_row("SVE hint", "bit 16 set (SMCCC 1.3 'no live SVE state')")
    if not f.well_formed:
        table.add_row("warning", "bits 23:17 must be zero in a fast call: an unknown function")
    table.add_row("served by", ", ".join(sorted(served)) if served else "no profile")
    Console().print(table)
