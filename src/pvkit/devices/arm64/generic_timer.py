"""The Arm generic timer of one vCPU: the counter, and the EL1 physical and virtual timers.

Arm ARM (DDI 0487) chapter D11 "The Generic Timer": each timer compares a 64-bit CVAL with
the count; its condition is met when count >= CVAL; ISTATUS shows the condition while
ENABLE is set; the interrupt output is ISTATUS and not IMASK, a level. TVAL is the signed
32-bit difference CVAL - count. The virtual count equals the physical count here (CNTVOFF
is 0). The engine's own timer is dead code, so these registers are served through the
MRS/MSR hook; counts come from the hypervisor clock (1 GHz), so deterministic runs see
deterministic times. Interrupts: PPI 14 (INTID 30) physical, PPI 11 (INTID 27) virtual,
as QEMU's virt board wires them.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from pvkit.machine.scheduling import COUNTER_HZ
from pvkit.snapshot.state import Fields, State

SysregKey = tuple[int, int, int, int, int]  # (op0, op1, CRn, CRm, op2)

CNTFRQ_EL0: SysregKey = (3, 3, 14, 0, 0)
CNTPCT_EL0: SysregKey = (3, 3, 14, 0, 1)
CNTVCT_EL0: SysregKey = (3, 3, 14, 0, 2)
CNTP_TVAL_EL0: SysregKey = (3, 3, 14, 2, 0)
CNTP_CTL_EL0: SysregKey = (3, 3, 14, 2, 1)
CNTP_CVAL_EL0: SysregKey = (3, 3, 14, 2, 2)
CNTV_TVAL_EL0: SysregKey = (3, 3, 14, 3, 0)
CNTV_CTL_EL0: SysregKey = (3, 3, 14, 3, 1)
CNTV_CVAL_EL0: SysregKey = (3, 3, 14, 3, 2)

PHYSICAL_INTID = 30
VIRTUAL_INTID = 27
HYP_INTID = 26  # EL2 physical timer: in the DT binding, never raised (no EL2 guest)
SECURE_INTID = 29  # EL3 physical timer: likewise

CTL_ENABLE = 1 << 0
CTL_IMASK = 1 << 1
CTL_ISTATUS = 1 << 2
_MASK64 = (1 << 64) - 1


class _Channel:
    __slots__ = ("ctl", "cval", "intid", "level")

    def __init__(self, intid: int) -> None:
        self.intid = intid
        self.ctl = 0  # ENABLE and IMASK as written; ISTATUS is computed
        self.cval = 0
        self.level = False

    def met(self, count: int) -> bool:
        return bool(self.ctl & CTL_ENABLE) and count >= self.cval

    def output(self, count: int) -> bool:
        return self.met(count) and not self.ctl & CTL_IMASK


class GenericTimer:
    """`count()` is the vCPU's counter (hypervisor ns); `output(intid, level)` drives a PPI."""

    KEYS: tuple[SysregKey, ...] = (
        CNTFRQ_EL0, CNTPCT_EL0, CNTVCT_EL0,
        CNTP_TVAL_EL0, CNTP_CTL_EL0, CNTP_CVAL_EL0,
        CNTV_TVAL_EL0, CNTV_CTL_EL0, CNTV_CVAL_EL0,
    )  # fmt: skip

    def __init__(self, count: Callable[[], int], output: Callable[[int, bool], None]):
        self._count = count
        self._output = output
        self._lock = threading.Lock()
        self._physical = _Channel(PHYSICAL_INTID)
        self._virtual = _Channel(VIRTUAL_INTID)
        self._by_key = {
            CNTP_TVAL_EL0: self._physical, CNTP_CTL_EL0: self._physical,
            CNTP_CVAL_EL0: self._physical, CNTV_TVAL_EL0: self._virtual,
            CNTV_CTL_EL0: self._virtual, CNTV_CVAL_EL0: self._virtual,
        }  # fmt: skip
        # Called after a register write moved a deadline (the board re-arms its timer).
        self.on_reprogram: Callable[[], None] | None = None

    def read(self, key: SysregKey) -> int | None:
        """A register's value. A read that shows the count at or past an unmasked CVAL (the
        count, ISTATUS, a TVAL <= 0) also raises the output then: the guest has seen the
        condition, so its interrupt cannot wait for the board's deadline thread."""
        if key == CNTFRQ_EL0:
            return COUNTER_HZ
        channel = self._by_key.get(key)
        if channel is None and key not in (CNTPCT_EL0, CNTVCT_EL0):
            return None
        with self._lock:
            count = self._count()
            if channel is None:
                value = count & _MASK64
            elif key[4] == 0:  # TVAL: CVAL - count, as a signed 32-bit value
                value = (channel.cval - count) & 0xFFFF_FFFF
            elif key[4] == 2:
                value = channel.cval
            else:
                value = channel.ctl | (CTL_ISTATUS if channel.met(count) else 0)
            changes = self._changes(count)
        for intid, level in changes:
            self._output(intid, level)
        return value

    def write(self, key: SysregKey, value: int) -> bool:
        channel = self._by_key.get(key)
        if channel is None:
            return key in (CNTFRQ_EL0, CNTPCT_EL0, CNTVCT_EL0)  # read-only at EL1: ignored
        with self._lock:
            if key[4] == 0:
                tval = value & 0xFFFF_FFFF
                tval -= (tval & 0x8000_0000) << 1
                channel.cval = (self._count() + tval) & _MASK64
            elif key[4] == 2:
                channel.cval = value & _MASK64
            else:
                channel.ctl = value & (CTL_ENABLE | CTL_IMASK)
        self.update()
        if self.on_reprogram is not None:
            self.on_reprogram()
        return True

    def update(self) -> None:
        """Drive each output to its level at the current count (after time passed)."""
        with self._lock:
            changes = self._changes(self._count())
        for intid, level in changes:
            self._output(intid, level)

    def _changes(self, count: int) -> list[tuple[int, bool]]:
        """The outputs whose level differs at `count`, now recorded (called locked)."""
        changes = []
        for channel in (self._physical, self._virtual):
            level = channel.output(count)
            if level != channel.level:
                channel.level = level
                changes.append((channel.intid, level))
        return changes

    def next_deadline(self) -> int | None:
        """The earliest count at which an output will rise, None if none will by itself."""
        with self._lock:
            count = self._count()
            waiting = [
                c.cval
                for c in (self._physical, self._virtual)
                if c.ctl & CTL_ENABLE and not c.ctl & CTL_IMASK and c.cval > count
            ]
        return min(waiting, default=None)

    def armed(self) -> bool:
        """An output is high or will rise without the guest doing anything more."""
        with self._lock:
            if self._physical.level or self._virtual.level:
                return True
        return self.next_deadline() is not None

    STATE_SECTION = "timer"
    STATE_VERSION = 1

    def save_state(self) -> State:
        """CNTP_* and CNTV_* as written and each output's level (the count is the clock's)."""
        with self._lock:
            return {
                name: {"ctl": c.ctl, "cval": c.cval, "level": c.level}
                for name, c in (("physical", self._physical), ("virtual", self._virtual))
            }

    def restore_state(self, state: Fields) -> None:
        saved = [state.sub(name) for name in ("physical", "virtual")]
        values = [(f.integer("ctl", hi=CTL_ENABLE | CTL_IMASK), f.integer("cval"),
                   f.flag("level")) for f in saved]  # fmt: skip
        with self._lock:
            for channel, (ctl, cval, level) in zip(
                (self._physical, self._virtual), values, strict=True
            ):
                channel.ctl, channel.cval, channel.level = ctl, cval, level

    def reset(self) -> None:
        with self._lock:
            for channel in (self._physical, self._virtual):
                channel.ctl = channel.cval = 0
        self.update()
