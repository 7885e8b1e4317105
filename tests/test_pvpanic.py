"""pvpanic MMIO device (QEMU docs/specs/pvpanic.rst; DT binding qemu,pvpanic-mmio.yaml)."""

from __future__ import annotations

import threading

import pytest

from pvkit.devices.pvpanic import (
    PVPANIC_CRASH_LOADED,
    PVPANIC_EVENTS,
    PVPANIC_MMIO_BASE,
    PVPANIC_MMIO_SIZE,
    PVPANIC_MMIO_WINDOW,
    PVPANIC_PANICKED,
    PVPANIC_SHUTDOWN,
    PvpanicMmio,
    event_names,
)


class Recorder:
    def __init__(self) -> None:
        self.events: list[int] = []
        self.unknown: list[int] = []
        self._lock = threading.Lock()

    def on_event(self, events: int) -> None:
        with self._lock:
            self.events.append(events)

    def on_unknown(self, bits: int) -> None:
        with self._lock:
            self.unknown.append(bits)


def device(events: int = PVPANIC_EVENTS) -> tuple[PvpanicMmio, Recorder]:
    rec = Recorder()
    return PvpanicMmio(rec.on_event, events=events, on_unknown=rec.on_unknown), rec


def test_constants_match_the_uapi_header_and_the_binding_example() -> None:
    assert (PVPANIC_PANICKED, PVPANIC_CRASH_LOADED, PVPANIC_SHUTDOWN) == (1, 2, 4)
    assert PVPANIC_EVENTS == 0x7
    assert PVPANIC_MMIO_BASE == 0x0906_0000 and PVPANIC_MMIO_SIZE == 2
    dev, _ = device()
    # The engine maps whole pages: the region is the page holding the 2-byte register.
    assert dev.region.base == PVPANIC_MMIO_BASE and dev.region.size == PVPANIC_MMIO_WINDOW
    assert dev.region.size % 0x1000 == 0 and dev.region.size >= PVPANIC_MMIO_SIZE


def test_reading_the_register_returns_the_supported_events() -> None:
    dev, _ = device()
    assert dev.read(0, 1) == 0x7
    assert dev.read(0, 2) == 0x7  # 16-bit read: the high byte carries nothing
    assert dev.read(1, 1) == 0
    older, _ = device(events=PVPANIC_PANICKED | PVPANIC_CRASH_LOADED)  # a pre-2024 host
    assert older.read(0, 1) == 0x3


@pytest.mark.parametrize(("offset", "size"), [(0, 4), (0, 8), (1, 2), (2, 1), (0xFFF, 1), (0, 3)])
def test_every_other_access_reads_zero_and_writes_nothing(offset: int, size: int) -> None:
    dev, rec = device()
    assert dev.read(offset, size) == 0
    dev.write(offset, size, 0xFF)
    assert rec.events == [] and rec.unknown == []


def test_a_write_reports_its_events_in_one_call() -> None:
    dev, rec = device()
    dev.write(0, 1, PVPANIC_CRASH_LOADED)
    dev.write(0, 1, PVPANIC_PANICKED)
    dev.write(0, 1, PVPANIC_SHUTDOWN)
    dev.write(0, 1, PVPANIC_PANICKED | PVPANIC_CRASH_LOADED)
    assert rec.events == [2, 1, 4, 3]
    assert rec.unknown == []


def test_a_write_of_zero_reports_nothing() -> None:
    dev, rec = device()
    dev.write(0, 1, 0)
    dev.write(0, 2, 0)
    assert rec.events == []


def test_sixteen_bit_writes_use_the_low_byte_and_offset_one_is_ignored() -> None:
    dev, rec = device()
    dev.write(0, 2, 0x0401)  # the high byte (0x04) is not an event
    dev.write(1, 1, PVPANIC_PANICKED)  # the high byte on its own
    assert rec.events == [PVPANIC_PANICKED]
    assert rec.unknown == []


def test_unknown_bits_are_ignored_and_reported_once_each() -> None:
    dev, rec = device()
    dev.write(0, 1, 0x08)
    dev.write(0, 1, 0x08)
    dev.write(0, 1, 0x18 | PVPANIC_PANICKED)
    assert rec.unknown == [0x08, 0x10]
    assert rec.events == [PVPANIC_PANICKED]


def test_bits_the_device_does_not_advertise_count_as_unknown() -> None:
    dev, rec = device(events=PVPANIC_PANICKED | PVPANIC_CRASH_LOADED)
    dev.write(0, 1, PVPANIC_SHUTDOWN)
    assert rec.events == [] and rec.unknown == [PVPANIC_SHUTDOWN]


def test_without_an_unknown_callback_unknown_bits_are_just_dropped() -> None:
    seen: list[int] = []
    dev = PvpanicMmio(seen.append)
    dev.write(0, 1, 0xF8)
    dev.write(0, 1, 0xF9)
    assert seen == [PVPANIC_PANICKED]


def test_events_outside_the_defined_set_are_refused_at_construction() -> None:
    with pytest.raises(ValueError, match="outside the defined set"):
        PvpanicMmio(lambda events: None, events=0x9)


def test_writes_from_many_threads_each_arrive_and_unknown_bits_once() -> None:
    dev, rec = device()
    threads = 8
    per_thread = 200
    barrier = threading.Barrier(threads)

    def vcpu() -> None:
        barrier.wait()
        for _ in range(per_thread):
            dev.write(0, 1, PVPANIC_CRASH_LOADED | 0x80)

    workers = [threading.Thread(target=vcpu) for _ in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    assert rec.events == [PVPANIC_CRASH_LOADED] * (threads * per_thread)
    assert rec.unknown == [0x80]


def test_event_names() -> None:
    assert event_names(0x7) == ["panicked", "crash-loaded", "shutdown"]
    assert event_names(0x8) == []
