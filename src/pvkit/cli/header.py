"""`pvkit header SERVICE... -o file.h`: a C header for guest code from the host's definition.

SERVICE is a built-in service's name (`pvkit services` lists them) or your own,
package.module:Class. Without --arch the header covers every architecture the services
speak, each under its own `#if defined(...)`.
"""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Annotated

import typer

from pvkit.cli.options import fail, write_file
from pvkit.cli.plugins import load_services
from pvkit.hypercall.namespace import Abi
from pvkit.services.base import Service
from pvkit.services.catalog import ABI_OF, builtin_names, builtin_services
from pvkit.services.header import HeaderClash, c_header


def header(
    service: Annotated[
        list[str], typer.Argument(help="built-in service names, or package.module:Class")
    ],
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="write here (default: stdout)")
    ] = None,
    arch: Annotated[
        str | None, typer.Option(help="arm64 or x86_64 (default: every one they speak)")
    ] = None,
) -> None:
    """Write a C header: each function's ID, calling convention, discovery, return codes."""
    if arch is not None and arch not in ABI_OF:
        raise fail(f"--arch {arch!r} is not arm64 or x86_64")
    abis = [ABI_OF[arch]] if arch is not None else list(ABI_OF.values())
    parts: dict[Abi, list[Service]] = {abi: [] for abi in abis}
    for spec in service:
        found = _resolve(spec, abis)
        if not found:
            where = f"on {arch}" if arch is not None else "on any architecture"
            raise fail(f"service {spec!r} is not served {where}")
        for abi, s in found:
            parts[abi].append(s)
    command = "pvkit header " + " ".join(shlex.quote(s) for s in service)
    if arch is not None:
        command += f" --arch {arch}"
    if output is not None:
        command += f" -o {shlex.quote(output.name)}"
    try:
        text = c_header(parts, command)
    except HeaderClash as exc:
        raise fail(str(exc)) from None
    if output is None:
        typer.echo(text, nl=False)
    else:
        write_file(output, text.encode())


def _resolve(spec: str, abis: list[Abi]) -> list[tuple[Abi, Service]]:
    """(ABI, service) for each ABI it is served in: a built-in by name, or the user's."""
    if ":" in spec:
        loaded = load_services([spec])[0]
        return [(a, loaded) for a in abis if a in loaded.abis]
    found = []
    for abi in abis:
        found += [(abi, s) for s in builtin_services(abi) if s.name == spec]
    if not found and all(spec not in builtin_names(a) for a in ABI_OF.values()):
        names = sorted({n for a in ABI_OF.values() for n in builtin_names(a)})
        raise fail(
            f"no built-in service is named {spec!r}; choose from {', '.join(names)}, "
            "or name your own as package.module:Class"
        )
    return found
