"""`pvkit monitor PATH COMMAND [ARG]`: send one command to a VM's monitor, print its reply.

The reply is printed as the one JSON line the monitor sent; the exit status is 0 for a
"return", 1 for an "error", 2 when there is no monitor to ask (or the command is given
wrongly). `migrate` waits for the move to end, as QEMU's HMP `migrate` does: it asks
`query-migrate` until the status is no longer "active" and prints that last reply (exit
status 1 unless "completed").
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from pvkit.cli.options import fail

# The commands that take an argument, and the parameter it is (fw-set's NAME=VALUE is two).
PARAMETERS = {"savevm": "file", "migrate": "uri", "fw-get": "name", "fw-set": "name=value"}
POLL_S = 0.05  # between query-migrate asks


def monitor(
    path: Annotated[str, typer.Argument(help="the socket: PATH or unix:PATH (from --monitor)")],
    command: Annotated[
        str,
        typer.Argument(
            help="stop, cont, savevm, migrate, query-migrate, info, query-status, query-fw, "
            "fw-get, fw-set, quit"
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
        if command == "migrate" and "return" in answer:
            answer = _migration_end(socket_path)
    except ClientError as exc:
        raise fail(f"monitor: {exc}") from None
    typer.echo(json.dumps(answer))
    failed = "error" in answer or (
        command == "migrate" and answer["return"]["status"] != "completed"
    )
    raise typer.Exit(1 if failed else 0)


def _migration_end(path: Path) -> dict[str, Any]:
    """query-migrate's reply once the move is no longer active."""
    from pvkit.monitor.client import call

    while True:
        answer = call(path, "query-migrate", {})
        if "error" in answer or answer["return"].get("status") != "active":
            return answer
        time.sleep(POLL_S)
