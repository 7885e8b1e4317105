"""The PM1a control register of QEMU's PC machines at port 0x604: S5 means power off.

Guests without an ACPI interpreter write SLP_EN | SLP_TYP(S5) = 0x2000 there, which
QEMU's q35 honours; pvkit does the same so such guests power off cleanly.
"""

from __future__ import annotations

from collections.abc import Callable

PM1A_CNT = 0x604
SLP_EN = 1 << 13
SLP_TYP_SHIFT = 10
SLP_TYP_S5 = 0  # the value QEMU's DSDT gives \_S5


class AcpiPowerOff:
    def __init__(self, power_off: Callable[[], None], port: int = PM1A_CNT):
        self.ports = range(port, port + 2)
        self._power_off = power_off
        self._value = 0

    def read_port(self, port: int, size: int) -> int:
        return self._value & ~SLP_EN

    def write_port(self, port: int, size: int, value: int) -> None:
        self._value = value & 0xFFFF
        if value & SLP_EN and (value >> SLP_TYP_SHIFT) & 7 == SLP_TYP_S5:
            self._power_off()
