"""Arm PrimeCell PL031 real-time clock (ARM DDI 0224): a 1 Hz seconds counter and one match.

The counter is derived from an injected clock (nanoseconds, host or deterministic), so it
reads the same on every vCPU and is reproducible when the clock is. It runs from power-on,
as on QEMU's `virt`, where firmware is taken to have set RTCCR.RTCStart already: RTCCR
reads 1 and writes to it are ignored (the TRM: once started, writes have no effect).

The match interrupt is raised when the counter *becomes* equal to RTCMR, or at once when a
write to RTCMR or RTCLR makes them equal. The device has no timer of its own: the board
asks `next_event_ns()` when that will happen and calls `update()` at (or after) that time.
Every register access also brings the state up to date first, so a guest polling RTCRIS
sees the match even if the board's timer is late. After a match the next one is armed by
the next write to RTCMR or RTCLR (a counter wrap 136 years later is not modelled).

Every offset and size the guest picks is answered: unknown or misaligned ones read as zero
and ignore writes.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from pvkit.machine.memory import Region
from pvkit.snapshot.state import Fields, State

PL031_BASE = 0x0901_0000
PL031_SIZE = 0x1000

RTCDR = 0x000  # data: the counter (read only)
RTCMR = 0x004  # match
RTCLR = 0x008  # load: writing sets the counter
RTCCR = 0x00C  # control: bit 0 RTCStart
RTCIMSC = 0x010  # interrupt mask set/clear: bit 0
RTCRIS = 0x014  # raw interrupt status (read only)
RTCMIS = 0x018  # masked interrupt status (read only)
RTCICR = 0x01C  # interrupt clear (write only)
CR_START = 1
INT_RTC = 1
# RTCPeriphID0..3 then RTCPCellID0..3 at 0xFE0..0xFFC (DDI 0224, "Identification registers").
PL031_ID = (0x31, 0x10, 0x14, 0x00, 0x0D, 0xF0, 0x05, 0xB1)

_NS = 1_000_000_000
_MASK32 = 0xFFFF_FFFF
_SIZE_MASK = {1: 0xFF, 2: 0xFFFF, 4: _MASK32}


class Pl031:
    """MMIO device; `irq(level)` is called whenever RTCINTR (RIS & IMSC) changes."""

    def __init__(
        self,
        base: int,
        clock: Callable[[], int],
        irq: Callable[[bool], None],
        *,
        epoch_s: int | None = None,
        size: int = PL031_SIZE,
    ) -> None:
        """`epoch_s`: what RTCDR reads now (default: host wall time, in seconds)."""
        self.region = Region(base, size, "pl031")
        self._clock = clock
        self._irq = irq
        self._lock = threading.Lock()
        self._origin_ns = clock()
        # counter(t) = (_offset + whole seconds elapsed since _origin_ns) mod 2**32
        self._offset = (int(time.time()) if epoch_s is None else epoch_s) & _MASK32
        self._mr = 0
        self._lr = 0
        self._imsc = 0
        self._ris = 0
        self._level = False
        self._match_ns: int | None = None  # armed by the first write to RTCMR or RTCLR
        # Called after a write moved the match time (the board re-arms its timer), as
        # GenericTimer.on_reprogram; outside the lock.
        self.on_reprogram: Callable[[], None] | None = None

    # -- the board's timer service ----------------------------------------------------------
    def next_event_ns(self) -> int | None:
        """Clock time at which the counter will reach RTCMR; None if no match is armed."""
        with self._lock:
            return self._match_ns

    def update(self) -> None:
        """Bring RTCRIS and the interrupt line up to the clock's current time."""
        with self._lock:
            self._sync(self._clock())

    # -- snapshots ----------------------------------------------------------------------------
    STATE_SECTION = "pl031"
    STATE_VERSION = 1

    def save_state(self) -> State:
        with self._lock:
            return {
                "origin_ns": self._origin_ns, "offset": self._offset, "mr": self._mr,
                "lr": self._lr, "imsc": self._imsc, "ris": self._ris, "level": self._level,
                "match_ns": self._match_ns,
            }  # fmt: skip

    def restore_state(self, state: Fields) -> None:
        with self._lock:
            self._origin_ns = state.integer("origin_ns")
            self._offset = state.integer("offset", hi=_MASK32)
            self._mr, self._lr = state.integer("mr", hi=_MASK32), state.integer("lr", hi=_MASK32)
            self._imsc = state.integer("imsc", hi=INT_RTC)
            self._ris = state.integer("ris", hi=INT_RTC)
            self._level = state.flag("level")
            self._match_ns = state.opt_int("match_ns", hi=1 << 96)

    # -- MMIO ---------------------------------------------------------------------------------
    def read(self, offset: int, size: int) -> int:
        mask = _SIZE_MASK.get(size)
        if mask is None or offset & 3 or not 0 <= offset < self.region.size:
            return 0
        if 0xFE0 <= offset <= 0xFFC:
            return PL031_ID[(offset - 0xFE0) >> 2] & mask
        with self._lock:
            now = self._clock()
            self._sync(now)
            if offset == RTCDR:
                value = self._count(now)
            elif offset == RTCMR:
                value = self._mr
            elif offset == RTCLR:
                value = self._lr
            elif offset == RTCCR:
                value = CR_START
            elif offset == RTCIMSC:
                value = self._imsc
            elif offset == RTCRIS:
                value = self._ris
            elif offset == RTCMIS:
                value = self._ris & self._imsc
            else:  # RTCICR is write only; the rest is reserved
                value = 0
        return value & mask

    def write(self, offset: int, size: int, value: int) -> None:
        mask = _SIZE_MASK.get(size)
        if mask is None or offset & 3 or offset not in _WRITABLE:
            return
        value &= mask
        with self._lock:
            now = self._clock()
            self._sync(now)
            if offset == RTCMR:
                self._mr = value
                self._arm_match(now)
            elif offset == RTCLR:
                self._lr = value
                self._offset = (self._offset + value - self._count(now)) & _MASK32
                self._arm_match(now)
            elif offset == RTCIMSC:
                self._imsc = value & INT_RTC
            elif offset == RTCICR:
                self._ris &= ~value & INT_RTC
            self._drive()
        if offset in (RTCMR, RTCLR) and self.on_reprogram is not None:
            self.on_reprogram()

    # -- internals (callers hold the lock) ----------------------------------------------------
    def _count(self, now: int) -> int:
        return (self._offset + (now - self._origin_ns) // _NS) & _MASK32

    def _arm_match(self, now: int) -> None:
        """Re-arm the comparator after RTCMR or the counter changed."""
        ticks = (self._mr - self._count(now)) & _MASK32
        if ticks == 0:
            self._match_ns = None
            self._ris = INT_RTC
        else:
            elapsed_s = (now - self._origin_ns) // _NS
            self._match_ns = self._origin_ns + (elapsed_s + ticks) * _NS
        self._drive()

    def _sync(self, now: int) -> None:
        if self._match_ns is not None and now >= self._match_ns:
            self._match_ns = None
            self._ris = INT_RTC
        self._drive()

    def _drive(self) -> None:
        level = bool(self._ris & self._imsc)
        if level != self._level:
            self._level = level
            self._irq(level)


_WRITABLE = frozenset((RTCMR, RTCLR, RTCCR, RTCIMSC, RTCICR))
