"""JSON-lines trace file: one object per event, IDs in hex so they grep like specs."""

from __future__ import annotations

import json
import threading
from typing import IO

from pvkit.trace.events import CallEvent, VmEvent


class JsonLinesSink:
    def __init__(self, stream: IO[str]):
        self._stream = stream
        self._lock = threading.Lock()

    def on_call(self, event: CallEvent) -> None:
        record = {
            "type": "call",
            "t_ns": event.time_ns,
            "vcpu": event.vcpu,
            "conduit": event.conduit,
            "fid": f"{event.function_id:#010x}",
            "name": event.name,
            "args": [f"{a:#x}" for a in event.args],
            "results": [f"{r:#x}" for r in event.results],
            "action": event.action,
            "duration_ns": event.duration_ns,
        }
        if event.detail:
            record["detail"] = event.detail
        self._write(record)

    def on_event(self, event: VmEvent) -> None:
        record: dict[str, object] = {"type": event.kind, "t_ns": event.time_ns}
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
