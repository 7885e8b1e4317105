"""pvpanic, MMIO flavour: the guest tells the host it panicked, crashed into kdump, or is
shutting down.

A PV *device* rather than a hypercall (DESIGN.md seed 8): it works under any hypervisor
that offers it and under pure emulation, and a guest finds it through its firmware tables
(DT compatible "qemu,pvpanic-mmio"), not by probing. Semantics are those of the port and
PCI variants (QEMU docs/specs/pvpanic.rst): a read returns the set of events the device
supports, a write reports events, unknown bits are ignored. Event bits are those of Linux
include/uapi/misc/pvpanic.h.

The register (Linux Documentation/devicetree/bindings/misc/qemu,pvpanic-mmio.yaml) is
2 bytes wide: `reg = <0x0 0x9060000 0x0 0x2>`, a 16-bit data register, while Linux's
driver (drivers/misc/pvpanic/pvpanic-mmio.c) uses byte accesses at offset 0. Only the low
byte carries events, so:
  * offset 0, 1 or 2 bytes: reads the supported events (the high byte reads 0); a write
    reports the events in its low byte; the high byte of a 16-bit write is ignored;
  * offset 1 (the high byte on its own): reads 0, writes are ignored, since no event is
    defined there and guessing would turn stray bytes into a "guest panicked" stop.
Every other offset and size in the decode window reads as zero and ignores writes.

Engines map whole 4 KiB pages, so `region` is the page the register sits in
(PVPANIC_MMIO_WINDOW); the device tree should still say PVPANIC_MMIO_SIZE.

The device only decodes. `on_event(events)` receives every supported bit of a write at
once (a write of 0 or of unsupported bits alone calls nothing); the board decides what
PANICKED, CRASH_LOADED and SHUTDOWN mean. Bits the device does not advertise go to the
optional `on_unknown(bits)`, once per bit for the device's lifetime, as QEMU logs them
once. Writes may come from any vCPU thread at the same time: the callbacks are called on
the writer's thread, outside any lock of the device, and must cope with concurrency.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from pvkit.machine.memory import Region

PVPANIC_MMIO_BASE = 0x0906_0000
PVPANIC_MMIO_SIZE = 2  # the register, as the device tree describes it
PVPANIC_MMIO_WINDOW = 0x1000  # what an engine maps (page granular)

PVPANIC_PANICKED = 1 << 0  # the guest panicked: the host should stop or report it
PVPANIC_CRASH_LOADED = 1 << 1  # panicked, but a crash kernel (kdump) takes over: record only
PVPANIC_SHUTDOWN = 1 << 2  # an orderly shutdown is under way (the 2024 addition)
PVPANIC_EVENTS = PVPANIC_PANICKED | PVPANIC_CRASH_LOADED | PVPANIC_SHUTDOWN

_EVENT_NAMES = {
    PVPANIC_PANICKED: "panicked",
    PVPANIC_CRASH_LOADED: "crash-loaded",
    PVPANIC_SHUTDOWN: "shutdown",
}


def event_names(events: int) -> list[str]:
    """Names of the known bits in `events`, lowest first (for traces and messages)."""
    return [name for bit, name in _EVENT_NAMES.items() if events & bit]


class PvpanicMmio:
    """MMIO device: `on_event(events)` for each write carrying supported event bits."""

    def __init__(
        self,
        on_event: Callable[[int], None],
        base: int = PVPANIC_MMIO_BASE,
        *,
        events: int = PVPANIC_EVENTS,
        on_unknown: Callable[[int], None] | None = None,
    ) -> None:
        """`events`: the set advertised to the guest (QEMU's `events` property: older
        hosts offered PANICKED | CRASH_LOADED only); bits outside it count as unknown."""
        if events & ~PVPANIC_EVENTS:
            raise ValueError(
                f"pvpanic events {events:#x} include bits outside the defined set "
                f"{PVPANIC_EVENTS:#x} (PANICKED 1, CRASH_LOADED 2, SHUTDOWN 4)"
            )
        self.region = Region(base, PVPANIC_MMIO_WINDOW, "pvpanic-mmio")
        self.events = events
        self._on_event = on_event
        self._on_unknown = on_unknown
        self._lock = threading.Lock()
        self._reported = 0  # unknown bits already passed to on_unknown

    def read(self, offset: int, size: int) -> int:
        if offset == 0 and size in (1, 2):
            return self.events
        return 0

    def write(self, offset: int, size: int, value: int) -> None:
        if offset != 0 or size not in (1, 2):
            return
        byte = value & 0xFF
        known = byte & self.events
        unknown = byte & ~self.events
        if unknown and self._on_unknown is not None:
            with self._lock:
                new = unknown & ~self._reported
                self._reported |= new
            if new:
                self._on_unknown(new)
        if known:
            self._on_event(known)
