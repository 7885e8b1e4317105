"""`--save-at MS --save FILE`: save the VM when its clock reaches MS, then stop it.

With deterministic time the VM is held before the first slice that would start at or
after MS: every vCPU has stopped at an exact instruction count, and the same run reaches
the same point every time. The save runs on a thread of its own once every vCPU thread is
parked. With the host's wall clock there is no such point: at MS of the VM's clock the
control plane stops every vCPU wherever it is (standing.py) and the VM is saved there.
Either way the VM then stops with StopKind.SAVED (exit status 0), or with status 2 and
the reason if the state could not be saved or written.
"""

from __future__ import annotations

import threading
from pathlib import Path

from pvkit.machine import vm_state
from pvkit.machine.control import FrontEnd
from pvkit.machine.virtual_scheduler import VirtualScheduler
from pvkit.machine.vm import StopKind, StopReason
from pvkit.platform.board import ConfigError
from pvkit.snapshot import config, standing
from pvkit.snapshot.capture import capture
from pvkit.snapshot.format import SnapshotError, write_snapshot

SAVE_FAILED = 2


class SavePoint:
    def __init__(self, board: config.Board, image: Path, at_ns: int, path: Path):
        why = config.unsupported(board, image)
        if why is not None:
            raise ConfigError(f"--save-at: this VM cannot be snapshotted yet: {why}")
        if not path.parent.is_dir():
            raise ConfigError(f"--save {path}: no directory {path.parent}")
        self.board, self.image, self.at_ns, self.path = board, image, at_ns, path
        self._due = threading.Event()
        self._stopped = threading.Event()
        self._front: FrontEnd | None = None
        self.saved_bytes: int | None = None

    def install(self) -> None:
        """Before the VM runs."""
        sched = self.board.vm.scheduler
        if isinstance(sched, VirtualScheduler):
            sched.hold_at(self.at_ns, self._due.set)
            target = self._main
        else:
            self._front = self.board.vm.control.front_end("save-at")
            target = self._wall_clock
        threading.Thread(target=target, name="save-point", daemon=True).start()

    def cancel(self) -> None:
        """The run is over (the thread ends if the point was never reached)."""
        self._stopped.set()
        self._due.set()

    def _main(self) -> None:
        self._due.wait()
        vm = self.board.vm
        if self._stopped.is_set() or not vm_state.wait_parked(vm, self._stopped.is_set):
            return
        try:
            snapshot = capture(self.board, self.image)
            self.saved_bytes = write_snapshot(self.path, snapshot)
        except (SnapshotError, OSError) as exc:
            why = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            self._failed(why)
            return
        now = max(vm.scheduler.now_ns(i) for i in range(vm.vcpu_count))
        self._done(now)

    def _wall_clock(self) -> None:
        """Sleep until the VM's clock says MS (the run has begun by then), then save it
        standing and end the run without letting it go on."""
        sched = self.board.vm.scheduler
        while not self._stopped.is_set():
            left = self.at_ns - sched.now_ns(0)
            if left <= 0:
                break
            self._stopped.wait(left / 1e9)
        if self._stopped.is_set():
            return
        assert self._front is not None
        try:
            saved = standing.save(self.board, self.image, self._front, self.path, True)
        except SnapshotError as exc:
            if not self._stopped.is_set():
                self._failed(str(exc))
            return
        self.saved_bytes = saved.size
        self._done(saved.clock_ns)

    def _done(self, now_ns: int) -> None:
        message = f"saved the VM at {now_ns} ns to {self.path} ({self.saved_bytes} bytes)"
        self.board.vm.request_stop(StopReason(StopKind.SAVED, message))

    def _failed(self, why: str) -> None:
        message = f"cannot save the VM to {self.path}: {why}"
        self.board.vm.request_stop(StopReason(StopKind.SAVED, message, status=SAVE_FAILED))
