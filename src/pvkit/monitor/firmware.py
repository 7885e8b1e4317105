"""The monitor's firmware-register commands: KVM_GET/SET_ONE_REG for a running pvkit.

`query-fw` lists every register with its value; `fw-get name` reads one; `fw-set name
value` writes one, with the rules of services/firmware.py: accepted until a vCPU has
run (start the VM with -S to set them, then `cont`), a change refused after that with
KVM's EBUSY, a value the VM cannot serve with EINVAL, a register it lacks with ENOENT.
`value` is a JSON number or a string in C syntax ("0x10001"), as `--fw` takes it.
"""

from __future__ import annotations

from typing import Any

from pvkit.monitor.protocol import CommandError, Request, string_argument
from pvkit.services.firmware import Firmware, FirmwareError, shown


def registers_of(board: object) -> Firmware:
    firmware = getattr(board, "firmware", None)
    if not isinstance(firmware, Firmware):
        raise CommandError(
            "this VM has no firmware registers (they are arm64's; an x86_64 VM's PV "
            "features are its CPUID bits)"
        )
    return firmware


def query_fw(board: object) -> dict[str, Any]:
    firmware = registers_of(board)
    listed = [
        {"name": r.name, "value": r.value, "shown": shown(r, r.value)} for r in firmware.registers()
    ]
    return {"frozen": firmware.frozen, "registers": listed}


def fw_get(board: object, request: Request) -> dict[str, Any]:
    firmware = registers_of(board)
    try:
        reg = firmware.register(string_argument(request, "name"))
    except FirmwareError as exc:
        raise CommandError(str(exc)) from None
    return {"name": reg.name, "value": reg.value, "shown": shown(reg, reg.value)}


def fw_set(board: object, request: Request) -> dict[str, Any]:
    firmware = registers_of(board)
    args = request.arguments
    others = sorted(set(args) - {"name", "value"})
    if others:
        raise CommandError(f"parameter {others[0][:64]!r} is unexpected")
    name = args.get("name")
    if not isinstance(name, str) or not name:
        raise CommandError("parameter 'name' must be a non-empty string")
    value = _value(args.get("value"))
    try:
        firmware.set(name, value)
    except FirmwareError as exc:
        raise CommandError(str(exc)) from None
    return {}


def _value(raw: object) -> int:
    if isinstance(raw, bool) or raw is None:
        raise CommandError("fw-set needs its 'value': a number, or a string such as '0x10001'")
    if isinstance(raw, int):
        return raw
    if isinstance(raw, str):
        try:
            return int(raw.strip(), 0)
        except ValueError:
            pass
    shown_raw = repr(raw)[:64]
    raise CommandError(f"fw-set: {shown_raw} is not a number (use 0x... for hex)")
