"""Per-vCPU pending interrupt vectors, posted by any thread, taken by the vCPU's own thread."""

from __future__ import annotations

import threading


class InterruptQueue:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pending: set[int] = set()

    def post(self, vector: int) -> None:
        with self._lock:
            self._pending.add(vector & 0xFF)

    def __bool__(self) -> bool:
        return bool(self._pending)

    def take(self) -> int | None:
        """The highest pending vector (the APIC's priority order), or None."""
        with self._lock:
            if not self._pending:
                return None
            vector = max(self._pending)
            self._pending.discard(vector)
            return vector

    def pending(self) -> list[int]:
        """The pending vectors, lowest first (snapshots)."""
        with self._lock:
            return sorted(self._pending)

    def clear(self) -> None:
        with self._lock:
            self._pending.clear()
