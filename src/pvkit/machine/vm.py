"""The VM run loop: one host thread per vCPU, started and parked by the power state machine.

Kept ABI-free: services reach it through `request_stop` and the `power` list.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from typing import Protocol, TypeVar

from pvkit.backends.base import EngineFactory, ExitKind, VcpuEngine, VcpuExit
from pvkit.machine.control import VmControl
from pvkit.machine.interrupts import InterruptQueue
from pvkit.machine.power import PowerOnResult, PowerState, StartRequest, VcpuPower
from pvkit.machine.scheduling import DEFAULT_SLICE_NS, Activity, Scheduler
from pvkit.machine.wall_scheduler import WallScheduler
from pvkit.trace.events import TraceHub, VmEvent


class StopKind(Enum):
    SHUTDOWN = "shutdown"  # the guest asked to power off
    RESET = "reset"  # the guest asked to restart; the run loop restarts it
    FAULT = "fault"
    PANIC = "panic"  # the guest reported a panic (pvpanic PANICKED)
    IDLE = "idle"  # every vCPU is off or waits for an interrupt nothing can raise
    TIMEOUT = "timeout"
    INTERRUPTED = "interrupted"
    SAVED = "saved"  # a snapshot was written (snapshot/save_point.py)
    QUIT = "quit"  # the host asked (the monitor's quit)
    MIGRATED = "migrated"  # the VM moved to another host (snapshot/migration/)


@dataclass(frozen=True, slots=True)
class StopReason:
    kind: StopKind
    message: str = ""
    vcpu: int | None = None
    status: int | None = None  # an exit status the guest chose (x86 isa-debug-exit)
    pc: int | None = None  # where a fault happened


class Resume(Protocol):
    """A run that continues a saved VM instead of booting it (machine/vm_state.py)."""

    def apply(self, vm: VirtualMachine) -> None:
        """Before the vCPU threads start: the saved power, halt and schedule state."""

    def release(self, vm: VirtualMachine) -> None:
        """Once the threads run: wait until each took its saved place, then let them go."""


_KICK_INTERVAL_S = 0.001
_T = TypeVar("_T")
MIN_QUANTUM = 10_000  # instructions a deterministic slice runs at least (but for deadlines)


class VirtualMachine:
    """Runs vCPUs until a stop reason arrives; `prepare` (re)loads guest state at boot and reset."""

    def __init__(
        self,
        vcpu_count: int,
        engine_factory: EngineFactory,
        prepare: Callable[[], StartRequest],
        trace: TraceHub,
        scheduler: Scheduler | None = None,
        on_entry: Callable[[int], None] | None = None,
        can_wake: Callable[[int], bool] | None = None,
        next_deadline: Callable[[int], int | None] | None = None,
        reboot: bool = True,
        on_absent: Callable[[int, VcpuExit], int | None] | None = None,
    ):
        """`scheduler` places vCPUs on host CPUs (default: one each, wall clock);
        `on_entry(vcpu)` runs each time a vCPU is about to enter guest code;
        `can_wake(vcpu)` says a device (a timer) may still end that vCPU's halt;
        `next_deadline(vcpu)` is when that vCPU's timer fires, in its own ns: with
        deterministic time, slices end there and a halted vCPU sleeps until then;
        `reboot` False makes a guest reset end the run (QEMU's -no-reboot);
        `on_absent(vcpu, exit)` decides about a touch of a page the host does not hold:
        None (the guest was told; it runs on) or the time the vCPU must wait until."""
        if vcpu_count < 1:
            raise ValueError("a VM needs at least one vCPU")
        self.power_codes = bytearray(vcpu_count)  # each vCPU's power state, one byte each
        self.power = [VcpuPower(self.power_codes, i) for i in range(vcpu_count)]
        self.trace = trace
        self.resets = 0
        self._factory = engine_factory
        self._prepare = prepare
        self._lock = threading.Lock()
        self._engines: list[VcpuEngine | None] = [None] * vcpu_count
        self._halted = [False] * vcpu_count
        self._wakeups = [threading.Event() for _ in range(vcpu_count)]
        self.interrupts = [InterruptQueue() for _ in range(vcpu_count)]
        self._stop = threading.Event()
        self._booted = threading.Event()  # between the boot vCPU's power-on and the stop
        self._reason: StopReason | None = None
        self.scheduler = scheduler or WallScheduler(vcpu_count, vcpu_count, DEFAULT_SLICE_NS)
        self._on_entry = on_entry
        self._can_wake = can_wake
        self._next_deadline = next_deadline
        self.reboot = reboot
        self._on_absent = on_absent
        self.control = VmControl(vcpu_count)  # stop/resume every vCPU; free until enabled
        self._in_halt = [False] * vcpu_count  # the thread waits in _halt (snapshots)
        self.resume: Resume | None = None  # the next run continues this saved state

    @property
    def vcpu_count(self) -> int:
        return len(self.power)

    @property
    def stopping(self) -> bool:
        """A stop reason has arrived: the run is ending."""
        return self._stop.is_set()

    def request_stop(self, reason: StopReason) -> None:
        """Thread-safe; the first reason wins. Every engine is kicked here, not later by
        the thread that waits for the stop: a stop asked by a vCPU (a device exit, a
        reset) ends its run at that instruction, so its count is the same every run."""
        with self._lock:
            if self._reason is None:
                self._reason = reason
            engines = [e for e in self._engines if e is not None]
        self._stop.set()
        for engine in engines:
            engine.kick()

    def run(self, timeout: float | None = None) -> StopReason:
        """Run to a stop reason; `timeout` bounds the whole run, resets included."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            reason = self._run_once(left)
            if reason.kind is not StopKind.RESET or not self.reboot:
                return reason
            self.resets += 1

    def _run_once(self, timeout: float | None) -> StopReason:
        self._stop.clear()
        self._reason = None
        self.control.reopen()
        self._halted = [False] * self.vcpu_count
        for p, wakeup, queue in zip(self.power, self._wakeups, self.interrupts, strict=True):
            p.reopen()
            wakeup.clear()
            queue.clear()
        plan, self.resume = self.resume, None
        boot = self._prepare() if plan is None else None
        self.scheduler.resume()
        if plan is not None:
            plan.apply(self)
            for i, power in enumerate(self.power):
                if power.restore_pending():
                    self.control.expect_engine(i)
        threads = [
            threading.Thread(target=self._vcpu_main, args=(i,), name=f"vcpu{i}", daemon=True)
            for i in range(self.vcpu_count)
        ]
        for t in threads:
            t.start()
        ticker = threading.Thread(target=self._preempt, name="slices", daemon=True)
        ticker.start()
        if plan is not None:
            plan.release(self)
        elif boot is not None:
            self.power_on(0, boot)
        self._booted.set()
        try:
            if not self._stop.wait(timeout):
                self.request_stop(StopReason(StopKind.TIMEOUT, "the run hit its time limit"))
        except KeyboardInterrupt:
            self.request_stop(StopReason(StopKind.INTERRUPTED, "interrupted by the host user"))
        self._booted.clear()
        self.scheduler.stop()
        self._halt_all([*threads, ticker])
        self.scheduler.finish()
        assert self._reason is not None  # set together with the event
        return self._reason

    def _halt_all(self, threads: list[threading.Thread]) -> None:
        self.control.close()
        for p in self.power:
            p.close()
        for i, t in enumerate(threads):
            while t.is_alive():
                engine = self._engines[i] if i < self.vcpu_count else None
                if engine is not None:
                    engine.kick()
                t.join(_KICK_INTERVAL_S)

    def _preempt(self) -> None:
        """Wall clock: end slices that ran out while another vCPU waits for a host CPU."""
        sched = self.scheduler
        if sched.deterministic or sched.host_cpus >= self.vcpu_count:
            return  # slices end by instruction count, or nobody ever waits
        period = max(sched.slice_ns / 4e9, 0.0005)
        while not self._stop.wait(period):
            for vcpu in sched.preempt_due():
                self.kick(vcpu)

    def power_on(self, index: int, start: StartRequest) -> PowerOnResult:
        """Power on vCPU `index` (PSCI CPU_ON, SIPI, boot) and queue it for a host CPU."""
        result = self.power[index].request_on(start)
        if result is PowerOnResult.ACCEPTED:
            self.scheduler.become_runnable(index)
        return result

    def _vcpu_main(self, index: int) -> None:
        try:
            self._vcpu_loop(index)
        except Exception as exc:  # a pvkit bug: the VM ends with it, rather than waiting
            # for a thread that is gone (the run would never return)
            message = f"vCPU {index}: internal error: {exc!r}"
            self.request_stop(StopReason(StopKind.FAULT, message))
        finally:
            self.control.park(index)  # for good: this thread touches no engine now

    def _vcpu_loop(self, index: int) -> None:
        power = self.power[index]
        control = self.control
        while not self._stop.is_set():
            start = self._wait_for_start(index)
            if start is None:
                return
            engine = self._factory(index)
            with self._lock:
                self._engines[index] = engine
            self.scheduler.attach(index, engine.executed)
            try:
                if start.restore is not None:
                    start.restore(engine)  # a saved vCPU, not a reset one
                else:
                    engine.start_at(start)
                if control.enabled:
                    control.attach(index, engine)
                power.mark_on()
                self._note("vcpu_on", index, entry=f"{start.entry:#x}")
                finished = self._run_engine(index, engine, start.in_halt)
            finally:
                if control.enabled:
                    control.detach(index)
                with self._lock:
                    self._engines[index] = None
                engine.close()
            if finished:
                return

    def _wait_for_start(self, index: int) -> StartRequest | None:
        """The power-on wait, parked for the control plane. A restored vCPU is on
        already: it builds its engine before a pause holds it (in its wait for a host
        CPU, before its first instruction), so a standing VM has an engine, and a PC to
        show, for every vCPU that is on."""
        power = self.power[index]
        control = self.control
        if not control.enabled:
            return power.wait_for_start()
        control.park(index)
        start = None
        try:
            start = power.wait_for_start()
        finally:
            restoring = start is not None and start.restore is not None
            control.unpark(index, hold=not restoring, starting=True)
        return start

    def _wait(
        self, index: int, wait: Callable[[], _T], ready: bool = False, starting: bool = False
    ) -> _T:
        """A blocking wait of vCPU `index`'s thread: parked meanwhile for the control
        plane, and kept there afterwards while a pause holds the VM (`starting`: a
        power-on, see VmControl.unpark)."""
        control = self.control
        if not control.enabled:
            return wait()
        control.park(index)
        try:
            return wait()
        finally:
            control.unpark(index, ready=ready, starting=starting)

    def _run_slice(self, index: int, engine: VcpuEngine) -> VcpuExit:
        """One engine run; a stop of the control plane's own is invisible here."""
        control = self.control
        while True:
            exit_ = engine.run()
            if not control.enabled or not control.after_run(index, exit_):
                return exit_

    def _run_engine(self, index: int, engine: VcpuEngine, in_halt: bool = False) -> bool:
        """Run until the vCPU powers off (False) or the VM stops (True), a slice at a time;
        `in_halt`: a restored vCPU that was saved waiting in its halt."""
        sched = self.scheduler
        budget = sched.slice_budget()
        if in_halt:
            if not self._wait(index, lambda: self._halt(index)):
                return True
            self._note("vcpu_wake", index)
        while not self._stop.is_set():
            if not self._wait(index, lambda: sched.acquire(index), ready=True):
                return True
            if self._stop.is_set():
                return True  # stopped while a pause held it here: no guest code runs now
            if self._halted[index]:  # back from a deterministic sleep
                with self._lock:
                    self._halted[index] = False
            if budget is not None:
                # first: the entry hooks read the vCPU's clock
                engine.begin_slice(self._slice_budget(index, budget))
            if self._on_entry is not None:
                self._on_entry(index)
            exit_ = self._run_slice(index, engine)
            kind = exit_.kind
            if kind in (ExitKind.KICKED, ExitKind.SLICE_END, ExitKind.DEBUG):
                sched.release(index, Activity.RUNNABLE)
                continue
            if kind is ExitKind.PAGE_ABSENT and self._on_absent is not None:
                self._page_absent(index, exit_)
                continue
            if kind is ExitKind.HALT:
                with self._lock:
                    pending = self._wakeups[index].is_set()
                    if pending:
                        self._wakeups[index].clear()  # woken before it halted: HLT ends now
                    else:
                        self._halted[index] = True  # before any waker can look
                if pending:
                    sched.release(index, Activity.RUNNABLE)
                    continue
                if self._sleep_until_deadline(index):
                    continue
            sched.release(index, Activity.IDLE)
            if kind is ExitKind.POWER_OFF:
                self.power[index].power_off()
                self._note("vcpu_off", index)
                self._check_idle()
                return False
            if kind is ExitKind.HALT:
                self._note("vcpu_halt", index, pc=f"{exit_.pc or 0:#x}")
                if not self._wait(index, lambda: self._halt(index)):
                    return True
                self._note("vcpu_wake", index)
                continue
            if kind is ExitKind.FAULT:
                self._fault(index, exit_)
            return True
        return True

    def _page_absent(self, index: int, exit_: VcpuExit) -> None:
        """The guest is told (it runs on at once) or the vCPU waits for the host's fetch,
        runnable but off its host CPU: stolen time, as on a host that swaps."""
        assert self._on_absent is not None
        until = self._on_absent(index, exit_)
        if until is None:
            self.scheduler.release(index, Activity.RUNNABLE)
            return
        self._note("page_wait", index, address=f"{exit_.address or 0:#x}", until=until)
        self._wait(index, lambda: self.scheduler.release_until(index, until))

    def _slice_budget(self, index: int, budget: int) -> int:
        """A deterministic slice (1 ns = 1 instruction) ends at the vCPU's next timer
        deadline, and no later than another vCPU is due (but runs a minimum quantum), so
        a vCPU that spins waiting for another does not burn a whole slice ahead of it."""
        now = self.scheduler.now_ns(index)
        horizon = self.scheduler.horizon_ns(index)
        if horizon is not None:
            budget = min(budget, max(MIN_QUANTUM, horizon - now))
        at = self._next_deadline(index) if self._next_deadline is not None else None
        if at is not None:
            budget = min(budget, at - now)
        return max(1, budget)

    def _sleep_until_deadline(self, index: int) -> bool:
        """Deterministic time: a halted vCPU with a timer armed is idle until its deadline
        (or an earlier wake-up) and then runs again; the scheduler picks the moment."""
        if not self.scheduler.deterministic or self._next_deadline is None:
            return False
        at = self._next_deadline(index)
        if at is None:
            return False
        self.scheduler.release(index, Activity.IDLE)
        self._note("vcpu_halt", index, until=at)
        self.scheduler.wake_at(index, at)
        with self._lock:  # it stays "halted" so that a wake-up makes it runnable sooner
            woken = self._wakeups[index].is_set()  # sent before it was idle: run now
            self._wakeups[index].clear()
        if woken:
            self.scheduler.become_runnable(index)
        return True

    def _halt(self, index: int) -> bool:
        """Wait for a wake-up; False when the VM stops instead. A wake-up sent before the
        halt is kept and ends it at once (as KVM keeps a PV kick for the next HLT)."""
        wakeup = self._wakeups[index]
        self._in_halt[index] = True
        try:
            self._check_idle()
            while not wakeup.wait(_KICK_INTERVAL_S * 50):
                if self._stop.is_set():
                    return False
        finally:
            self._in_halt[index] = False
        wakeup.clear()
        with self._lock:
            self._halted[index] = False
        return not self._stop.is_set()

    def wake(self, index: int) -> bool:
        """End a halt of vCPU `index` (or the next one); True if it was halted."""
        with self._lock:
            halted = self._halted[index]
            self._wakeups[index].set()
        if halted:
            self.scheduler.become_runnable(index)
            waker = self.scheduler.running_vcpu()
            if waker is not None and waker != index:
                # Deterministic time runs one vCPU at a time: the waker's slice ends here
                # (at an exact instruction count) so the woken vCPU's answer comes soon.
                self.kick(waker)
        return halted

    def post_interrupt(self, index: int, vector: int) -> None:
        """Make `vector` pending on vCPU `index`, wake it, and make its engine look."""
        self.interrupts[index].post(vector)
        self.wake(index)
        self.kick(index)

    def kick(self, index: int) -> None:
        with self._lock:
            engine = self._engines[index]
        if engine is not None:
            engine.kick()

    def _fault(self, index: int, exit_: VcpuExit) -> None:
        self._note("fault", index, message=exit_.message)
        self.request_stop(StopReason(StopKind.FAULT, exit_.message, index, pc=exit_.pc))

    def check_idle(self) -> None:
        """Thread-safe: a wake-up source went away (host input ended); maybe the VM is done."""
        if self._booted.is_set() and not self._stop.is_set():
            self._check_idle()

    def _check_idle(self) -> None:
        """A VM whose vCPUs are all off or halted with no wake-up on the way has ended."""
        with self._lock:
            for i, p in enumerate(self.power):
                state = p.state
                if state is PowerState.ON_PENDING:
                    return
                if state is PowerState.ON and not (
                    self._halted[i] and not self._wakeups[i].is_set()
                ):
                    return
            halted = sum(self._halted)
            on = [i for i, p in enumerate(self.power) if p.state is PowerState.ON]
        # Outside the lock: a device asked here may be waking a vCPU through `wake` now.
        if self._can_wake is not None and any(self._can_wake(i) for i in on):
            return
        why = (
            f"{halted} vCPU(s) wait for an interrupt that nothing can raise; the rest are off"
            if halted
            else "every vCPU is off"
        )
        self.request_stop(StopReason(StopKind.IDLE, why))

    def _note(self, kind: str, vcpu: int, **fields: object) -> None:
        if self.trace.active:
            self.trace.event(VmEvent(kind, time.perf_counter_ns(), vcpu, dict(fields)))
