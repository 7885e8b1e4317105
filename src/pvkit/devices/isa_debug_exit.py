"""QEMU's isa-debug-exit device: a write of v ends the VM with exit status (v << 1) | 1.

Test kernels use it to report pass/fail through the hypervisor's exit code; the odd
status keeps any guest-chosen value distinct from a clean host exit (0).
"""

from __future__ import annotations

from collections.abc import Callable

DEBUG_EXIT_PORT = 0xF4


def exit_status(value: int) -> int:
    return ((value << 1) | 1) & 0xFF  # the process status is one byte


class IsaDebugExit:
    def __init__(self, on_exit: Callable[[int, int], None], port: int = DEBUG_EXIT_PORT):
        """`on_exit(value, status)` is called once per write."""
        self.ports = range(port, port + 1)
        self._on_exit = on_exit

    def read_port(self, port: int, size: int) -> int:
        return 0xFFFF_FFFF >> (32 - 8 * size)  # nothing decodes reads: the bus floats high

    def write_port(self, port: int, size: int, value: int) -> None:
        self._on_exit(value, exit_status(value))
