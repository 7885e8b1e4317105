"""Arm PL011 UART, transmit side: enough for firmware and kernels that poll TXFF."""

from __future__ import annotations

from collections.abc import Callable

from pvkit.machine.memory import Region

UARTDR = 0x000
UARTFR = 0x018
FR_TXFE = 1 << 7  # transmit FIFO empty: output is instantaneous here
FR_RXFE = 1 << 4  # receive FIFO empty: no input yet
# Peripheral and PrimeCell identification registers 0xFE0..0xFFC (PL011 r1p5).
_ID = (0x11, 0x10, 0x14, 0x00, 0x0D, 0xF0, 0x05, 0xB1)


class Pl011:
    def __init__(self, base: int, output: Callable[[bytes], None], size: int = 0x1000):
        self.region = Region(base, size, "pl011")
        self._output = output
        self._regs: dict[int, int] = {}

    def read(self, offset: int, size: int) -> int:
        if offset == UARTFR:
            return FR_TXFE | FR_RXFE
        if offset == UARTDR:
            return 0
        if 0xFE0 <= offset <= 0xFFC:
            return _ID[(offset - 0xFE0) // 4]
        return self._regs.get(offset, 0)

    def write(self, offset: int, size: int, value: int) -> None:
        if offset == UARTDR:
            self._output(bytes((value & 0xFF,)))
        else:
            self._regs[offset] = value
