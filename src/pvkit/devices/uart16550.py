"""16550A UART, transmit side: THR, LSR and the registers polled-output drivers program.

Output is instantaneous, so LSR always says the transmitter is empty; nothing is ever
received and no interrupt is ever pending.
"""

from __future__ import annotations

from collections.abc import Callable

from pvkit.snapshot.state import Fields, State

COM1 = 0x3F8
THR = 0  # transmit holding (write, DLAB = 0); RBR on read
IER = 1
IIR = 2  # FCR on write
LCR = 3
LSR = 5
LCR_DLAB = 1 << 7
LSR_THRE = 1 << 5  # transmit holding register empty
LSR_TEMT = 1 << 6  # transmitter empty
IIR_NO_INTERRUPT = 1


class Uart16550:
    def __init__(self, output: Callable[[bytes], None], base: int = COM1):
        self.ports = range(base, base + 8)
        self._base = base
        self._output = output
        self._regs = [0] * 8
        self._divisor = [0, 0]

    STATE_SECTION = "uart16550"
    STATE_VERSION = 1

    def save_state(self) -> State:
        return {"regs": list(self._regs), "divisor": list(self._divisor)}

    def restore_state(self, state: Fields) -> None:
        regs, divisor = state.integers("regs", 8, 0xFF), state.integers("divisor", 2, 0xFF)
        self._regs, self._divisor = regs, divisor

    def read_port(self, port: int, size: int) -> int:
        offset = port - self._base
        dlab = self._regs[LCR] & LCR_DLAB
        if offset in (THR, IER) and dlab:
            return self._divisor[offset]
        if offset == THR:
            return 0
        if offset == IIR:
            return IIR_NO_INTERRUPT
        if offset == LSR:
            return LSR_THRE | LSR_TEMT
        return self._regs[offset]

    def write_port(self, port: int, size: int, value: int) -> None:
        offset = port - self._base
        value &= 0xFF
        if offset in (THR, IER) and self._regs[LCR] & LCR_DLAB:
            self._divisor[offset] = value
        elif offset == THR:
            self._output(bytes((value,)))
        elif offset != LSR:
            self._regs[offset] = value
