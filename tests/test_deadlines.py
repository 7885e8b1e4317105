"""The wall-clock deadline thread: callbacks at their time, re-arming, and far deadlines."""

from __future__ import annotations

import threading
import time

from pvkit.machine.deadlines import DeadlineThread


def _clock() -> int:
    return time.monotonic_ns()


def test_the_earliest_deadline_fires_first_and_a_rearmed_one_moves() -> None:
    fired: list[str] = []
    done = threading.Event()
    d = DeadlineThread(_clock)
    d.start()
    try:
        now = _clock()
        d.arm("b", now + 40_000_000, lambda: (fired.append("b"), done.set()))
        d.arm("a", now + 10_000_000, lambda: fired.append("a"))
        d.arm("c", now + 20_000_000, lambda: fired.append("c"))
        d.arm("c", None, lambda: fired.append("c"))  # disarmed: never fires
        assert done.wait(5)
    finally:
        d.stop()
    assert fired == ["a", "b"]


def test_a_deadline_near_the_end_of_time_does_not_break_the_thread() -> None:
    """Guests park a timer with CVAL near 2**64; the thread must keep serving others."""
    fired = threading.Event()
    d = DeadlineThread(_clock)
    d.start()
    try:
        d.arm("parked", 2**64 - 1, lambda: None)
        time.sleep(0.05)
        d.arm("soon", _clock() + 1_000_000, fired.set)
        assert fired.wait(5)
        assert d.next_ns() == 2**64 - 1
    finally:
        d.stop()
