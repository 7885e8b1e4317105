"""A Chrome/Perfetto trace-event file of a run: who ran where, hypercalls, steal.

Format: the JSON object form of the Trace Event Format ("traceEvents" plus metadata),
which ui.perfetto.dev and chrome://tracing open. Process 1 has one track per host CPU
with a complete ("X") event per slice; process 2 has one track per vCPU with the same
slices, hypercalls as instant ("i") events, and a "steal" counter ("C") per vCPU.
A hypercall's args say what it was and what came of it, as the JSON-lines trace does:
fid, conduit, args, results (hex), action, and outcome when the vCPU did not resume.
Timestamps are microseconds of hypervisor time (virtual time in --deterministic mode).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pvkit.machine.scheduling import Scheduler
from pvkit.trace.events import CallEvent, VmEvent

HOST_PID = 1
VCPU_PID = 2


class TimelineSink:
    """Trace sink that stamps hypercalls with the scheduler's clock of their vCPU."""

    def __init__(self, clock: Callable[[int], int]):
        self._clock = clock
        self._lock = threading.Lock()
        self._calls: list[tuple[int, CallEvent]] = []  # (ns on the vCPU's clock, event)
        self._pages: list[tuple[int, VmEvent]] = []  # page waits and async-PF notifications

    def on_call(self, event: CallEvent) -> None:
        stamp = self._clock(event.vcpu)
        with self._lock:
            self._calls.append((stamp, event))

    def on_event(self, event: VmEvent) -> None:
        if event.kind in _PAGE_EVENTS and event.vcpu is not None:
            stamp = self._clock(event.vcpu)
            with self._lock:
                self._pages.append((stamp, event))

    def close(self) -> None:
        pass

    def events(self, scheduler: Scheduler) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = [_name("process_name", HOST_PID, None, "host CPUs")]
        out += [
            _name("thread_name", HOST_PID, h, f"host CPU {h}") for h in range(scheduler.host_cpus)
        ]
        out.append(_name("process_name", VCPU_PID, None, "vCPUs"))
        out += [_name("thread_name", VCPU_PID, v, f"vCPU {v}") for v in range(scheduler.vcpu_count)]
        for s in scheduler.slices or ():
            ts, dur = s.start_ns / 1000, (s.end_ns - s.start_ns) / 1000
            out.append(_slice(f"vCPU {s.vcpu}", HOST_PID, s.host_cpu, ts, dur, {"vcpu": s.vcpu}))
            out.append(_slice(f"on host CPU {s.host_cpu}", VCPU_PID, s.vcpu, ts, dur, {}))
            out.append(_steal(s.vcpu, ts, s.steal_ns))
        for v, t in enumerate(scheduler.times):
            end = max((s.end_ns for s in scheduler.slices or () if s.vcpu == v), default=0)
            out.append(_steal(v, end / 1000, t.steal_ns))
        with self._lock:
            calls = list(self._calls)
            pages = list(self._pages)
        out += [_page_event(ns, event) for ns, event in pages]
        for ns, call in calls:
            out.append(
                {
                    "name": call.name,
                    "cat": "hypercall",
                    "ph": "i",
                    "s": "t",
                    "ts": ns / 1000,
                    "pid": VCPU_PID,
                    "tid": call.vcpu,
                    "args": _call_args(call),
                }
            )
        return out

    def write(self, path: Path, scheduler: Scheduler) -> None:
        """Write the file atomically (a temporary file, then a rename)."""
        document = {
            "traceEvents": self.events(scheduler),
            "displayTimeUnit": "ns",
            "otherData": {
                "clock": "deterministic" if scheduler.deterministic else "wall",
                "host_cpus": scheduler.host_cpus,
                "slice_ns": scheduler.slice_ns,
                "vcpus": [
                    {"run_ns": t.run_ns, "steal_ns": t.steal_ns, "idle_ns": t.idle_ns}
                    for t in scheduler.times
                ],
            },
        }
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(document), encoding="utf-8")
        tmp.replace(path)


# A vCPU waiting for the host to bring back a page (stolen time, shown as a span on its
# track) and the asynchronous page-fault notifications it was sent instead.
_PAGE_EVENTS = frozenset({"page_wait", "apf_not_present", "apf_ready"})


def _page_event(ns: int, event: VmEvent) -> dict[str, Any]:
    args = {k: v for k, v in event.fields.items() if k != "until"}
    common = {"cat": "swap", "pid": VCPU_PID, "tid": event.vcpu, "ts": ns / 1000, "args": args}
    until = event.fields.get("until")
    if event.kind == "page_wait" and isinstance(until, int):
        return {"name": "page wait", "ph": "X", "dur": max(0, until - ns) / 1000, **common}
    return {"name": event.kind.replace("_", " "), "ph": "i", "s": "t", **common}


def _call_args(call: CallEvent) -> dict[str, Any]:
    args: dict[str, Any] = {
        "fid": f"{call.function_id:#010x}",
        "conduit": call.conduit,
        "args": [f"{a:#x}" for a in call.args],
        "results": [f"{r:#x}" for r in call.results],
        "action": call.action,
    }
    if call.outcome != "resume":
        args["outcome"] = call.outcome
    if call.detail:
        args["detail"] = call.detail
    return args


def _name(kind: str, pid: int, tid: int | None, name: str) -> dict[str, Any]:
    event: dict[str, Any] = {"name": kind, "ph": "M", "pid": pid, "args": {"name": name}}
    if tid is not None:
        event["tid"] = tid
    return event


def _slice(
    name: str, pid: int, tid: int, ts: float, dur: float, args: dict[str, Any]
) -> dict[str, Any]:
    return {"name": name, "cat": "run", "ph": "X", "ts": ts, "dur": dur, "pid": pid, "tid": tid,
            "args": args}  # fmt: skip


def _steal(vcpu: int, ts: float, steal_ns: int) -> dict[str, Any]:
    return {"name": f"steal vCPU {vcpu}", "cat": "steal", "ph": "C", "ts": ts, "pid": VCPU_PID,
            "args": {"steal_ms": steal_ns / 1e6}}  # fmt: skip
