"""Wall-clock deadlines: one thread per VM that runs a callback when a device's time comes.

Devices with a deadline (the generic timer of each vCPU, the RTC's match) arm it in
hypervisor nanoseconds; the thread sleeps until the earliest one and runs its callback
outside the lock, so a callback may arm again. In deterministic mode time is guest
instructions and no thread can know when it passes: the scheduler ends slices at
deadlines instead (see VirtualMachine and VirtualScheduler).
"""

from __future__ import annotations

import heapq
import threading
from collections.abc import Callable, Hashable

_MAX_WAIT_S = 60.0


class DeadlineThread:
    def __init__(self, now_ns: Callable[[], int]):
        self._now = now_ns
        self._cond = threading.Condition()
        self._due: dict[Hashable, int] = {}
        self._callbacks: dict[Hashable, Callable[[], None]] = {}
        self._heap: list[tuple[int, int, Hashable]] = []
        self._seq = 0
        self._stop = False
        self._thread: threading.Thread | None = None

    def arm(self, key: Hashable, at_ns: int | None, callback: Callable[[], None]) -> None:
        """(Re)arm `key` for `at_ns` (None: disarm). One deadline per key."""
        with self._cond:
            if at_ns is None:
                self._due.pop(key, None)
                return
            if self._due.get(key) == at_ns:
                return
            self._due[key] = at_ns
            self._callbacks[key] = callback
            self._seq += 1
            heapq.heappush(self._heap, (at_ns, self._seq, key))
            self._cond.notify()

    def next_ns(self) -> int | None:
        with self._cond:
            return min(self._due.values(), default=None)

    def start(self) -> None:
        with self._cond:
            self._stop = False
        self._thread = threading.Thread(target=self._main, name="deadlines", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        with self._cond:
            self._stop = True
            self._due.clear()
            self._heap.clear()
            self._cond.notify()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def _main(self) -> None:
        while True:
            with self._cond:
                callback = None
                while callback is None:
                    if self._stop:
                        return
                    if not self._heap:
                        self._cond.wait()
                        continue
                    at, _, key = self._heap[0]
                    if self._due.get(key) != at:
                        heapq.heappop(self._heap)  # re-armed or disarmed since
                        continue
                    left = at - self._now()
                    if left > 0:
                        # A guest may park a deadline near 2**64 ns; sleep in bounded steps.
                        self._cond.wait(min(left / 1e9, _MAX_WAIT_S))
                        continue
                    heapq.heappop(self._heap)
                    del self._due[key]
                    callback = self._callbacks[key]
            callback()
