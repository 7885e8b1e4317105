"""Which pages of guest RAM changed since the last look: live migration's pre-copy.

One byte per 4 KiB page, shared by every vCPU engine of the VM and by the host's own
writes. Engines set a page's byte at the guest's first write to it after they were
armed (UC_CTL_DIRTY_PAGES of the engine patch: the write that clears the TLB entry's
not-dirty mark, so a page costs one slow store per round, and nothing once logging
stops). Host writes through GuestMemory set it too; a window a service keeps on RAM
(GuestMemory.view) may be written at any time, so its pages count as changed in
every round.

Every engine joins the log when it is built, logging or not; `start`, `take` and
`stop` must run while the VM stands (the control plane's pause), because arming an
engine empties its TLB, which only its own thread may touch while it runs. A page
written after a take is in the next one: the write either finds its TLB entry marked
(and marks the page) or unmarked, which means the page was marked since the last arm.
"""

from __future__ import annotations

import ctypes
import re
import threading
from collections.abc import Callable

PAGE = 4096
Arm = Callable[[int | None], None]  # an engine's: log into the map at this address, or stop
_DIRTY_RUN = re.compile(rb"[^\x00]+")


class DirtyLog:
    """Pages of RAM [base, base + size) written since the last `take()`, while active."""

    def __init__(self, base: int, size: int, views: Callable[[], list[tuple[int, int]]]):
        """`views()`: the (address, size) windows on RAM the host may write any time."""
        self.base = base
        self.pages = size // PAGE
        self._views = views
        self._map: ctypes.Array[ctypes.c_uint8] | None = None
        self._engines: dict[int, Arm] = {}
        self._lock = threading.Lock()

    @property
    def active(self) -> bool:
        return self._map is not None

    def mark(self, address: int, size: int) -> None:
        """A host write of `size` bytes at guest address `address` (inside RAM)."""
        page_map = self._map
        if page_map is None or size <= 0:
            return
        first = (address - self.base) // PAGE
        last = (address - self.base + size - 1) // PAGE
        ctypes.memset(ctypes.addressof(page_map) + first, 1, last - first + 1)

    def join(self, key: int, arm: Arm) -> None:
        """An engine that maps this RAM, built by its vCPU's thread (before it runs):
        armed now if the log is active, and at every start and take."""
        with self._lock:
            self._engines[key] = arm
            if self._map is not None:
                arm(ctypes.addressof(self._map))

    def leave(self, key: int) -> None:
        with self._lock:
            self._engines.pop(key, None)

    def start(self) -> None:
        """Log from now on, with an empty map (only while the VM stands)."""
        with self._lock:
            if self._map is None:
                self._map = (ctypes.c_uint8 * self.pages)()
            self._arm_all(ctypes.addressof(self._map))

    def take(self, rearm: bool = True) -> list[tuple[int, int]]:
        """(first page, count) of every run of pages written since the last take (or
        the start), the host's windows included; the map starts empty again and
        (`rearm`) every engine logs each page's next write. Only while the VM stands."""
        page_map = self._map
        if page_map is None:
            raise RuntimeError("the dirty log is not active")
        for address, size in self._views():
            self.mark(address, size)
        at = ctypes.addressof(page_map)
        data = ctypes.string_at(at, self.pages)
        ctypes.memset(at, 0, self.pages)
        if rearm:
            with self._lock:
                self._arm_all(at)
        return [(m.start(), m.end() - m.start()) for m in _DIRTY_RUN.finditer(data)]

    def stop(self) -> None:
        """Every engine stops logging (only while the VM stands, or once it has ended)."""
        with self._lock:
            if self._map is not None:
                self._arm_all(None)
                self._map = None

    def _arm_all(self, address: int | None) -> None:
        for arm in self._engines.values():
            arm(address)
