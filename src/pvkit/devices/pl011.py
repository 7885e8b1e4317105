"""Arm PrimeCell PL011 UART (ARM DDI 0183): transmit, a receive FIFO and the interrupt line.

Transmission is instantaneous: each byte written to UARTDR goes straight to `output`, so
the transmit FIFO is always empty (TXFE set, TXFF and BUSY clear). Like QEMU, TXRIS is
raised each time a byte has been sent and stays raised until UARTICR clears it; it is not
raised at reset (the hardware raises it only once written data has left the FIFO), which
is why Linux's amba-pl011 writes the first bytes before it unmasks TXIM.

Received bytes come from `feed()` (any thread). They fill a FIFO of 32 entries (one when
UARTLCR_H.FEN is clear); what does not fit waits in a host-side backlog, as QEMU's
character backend holds input back, and moves in as the guest reads UARTDR. The receive
interrupt (RXRIS) and the receive timeout (RTRIS) are raised as soon as a byte arrives,
since Linux empties the FIFO only from its interrupt handler, and drop when the FIFO is
empty again (or when UARTICR clears them). With UARTCR.LBE set, transmitted bytes loop
back into the receive FIFO and host input is ignored, as on the hardware.

The interrupt line is level: `irq(True)` when (RIS & IMSC) becomes non-zero, `irq(False)`
when it becomes zero. `irq` and `output` must not call back into the device.

A console writes a byte to UARTDR and reads UARTFR around each. An engine that can serve
those two accesses itself (backends/uart_path.py) is given a `fast_path`: the model keeps on
it whether a UARTDR write would only send its byte (TXRIS already raised, no loopback) and
UARTFR's value; every other access still comes here, after the path's bytes went out.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from typing import Protocol

from pvkit.machine.memory import Region
from pvkit.snapshot.state import Fields, State

UARTDR = 0x000
UARTRSR = 0x004  # receive status / error clear: no errors are ever recorded here
UARTFR = 0x018
UARTILPR = 0x020
UARTIBRD = 0x024
UARTFBRD = 0x028
UARTLCR_H = 0x02C
UARTCR = 0x030
UARTIFLS = 0x034
UARTIMSC = 0x038
UARTRIS = 0x03C
UARTMIS = 0x040
UARTICR = 0x044
UARTDMACR = 0x048

FR_BUSY = 1 << 3
FR_RXFE = 1 << 4  # receive FIFO empty
FR_TXFF = 1 << 5
FR_RXFF = 1 << 6  # receive FIFO full
FR_TXFE = 1 << 7  # transmit FIFO empty: always, output is instantaneous

INT_RX = 1 << 4  # RXIM / RXRIS
INT_TX = 1 << 5  # TXIM / TXRIS
INT_RT = 1 << 6  # RTIM / RTRIS (receive timeout)
INT_ALL = 0x7FF  # RIMIM .. OEIM

LCR_H_FEN = 1 << 4
CR_LBE = 1 << 7
CR_RESET = 0x300  # TXE | RXE
IFLS_RESET = 0x12  # both FIFOs: half full

FIFO_DEPTH = 32  # PL011 r1p5
BACKLOG_LIMIT = 64 << 10  # host bytes waiting for FIFO room; beyond this, input is dropped
# Peripheral and PrimeCell identification registers 0xFE0..0xFFC (PL011 r1p5).
PL011_ID = (0x11, 0x10, 0x14, 0x00, 0x0D, 0xF0, 0x05, 0xB1)

_SIZE_MASK = {1: 0xFF, 2: 0xFFFF, 4: 0xFFFF_FFFF}
# Registers that simply hold what was written, with the bits the TRM gives them.
_STORED = {
    UARTILPR: 0xFF,
    UARTIBRD: 0xFFFF,
    UARTFBRD: 0x3F,
    UARTCR: 0xFFFF,
    UARTIFLS: 0x3F,
}


class FastPath(Protocol):
    """What an engine's own data path needs to know of the model, kept current by it."""

    tx_fast: int
    status: int

    def flush(self) -> None: ...


class Pl011:
    def __init__(
        self,
        base: int,
        output: Callable[[bytes], None],
        size: int = 0x1000,
        *,
        irq: Callable[[bool], None] | None = None,
    ) -> None:
        self.region = Region(base, size, "pl011")
        self._output = output
        self._irq = irq
        self._lock = threading.Lock()
        self._rx: deque[int] = deque()
        self._backlog: deque[int] = deque()
        self._dropped = 0
        self._lcr_h = 0
        self._imsc = 0
        self._ris = 0
        self._level = False
        self._loopback = False  # UARTCR.LBE
        self._regs = dict.fromkeys(_STORED, 0)
        self._regs[UARTCR] = CR_RESET
        self._regs[UARTIFLS] = IFLS_RESET
        # Whoever feeds the UART says whether more input may still come (a host terminal
        # or pipe not at its end): then a guest waiting for a receive interrupt is not idle.
        self.more_input: Callable[[], bool] | None = None
        self.fast_path: FastPath | None = None

    def attach_fast_path(self, path: FastPath) -> None:
        """An engine-side path for UARTDR writes and UARTFR reads (see the module doc)."""
        with self._lock:
            self.fast_path = path
            self._publish()

    def flush_output(self) -> None:
        """What the fast path holds goes to `output` now."""
        path = self.fast_path
        if path is not None:
            path.flush()

    def may_interrupt_on_input(self) -> bool:
        """Input may still arrive and the guest enabled a receive interrupt for it."""
        more = self.more_input
        return more is not None and bool(self._imsc & (INT_RX | INT_RT)) and more()

    @property
    def dropped(self) -> int:
        """Host input bytes thrown away because the backlog was full."""
        return self._dropped

    def feed(self, data: bytes) -> None:
        """Input from the host side (a terminal, a pipe, a test); safe from any thread."""
        if not data:
            return
        with self._lock:
            if self._loopback:
                return  # in loopback the receiver is cut off from the RX pin
            room = max(0, BACKLOG_LIMIT - len(self._backlog) + self._depth() - len(self._rx))
            self._backlog.extend(data[:room])
            self._dropped += max(0, len(data) - room)
            self._refill()
            self._drive()

    # -- snapshots ----------------------------------------------------------------------------
    STATE_SECTION = "pl011"
    STATE_VERSION = 1

    def save_state(self) -> State:
        """Registers, the receive FIFO and host input not yet taken (the interrupt level
        is kept as it was: the GIC saves its input lines)."""
        with self._lock:
            return {
                "regs": {str(k): v for k, v in sorted(self._regs.items())},
                "lcr_h": self._lcr_h, "imsc": self._imsc, "ris": self._ris,
                "level": self._level, "loopback": self._loopback,
                "rx": list(self._rx), "backlog": bytes(self._backlog).hex(),
            }  # fmt: skip

    def restore_state(self, state: Fields) -> None:
        regs = state.int_map("regs", 0xFFFF)
        if set(regs) != set(_STORED):
            raise state.bad("regs", "the PL011's stored registers")
        rx = state.integers("rx", hi=0xFF)
        try:
            backlog = bytes.fromhex(state.text("backlog"))
        except ValueError:
            raise state.bad("backlog", "hex bytes") from None
        if len(rx) > FIFO_DEPTH or len(backlog) > BACKLOG_LIMIT:
            raise state.bad("rx", "a FIFO the PL011 can hold")
        with self._lock:
            self._regs = regs
            self._lcr_h = state.integer("lcr_h", hi=0xFF)
            self._imsc = state.integer("imsc", hi=INT_ALL)
            self._ris = state.integer("ris", hi=INT_ALL)
            self._level, self._loopback = state.flag("level"), state.flag("loopback")
            self._rx, self._backlog = deque(rx), deque(backlog)

    # -- MMIO ---------------------------------------------------------------------------------
    def read(self, offset: int, size: int) -> int:
        if offset == UARTFR and size in _SIZE_MASK:  # the polled register: no lock needed
            return self._flags()
        mask = _SIZE_MASK.get(size)
        if mask is None or offset & 3 or not 0 <= offset < self.region.size:
            return 0
        if 0xFE0 <= offset <= 0xFFC:
            return PL011_ID[(offset - 0xFE0) >> 2] & mask
        with self._lock:
            if offset == UARTDR:
                value = self._pop()
            elif offset == UARTLCR_H:
                value = self._lcr_h
            elif offset == UARTIMSC:
                value = self._imsc
            elif offset == UARTRIS:
                value = self._ris
            elif offset == UARTMIS:
                value = self._ris & self._imsc
            else:  # UARTRSR, UARTDMACR, UARTICR (write only) and reserved read as zero
                value = self._regs.get(offset, 0)
        return value & mask

    def write(self, offset: int, size: int, value: int) -> None:
        if offset == UARTDR and size in _SIZE_MASK:
            byte = value & 0xFF
            self._output(bytes((byte,)))
            if self._ris & INT_TX and not self._loopback:
                return  # TXRIS already raised: nothing changes (the common case)
            with self._lock:
                if self._loopback and len(self._rx) < self._depth():
                    self._rx.append(byte)
                    self._ris |= INT_RX | INT_RT
                self._ris |= INT_TX
                self._drive()
            return
        mask = _SIZE_MASK.get(size)
        if mask is None or offset & 3 or offset == UARTDR:
            return
        value &= mask
        with self._lock:
            if offset in _STORED:
                self._regs[offset] = value & _STORED[offset]
                if offset == UARTCR:
                    self._loopback = bool(value & CR_LBE)
                    self._refill()  # leaving loopback reconnects the host input
            elif offset == UARTLCR_H:
                if (self._lcr_h ^ value) & LCR_H_FEN:
                    self._rx.clear()  # enabling or disabling the FIFOs flushes them
                self._lcr_h = value & 0xFF
                self._refill()
            elif offset == UARTIMSC:
                self._imsc = value & INT_ALL
            elif offset == UARTICR:
                self._ris &= ~value & INT_ALL
            else:  # UARTFR, UARTRIS, UARTMIS are read only; UARTRSR, UARTDMACR: WI
                return
            self._drive()

    # -- internals (callers hold the lock) ----------------------------------------------------
    def _depth(self) -> int:
        return FIFO_DEPTH if self._lcr_h & LCR_H_FEN else 1

    def _refill(self) -> None:
        if self._loopback:
            return
        depth = self._depth()
        moved = False
        while self._backlog and len(self._rx) < depth:
            self._rx.append(self._backlog.popleft())
            moved = True
        if moved:
            self._ris |= INT_RX | INT_RT

    def _pop(self) -> int:
        if not self._rx:
            return 0
        byte = self._rx.popleft()
        self._refill()
        if not self._rx:
            self._ris &= ~(INT_RX | INT_RT)
        self._drive()
        return byte

    def _flags(self) -> int:
        count = len(self._rx)
        return FR_TXFE | (FR_RXFF if count >= self._depth() else 0) | (0 if count else FR_RXFE)

    def _publish(self) -> None:
        path = self.fast_path
        if path is not None:
            path.status = self._flags()
            path.tx_fast = int(bool(self._ris & INT_TX) and not self._loopback)

    def _drive(self) -> None:
        """After every change of state (under the lock): the line, and the fast path."""
        if self.fast_path is not None:
            self._publish()
        level = bool(self._ris & self._imsc)
        if level != self._level:
            self._level = level
            if self._irq is not None:
                self._irq(level)
