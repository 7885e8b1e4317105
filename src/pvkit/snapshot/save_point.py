"""`--save-at MS --save FILE`: hold the VM when its clock reaches MS, save it, stop it.

With deterministic time the hold comes before the first slice that would start at or
after MS: every vCPU has stopped at an exact instruction count, and the same run reaches
the same point every time. The save runs on a thread of its own once every vCPU thread is
parked; the VM then stops with StopKind.SAVED (exit status 0), or with status 2 and the
reason if the state could not be saved or written.
"""

from __future__ import annotations

import threading
from pathlib import Path

from pvkit.machine import vm_state
from pvkit.machine.virtual_scheduler import VirtualScheduler
from pvkit.machine.vm import StopKind, StopReason
from pvkit.platform.board import ConfigError
from pvkit.snapshot import config
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
        self.saved_bytes: int | None = None

    def install(self) -> None:
        sched = self.board.vm.scheduler
        assert isinstance(sched, VirtualScheduler)  # unsupported() checked the clock
        sched.hold_at(self.at_ns, self._due.set)
        threading.Thread(target=self._main, name="save-point", daemon=True).start()

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
            message = f"cannot save the VM to {self.path}: {why}"
            vm.request_stop(StopReason(StopKind.SAVED, message, status=SAVE_FAILED))
            return
        now = max(vm.scheduler.now_ns(i) for i in range(vm.vcpu_count))
        message = f"saved the VM at {now} ns to {self.path} ({self.saved_bytes} bytes)"
        vm.request_stop(StopReason(StopKind.SAVED, message))
