"""PL031 RTC registers (ARM DDI 0224), driven by an injected clock."""

from __future__ import annotations

import pytest

from pvkit.devices.pl031 import (
    PL031_BASE,
    PL031_ID,
    RTCCR,
    RTCDR,
    RTCICR,
    RTCIMSC,
    RTCLR,
    RTCMIS,
    RTCMR,
    RTCRIS,
    Pl031,
)

S = 1_000_000_000
EPOCH = 1_700_000_000


class Clock:
    def __init__(self, ns: int = 123_456_789) -> None:
        self.ns = ns

    def __call__(self) -> int:
        return self.ns


class Line:
    def __init__(self) -> None:
        self.changes: list[bool] = []

    def __call__(self, level: bool) -> None:
        self.changes.append(level)

    @property
    def level(self) -> bool:
        return bool(self.changes) and self.changes[-1]


def rtc(epoch: int = EPOCH) -> tuple[Pl031, Clock, Line]:
    clock, line = Clock(), Line()
    return Pl031(PL031_BASE, clock, line, epoch_s=epoch), clock, line


def test_rtcdr_reads_the_epoch_and_ticks_once_per_second_of_the_clock() -> None:
    dev, clock, _ = rtc()
    assert dev.region.base == 0x0901_0000 and dev.region.size == 0x1000
    assert dev.read(RTCDR, 4) == EPOCH
    clock.ns += S - 1
    assert dev.read(RTCDR, 4) == EPOCH
    clock.ns += 1
    assert dev.read(RTCDR, 4) == EPOCH + 1
    clock.ns += 10 * S
    assert dev.read(RTCDR, 4) == EPOCH + 11


def test_default_epoch_is_host_wall_time() -> None:
    import time

    before = int(time.time())
    dev = Pl031(PL031_BASE, Clock(), Line())
    assert before <= dev.read(RTCDR, 4) <= int(time.time())


def test_rtclr_loads_the_counter_which_keeps_counting_from_there() -> None:
    dev, clock, _ = rtc()
    clock.ns += S // 2
    dev.write(RTCLR, 4, 1000)
    assert dev.read(RTCLR, 4) == 1000
    assert dev.read(RTCDR, 4) == 1000
    clock.ns += S // 2  # the 1 Hz phase is kept: the next tick comes at the old boundary
    assert dev.read(RTCDR, 4) == 1001


def test_counter_wraps_at_32_bits() -> None:
    dev, clock, _ = rtc(0xFFFF_FFFF)
    clock.ns += S
    assert dev.read(RTCDR, 4) == 0


def test_rtccr_reads_started_and_ignores_writes() -> None:
    dev, clock, _ = rtc()
    dev.write(RTCCR, 4, 0)
    assert dev.read(RTCCR, 4) == 1
    clock.ns += S
    assert dev.read(RTCDR, 4) == EPOCH + 1


def test_id_registers_are_the_pl031_values() -> None:
    dev, _, _ = rtc()
    assert [dev.read(0xFE0 + 4 * i, 4) for i in range(8)] == list(PL031_ID)
    assert PL031_ID == (0x31, 0x10, 0x14, 0x00, 0x0D, 0xF0, 0x05, 0xB1)


@pytest.mark.parametrize("offset", [RTCDR, RTCRIS, RTCMIS, *range(0xFE0, 0x1000, 4)])
@pytest.mark.parametrize("size", [1, 2, 4])
def test_read_only_registers_ignore_writes_of_every_width(offset: int, size: int) -> None:
    dev, _, _ = rtc()
    dev.write(RTCMR, 4, dev.read(RTCDR, 4))  # RIS = 1, so RIS is worth poisoning
    before = [dev.read(offset, s) for s in (1, 2, 4)]
    dev.write(offset, size, 0xDEADBEEF)
    assert [dev.read(offset, s) for s in (1, 2, 4)] == before


def test_match_raises_ris_when_the_counter_reaches_rtcmr_and_the_line_only_if_unmasked() -> None:
    dev, clock, line = rtc()
    dev.write(RTCMR, 4, EPOCH + 2)
    assert dev.read(RTCRIS, 4) == 0
    match_ns = dev.next_event_ns()
    assert match_ns is not None and match_ns > clock.ns
    clock.ns = match_ns - 1
    dev.update()
    assert dev.read(RTCRIS, 4) == 0 and dev.read(RTCDR, 4) == EPOCH + 1
    clock.ns = match_ns
    dev.update()
    assert dev.read(RTCDR, 4) == EPOCH + 2
    assert dev.read(RTCRIS, 4) == 1 and dev.read(RTCMIS, 4) == 0
    assert line.changes == []  # masked: RTCINTR stays low
    assert dev.next_event_ns() is None
    dev.write(RTCIMSC, 4, 1)  # unmasking a pending match raises the line at once
    assert line.changes == [True] and dev.read(RTCMIS, 4) == 1


def test_writing_any_value_with_bit0_to_rtcicr_clears_the_interrupt() -> None:
    dev, _, line = rtc()
    dev.write(RTCIMSC, 4, 1)
    dev.write(RTCMR, 4, EPOCH)  # equal now: the match is immediate
    assert line.changes == [True]
    dev.write(RTCICR, 4, 0x8000_0000)  # bit 0 clear: nothing
    assert dev.read(RTCRIS, 4) == 1
    dev.write(RTCICR, 4, 0x8000_0001)
    assert dev.read(RTCRIS, 4) == 0 and dev.read(RTCMIS, 4) == 0
    assert line.changes == [True, False]


def test_a_register_read_sees_a_match_the_board_timer_has_not_delivered_yet() -> None:
    dev, clock, _ = rtc()
    dev.write(RTCMR, 4, EPOCH + 1)
    clock.ns += 5 * S  # no update() call
    assert dev.read(RTCRIS, 4) == 1


def test_a_match_in_the_past_is_due_only_after_the_counter_wraps() -> None:
    dev, clock, _ = rtc()
    dev.write(RTCMR, 4, EPOCH - 1)
    match_ns = dev.next_event_ns()
    assert match_ns is not None and match_ns - clock.ns > (1 << 32) * S - 2 * S
    clock.ns += 100 * S
    assert dev.read(RTCRIS, 4) == 0


def test_loading_the_counter_onto_rtcmr_matches_and_rearms() -> None:
    dev, clock, _ = rtc()
    dev.write(RTCMR, 4, 50)
    dev.write(RTCLR, 4, 50)
    assert dev.read(RTCRIS, 4) == 1
    dev.write(RTCICR, 4, 1)
    dev.write(RTCLR, 4, 40)
    due = dev.next_event_ns()
    assert due is not None and (due - clock.ns) // S == 10


def test_rtcimsc_keeps_only_bit0() -> None:
    dev, _, _ = rtc()
    dev.write(RTCIMSC, 4, 0xFFFF_FFFF)
    assert dev.read(RTCIMSC, 4) == 1


@pytest.mark.parametrize(
    ("offset", "size"),
    [(0x01, 4), (0x02, 2), (RTCDR, 8), (RTCDR, 3), (0x020, 4), (0x1000, 4), (-4, 4), (RTCICR, 4)],
)
def test_hostile_accesses_read_as_zero_and_ignore_writes(offset: int, size: int) -> None:
    dev, _, line = rtc()
    assert dev.read(offset, size) == 0
    dev.write(offset, size, 0xFFFF_FFFF_FFFF_FFFF)
    assert dev.read(RTCDR, 4) == EPOCH and dev.read(RTCMR, 4) == 0 and line.changes == []


def test_sub_word_reads_return_the_low_bytes() -> None:
    dev, _, _ = rtc(0x1234_5678)
    assert dev.read(RTCDR, 1) == 0x78 and dev.read(RTCDR, 2) == 0x5678
