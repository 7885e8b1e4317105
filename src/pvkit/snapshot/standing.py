"""Save a running VM through the control plane: pause it, capture it while it stands, then
resume it (or leave it standing).

This is how a wall-clock VM is saved (there is no exact point to hold it at), and how
the monitor saves any VM. Every vCPU stops at a clean boundary (machine/control.py):
parked in one of the run loop's waits, or at the checkpoint after an engine run, which
capture.py saves as runnable at its PC. With deterministic time the stop costs no guest
time, but the point is wherever the request found the VM, not a point the run always
reaches (the --save-at point is: save_point.py).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from pvkit.machine.control import FrontEnd
from pvkit.snapshot import config
from pvkit.snapshot.capture import SaveLater, capture
from pvkit.snapshot.errors import SnapshotError
from pvkit.snapshot.format import Snapshot, write_snapshot

SAVE = "save"  # the stop cause
STOP_TIMEOUT_S = 10.0  # a VM that does not stand still by then is not saved
_RETRIES = 250  # a moment that passes on its own (capture.SaveLater): 0.5 s of running
_RETRY_RUN_S = 0.002  # how long the VM runs before the next try


@dataclass(frozen=True)
class Saved:
    path: Path
    size: int  # bytes written
    clock_ns: int  # the VM's clock at the save (the latest vCPU's)


def take(
    board: config.Board, image: Path | None, front: FrontEnd, ram: bool = True
) -> tuple[Snapshot, int]:
    """Stop the VM with `front`'s hold and capture it (`ram`: its RAM too), with its clock
    when it stood; the hold stays (the caller resumes it or not). SnapshotError (one
    sentence) if it cannot be saved now."""
    why = config.unsupported(board, image)
    if why is not None:
        raise SnapshotError(f"this VM cannot be snapshotted yet: {why}")
    assert image is not None  # unsupported() names a VM without one
    was_holding = front.holding
    vm = board.vm
    for _ in range(_RETRIES):
        front.pause(SAVE)
        if front.wait_stopped(STOP_TIMEOUT_S) is None:
            if vm.control.ended:
                raise SnapshotError("the VM ended before it could be saved")
            raise SnapshotError(f"the VM did not stand still within {STOP_TIMEOUT_S:g} s")
        if vm.stopping:
            raise SnapshotError("the VM is stopping")
        control = vm.control
        checkpoints = {
            i: e for i in range(vm.vcpu_count) if (e := control.checkpoint_exit(i)) is not None
        }
        clock = max(vm.scheduler.now_ns(i) for i in range(vm.vcpu_count))
        try:
            return capture(board, image, checkpoints=checkpoints, ram=ram), clock
        except SaveLater:
            others = [n for n in control.holders() if n != front.name]
            if was_holding or others:
                raise  # it stands for someone who wants it to: cannot run it past this
            front.resume()
            time.sleep(_RETRY_RUN_S)
    raise SnapshotError("the VM never stood at a moment it can be saved; try again")


def save(
    board: config.Board, image: Path | None, front: FrontEnd, path: Path, keep_stopped: bool
) -> Saved:
    """Stop, capture, write `path` atomically; then resume unless `keep_stopped` or
    `front` already held the VM (a stopped VM stays stopped)."""
    if not path.parent.is_dir():
        raise SnapshotError(f"no directory {path.parent}")
    was_holding = front.holding
    try:
        snapshot, clock = take(board, image, front)
        try:
            size = write_snapshot(path, snapshot)
        except OSError as exc:
            raise SnapshotError(f"cannot write {path}: {exc.strerror or exc}") from None
        return Saved(path, size, clock)
    finally:
        if not was_holding and not keep_stopped:
            front.resume()
