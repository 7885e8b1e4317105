"""Wall-clock scheduling: vCPU threads take one of M host-CPU tokens, first come first served.

Time is the host's monotonic clock from the start of the run (a restored VM's clock goes
on from the time it was saved at). A ticker (`preempt_due`, polled by the VM) ends a
slice once it has lasted `slice_ns` while another vCPU waits.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Collection

from pvkit.machine.scheduling import Activity, Scheduler
from pvkit.snapshot.state import Fields, State


class WallScheduler(Scheduler):
    def __init__(self, vcpu_count: int, host_cpus: int, slice_ns: int, record: bool = False):
        super().__init__(vcpu_count, host_cpus, slice_ns, record)
        self._t0 = time.monotonic_ns()
        self._free = list(range(host_cpus))
        self._queue: deque[int] = deque()
        self._slice_start = [0] * vcpu_count
        self._slice_steal = [0] * vcpu_count

    def now_ns(self, vcpu: int) -> int:
        return time.monotonic_ns() - self._t0

    def _end_ns(self) -> int:
        return time.monotonic_ns() - self._t0

    def acquire(self, vcpu: int) -> bool:
        with self._cond:
            if self._activity[vcpu] is Activity.IDLE:
                self._switch(vcpu, Activity.RUNNABLE, self.now_ns(vcpu))
            self._queue.append(vcpu)
            while not self._stopping and not (self._free and self._queue[0] == vcpu):
                self._cond.wait()
            self._queue.remove(vcpu)
            if self._stopping:
                return False
            self._host[vcpu] = self._free.pop(0)
            now = self.now_ns(vcpu)
            self._switch(vcpu, Activity.RUNNING, now)
            self._slice_start[vcpu] = now
            self._slice_steal[vcpu] = self.times[vcpu].steal_ns
            self._cond.notify_all()
            return True

    def release(self, vcpu: int, then: Activity) -> None:
        with self._cond:
            if self._activity[vcpu] is not Activity.RUNNING:
                return
            now = self.now_ns(vcpu)
            self._switch(vcpu, then, now)
            self._record(vcpu, self._slice_start[vcpu], now, self._slice_steal[vcpu])
            self._free.append(self._host[vcpu])
            self._free.sort()
            self._host[vcpu] = -1
            self._cond.notify_all()

    def become_runnable(self, vcpu: int) -> None:
        """Nothing to do: a vCPU is runnable from the moment its thread asks for a host
        CPU, so that creating its engine is not counted as stolen time."""

    def preempt_due(self) -> list[int]:
        with self._cond:
            if not self._queue:
                return []
            now = self.now_ns(0)
            return [
                v
                for v in range(self.vcpu_count)
                if self._activity[v] is Activity.RUNNING
                and now - self._slice_start[v] >= self.slice_ns
            ]

    STATE_SECTION = "wall-scheduler"
    STATE_VERSION = 1

    def save_state(self, off: Collection[int] = ()) -> State:
        """The clock and every vCPU's run, steal and idle time up to now (who holds a
        host CPU is not kept: a restored vCPU asks for one again)."""
        with self._cond:
            now = self.now_ns(0)
            times = []
            for v, t in enumerate(self.times):
                account = {a: 0 for a in Activity}
                account[self._activity[v]] = max(0, now - self._since[v])
                times.append([t.run_ns + account[Activity.RUNNING],
                              t.steal_ns + account[Activity.RUNNABLE],
                              t.idle_ns + account[Activity.IDLE]])  # fmt: skip
            return {"now_ns": now, "times": times}

    def restore_state(self, state: Fields) -> None:
        """The clock goes on from the saved time, so the guest's counters never go back."""
        n = self.vcpu_count
        now = state.integer("now_ns", hi=(1 << 63) - 1)
        times = state.raw("times")
        if not (isinstance(times, list) and len(times) == n):
            raise state.bad("times", f"{n} vCPU accounts")
        accounts = [Fields(state.section, {"t": t}).integers("t", 3) for t in times]
        with self._cond:
            for t, (run, steal, idle) in zip(self.times, accounts, strict=True):
                t.run_ns, t.steal_ns, t.idle_ns = run, steal, idle
            self._t0 = time.monotonic_ns() - now
            self._since = [now] * n
