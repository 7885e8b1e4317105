"""`pvkit monitor PATH COMMAND [ARG]`: send one command to a VM's monitor, print its reply.

The reply is printed as the one JSON line the monitor sent; the exit status is 0 for a
"return", 1 for an "error", 2 when there is no monitor to ask (or the command is given
wrongly).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from pvkit.cli.options import fail

# The commands that take an argument, and the parameter it is (fw-set's NAME=VALUE is two).
PARAMETERS = {"savevm": "file", "migrate": "uri", "fw-get": "name", "fw-set": "name=value"}


def monitor(
    path: Annotated[str, typer.Argument(help="the socket: PATH or unix:PATH (from --monitor)")],
    command: Annotated[
        str,
        typer.Argument(
            help="stop, cont, savevm, migrate, info, query-status, query-fw, fw-get, fw-set, quit"
        ),
    ],
    arg: Annotated[
        str | None,
        typer.Argument(
            help="savevm: the snapshot file; migrate: tcp:HOST:PORT; fw-get: NAME; "
            "fw-set: NAME=VALUE"
        ),
    ] = None,
) -> None:
    """Send COMMAND to the monitor of a running VM and print its reply (docs/monitor.md)."""
    # Imported here: only this verb needs the client.
    from pvkit.monitor.client import ClientError, call

    socket_path = Path(path.removeprefix("unix:"))
    parameter = PARAMETERS.get(command)
    arguments: dict[str, str] = {}
    if parameter is not None:
        if arg is None:
            raise fail(f"monitor: {command} needs its {parameter}: give it after the command")
        if parameter == "name=value":
            name, sep, value = arg.partition("=")
            if not sep or not name or not value:
                raise fail(f"monitor: fw-set {arg!r}: give NAME=VALUE, e.g. psci-version=0x10000")
            arguments.update(name=name.strip(), value=value.strip())
        else:  # a relative file is the client's, not the VM's working directory's
            arguments[parameter] = str(Path(arg).absolute()) if parameter == "file" else arg
    elif arg is not None:
        takers = ", ".join(PARAMETERS)
        raise fail(f"monitor: {command!r} takes no argument (only {takers} do)")
    try:
        answer = call(socket_path, command, arguments)
    except ClientError as exc:
        raise fail(f"monitor: {exc}") from None
    typer.echo(json.dumps(answer))
    raise typer.Exit(1 if "error" in answer else 0)
