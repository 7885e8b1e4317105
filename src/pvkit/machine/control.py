"""The control plane: stop every vCPU at a clean boundary, look and change, resume.

One mechanism for every front end that needs the VM to stand still (the gdb stub, the
monitor socket, saves of a wall-clock VM). A vCPU thread is *busy* while it may touch its
engine. It *parks* in the run loop's blocking waits (for a power-on, a host CPU, a
wake-up, a page from the host) and at the checkpoint after an engine run, and a pause
keeps it parked there. A pause is complete once no vCPU is busy: every engine is idle,
and the front end may read and change vCPU state and memory from its own thread. A
resume lets every vCPU go, or only some (a debugger's single step) while the others stay
parked.

Front ends: each joins with `front_end(name, ...)` and gets a `FrontEnd`, its own hold on
the VM. The VM runs only while no front end holds it, each hears only the stops it asked
for (a monitor's pause is not a debugger's stop), and one front end's resume never lets
the VM run under another's hold. Callbacks (engine exits, engines coming and going, the
run's end) go to every front end that asked for them.

Time: nothing runs while the VM stands, so no guest time passes with deterministic time.
A vCPU stopped at the checkpoint keeps its host CPU and its slice and goes on from the
same instruction count, so the schedule is the one the run would have had without the
stop. (Wall-clock time is the host's and goes on.)

Cost: none until a front end joins (before the VM runs): the run loop reads `enabled` first.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from pvkit.backends.base import ExitKind, VcpuEngine, VcpuExit

_REKICK_S = 0.001  # a stop sent just before an engine starts running is lost: send it again


@dataclass(frozen=True, slots=True)
class Stop:
    """Why the VM stands: the vCPU it is about (None: the VM as a whole) and the front
    end's own description of the cause (opaque to the control plane)."""

    vcpu: int | None
    cause: object


@dataclass(frozen=True, slots=True)
class _Hold:
    stop: Stop | None  # None: some vCPUs run alone until one of them reports
    alone: frozenset[int]  # who this hold lets run


AfterRun = Callable[[int, VcpuExit], None]
EngineHook = Callable[[int, VcpuEngine], None]


class FrontEnd:
    """One front end's hold on the VM: its pauses, its stops, its resumes."""

    def __init__(self, control: VmControl, name: str):
        self.control = control
        self.name = name

    def pause(self, cause: object, vcpu: int | None = None) -> None:
        """Ask every vCPU to stop (any thread; returns at once: see `wait_stopped`).
        The first cause since this front end's last resume is the one reported."""
        self.control._pause(self, cause, vcpu)

    def report(self, vcpu: int, cause: object) -> None:
        """A vCPU's own reason to stop the VM (from `after_run`, on its thread)."""
        self.control._pause(self, cause, vcpu)

    def wait_stopped(self, timeout: float | None = None) -> Stop | None:
        """This front end's stop once every vCPU is parked; None at the timeout, when it
        asked for no stop, or when the VM has ended."""
        return self.control._wait_stopped(self, timeout)

    def stopped(self) -> Stop | None:
        return self.control._stopped_for(self)

    def resume(self, alone: Iterable[int] | None = None) -> None:
        """Let go of the VM, or with `alone` let only those vCPUs run (the rest stay
        parked until one of them reports a stop). Another front end's hold stays."""
        self.control._resume(self, alone)

    @property
    def holding(self) -> bool:
        return self.control._holding(self)

    def __repr__(self) -> str:
        return f"FrontEnd({self.name!r})"


class VmControl:
    def __init__(self, vcpu_count: int):
        self.enabled = False
        self._cond = threading.Condition()
        self._busy = [False] * vcpu_count
        self._ready = [False] * vcpu_count  # parked with its engine able to run at once
        self._exits: list[VcpuExit | None] = [None] * vcpu_count  # parked at the checkpoint
        self._engines: list[VcpuEngine | None] = [None] * vcpu_count
        self._expected = [False] * vcpu_count  # on already (restored): an engine is coming
        self._holds: dict[FrontEnd, _Hold] = {}
        self._paused = False  # any hold: read without the lock on the run loop's path
        self._closed = False  # the run is ending (stop or reset): parked threads go
        self._ended = False  # the VM has stopped for good
        self._fronts: list[FrontEnd] = []
        self._after_run: list[AfterRun] = []
        self._on_attach: list[EngineHook] = []
        self._on_detach: list[EngineHook] = []
        self._on_close: list[Callable[[], None]] = []

    def front_end(
        self,
        name: str,
        after_run: AfterRun | None = None,
        on_attach: EngineHook | None = None,
        on_detach: EngineHook | None = None,
        on_close: Callable[[], None] | None = None,
    ) -> FrontEnd:
        """A new front end, before the VM runs. `after_run(vcpu, exit)` sees every
        engine exit (on the vCPU's thread, which may `report`); `on_attach(vcpu,
        engine)` runs on the vCPU's thread for each new engine before it runs,
        `on_detach` before it goes; `on_close()` before a run's end lets parked vCPUs go
        (a front end stops touching engines there)."""
        front = FrontEnd(self, name)
        if after_run is not None:
            self._after_run.append(after_run)
        if on_attach is not None:
            self._on_attach.append(on_attach)
        if on_detach is not None:
            self._on_detach.append(on_detach)
        if on_close is not None:
            self._on_close.append(on_close)
        self._fronts.append(front)
        self.enabled = True
        return front

    def holders(self) -> list[str]:
        """The names of the front ends that hold the VM now."""
        with self._cond:
            return [f.name for f in self._fronts if f in self._holds]

    def can_run_alone(self, vcpu: int) -> bool:
        """Parked where it can run at once (holding its host CPU), not waiting for one,
        for a wake-up or for a power-on: `resume(alone=...)` can move it."""
        with self._cond:
            return self._ready[vcpu] and self._engines[vcpu] is not None

    def engines(self) -> dict[int, VcpuEngine]:
        """The vCPUs that have an engine (are on); use them only while stopped."""
        with self._cond:
            return {i: e for i, e in enumerate(self._engines) if e is not None}

    def checkpoint_exit(self, vcpu: int) -> VcpuExit | None:
        """The engine exit a stopped vCPU stands at, if it is parked at the checkpoint
        after an engine run (None: in one of the run loop's blocking waits)."""
        with self._cond:
            return self._exits[vcpu]

    def end(self) -> None:
        """The VM has stopped for good: nobody waits for a stop any more."""
        with self._cond:
            self._ended = True
            self._cond.notify_all()

    @property
    def ended(self) -> bool:
        return self._ended

    # -- front ends (through FrontEnd) ----------------------------------------------------
    def _pause(self, front: FrontEnd, cause: object, vcpu: int | None) -> None:
        with self._cond:
            hold = self._holds.get(front)
            stop = hold.stop if hold is not None and hold.stop is not None else Stop(vcpu, cause)
            self._holds[front] = _Hold(stop, frozenset())
            self._paused = True
            self._cond.notify_all()
            busy = self._busy_engines()
        for engine in busy:
            engine.debug_stop()

    def _wait_stopped(self, front: FrontEnd, timeout: float | None) -> Stop | None:
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while not self._ended:
                if self._stopped(front):
                    return self._holds[front].stop
                if self._paused:
                    for engine in self._busy_engines():
                        engine.debug_stop()  # again: the first one may have come too early
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return None
                self._cond.wait(_REKICK_S if left is None else min(left, _REKICK_S))
        return None

    def _stopped_for(self, front: FrontEnd) -> Stop | None:
        with self._cond:
            return self._holds[front].stop if self._stopped(front) else None

    def _resume(self, front: FrontEnd, alone: Iterable[int] | None) -> None:
        with self._cond:
            if alone is None:
                self._holds.pop(front, None)
            else:
                self._holds[front] = _Hold(None, frozenset(alone))
            self._paused = bool(self._holds)
            self._cond.notify_all()

    def _holding(self, front: FrontEnd) -> bool:
        with self._cond:
            return front in self._holds

    # -- the VM run loop --------------------------------------------------------------
    def expect_engine(self, vcpu: int) -> None:
        """`vcpu` is on before its thread runs (a restored VM): the VM does not stand
        until it has built its engine, so every vCPU that is on has a PC to show."""
        with self._cond:
            self._expected[vcpu] = True

    def attach(self, vcpu: int, engine: VcpuEngine) -> None:
        with self._cond:
            self._engines[vcpu] = engine
            self._expected[vcpu] = False
            self._cond.notify_all()
        for hook in self._on_attach:
            hook(vcpu, engine)

    def detach(self, vcpu: int) -> None:
        with self._cond:
            engine, self._engines[vcpu] = self._engines[vcpu], None
        if engine is not None:
            for hook in self._on_detach:
                hook(vcpu, engine)

    def park(self, vcpu: int, at: VcpuExit | None = None) -> None:
        """The vCPU's thread leaves its engine alone (it blocks, or it ends); `at`: at
        the checkpoint after that engine exit."""
        with self._cond:
            self._busy[vcpu] = False
            self._exits[vcpu] = at
            self._cond.notify_all()

    def unpark(
        self, vcpu: int, hold: bool = True, ready: bool = False, starting: bool = False
    ) -> None:
        """Back from a blocking wait; with `hold`, wait here while a pause keeps this
        vCPU (`ready`: it holds its host CPU and could run at once). `starting`: it is
        being powered on, and a pause keeps it only once some vCPU has an engine (a
        pause before the boot lets the boot vCPU reach its first instruction)."""
        with self._cond:
            if hold:
                self._ready[vcpu] = ready
                while self._held(vcpu) and not (starting and all(e is None for e in self._engines)):
                    self._cond.wait()
                self._ready[vcpu] = False
            self._exits[vcpu] = None
            self._busy[vcpu] = True

    def after_run(self, vcpu: int, exit_: VcpuExit) -> bool:
        """Every engine exit: a stop a front end wants here, and the checkpoint where a
        pause holds the vCPU. True: the exit was the control plane's own (DEBUG), and the
        engine runs on as if it had not stopped."""
        for hook in self._after_run:
            hook(vcpu, exit_)
        if self._paused:
            self.park(vcpu, exit_)
            self.unpark(vcpu, ready=True)
        return exit_.kind is ExitKind.DEBUG and not self._closed

    def close(self) -> None:
        """The run is ending (a stop, or a reset between runs): nobody is held."""
        for hook in self._on_close:
            hook()
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def reopen(self) -> None:
        """A new run of the same VM: threads start parked; a pause asked stays."""
        with self._cond:
            self._closed = False
            self._busy = [False] * len(self._busy)
            self._ready = [False] * len(self._ready)
            self._exits = [None] * len(self._exits)
            self._expected = [False] * len(self._expected)
            self._cond.notify_all()

    # -- with the lock held -----------------------------------------------------------
    def _held(self, vcpu: int) -> bool:
        return (
            self._paused
            and not self._closed
            and any(vcpu not in h.alone for h in self._holds.values())
        )

    def _stopped(self, front: FrontEnd) -> bool:
        hold = self._holds.get(front)
        return (
            hold is not None
            and hold.stop is not None
            and not self._closed
            and not any(self._busy)
            and not any(self._expected)
            and any(e is not None for e in self._engines)
        )

    def _busy_engines(self) -> list[VcpuEngine]:
        """The engines a pause still has to stop: busy, and held (a vCPU let run alone,
        for a step, is not stopped by the wait for that step's own stop)."""
        return [
            e
            for i, (e, busy) in enumerate(zip(self._engines, self._busy, strict=True))
            if busy and e is not None and self._held(i)
        ]
