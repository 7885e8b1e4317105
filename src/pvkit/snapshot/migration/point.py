"""`--migrate-at MS --migrate-to tcp:HOST:PORT`: migrate when the VM's clock reaches MS.

The same two ways to stop as `--save-at` (save_point.py): with deterministic time the VM
is held before the first slice that starts at or after MS (a point the same run always
reaches, so the source's and the destination's console together are the uninterrupted
run's); with the host's clock the control plane stops it wherever it is at about MS.
A migration that works ends the run (StopKind.MIGRATED, exit status 0, downtime and
bytes on the report line); one that fails says why in one line and the VM runs on.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from pvkit.machine.control import FrontEnd
from pvkit.machine.virtual_scheduler import VirtualScheduler
from pvkit.machine.vm import StopKind, StopReason
from pvkit.platform.board import ConfigError
from pvkit.snapshot import config, standing
from pvkit.snapshot.capture import capture
from pvkit.snapshot.clock_point import ClockPoint
from pvkit.snapshot.format import Snapshot
from pvkit.snapshot.migration.address import TcpAddress
from pvkit.snapshot.migration.source import Migrated, MigrationError, migrate

MIGRATE = "migrate"  # the stop cause of a pre-copy round's turn-over


class StandingHolder:
    """Stops the VM through the control plane, with `front`'s hold (the monitor's, or
    the migrate point's own); a VM the front end already held stays held on failure."""

    def __init__(self, board: config.Board, image: Path | None, front: FrontEnd):
        self.board, self.image, self.front = board, image, front
        self._was_holding = front.holding

    def stand(self, ram: bool) -> tuple[Snapshot, int]:
        return standing.take(self.board, self.image, self.front, ram)

    def release(self) -> None:
        if not self._was_holding:
            self.front.resume()

    @property
    def runs(self) -> bool:
        return not self._was_holding

    @contextmanager
    def briefly(self) -> Iterator[None]:
        front = self.front
        front.pause(MIGRATE)
        try:
            if front.wait_stopped(standing.STOP_TIMEOUT_S) is None:
                raise MigrationError("the VM ended or did not stand still for the copy")
            yield
        finally:
            front.resume()


class HeldHolder:
    """The VM is held at the deterministic point already: capture it, or lift the hold."""

    def __init__(self, board: config.Board, image: Path):
        self.board, self.image = board, image

    def stand(self, ram: bool) -> tuple[Snapshot, int]:
        vm = self.board.vm
        clock = max(vm.scheduler.now_ns(i) for i in range(vm.vcpu_count))
        return capture(self.board, self.image, ram=ram), clock

    def release(self) -> None:
        sched = self.board.vm.scheduler
        assert isinstance(sched, VirtualScheduler)
        sched.lift_hold()

    runs = False  # held at the point until the move is over

    @contextmanager
    def briefly(self) -> Iterator[None]:
        yield


def migrated(board: config.Board, done: Migrated) -> None:
    """The VM lives at the destination now: end this run."""
    board.vm.request_stop(StopReason(StopKind.MIGRATED, done.sentence()))


class MigratePoint(ClockPoint):
    NAME = "migrate-at"

    def __init__(
        self,
        board: config.Board,
        image: Path | None,
        at_ns: int,
        to: TcpAddress,
        failed: Callable[[str], None],
    ):
        """`failed(sentence)` hears why a migration did not happen (the VM runs on)."""
        why = config.unsupported(board, image)
        if why is not None:
            raise ConfigError(f"--migrate-at: this VM cannot be migrated yet: {why}")
        assert image is not None
        super().__init__(board, image, at_ns)
        self.to = to
        self._failed = failed

    def at_hold(self) -> None:
        self._go(HeldHolder(self.board, self.image))

    def at_wall_clock(self, front: FrontEnd) -> None:
        self._go(StandingHolder(self.board, self.image, front))

    def _go(self, holder: StandingHolder | HeldHolder) -> None:
        try:
            done = migrate(self.board, self.image, self.to, holder)
        except MigrationError as exc:
            if not self.cancelled:
                self._failed(str(exc))
            return
        migrated(self.board, done)
