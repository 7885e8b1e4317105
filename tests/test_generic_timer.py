"""The generic timer model alone: registers, ISTATUS, and when its output rises."""

from __future__ import annotations

from pvkit.devices.arm64.generic_timer import (
    CNTP_CTL_EL0,
    CNTP_CVAL_EL0,
    CNTP_TVAL_EL0,
    CNTV_CTL_EL0,
    CNTV_CVAL_EL0,
    CNTVCT_EL0,
    CTL_ENABLE,
    CTL_IMASK,
    CTL_ISTATUS,
    PHYSICAL_INTID,
    VIRTUAL_INTID,
    GenericTimer,
)


class Clock:
    def __init__(self) -> None:
        self.now = 1000

    def __call__(self) -> int:
        return self.now


def timer() -> tuple[GenericTimer, Clock, list[tuple[int, bool]]]:
    clock = Clock()
    outputs: list[tuple[int, bool]] = []
    return GenericTimer(clock, lambda intid, level: outputs.append((intid, level))), clock, outputs


def test_istatus_and_tval_follow_the_count() -> None:
    t, clock, outputs = timer()
    assert t.write(CNTV_CVAL_EL0, 1500) and t.write(CNTV_CTL_EL0, CTL_ENABLE)
    assert t.read(CNTV_CTL_EL0) == CTL_ENABLE and outputs == []
    clock.now = 1400
    assert t.read(CNTP_TVAL_EL0) == (0 - 1400) & 0xFFFF_FFFF  # physical CVAL is 0
    clock.now = 1600
    assert t.read(CNTV_CTL_EL0) == CTL_ENABLE | CTL_ISTATUS
    t.write(CNTV_CTL_EL0, CTL_ENABLE | CTL_IMASK)
    assert t.read(CNTV_CTL_EL0) == CTL_ENABLE | CTL_IMASK | CTL_ISTATUS
    assert outputs == [(VIRTUAL_INTID, True), (VIRTUAL_INTID, False)]


def test_a_read_that_shows_the_condition_met_raises_the_output_at_once() -> None:
    """kvm-unit-tests timer: spin until CNTV_CTL.ISTATUS, print three lines, then expect
    the interrupt taken. The output must not wait for the board's deadline thread (late
    when the host is busy): once the guest has seen ISTATUS, the line is up."""
    t, clock, outputs = timer()
    t.write(CNTV_CVAL_EL0, 2000)
    t.write(CNTV_CTL_EL0, CTL_ENABLE)
    clock.now = 2000  # time passes; nobody called update()
    assert t.read(CNTV_CTL_EL0) == CTL_ENABLE | CTL_ISTATUS
    assert outputs == [(VIRTUAL_INTID, True)]
    assert t.read(CNTV_CTL_EL0) == CTL_ENABLE | CTL_ISTATUS
    assert outputs == [(VIRTUAL_INTID, True)]  # a level: raised once


def test_reading_the_counter_or_tval_past_cval_raises_the_output_too() -> None:
    t, clock, outputs = timer()
    t.write(CNTP_CVAL_EL0, 5000)
    t.write(CNTP_CTL_EL0, CTL_ENABLE)
    clock.now = 4999
    assert t.read(CNTVCT_EL0) == 4999 and outputs == []
    clock.now = 5001
    assert t.read(CNTVCT_EL0) == 5001
    assert outputs == [(PHYSICAL_INTID, True)]
    t2, clock2, outputs2 = timer()
    t2.write(CNTP_TVAL_EL0, 10)
    t2.write(CNTP_CTL_EL0, CTL_ENABLE)
    clock2.now += 11
    assert t2.read(CNTP_TVAL_EL0) == 0xFFFF_FFFF  # -1
    assert outputs2 == [(PHYSICAL_INTID, True)]


def test_a_masked_or_disabled_timer_never_raises_its_output_on_a_read() -> None:
    t, clock, outputs = timer()
    t.write(CNTV_CVAL_EL0, 10)
    t.write(CNTV_CTL_EL0, CTL_ENABLE | CTL_IMASK)
    t.write(CNTP_CVAL_EL0, 10)
    clock.now = 100
    assert t.read(CNTV_CTL_EL0) == CTL_ENABLE | CTL_IMASK | CTL_ISTATUS
    assert t.read(CNTP_CTL_EL0) == 0
    assert outputs == []
