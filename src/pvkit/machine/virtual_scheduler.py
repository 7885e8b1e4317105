"""Deterministic scheduling: time is guest instructions, and one vCPU executes at a time.

Each vCPU has its own virtual clock; each of the M virtual host CPUs is free from some
virtual time on. When the running vCPU gives its host CPU back, the next slice goes to
the runnable vCPU that has waited since the earliest time, on the host CPU free the
earliest (ties: lowest index), and it starts at the later of the two: the difference is
its stolen time. Slices are a fixed number of instructions, counted exactly by the
engine (backends/_budget.c), so the same run gives the same times to the nanosecond.
"""

from __future__ import annotations

from collections.abc import Callable, Collection

from pvkit.machine.scheduling import Activity, Scheduler
from pvkit.snapshot.state import Fields, State

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
        # A hold (snapshots): the first slice chosen to start at or after `_hold_at` is
        # chosen, but its vCPU waits until the hold is lifted, so that the VM can be
        # saved between two slices at a point the same run always reaches.
        self._hold_at: int | None = None
        self._on_hold: Callable[[], None] | None = None
        self._held = False
        self._waiting: set[int] = set()  # vCPUs blocked in acquire

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
            self._waiting.add(vcpu)
            while not self._stopping and (self._chosen != vcpu or self._held):
                self._cond.wait()
            self._waiting.discard(vcpu)
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
        if self._hold_at is not None and start >= self._hold_at:
            self._hold_at, self._held = None, True
            if self._on_hold is not None:
                self._on_hold()
        self._cond.notify_all()

    # -- holds and snapshots ----------------------------------------------------------------
    def hold_at(self, at_ns: int, on_hold: Callable[[], None]) -> None:
        """Hold the VM before the first slice that starts at or after `at_ns`;
        `on_hold()` is called then (with the scheduler's lock held: keep it short)."""
        with self._cond:
            self._hold_at, self._on_hold = at_ns, on_hold

    def lift_hold(self) -> None:
        with self._cond:
            self._held = False
            self._cond.notify_all()

    def waiting(self, vcpu: int) -> bool:
        """Is `vcpu`'s thread blocked waiting for a host CPU (parked, for a snapshot)?"""
        with self._cond:
            return vcpu in self._waiting

    STATE_SECTION = "scheduler"
    STATE_VERSION = 1

    def save_state(self, off: Collection[int] = ()) -> State:
        """Every vCPU's clock, activity and accounting, and the host CPUs' free times,
        taken while no vCPU executes. At the save point (held) none is in a slice; a
        vCPU the control plane stopped in the middle of one is saved as if its slice
        ended there: runnable, or idle if it is in `off` (that run turned it off)."""
        with self._cond:
            times = [[t.run_ns, t.steal_ns, t.idle_ns] for t in self.times]
            activity = [a.value for a in self._activity]
            since, host, free_at = list(self._since), list(self._host), list(self._free_at)
            clock, ready_at = list(self._clock), list(self._ready_at)
            v = self._running
            if v is not None:
                end = self.now_ns(v)
                times[v][0] += max(0, end - since[v])
                then = Activity.IDLE if v in off else Activity.RUNNABLE
                activity[v], since[v], clock[v], ready_at[v] = then.value, end, end, end
                free_at[host[v]], host[v] = end, -1
            return {
                "times": times, "activity": activity, "since": since, "host": host,
                "free_at": free_at, "clock": clock, "ready_at": ready_at,
                "slice_start": list(self._slice_start),
                "slice_steal": list(self._slice_steal), "chosen": self._chosen,
                "wake_at": list(self._wake_at),
            }  # fmt: skip

    def restore_state(self, state: Fields) -> None:
        """Take a saved schedule over; the VM stays held until `lift_hold`. A different
        number of host CPUs keeps the vCPUs' times (the new ones are free from the
        latest time any was)."""
        n = self.vcpu_count
        times = state.raw("times")
        if not (isinstance(times, list) and len(times) == n):
            raise state.bad("times", f"{n} vCPU accounts")
        accounts = [Fields(state.section, {"t": t}).integers("t", 3) for t in times]
        try:
            activity = [Activity(a) for a in state.raw("activity")]  # type: ignore[attr-defined]
        except (TypeError, ValueError):
            raise state.bad("activity", "vCPU activities") from None
        chosen = state.opt_int("chosen", hi=n - 1)
        running = {v for v, a in enumerate(activity) if a is Activity.RUNNING}
        if len(activity) != n or not running <= {chosen}:
            raise state.bad("activity", f"{n} activities, running only the chosen vCPU")
        free = state.integers("free_at")
        host = state.integers("host", n, self.host_cpus - 1, lo=-1) if len(free) == \
            self.host_cpus else [-1] * n  # fmt: skip
        lists = {k: state.integers(k, n) for k in
                 ("since", "clock", "ready_at", "slice_start", "slice_steal")}  # fmt: skip
        wake = state.raw("wake_at")
        if not isinstance(wake, list) or len(wake) != n:
            raise state.bad("wake_at", f"{n} wake-up times")
        wake_at = [None if w is None else Fields(state.section, {"w": w}).integer("w")
                   for w in wake]  # fmt: skip
        with self._cond:
            for t, (run, steal, idle) in zip(self.times, accounts, strict=True):
                t.run_ns, t.steal_ns, t.idle_ns = run, steal, idle
            self._activity, self._host = activity, host
            self._since, self._clock = lists["since"], lists["clock"]
            self._ready_at, self._slice_start = lists["ready_at"], lists["slice_start"]
            self._slice_steal, self._wake_at = lists["slice_steal"], wake_at
            latest = max(free, default=0)
            self._free_at = (free + [latest] * self.host_cpus)[: self.host_cpus]
            self._running, self._chosen, self._held = None, chosen, True
            if chosen is not None and self._host[chosen] < 0:
                self._host[chosen] = min(range(self.host_cpus), key=lambda h: self._free_at[h])
