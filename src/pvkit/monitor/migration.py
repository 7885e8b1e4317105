"""The monitor's `migrate`, as QMP's: the command starts the move and returns at once,
`query-migrate` follows it, and once it is over the VM stands here ("postmigrate") until
`quit` ends the run, which then reports the migration.

The move runs on its own thread with a hold of its own on the control plane, so the
monitor's `stop` and `cont` still work while it runs (a stopped VM is moved as it stands)
and a failed move leaves the VM running, or stopped, as the monitor left it.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

from pvkit.machine.control import FrontEnd
from pvkit.machine.dirty_log import PAGE
from pvkit.snapshot import config
from pvkit.snapshot.migration.address import TcpAddress
from pvkit.snapshot.migration.source import Migrated

NAME = "migration"  # the job's front end on the control plane
ACTIVE, COMPLETED, FAILED = "active", "completed", "failed"  # QMP's MigrationStatus


class MigrationJob:
    """One `migrate`: QMP's MigrationInfo while it runs and after."""

    def __init__(
        self, board: config.Board, image: Path | None, front: FrontEnd, to: TcpAddress
    ) -> None:
        self.board, self.image, self.front, self.to = board, image, front, to
        self._lock = threading.Lock()
        self._status = ACTIVE
        self._done: Migrated | None = None
        self._error: str | None = None
        self._started = time.monotonic()
        self._ended: float | None = None

    def start(self) -> None:
        threading.Thread(target=self._run, name="migrate", daemon=True).start()

    @property
    def status(self) -> str:
        with self._lock:
            return self._status

    @property
    def done(self) -> Migrated | None:
        """How the move went, once it is completed."""
        with self._lock:
            return self._done

    def _run(self) -> None:
        from pvkit.snapshot.migration.point import StandingHolder
        from pvkit.snapshot.migration.source import MigrationError, migrate

        done: Migrated | None = None
        error: str | None = None
        try:
            done = migrate(self.board, self.image, self.to, StandingHolder(
                self.board, self.image, self.front))  # fmt: skip
        except MigrationError as exc:
            error = str(exc)
        except Exception as exc:  # a pvkit bug: reported, never a dead thread nobody hears of
            error = f"internal error: {exc!r}"
            self.front.resume()
        with self._lock:
            self._ended = time.monotonic()
            self._done, self._error = done, error
            self._status = COMPLETED if done is not None else FAILED

    def info(self) -> dict[str, Any]:
        """QMP's MigrationInfo (status, total-time, downtime, ram), and pvkit's figures."""
        with self._lock:
            end = self._ended if self._ended is not None else time.monotonic()
            info: dict[str, Any] = {
                "status": self._status,
                "total-time": round((end - self._started) * 1000),
            }
            if self._error is not None:
                info["error-desc"] = self._error
            done = self._done
        if done is not None:
            pages = done.copied.pages + done.copied.final_pages
            seconds = max(info["total-time"], 1) / 1000
            info.update({
                "downtime": round(done.downtime_ns / 1e6),
                "ram": {  # the MigrationStats fields pvkit counts
                    "transferred": done.bytes_sent,
                    "remaining": 0,
                    "total": done.bytes_sent,
                    "normal": pages,
                    "normal-bytes": pages * PAGE,
                    "page-size": PAGE,
                    "mbps": round(done.bytes_sent * 8 / seconds / 1e6, 3),
                    "dirty-sync-count": done.copied.rounds,
                },
                "uri": str(done.address),
                "downtime-ms": round(done.downtime_ns / 1e6, 3),
                "clock-ns": done.clock_ns,
                "precopy-pages": done.copied.pages,
                "stopped-pages": done.copied.final_pages,
            })  # fmt: skip
        return info
