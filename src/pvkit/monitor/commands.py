"""What the monitor's commands do to one VM, through its own hold on the control plane.

As in QEMU: `stop` returns once every vCPU stands and `cont` lets it run again; the
monitor's stop is its own, so a debugger's stop stays (`cont` says so) and a debugger
never hears of the monitor's. `savevm FILE` stops the VM, writes it and lets it run on,
or leaves it stopped if it was; `info` reports the run state, every vCPU's power state,
scheduler activity and PC, and the clock; `migrate tcp:HOST:PORT` starts moving the VM
to a destination (monitor/migration.py) and `query-migrate` follows the move; `query-fw`,
`fw-get` and `fw-set` read and write the firmware registers (monitor/firmware.py);
`quit` ends the run (exit status 0; after a migration, with its report). Commands
run one at a time, whichever client sends them.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pvkit.backends.unicorn_vcpu import UnicornVcpu
from pvkit.machine.vm import StopKind, StopReason
from pvkit.monitor import firmware, migration
from pvkit.monitor.migration import ACTIVE, COMPLETED, MigrationJob
from pvkit.monitor.protocol import NOT_FOUND, CommandError, Request, no_arguments, string_argument
from pvkit.snapshot import config, standing
from pvkit.snapshot.errors import SnapshotError

NAME = "monitor"  # the monitor's front end on the control plane
STOP = "stop"  # the monitor's stop cause
STOP_TIMEOUT_S = 10.0

Action = Callable[[], None]  # run after the reply is sent
Outcome = tuple[Any, Action | None]


class Monitor:
    def __init__(self, board: config.Board, image: Path | None, freeze: bool = False):
        """Before the VM runs (the monitor joins the control plane then); `freeze`
        (-S) holds it before its first instruction until `cont`."""
        self.board = board
        self.image = image
        self.vm = board.vm
        self.front = board.vm.control.front_end(NAME)
        self._migration_front = board.vm.control.front_end(migration.NAME)
        self._job: MigrationJob | None = None
        if freeze:
            self.front.pause(STOP, vcpu=0)
            if board.vm.resume is None and hasattr(board, "firmware_open"):
                board.firmware_open = True  # a new VM: settable until `cont`
        self._lock = threading.Lock()
        self._commands: dict[str, Callable[[Request], Outcome]] = {
            "stop": self._stop,
            "cont": self._cont,
            "savevm": self._savevm,
            "migrate": self._migrate,
            "query-migrate": self._query_migrate,
            "info": self._info,
            "query-status": self._query_status,
            "query-fw": self._query_fw,
            "fw-get": lambda request: (firmware.fw_get(self.board, request), None),
            "fw-set": lambda request: (firmware.fw_set(self.board, request), None),
            "quit": self._quit,
        }

    def execute(self, request: Request) -> Outcome:
        """The reply's value and what to do once it is sent; CommandError if refused."""
        handler = self._commands.get(request.command)
        if handler is None:
            raise CommandError(f"there is no command {request.command[:64]!r}", NOT_FOUND)
        with self._lock:
            if self.vm.control.ended:
                raise CommandError("the VM has ended")
            return handler(request)

    # -- the commands -------------------------------------------------------------------
    def _stop(self, request: Request) -> Outcome:
        no_arguments(request)
        self._stand()
        return {}, None

    def _cont(self, request: Request) -> Outcome:
        no_arguments(request)
        if self._migrated():
            raise CommandError("the VM runs on the destination now: quit ends this run")
        if getattr(self.board, "firmware_open", False):
            self.board.firmware_open = False  # type: ignore[union-attr]
            self.board.start_serving()  # type: ignore[union-attr]
        self.front.resume()
        others = [n for n in self.vm.control.holders() if n != NAME]
        if others:
            raise CommandError(f"the VM stays stopped: {' and '.join(others)} holds it too")
        return {}, None

    def _savevm(self, request: Request) -> Outcome:
        file = string_argument(request, "file")
        self._refuse_while_migrating("savevm")
        if "\0" in file:
            raise CommandError("parameter 'file' must not contain a NUL character")
        try:
            saved = standing.save(self.board, self.image, self.front, Path(file), False)
        except SnapshotError as exc:
            raise CommandError(f"cannot save the VM: {exc}") from None
        return {"file": str(saved.path), "bytes": saved.size, "clock-ns": saved.clock_ns}, None

    def _migrate(self, request: Request) -> Outcome:
        """QMP's `migrate uri`: the move starts and the reply comes at once; query-migrate
        says how it goes. A refusal or a failure there leaves the VM as it was."""
        from pvkit.snapshot.migration.address import AddressError, parse

        uri = string_argument(request, "uri")
        self._refuse_while_migrating("migrate")
        try:
            address = parse(uri, "migrate")
        except AddressError as exc:
            raise CommandError(str(exc)) from None
        self._job = MigrationJob(self.board, self.image, self._migration_front, address)
        self._job.start()
        return {}, None

    def _query_migrate(self, request: Request) -> Outcome:
        no_arguments(request)
        return (self._job.info() if self._job is not None else {}), None

    def _info(self, request: Request) -> Outcome:
        no_arguments(request)
        vm, sched = self.vm, self.vm.scheduler
        holders = vm.control.holders()
        pcs = self._pcs()
        vcpus = [
            {
                "cpu-index": i,
                "power": vm.power[i].state.value,
                "activity": sched.activity(i).value,
                "pc": pcs.get(i),
                "clock-ns": sched.now_ns(i),
            }
            for i in range(vm.vcpu_count)
        ]
        clock = {
            "source": "deterministic" if sched.deterministic else "host",
            "ns": max(v["clock-ns"] for v in vcpus),  # type: ignore[type-var]
        }
        return {
            "status": self._status(holders),
            "running": not holders,
            "held-by": holders,
            "clock": clock,
            "vcpus": vcpus,
        }, None

    def _query_status(self, request: Request) -> Outcome:
        no_arguments(request)
        holders = self.vm.control.holders()
        return {"running": not holders, "status": self._status(holders)}, None

    def _query_fw(self, request: Request) -> Outcome:
        no_arguments(request)
        return firmware.query_fw(self.board), None

    def _quit(self, request: Request) -> Outcome:
        no_arguments(request)
        done = self._job.done if self._job is not None else None
        if done is not None:  # the VM went: the run ends as a migrated one
            reason = StopReason(StopKind.MIGRATED, done.sentence())
        else:
            reason = StopReason(StopKind.QUIT, "quit from the monitor")
        return {}, lambda: self.vm.request_stop(reason)

    # -- helpers ------------------------------------------------------------------------
    def _migrated(self) -> bool:
        return self._job is not None and self._job.status == COMPLETED

    def _refuse_while_migrating(self, command: str) -> None:
        if self._job is not None and self._job.status == ACTIVE:
            raise CommandError(f"{command}: a migration is in progress (query-migrate follows it)")
        if self._migrated():
            raise CommandError(f"{command}: the VM runs on the destination now")

    def _status(self, holders: list[str]) -> str:
        """QMP's run state: "running", "paused", "debug" while a debugger holds the VM,
        "finish-migrate" while only a migration's final copy does, "postmigrate" after."""
        if self._migrated():
            return "postmigrate"
        mine = [h for h in holders if h != migration.NAME]
        if holders and not mine:
            return "finish-migrate"
        if not mine:
            return "running"
        return "debug" if "gdb" in mine else "paused"

    def _stand(self) -> None:
        self.front.pause(STOP)
        if self.front.wait_stopped(STOP_TIMEOUT_S) is None:
            if self.vm.control.ended or self.vm.stopping:
                raise CommandError("the VM has ended")
            raise CommandError(
                f"the VM did not stand still within {STOP_TIMEOUT_S:g} s; it stops when it can"
            )

    def _pcs(self) -> dict[int, int]:
        """Every on vCPU's PC, read while the VM stands (a running VM stands for as long
        as that takes, then runs on)."""
        was_holding = self.front.holding
        try:
            self._stand()
        except CommandError:
            if not was_holding:
                self.front.resume()
            return {}
        try:
            engines = self.vm.control.engines()
            return {i: e.pc() for i, e in engines.items() if isinstance(e, UnicornVcpu)}
        finally:
            if not was_holding:
                self.front.resume()
