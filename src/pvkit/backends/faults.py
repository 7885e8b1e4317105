"""Guest faults both engines report the same way."""

from __future__ import annotations

from unicorn.unicorn_const import UC_MEM_FETCH_UNMAPPED, UC_MEM_WRITE_UNMAPPED

from pvkit.backends.base import ExitKind, VcpuExit


def unmapped_fault(
    vcpu: int, unmapped: tuple[int, int, int] | None, error: Exception, pc: int, pc_name: str
) -> VcpuExit:
    """The exit for an engine error; `unmapped` is (access, address, size) if a hook saw one."""
    if unmapped is None:
        return VcpuExit(ExitKind.FAULT, f"vCPU {vcpu}: {error} at {pc_name} {pc:#x}", pc=pc)
    access, address, size = unmapped
    if access == UC_MEM_FETCH_UNMAPPED:
        what = "instruction fetch from"
    elif access == UC_MEM_WRITE_UNMAPPED:
        what = f"{size}-byte write to"
    else:
        what = f"{size}-byte read from"
    message = f"vCPU {vcpu}: {what} unmapped address {address:#x} at {pc_name} {pc:#x}"
    return VcpuExit(ExitKind.FAULT, message, pc=pc, address=address)
