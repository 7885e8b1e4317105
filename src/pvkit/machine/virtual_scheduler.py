"""Deterministic scheduling: time is guest instructions, and one vCPU executes at a time.

Each vCPU has its own virtual clock; each of the M virtual host CPUs is free from some
virtual time on. When the running vCPU gives its host CPU back, the next slice goes to
the runnable vCPU that has waited since the earliest time, on the host CPU free the
earliest (ties: lowest index), and it starts at the later of the two: the difference is
its stolen time. Slices are a fixed number of instructions, counted exactly by the
engine (backends/_budget.c), so the same run gives the same times to the nanosecond.
"""

from __future__ import annotations

from pvkit.machine.scheduling import Activity, Scheduler

NS_PER_INSTRUCTION = 1  # the virtual CPU retires one instruction per nanosecond


class VirtualScheduler(Scheduler):
    deterministic = True

    def __init__(self, vcpu_count: int, host_cpus: int, slice_ns: int, record: bool = False):
        super().__init__(vcpu_count, host_cpus, slice_ns, record)
        self._free_at = [0] * host_cpus
        self._clock = [0] * vcpu_count  # each vCPU's virtual time when not running
        self._ready_at = [0] * vcpu_count
        self._slice_start = [0] * vcpu_count
        self._slice_steal = [0] * vcpu_count
        self._running: int | None = None
        self._chosen: int | None = None
        self._wake_at: list[int | None] = [None] * vcpu_count  # idle until a timer's time

    def slice_budget(self) -> int:
        return max(1, self.slice_ns // NS_PER_INSTRUCTION)

    def running_vcpu(self) -> int | None:
        with self._cond:
            return self._running

    def horizon_ns(self, vcpu: int) -> int | None:
        """When the next other vCPU is ready to run (runnable, or asleep until a deadline):
        `vcpu` may run until then without getting ahead of anyone."""
        with self._cond:
            return min((t for v, t in self._ready_times().items() if v != vcpu), default=None)

    def now_ns(self, vcpu: int) -> int:
        if self._activity[vcpu] is Activity.RUNNING:
            executed = self._executed[vcpu]()
            return self._slice_start[vcpu] + executed * NS_PER_INSTRUCTION
        return self._clock[vcpu]

    def _end_ns(self) -> int:
        return max([*self._clock, *self._free_at])

    def acquire(self, vcpu: int) -> bool:
        with self._cond:
            if self._activity[vcpu] is Activity.IDLE and self._wake_at[vcpu] is None:
                self._make_runnable(vcpu, self._clock[vcpu])
            self._decide()
            while not self._stopping and self._chosen != vcpu:
                self._cond.wait()
            if self._stopping:
                return False
            self._chosen = None
            self._running = vcpu
            return True

    def release(self, vcpu: int, then: Activity) -> None:
        self._release(vcpu, then, None)

    def release_until(self, vcpu: int, at_ns: int) -> None:
        """Runnable from now (so the wait counts as stolen), chosen no earlier than `at_ns`."""
        self._release(vcpu, Activity.RUNNABLE, at_ns)

    def _release(self, vcpu: int, then: Activity, ready_at: int | None) -> None:
        with self._cond:
            if self._running != vcpu:
                return
            end = self.now_ns(vcpu)
            self._switch(vcpu, then, end)
            self._record(vcpu, self._slice_start[vcpu], end, self._slice_steal[vcpu])
            self._free_at[self._host[vcpu]] = end
            self._host[vcpu] = -1
            self._clock[vcpu] = end
            self._ready_at[vcpu] = end if ready_at is None else max(end, ready_at)
            self._running = None
            self._decide()
            self._cond.notify_all()

    def wake_at(self, vcpu: int, at_ns: int) -> None:
        with self._cond:
            if self._activity[vcpu] is not Activity.IDLE:
                return
            self._wake_at[vcpu] = max(at_ns, self._clock[vcpu])
            self._decide()
            self._cond.notify_all()

    def resume(self) -> None:
        super().resume()
        with self._cond:
            self._wake_at = [None] * self.vcpu_count

    def become_runnable(self, vcpu: int) -> None:
        with self._cond:
            if self._activity[vcpu] is not Activity.IDLE:
                return
            by = self._running
            at = self.now_ns(by) if by is not None else self._clock[vcpu]
            self._make_runnable(vcpu, max(at, self._clock[vcpu]))
            self._decide()
            self._cond.notify_all()

    # -- with the lock held -------------------------------------------------------------
    def _make_runnable(self, vcpu: int, at: int) -> None:
        self._wake_at[vcpu] = None
        self._switch(vcpu, Activity.RUNNABLE, at)
        self._clock[vcpu] = at
        self._ready_at[vcpu] = at

    def _ready_times(self) -> dict[int, int]:
        """When each vCPU that wants to run may: a runnable one since it became ready, a
        timed sleeper from its wake-up time (so both compete, earliest first)."""
        times = {}
        for v, activity in enumerate(self._activity):
            if activity is Activity.RUNNABLE:
                times[v] = self._ready_at[v]
            elif activity is Activity.IDLE and (at := self._wake_at[v]) is not None:
                times[v] = at
        return times

    def _decide(self) -> None:
        if self._running is not None or self._chosen is not None or self._stopping:
            return
        ready = self._ready_times()
        if not ready:
            return
        vcpu = min(ready, key=lambda v: (ready[v], v))
        if self._activity[vcpu] is Activity.IDLE:
            self._make_runnable(vcpu, ready[vcpu])  # its idle time ends at the deadline
        host = min(range(self.host_cpus), key=lambda h: (self._free_at[h], h))
        start = max(self._ready_at[vcpu], self._free_at[host])
        self._switch(vcpu, Activity.RUNNING, start)  # accounts the wait as stolen time
        self._host[vcpu] = host
        self._slice_start[vcpu] = start
        self._slice_steal[vcpu] = self.times[vcpu].steal_ns
        self._clock[vcpu] = start
        self._chosen = vcpu
        self._cond.notify_all()
