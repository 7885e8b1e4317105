"""A verb's parameters, declared once as data that needs no CLI library.

`pvkit run` is part of every boot, and importing typer and building its command takes
about a third of smp-hello's whole run. So the verbs whose start-up counts (`run`,
`restore`) declare their parameters here; `cli/typed.py` turns the declarations into the
typer command (help, errors, every unusual spelling) and `cli/direct.py` parses the
plain command lines itself, declining whatever it is not sure to read as typer would.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

REQUIRED = object()  # the default of an argument that must be given


@dataclass(frozen=True)
class Param:
    """One option (or, with `argument`, the positional argument) of a verb.

    `flags` empty means typer's own: `--name-with-dashes`, and for a flag also its
    `--no-` form. `kind` is the value's type (bool for a flag); `multiple` options
    repeat and arrive as a list (None when absent)."""

    name: str
    kind: type
    default: Any
    help: str
    flags: tuple[str, ...] = ()
    multiple: bool = False
    argument: bool = False

    def spellings(self) -> dict[str, bool | None]:
        """Each flag that names this option -> the value a flag sets (None: takes one)."""
        if self.kind is not bool:
            return dict.fromkeys(self.flags or (self.long,), None)
        if self.flags:
            return dict.fromkeys(self.flags, True)
        bare = self.name.replace("_", "-")
        return {f"--{bare}": True, f"--no-{bare}": False}

    @property
    def long(self) -> str:
        return "--" + self.name.replace("_", "-")

    @property
    def annotation(self) -> Any:
        """The plain type the verb's function is declared with."""
        if self.multiple:
            return list[self.kind] | None  # type: ignore[name-defined]
        if self.default is None:
            return self.kind | None
        return self.kind


def option(name: str, kind: type, default: Any, help: str, *flags: str) -> Param:
    return Param(name, kind, default, help, flags)


def repeated(name: str, help: str) -> Param:
    return Param(name, str, None, help, multiple=True)


def argument(name: str, kind: type, help: str, default: Any = REQUIRED) -> Param:
    return Param(name, kind, default, help, argument=True)


# The options of every verb that runs a VM (`run`, `restore`), in their help order.
SERVICE = repeated("service", "add your own service, package.module:Class (repeatable)")
DENY = repeated("deny", "answer FID[-FID] NOT_SUPPORTED (-KVM_ENOSYS on x86) before dispatch")
FORWARD = repeated("forward", "FID[-FID]=package.module:function: that function gets the Call")
TRACE = option("trace", Path, None, "write JSON-lines trace here")
STATS = option("stats", bool, False, "print per-function call statistics")
TIMEOUT = option("timeout", float, None, "stop after this many seconds")
TIMELINE = option("timeline", Path, None, "write a Perfetto/Chrome trace-event JSON file here")
GDB = option("gdb", str, None, "serve gdb on tcp::PORT or tcp:HOST:PORT", "--gdb", "-gdb")
GDB_DEFAULT = option("gdb_default", bool, False, "shorthand for --gdb tcp::1234", "-s")
FREEZE = option(
    "freeze", bool, False, "wait for gdb before the first instruction", "--freeze", "-S"
)
MONITOR = option(
    "monitor", str, None, "serve a QMP-like monitor on unix:PATH (docs/monitor.md)", "--monitor"
)
SAVE_AT = option("save_at", float, None, "save the VM when its clock reaches this many ms")
SAVE = option("save", Path, None, "the snapshot file --save-at writes")
MIGRATE_AT = option("migrate_at", float, None, "migrate the VM when its clock reaches this many ms")
MIGRATE_TO = option("migrate_to", str, None, "where --migrate-at sends the VM: tcp:HOST:PORT")
