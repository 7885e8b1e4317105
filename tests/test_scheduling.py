"""The scheduler's ground truth, the record update order, and the timeline file."""

from __future__ import annotations

import itertools
import json
import random
import subprocess
import sys
import threading
from pathlib import Path

import jsonschema
import pytest

from pvkit.machine.memory import GuestMemory, GuestMemoryError
from pvkit.machine.scheduling import Activity
from pvkit.machine.virtual_scheduler import VirtualScheduler
from pvkit.machine.wall_scheduler import WallScheduler
from pvkit.services.stolen_time import StolenTimeService

from .conftest import PREBUILT

SCHEMA = json.loads((Path(__file__).parent / "trace_event_schema.json").read_text())


class Counter:
    def __init__(self) -> None:
        self.value = 0

    def __call__(self) -> int:
        return self.value


def test_virtual_schedule_two_vcpus_one_host_cpu() -> None:
    s = VirtualScheduler(2, 1, slice_ns=100)
    counters = [Counter(), Counter()]
    for v in (0, 1):
        s.attach(v, counters[v])
        s.become_runnable(v)
    for _ in range(3):  # alternate slices: 0, 1, 0, 1, 0, 1
        for v in (0, 1):
            assert s.acquire(v)
            counters[v].value = 100
            s.release(v, Activity.RUNNABLE)
    s.finish()
    # v0 runs [0,100) [200,300) [400,500), waits 100 twice and, runnable, from 500 to the
    # end at 600; v1 waits [0,100) then 100 before each of its next two slices.
    assert [(t.run_ns, t.steal_ns) for t in s.times] == [(300, 300), (300, 300)]


def test_wall_scheduler_never_runs_more_vcpus_than_host_cpus() -> None:
    s = WallScheduler(6, 2, slice_ns=1_000_000)
    running = 0
    peak = 0
    lock = threading.Lock()

    def vcpu(v: int) -> None:
        nonlocal running, peak
        for _ in range(20):
            assert s.acquire(v)
            with lock:
                running += 1
                peak = max(peak, running)
            with lock:
                running -= 1
            s.release(v, Activity.RUNNABLE)
        s.release(v, Activity.IDLE)

    threads = [threading.Thread(target=vcpu, args=(v,)) for v in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert peak <= 2


class RecordPlatform:
    """Just enough platform for the stolen-time service: memory and the scheduler's truth."""

    def __init__(self, scheduler: VirtualScheduler, memory: GuestMemory):
        self.scheduler = scheduler
        self.memory = memory

    def stolen_ns(self, vcpu: int) -> int:
        return self.scheduler.steal_ns(vcpu)

    def guest_view(self, address: int, size: int) -> memoryview:
        return self.memory.view(address, size)


@pytest.mark.parametrize("seed", range(5))
def test_records_are_updated_before_entry_and_never_go_backwards(seed: int) -> None:
    rng = random.Random(seed)
    vcpus = 4
    sched = VirtualScheduler(vcpus, 1, slice_ns=50)
    memory = GuestMemory(0, 1 << 16)
    service = StolenTimeService()
    service.bind(RecordPlatform(sched, memory))  # type: ignore[arg-type]
    service.place(0x1000)
    counters = [Counter() for _ in range(vcpus)]
    pv_time_st = {f.name: f for f in service.functions()}["PV_TIME_ST"].direct
    assert pv_time_st is not None
    for v in range(vcpus):
        sched.attach(v, counters[v])
        sched.become_runnable(v)
        assert pv_time_st(v, 0, 0, 0) == (service.record_address(v),)  # the guest asks
    seen = [0] * vcpus
    for _ in range(200):
        v = min(range(vcpus), key=lambda i: (sched._ready_at[i], i))  # the one it will pick
        assert sched.acquire(v)
        service.on_vcpu_entry(v)
        value = memory.read_u64(service.record_address(v) + 8)
        assert value == sched.times[v].steal_ns  # current when the vCPU enters
        assert value >= seen[v]  # and never smaller than what the guest saw before
        seen[v] = value
        counters[v].value = rng.randrange(1, 50)
        sched.release(v, Activity.RUNNABLE)


def test_records_are_written_with_one_aligned_store() -> None:
    memory = GuestMemory(0, 1 << 16)
    memory.store_u64(0x108, 2**64 - 1)
    assert memory.read_u64(0x108) == 2**64 - 1
    with pytest.raises(GuestMemoryError):
        memory.store_u64(0x10C, 1)


def test_timeline_is_a_valid_trace_event_file(tmp_path: Path) -> None:
    timeline = tmp_path / "t.json"
    r = subprocess.run(
        [sys.executable, "-m", "pvkit", "run", str(PREBUILT / "steal.Image"), "--smp", "3",
         "--host-cpus", "1", "--deterministic", "--append", "work_ms=5", "--timeline",
         str(timeline)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    document = json.loads(timeline.read_text())
    jsonschema.validate(document, SCHEMA)
    events = document["traceEvents"]
    slices = sorted(
        (e["ts"], e["ts"] + e["dur"]) for e in events if e["ph"] == "X" and e["pid"] == 1
    )
    assert slices and all(a[1] <= b[0] + 1e-6 for a, b in itertools.pairwise(slices))
    names = {e["name"] for e in events if e["ph"] == "i"}
    assert {"PV_TIME_ST", "CPU_ON64", "SYSTEM_OFF"} <= names
    steal = document["otherData"]["vcpus"]
    counters = [e for e in events if e["ph"] == "C" and e["name"] == "steal vCPU 1"]
    assert max(c["args"]["steal_ms"] for c in counters) == pytest.approx(steal[1]["steal_ns"] / 1e6)

    png = tmp_path / "steal.png"
    plotted = subprocess.run(
        [sys.executable, "-m", "pvkit", "plot", str(timeline), "-o", str(png)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert plotted.returncode == 0, plotted.stderr
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plot_refuses_a_file_that_is_not_a_timeline(tmp_path: Path) -> None:
    bogus = tmp_path / "x.json"
    bogus.write_text('{"traceEvents": []}')
    r = subprocess.run(
        [sys.executable, "-m", "pvkit", "plot", str(bogus)], capture_output=True, text=True
    )
    assert r.returncode == 2 and "not a pvkit timeline" in r.stderr and "Traceback" not in r.stderr
