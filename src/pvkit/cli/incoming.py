"""`pvkit run --incoming tcp:HOST:PORT`: wait for a migration, take its VM, run it.

The VM comes from the stream, as from a snapshot file in `pvkit restore`: only the
options that may differ on restore apply; the ones that would build another VM are
refused with a sentence. The migration code is imported only here.
"""

from __future__ import annotations

from collections.abc import Mapping

from pvkit.cli.firmware import restored_revision_notice
from pvkit.cli.options import fail, say
from pvkit.cli.session import Session, run_and_report
from pvkit.devices.console import BufferedConsole
from pvkit.platform import pc_x86
from pvkit.snapshot.config import HostChoices


def refuse_vm_options(given: Mapping[str, bool]) -> None:
    """`given`: each VM-building option's name and whether it was given."""
    named = [name for name, was in given.items() if was]
    if named:
        raise fail(
            f"--incoming takes the VM from the migration stream: {named[0]} is the source's "
            "(only the options pvkit restore takes apply)"
        )


def run_incoming(
    spec: str,
    session: Session,
    choices: HostChoices,
    console: BufferedConsole,
    pv_time_revision: int | None,
) -> None:
    from pvkit.snapshot.migration.address import AddressError, parse
    from pvkit.snapshot.migration.destination import IncomingError, bound, listen, receive

    try:
        listener = listen(parse(spec, "--incoming", listening=True))
    except AddressError as exc:
        raise fail(str(exc)) from None
    say(f"pvkit: waiting for a migration on {bound(listener)}")
    sizes: list[int] = []
    try:
        board, image = receive(listener, choices, sizes.append)
    except IncomingError as exc:
        raise fail(str(exc)) from None
    say(f"pvkit: incoming: took the VM ({sizes[0]} bytes of state)")
    restored_revision_notice(board, pv_time_revision)
    arch = "x86_64" if isinstance(board, pc_x86.PcX86) else "arm64"
    run_and_report(board, arch, image, session, console)
