"""vCPUs time-sliced over host CPUs, and the per-vCPU ground truth of run, steal and idle.

A vCPU is RUNNING (on a host CPU), RUNNABLE (wants one and waits: that wait is stolen
time) or IDLE (off, or halted in WFI/HLT: not stolen). The VM run loop brackets every
engine run with `acquire` and `release`; whoever wakes or powers on a vCPU calls
`become_runnable`. Two clocks implement it: wall_scheduler (host time, real threads) and
virtual_scheduler (time = guest instructions, one vCPU at a time, reproducible).
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum

COUNTER_HZ = 1_000_000_000  # guest counters (CNTVCT_EL0, TSC) tick once per nanosecond
DEFAULT_SLICE_NS = 10_000_000


class Activity(Enum):
    RUNNING = "running"
    RUNNABLE = "runnable"
    IDLE = "idle"


@dataclass
class VcpuTimes:
    run_ns: int = 0
    steal_ns: int = 0
    idle_ns: int = 0


@dataclass(frozen=True, slots=True)
class Slice:
    vcpu: int
    host_cpu: int
    start_ns: int
    end_ns: int
    steal_ns: int  # the vCPU's total stolen time when the slice began


class Scheduler(ABC):
    """Shared state and accounting; subclasses decide who runs and what time it is."""

    deterministic = False

    def __init__(self, vcpu_count: int, host_cpus: int, slice_ns: int, record: bool = False):
        if host_cpus < 1:
            raise ValueError("a VM needs at least one host CPU")
        self.vcpu_count = vcpu_count
        self.host_cpus = host_cpus
        self.slice_ns = slice_ns
        self.times = [VcpuTimes() for _ in range(vcpu_count)]
        self.slices: list[Slice] | None = [] if record else None
        self._cond = threading.Condition()
        self._activity = [Activity.IDLE] * vcpu_count
        self._since = [0] * vcpu_count  # when the current activity began
        self._host = [-1] * vcpu_count
        self._stopping = False
        self._executed: list[Callable[[], int]] = [lambda: 0] * vcpu_count

    # -- what the VM calls --------------------------------------------------------------
    def attach(self, vcpu: int, executed: Callable[[], int]) -> None:
        """Give the scheduler the instruction count of `vcpu`'s current engine."""
        self._executed[vcpu] = executed

    @abstractmethod
    def now_ns(self, vcpu: int) -> int:
        """The time `vcpu` sees (its guest counter, its steal records)."""

    @abstractmethod
    def acquire(self, vcpu: int) -> bool:
        """Block until `vcpu` holds a host CPU; False when the VM is stopping."""

    @abstractmethod
    def release(self, vcpu: int, then: Activity) -> None:
        """`vcpu` leaves its host CPU and becomes RUNNABLE or IDLE."""

    @abstractmethod
    def become_runnable(self, vcpu: int) -> None:
        """`vcpu` was powered on or woken, by the running vCPU or by the host."""

    def release_until(self, vcpu: int, at_ns: int) -> None:
        """`vcpu` leaves its host CPU still wanting one, but cannot run before `at_ns` of
        its own time: it waits for the host (a page being fetched), and that wait is
        stolen time. Wall clock: returns at `at_ns` (or when the VM stops)."""
        self.release(vcpu, Activity.RUNNABLE)
        with self._cond:
            while not self._stopping:
                left = at_ns - self.now_ns(vcpu)
                if left <= 0:
                    return
                self._cond.wait(left / 1e9)

    def wake_at(self, vcpu: int, at_ns: int) -> None:
        """An idle `vcpu` becomes runnable at `at_ns` of its own time (a timer deadline);
        only deterministic time needs this: a wall-clock deadline wakes it through a thread."""
        return  # wall clock: nothing to do

    def horizon_ns(self, vcpu: int) -> int | None:
        """Deterministic time: how far `vcpu` may run before another vCPU is due."""
        return None

    def running_vcpu(self) -> int | None:
        """The one vCPU executing now, when only one executes at a time (deterministic)."""
        return None

    def slice_budget(self) -> int | None:
        """Instructions per slice when time is instructions, else None."""
        return None

    def preempt_due(self) -> list[int]:
        """vCPUs whose slice is over while another vCPU waits (wall clock only)."""
        return []

    def lift_hold(self) -> None:
        """Let a held VM go on (deterministic time holds one before a slice to save it;
        the wall clock never holds)."""
        return

    def stop(self) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify_all()

    def resume(self) -> None:
        """A new run of the same VM (after a reset): every vCPU starts idle again."""
        with self._cond:
            self._stopping = False
            self._activity = [Activity.IDLE] * self.vcpu_count

    def finish(self) -> None:
        """Close the books at the end of a run: account the current activity of each vCPU."""
        with self._cond:
            end = self._end_ns()
            for v in range(self.vcpu_count):
                self._account(v, end)
                self._since[v] = end

    def activity(self, vcpu: int) -> Activity:
        with self._cond:
            return self._activity[vcpu]

    def steal_ns(self, vcpu: int) -> int:
        with self._cond:
            return self.times[vcpu].steal_ns

    # -- shared helpers (called with the lock held) ----------------------------------------
    @abstractmethod
    def _end_ns(self) -> int: ...

    def _account(self, vcpu: int, now: int) -> None:
        spent = max(0, now - self._since[vcpu])
        t = self.times[vcpu]
        activity = self._activity[vcpu]
        if activity is Activity.RUNNING:
            t.run_ns += spent
        elif activity is Activity.RUNNABLE:
            t.steal_ns += spent
        else:
            t.idle_ns += spent

    def _switch(self, vcpu: int, activity: Activity, now: int) -> None:
        self._account(vcpu, now)
        self._activity[vcpu] = activity
        self._since[vcpu] = now

    def _record(self, vcpu: int, start: int, end: int, steal: int) -> None:
        if self.slices is not None and end > start:
            self.slices.append(Slice(vcpu, self._host[vcpu], start, end, steal))
