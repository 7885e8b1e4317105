"""`pvkit decode ID`: explain an SMCCC function ID, or a KVM x86 hypercall number."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from pvkit.abi import x86_kvm
from pvkit.abi.known_ids import KNOWN_IDS
from pvkit.abi.smccc import FunctionId, owner_name
from pvkit.cli.options import fail
from pvkit.cli.plugins import load_services
from pvkit.hypercall.namespace import Abi
from pvkit.services.base import Service
from pvkit.services.catalog import builtin_services, vendor_bit
from pvkit.services.profiles import PROFILES
from pvkit.services.registry import services_for


def served_by(
    function_id: int, abi: Abi = Abi.SMCCC, extra: Sequence[Service] = ()
) -> dict[str, tuple[str, int | None]]:
    """Profile name -> (function name, CPUID feature bit) for each profile serving the ID.

    `extra` services (`--service`) are served under every profile with a hypervisor.
    """
    out = {}
    for name, profile in PROFILES.items():
        mine = [s for s in extra if abi in s.abis] if profile.has_hypervisor else []
        for service in [*services_for(profile, abi), *mine]:
            for fn in service.functions(abi):
                if fn.function_id == function_id:
                    out[name] = (fn.name, service.cpuid_feature_bit)
    return out


def serving_services(function_id: int, abi: Abi, extra: Sequence[Service]) -> list[str]:
    """The names of the services (built-in or `extra`) that serve the ID."""
    names = {
        s.name
        for s in [*builtin_services(abi), *(e for e in extra if abi in e.abis)]
        if any(fn.function_id == function_id for fn in s.functions(abi))
    }
    return sorted(names)


def decode(
    function_id: Annotated[str, typer.Argument(help="function ID (arm64) or number (x86_64)")],
    arch: Annotated[str, typer.Option(help="arm64 (SMCCC) or x86_64 (KVM_HC_*)")] = "arm64",
    service: Annotated[
        list[str] | None,
        typer.Option(help="also consider your own service, package.module:Class (repeatable)"),
    ] = None,
) -> None:
    """Explain a function ID: call type, convention, owner, number, name, who serves it."""
    try:
        value = int(function_id, 0)
    except ValueError:
        raise fail(f"{function_id!r} is not a number (use 0x... for hex)") from None
    if arch not in ("arm64", "x86_64"):
        raise fail(f"--arch {arch!r} is not arm64 or x86_64")
    extra = load_services(service or [])
    if arch == "x86_64":
        _decode_x86(value, extra)
        return
    if not 0 <= value <= 0xFFFF_FFFF:
        raise fail(f"{function_id} does not fit in the 32-bit W0 register")
    f = FunctionId.decode(value)
    served = served_by(value, Abi.SMCCC, extra)
    name = next((n for n, _bit in served.values()), None) or KNOWN_IDS.get(value, "(no known name)")
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
    if (bit := vendor_bit(value)) is not None:
        table.add_row(
            "discovery", f"vendor features bitmap bit {bit} (W{bit // 32} bit {bit % 32})"
        )
    _add_served_rows(table, served, serving_services(value, Abi.SMCCC, extra))
    Console().print(table)


def _add_served_rows(
    table: Table, served: dict[str, tuple[str, int | None]], names: list[str]
) -> None:
    if names:
        table.add_row("service", ", ".join(names))
    table.add_row("served by", ", ".join(sorted(served)) if served else "no profile")


def _decode_x86(nr: int, extra: Sequence[Service] = ()) -> None:
    if not 0 <= nr <= 0xFFFF_FFFF_FFFF_FFFF:
        raise fail(f"{nr:#x} does not fit in the 64-bit RAX register")
    served = served_by(nr, Abi.KVM_X86, extra)
    table = Table(show_header=False, title=f"KVM x86 hypercall {nr} ({nr:#x})")
    table.add_column("field", style="bold")
    table.add_column("value")
    table.add_row("name", next((n for n, _bit in served.values()), None) or x86_kvm.describe(nr))
    table.add_row("registers", "nr in RAX; a0..a3 in RBX, RCX, RDX, RSI; result in RAX")
    table.add_row("meaning", x86_kvm.SUMMARIES.get(nr, "not a KVM hypercall: -KVM_ENOSYS"))
    gates = {bit for _name, bit in served.values() if bit is not None}
    for bit in sorted(gates):
        name = x86_kvm.FEATURE_NAMES.get(bit, "unnamed")
        table.add_row("CPUID gate", f"KVM_CPUID_FEATURES bit {bit} ({name})")
    table.add_row("rules", "CPL > 0: -KVM_EPERM; 32-bit callers see 32-bit values")
    _add_served_rows(table, served, serving_services(nr, Abi.KVM_X86, extra))
    Console().print(table)
