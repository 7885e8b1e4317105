"""A moment on the VM's clock at which the standing VM is taken somewhere: `--save-at`
(save_point.py) and `--migrate-at` (migration/point.py).

With deterministic time the scheduler holds the VM before the first slice that would
start at or after the moment: every vCPU has stopped at an exact instruction count, and
the same run reaches the same point every time; the work runs on a thread of its own once
every vCPU thread is parked (`at_hold`). With the host's wall clock there is no such
point: at the moment the control plane stops every vCPU wherever it is, through a front
end of the point's own (`at_wall_clock`).
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from pathlib import Path
from typing import ClassVar

from pvkit.machine import vm_state
from pvkit.machine.control import FrontEnd
from pvkit.machine.virtual_scheduler import VirtualScheduler
from pvkit.snapshot import config


class ClockPoint(ABC):
    NAME: ClassVar[str]  # the option, also the front end's and the thread's name

    def __init__(self, board: config.Board, image: Path, at_ns: int):
        self.board, self.image, self.at_ns = board, image, at_ns
        self._due = threading.Event()
        self._stopped = threading.Event()

    def install(self) -> None:
        """Before the VM runs."""
        sched = self.board.vm.scheduler
        if isinstance(sched, VirtualScheduler):
            sched.hold_at(self.at_ns, self._due.set)
            threading.Thread(target=self._held, name=self.NAME, daemon=True).start()
        else:
            front = self.board.vm.control.front_end(self.NAME)
            thread = threading.Thread(
                target=self._wall_clock, args=(front,), name=self.NAME, daemon=True
            )
            thread.start()

    def cancel(self) -> None:
        """The run is over (the thread ends if the point was never reached)."""
        self._stopped.set()
        self._due.set()

    @property
    def cancelled(self) -> bool:
        return self._stopped.is_set()

    @abstractmethod
    def at_hold(self) -> None:
        """Deterministic time: the VM is held at the point, every vCPU thread parked."""

    @abstractmethod
    def at_wall_clock(self, front: FrontEnd) -> None:
        """The host's clock says the moment has come: stand the VM with `front`."""

    def _held(self) -> None:
        self._due.wait()
        vm = self.board.vm
        if self._stopped.is_set() or not vm_state.wait_parked(vm, self._stopped.is_set):
            return
        self.at_hold()

    def _wall_clock(self, front: FrontEnd) -> None:
        """Sleep until the VM's clock says the moment (the run has begun by then)."""
        sched = self.board.vm.scheduler
        while not self._stopped.is_set():
            left = self.at_ns - sched.now_ns(0)
            if left <= 0:
                break
            self._stopped.wait(left / 1e9)
        if not self._stopped.is_set():
            self.at_wall_clock(front)
