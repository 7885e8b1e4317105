"""The control plane: stop every vCPU at a clean boundary, look and change, resume.

One mechanism for every front end that needs the VM to stand still (the gdb stub; a
monitor, snapshots and migration later). A vCPU thread is *busy* while it may touch its
engine. It *parks* in the run loop's blocking waits (for a host CPU, a wake-up, a power-on,
a page from the host) and at the checkpoint after an engine run, and a pause keeps it
parked there. A pause is complete once no vCPU is busy: every engine is idle, and the
front end may read and change vCPU state and memory from its own thread. A resume lets
every vCPU go, or only some (a debugger's single step) while the others stay parked.

Time: nothing runs while the VM stands, so no guest time passes with deterministic time.
A vCPU stopped at the checkpoint keeps its host CPU and its slice and goes on from the
same instruction count, so the schedule is the one the run would have had without the
stop. (Wall-clock time is the host's and goes on.)

Cost: none unless `enabled` (set before the VM runs), which the run loop reads first.
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


AfterRun = Callable[[int, VcpuExit], None]
EngineHook = Callable[[int, VcpuEngine], None]


class VmControl:
    def __init__(self, vcpu_count: int):
        self.enabled = False
        self._cond = threading.Condition()
        self._busy = [False] * vcpu_count
        self._ready = [False] * vcpu_count  # parked with its engine able to run at once
        self._engines: list[VcpuEngine | None] = [None] * vcpu_count
        self._paused = False
        self._stop: Stop | None = None  # None while paused: some vCPUs run alone
        self._alone: frozenset[int] = frozenset()  # who may run while paused
        self._closed = False  # the run is ending (stop or reset): parked threads go
        self._ended = False  # the VM has stopped for good
        self._after_run: AfterRun | None = None
        self._on_attach: EngineHook | None = None
        self._on_detach: EngineHook | None = None
        self._on_close: Callable[[], None] | None = None

    def enable(
        self,
        after_run: AfterRun | None = None,
        on_attach: EngineHook | None = None,
        on_detach: EngineHook | None = None,
        on_close: Callable[[], None] | None = None,
    ) -> None:
        """Before the VM runs. `after_run(vcpu, exit)` sees every engine exit (on the
        vCPU's thread, which may call `report`); `on_attach(vcpu, engine)` runs on the
        vCPU's thread for each new engine before it runs, `on_detach` before it goes;
        `on_close()` before a run's end lets parked vCPUs go (a front end stops touching
        engines there)."""
        self._after_run = after_run
        self._on_attach = on_attach
        self._on_detach = on_detach
        self._on_close = on_close
        self.enabled = True

    # -- front ends -------------------------------------------------------------------
    def pause(self, cause: object, vcpu: int | None = None) -> None:
        """Ask every vCPU to stop (any thread; returns at once: see `wait_stopped`).
        The first cause since the last resume is the one reported."""
        with self._cond:
            if self._stop is None:
                self._stop = Stop(vcpu, cause)
            self._paused = True
            self._alone = frozenset()
            self._cond.notify_all()
            busy = self._busy_engines()
        for engine in busy:
            engine.debug_stop()

    def report(self, vcpu: int, cause: object) -> None:
        """A vCPU's own reason to stop the VM (from `after_run`, on its thread)."""
        self.pause(cause, vcpu)

    def wait_stopped(self, timeout: float | None = None) -> Stop | None:
        """The stop once every vCPU is parked; None at the timeout, when nothing was
        asked to stop, or when the VM has ended."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while not self._ended:
                if self._stopped():
                    return self._stop
                if self._paused:
                    for engine in self._busy_engines():
                        engine.debug_stop()  # again: the first one may have come too early
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return None
                self._cond.wait(_REKICK_S if left is None else min(left, _REKICK_S))
        return None

    def stopped(self) -> Stop | None:
        with self._cond:
            return self._stop if self._stopped() else None

    def resume(self, alone: Iterable[int] | None = None) -> None:
        """Let every vCPU run, or with `alone` only those (the rest stay parked until
        one of them reports a stop)."""
        with self._cond:
            self._stop = None
            self._paused = alone is not None
            self._alone = frozenset(alone or ())
            self._cond.notify_all()

    def can_run_alone(self, vcpu: int) -> bool:
        """Parked where it can run at once (holding its host CPU), not waiting for one,
        for a wake-up or for a power-on: `resume(alone=...)` can move it."""
        with self._cond:
            return self._ready[vcpu] and self._engines[vcpu] is not None

    def engines(self) -> dict[int, VcpuEngine]:
        """The vCPUs that have an engine (are on); use them only while stopped."""
        with self._cond:
            return {i: e for i, e in enumerate(self._engines) if e is not None}

    def end(self) -> None:
        """The VM has stopped for good: nobody waits for a stop any more."""
        with self._cond:
            self._ended = True
            self._cond.notify_all()

    @property
    def ended(self) -> bool:
        return self._ended

    # -- the VM run loop --------------------------------------------------------------
    def attach(self, vcpu: int, engine: VcpuEngine) -> None:
        with self._cond:
            self._engines[vcpu] = engine
        if self._on_attach is not None:
            self._on_attach(vcpu, engine)

    def detach(self, vcpu: int) -> None:
        with self._cond:
            engine, self._engines[vcpu] = self._engines[vcpu], None
        if engine is not None and self._on_detach is not None:
            self._on_detach(vcpu, engine)

    def park(self, vcpu: int) -> None:
        """The vCPU's thread leaves its engine alone (it blocks, or it ends)."""
        with self._cond:
            self._busy[vcpu] = False
            self._cond.notify_all()

    def unpark(self, vcpu: int, hold: bool = True, ready: bool = False) -> None:
        """Back from a blocking wait; with `hold`, wait here while a pause keeps this
        vCPU (`ready`: it holds its host CPU and could run at once)."""
        with self._cond:
            if hold:
                self._ready[vcpu] = ready
                while self._held(vcpu):
                    self._cond.wait()
                self._ready[vcpu] = False
            self._busy[vcpu] = True

    def after_run(self, vcpu: int, exit_: VcpuExit) -> bool:
        """Every engine exit: a stop the front end wants here, and the checkpoint where
        a pause holds the vCPU. True: the exit was the control plane's own (DEBUG), and
        the engine runs on as if it had not stopped."""
        if self._after_run is not None:
            self._after_run(vcpu, exit_)
        if self._paused:
            self.park(vcpu)
            self.unpark(vcpu, ready=True)
        return exit_.kind is ExitKind.DEBUG and not self._closed

    def close(self) -> None:
        """The run is ending (a stop, or a reset between runs): nobody is held."""
        if self._on_close is not None:
            self._on_close()
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def reopen(self) -> None:
        """A new run of the same VM: threads start parked; a pause asked stays."""
        with self._cond:
            self._closed = False
            self._busy = [False] * len(self._busy)
            self._ready = [False] * len(self._ready)
            self._cond.notify_all()

    # -- with the lock held -----------------------------------------------------------
    def _held(self, vcpu: int) -> bool:
        return self._paused and not self._closed and vcpu not in self._alone

    def _stopped(self) -> bool:
        return (
            self._paused
            and self._stop is not None
            and not self._closed
            and not any(self._busy)
            and any(e is not None for e in self._engines)
        )

    def _busy_engines(self) -> list[VcpuEngine]:
        """The engines a pause still has to stop: busy, and held by it (a vCPU let run
        alone, for a step, is not stopped by the wait for that step's own stop)."""
        return [
            e
            for i, (e, busy) in enumerate(zip(self._engines, self._busy, strict=True))
            if busy and e is not None and self._held(i)
        ]
