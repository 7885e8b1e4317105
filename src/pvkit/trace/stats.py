"""Per-function call statistics (count, total host time) for `pvkit run --stats`."""

from __future__ import annotations

import threading
from dataclasses import dataclass

from pvkit.trace.events import CallEvent, VmEvent


@dataclass(slots=True)
class FunctionStats:
    function_id: int
    name: str
    count: int = 0
    total_ns: int = 0

    @property
    def mean_us(self) -> float:
        return self.total_ns / self.count / 1000 if self.count else 0.0


class CallStats:
    def __init__(self) -> None:
        self._by_id: dict[int, FunctionStats] = {}
        self._lock = threading.Lock()
        self.events: dict[str, int] = {}

    def on_call(self, event: CallEvent) -> None:
        with self._lock:
            entry = self._by_id.get(event.function_id)
            if entry is None:
                entry = self._by_id[event.function_id] = FunctionStats(
                    event.function_id, event.name
                )
            entry.count += 1
            entry.total_ns += event.duration_ns

    def on_event(self, event: VmEvent) -> None:
        with self._lock:
            self.events[event.kind] = self.events.get(event.kind, 0) + 1

    def close(self) -> None:
        pass

    def rows(self) -> list[FunctionStats]:
        with self._lock:
            return sorted(self._by_id.values(), key=lambda s: s.function_id)
