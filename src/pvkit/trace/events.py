"""Trace event types and the hub that fans them out to sinks."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Protocol


@dataclass(frozen=True, slots=True)
class CallEvent:
    """One hypercall: who, how, what, the answer and how long the host took."""

    vcpu: int
    conduit: str
    function_id: int
    name: str
    args: tuple[int, ...]
    results: tuple[int, ...]
    action: str  # handle / deny / forward / unknown / rejected / error
    duration_ns: int
    time_ns: int
    detail: str | None = None


@dataclass(frozen=True, slots=True)
class VmEvent:
    """Anything else worth a line: power transitions, faults, injected exceptions."""

    kind: str
    time_ns: int
    vcpu: int | None = None
    fields: dict[str, object] = field(default_factory=dict)


class TraceSink(Protocol):
    def on_call(self, event: CallEvent) -> None: ...

    def on_event(self, event: VmEvent) -> None: ...

    def close(self) -> None: ...


class TraceHub:
    """Holds the sinks. Callers test `hub.active` before building an event."""

    def __init__(self) -> None:
        self._sinks: tuple[TraceSink, ...] = ()
        self._lock = threading.Lock()

    @property
    def active(self) -> bool:
        return bool(self._sinks)

    def attach(self, sink: TraceSink) -> None:
        with self._lock:
            self._sinks = (*self._sinks, sink)

    def call(self, event: CallEvent) -> None:
        for sink in self._sinks:
            sink.on_call(event)

    def event(self, event: VmEvent) -> None:
        for sink in self._sinks:
            sink.on_event(event)

    def close(self) -> None:
        for sink in self._sinks:
            sink.close()
