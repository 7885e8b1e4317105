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

from pathlib import Path

from pvkit.machine.control import FrontEnd
from pvkit.machine.vm import StopKind, StopReason
from pvkit.platform.board import ConfigError
from pvkit.snapshot import config, standing
from pvkit.snapshot.capture import capture
from pvkit.snapshot.clock_point import ClockPoint
from pvkit.snapshot.errors import SnapshotError
from pvkit.snapshot.format import write_snapshot

SAVE_FAILED = 2


class SavePoint(ClockPoint):
    NAME = "save-at"

    def __init__(self, board: config.Board, image: Path, at_ns: int, path: Path):
        why = config.unsupported(board, image)
        if why is not None:
            raise ConfigError(f"--save-at: this VM cannot be snapshotted yet: {why}")
        if not path.parent.is_dir():
            raise ConfigError(f"--save {path}: no directory {path.parent}")
        super().__init__(board, image, at_ns)
        self.path = path
        self.saved_bytes: int | None = None

    def at_hold(self) -> None:
        vm = self.board.vm
        try:
            snapshot = capture(self.board, self.image)
            self.saved_bytes = write_snapshot(self.path, snapshot)
        except (SnapshotError, OSError) as exc:
            why = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            self._failed(why)
            return
        now = max(vm.scheduler.now_ns(i) for i in range(vm.vcpu_count))
        self._done(now)

    def at_wall_clock(self, front: FrontEnd) -> None:
        """Save the VM standing and end the run without letting it go on."""
        try:
            saved = standing.save(self.board, self.image, front, self.path, True)
        except SnapshotError as exc:
            if not self.cancelled:
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
