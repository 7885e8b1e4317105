"""JSON-lines trace file: one object per event, IDs in hex so they grep like specs.

`t_ns` is hypervisor time: with a clock (`pvkit run` passes the scheduler's) it is the
time of the event's vCPU since the run began (virtual with --deterministic), the clock
the timeline file uses too; events of no vCPU take vCPU 0's. Without one it is the host's
monotonic clock. `duration_ns` is always host time. A call after which the vCPU does not
resume has `"outcome"` ("power_off", "stop_vm") and no results: the guest reads none.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from typing import IO

from pvkit.trace.events import CallEvent, VmEvent


class JsonLinesSink:
    def __init__(self, stream: IO[str], clock: Callable[[int], int] | None = None):
        self._stream = stream
        self._clock = clock
        self._lock = threading.Lock()

    def _time(self, vcpu: int | None, host_ns: int) -> int:
        return host_ns if self._clock is None else self._clock(vcpu or 0)

    def on_call(self, event: CallEvent) -> None:
        record: dict[str, object] = {
            "type": "call",
            "t_ns": self._time(event.vcpu, event.time_ns),
            "vcpu": event.vcpu,
            "conduit": event.conduit,
            "fid": f"{event.function_id:#010x}",
            "name": event.name,
            "args": [f"{a:#x}" for a in event.args],
            "results": [f"{r:#x}" for r in event.results],
            "action": event.action,
            "duration_ns": event.duration_ns,
        }
        if event.outcome != "resume":
            record["outcome"] = event.outcome
        if event.detail:
            record["detail"] = event.detail
        self._write(record)

    def on_event(self, event: VmEvent) -> None:
        record: dict[str, object] = {
            "type": event.kind,
            "t_ns": self._time(event.vcpu, event.time_ns),
        }
        if event.vcpu is not None:
            record["vcpu"] = event.vcpu
        record.update(event.fields)
        self._write(record)

    def _write(self, record: dict[str, object]) -> None:
        line = json.dumps(record, default=str)
        with self._lock:
            self._stream.write(line + "\n")

    def close(self) -> None:
        with self._lock:
            self._stream.flush()
