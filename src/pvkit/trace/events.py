"""Trace event types and the hub that fans them out to sinks."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol


@dataclass(frozen=True, slots=True)
class CallEvent:
    """One hypercall: who, how, what, the answer and how long the host took.

    `results` are what the guest reads back; a call after which the vCPU does not resume
    (`outcome` "power_off": CPU_OFF parked it; "stop_vm": SYSTEM_OFF, a reset) has none.
    """

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
    outcome: str = "resume"  # Outcome.value: resume / power_off / stop_vm


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
    """Holds the sinks. Callers test `hub.active` before building an event.

    Fast paths that skip the dispatcher (the answer table) `watch` the hub so that they
    step aside the moment a sink is attached: a traced run sees every call.
    """

    def __init__(self) -> None:
        self._sinks: tuple[TraceSink, ...] = ()
        self._watchers: tuple[Callable[[bool], None], ...] = ()
        self._lock = threading.Lock()

    @property
    def active(self) -> bool:
        return bool(self._sinks)

    def watch(self, on_change: Callable[[bool], None]) -> None:
        """Call `on_change(active)` now and whenever a sink is attached."""
        with self._lock:
            self._watchers = (*self._watchers, on_change)
        on_change(self.active)

    def attach(self, sink: TraceSink) -> None:
        with self._lock:
            self._sinks = (*self._sinks, sink)
            watchers = self._watchers
        for on_change in watchers:
            on_change(True)

    def call(self, event: CallEvent) -> None:
        for sink in self._sinks:
            sink.on_call(event)

    def event(self, event: VmEvent) -> None:
        for sink in self._sinks:
            sink.on_event(event)

    def close(self) -> None:
        for sink in self._sinks:
            sink.close()
