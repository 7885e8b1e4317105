"""Pre-copy: guest RAM crosses while the guest runs, in rounds, until what is left is small.

Round 0 starts the dirty log (machine/dirty_log.py) and sends every page that is not
all zero; each later round takes the pages written during the one before and sends
them. The rounds stop once the pages left would take at most DOWNTIME_LIMIT_S to send
at the rate the last round was sent (QEMU's rule, with its `downtime-limit` made
smaller for guests this size); or when they no longer gain (STALLED rounds in a row
left at least as many pages as the round before: a guest writing faster than the link,
which QEMU would throttle), or after MAX_ROUNDS. The stop-and-copy then sends the last
pages with the VM stood.

A round's turn-over (read the log, re-arm the engines) needs the VM to stand for a
moment: the holder's `briefly()`. A VM that does not run during the copy (held at a
deterministic point, or stopped by the monitor) needs one round and no log.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass

from pvkit.machine.dirty_log import PAGE
from pvkit.machine.memory import GuestMemory
from pvkit.snapshot import ram
from pvkit.snapshot.migration.stream import Channel, Kind


class MigrationError(Exception):
    """The migration did not happen; the source's VM runs on (one sentence)."""


DOWNTIME_LIMIT_S = 0.05
MAX_ROUNDS = 30
STALLED = 2
MESSAGE_PAGES = 2048  # 8 MiB of RAM at most in one PAGES message
MESSAGE_LIMIT = ram.pages_bound(MESSAGE_PAGES)  # what a destination accepts

Runs = list[tuple[int, int]]
Briefly = Callable[[], AbstractContextManager[None]]


@dataclass
class Copied:
    rounds: int = 0  # rounds sent while the guest ran (QEMU's dirty-sync-count)
    pages: int = 0  # pages sent in them, a page sent again counted again
    final_pages: int = 0  # pages sent with the VM stood


class PreCopy:
    """The RAM side of one migration: `run` while the guest runs, then `finish` once it
    stands, or `abandon` if the move failed."""

    def __init__(self, memory: GuestMemory, channel: Channel, briefly: Briefly | None):
        """`briefly`: stands the VM for a round's turn-over; None: the VM stands already
        and does not run until the end."""
        self.memory = memory
        self.channel = channel
        self.briefly = briefly
        self.copied = Copied()
        self._logging = False

    def run(self) -> Copied:
        memory = self.memory
        if self.briefly is None:
            self.copied.pages, _ = self._send(ram.nonzero_runs(memory))
            self.copied.rounds = 1
            return self.copied
        log = memory.dirty
        with self.briefly():
            log.start()
            self._logging = True
        sent, seconds = self._send(ram.nonzero_runs(memory))
        self.copied.pages, self.copied.rounds = sent, 1
        stalled = 0
        while self.copied.rounds < MAX_ROUNDS:
            with self.briefly():
                runs = log.take()
            pages = sum(n for _, n in runs)
            per_page = seconds / sent if sent else 0.0
            stalled = stalled + 1 if pages >= sent else 0
            if pages * per_page <= DOWNTIME_LIMIT_S or stalled >= STALLED:
                for first, n in runs:  # back in the log: they go with the VM stood
                    log.mark(log.base + first * PAGE, n * PAGE)
                return self.copied
            sent, seconds = self._send(runs)
            self.copied.pages += sent
            self.copied.rounds += 1
        return self.copied

    def finish(self) -> Copied:
        """The VM stands: send what is left and stop logging."""
        if self._logging:
            log = self.memory.dirty
            runs = log.take(rearm=False)
            log.stop()
            self._logging = False
            self.copied.final_pages, _ = self._send(runs)
        return self.copied

    def abandon(self, standing: bool) -> None:
        """The move failed: stop logging (`standing`: the VM stands already). A VM that
        will not stand for it logs on into a map that stays (freeing it under running
        engines would not be safe); the next migration starts a new round on it."""
        if not self._logging:
            return
        self._logging = False
        if standing or self.briefly is None:
            self.memory.dirty.stop()
            return
        try:
            with self.briefly():
                self.memory.dirty.stop()
        except MigrationError:
            pass  # the failure the caller reports is the one that ended the move

    def _send(self, runs: Runs) -> tuple[int, float]:
        """Send `runs` in messages of at most MESSAGE_PAGES pages: the pages sent and the
        seconds it took."""
        start, pages = time.monotonic(), 0
        for batch in _batches(runs):
            self.channel.send(Kind.PAGES, ram.encode_pages(self.memory, batch))
            pages += sum(n for _, n in batch)
        return pages, time.monotonic() - start


def _batches(runs: Runs) -> Iterator[Runs]:
    batch: Runs = []
    room = MESSAGE_PAGES
    for first, count in runs:
        while count:
            n = min(count, room)
            batch.append((first, n))
            first, count, room = first + n, count - n, room - n
            if room == 0:
                yield batch
                batch, room = [], MESSAGE_PAGES
    if batch:
        yield batch
