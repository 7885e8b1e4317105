"""`pvkit services`: every service a VM can offer, as the guest sees it.

Plain lines, never wrapped (they grep): per service its name, ABIs and revision, the ranges
it claims, each function's ID, name and discovery step, its MSRs and CPUID feature bits.
"""

from __future__ import annotations

from typing import Annotated

import typer

from pvkit.cli.options import fail, parse_profile
from pvkit.cli.plugins import load_services
from pvkit.hypercall.namespace import Abi
from pvkit.services.base import Service
from pvkit.services.catalog import ABI_OF, ServiceInfo, builtin_services, describe

_CONVENTIONS = {
    Abi.SMCCC: "SMCCC function IDs in W0 (HVC #0 or SMC #0), arguments X1..X17, results X0..X3",
    Abi.KVM_X86: "KVM hypercall numbers in RAX (VMCALL or VMMCALL), a0..a3 in RBX, RCX, RDX, "
    "RSI, the result in RAX",
}


def services(
    arch: Annotated[str | None, typer.Option(help="arm64 or x86_64 (default: both)")] = None,
    profile: Annotated[str, typer.Option(help="kvm, pvkit or none")] = "kvm",
    service: Annotated[
        list[str] | None,
        typer.Option(help="also list your own service, package.module:Class (repeatable)"),
    ] = None,
) -> None:
    """List every built-in service: ABIs, claimed ranges, functions, discovery, revision."""
    if arch is not None and arch not in ABI_OF:
        raise fail(f"--arch {arch!r} is not arm64 or x86_64")
    host = parse_profile(profile)
    extra = load_services(service or [])
    abis = [ABI_OF[arch]] if arch is not None else list(ABI_OF.values())
    for n, abi in enumerate(abis):
        if n:
            typer.echo("")
        chosen = [*builtin_services(abi, host), *(s for s in extra if abi in s.abis)]
        typer.echo(f"{describe_arch(abi)}; profile {host.name}")
        if not chosen:
            typer.echo("  no services: this profile has no hypervisor")
        for s in chosen:
            for line in service_lines(s, abi):
                typer.echo(line)


def describe_arch(abi: Abi) -> str:
    arch = "arm64" if abi is Abi.SMCCC else "x86_64"
    return f"{arch}: {_CONVENTIONS[abi]}"


def service_lines(service: Service, abi: Abi) -> list[str]:
    """The listing of one service, one fact per line."""
    info = describe(service, abi)
    head = f"{info.name}  (ABIs: {', '.join(a.value for a in info.abis)}"
    head += f"; revision {info.revision})" if info.revision else ")"
    lines = [head]
    served = service.revisions(abi)
    if len(served) > 1:
        lines.append(f"  revisions served: {', '.join(served)} (a snapshot keeps the guest's)")
    if info.discovery:
        lines.append(f"  discovery: {info.discovery}")
    lines.append("  claims: " + (", ".join(str(r) for r in info.claims) or "none"))
    width = max((len(f.name) for f in info.functions), default=0)
    for f in info.functions:
        lines.append(f"  {f.function_id:#010x}  {f.name:<{width}}  {f.discovery}")
    lines.extend(f"  MSR {index:#010x}  {name}" for index, name in info.msrs)
    lines.extend(_cpuid_lines(info))
    return lines


def _cpuid_lines(info: ServiceInfo) -> list[str]:
    out = []
    for b in info.cpuid_bits:
        role = "gates its calls and MSRs" if b.gates else "also set"
        out.append(f"  CPUID base+1 EAX bit {b.bit}  {b.name}  ({role})")
    return out
