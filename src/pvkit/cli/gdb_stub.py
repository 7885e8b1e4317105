"""`--gdb DEV`, `-s` and `-S`/`--freeze`: a gdb stub beside the VM (docs/debugging.md)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from pvkit.cli.options import fail, say
from pvkit.machine.vm import StopKind, StopReason, VirtualMachine

if TYPE_CHECKING:
    from pvkit.debug.server import GdbServer

DEFAULT_PORT = 1234  # QEMU's -s


def start_gdb_stub(
    vm: VirtualMachine, arch: str, gdb: str | None, default_port: bool, freeze: bool
) -> GdbServer | None:
    """The stub the options ask for, listening and served (None without one); a bad or
    busy address exits with one sentence before the VM starts."""
    if gdb is not None and default_port:
        raise fail("give the gdb port once: -s is --gdb tcp::1234")
    if default_port:
        gdb = f"tcp::{DEFAULT_PORT}"
    if gdb is None:
        if freeze:
            raise fail("-S/--freeze waits for a debugger: give --gdb tcp::PORT (or -s) too")
        return None
    # Imported here: a run without a debugger does not pay for loading the stub.
    from pvkit.backends.arm64.debug import Arm64Registers
    from pvkit.backends.debug_port import ArchRegisters
    from pvkit.backends.x86.debug import X86Registers
    from pvkit.debug.server import AddressError, GdbServer, parse_address

    try:
        address = parse_address(gdb)
    except AddressError as exc:
        raise fail(str(exc)) from None
    registers: ArchRegisters = X86Registers() if arch == "x86_64" else Arm64Registers()

    def kill() -> None:
        vm.request_stop(StopReason(StopKind.INTERRUPTED, "killed from the debugger"))

    try:
        server = GdbServer(vm.control, registers, address, kill, freeze)
    except OSError as exc:
        raise fail(f"cannot listen for gdb on {address[0]}:{address[1]}: {exc.strerror}") from None
    host, port = server.address
    waits = "; the VM waits for it" if freeze else ""
    say(f"pvkit: gdb stub listening on {host}:{port}{waits}")
    server.start()
    return server
